//! The sections of the kernel's x86-64 objects that carry meaning beyond code and
//! data: the special sections whose fixed-size entries describe places in the code
//! (the kernel rewrites or looks up those places at boot, at module load or later),
//! and the section names that say when code runs or what a table is for.
//!
//! Layouts are those of Linux 6.1 with Debian's configuration
//! (`CONFIG_GENERIC_BUG_RELATIVE_POINTERS`, `CONFIG_DEBUG_BUGVERBOSE`,
//! `CONFIG_HAVE_ARCH_JUMP_LABEL_RELATIVE`, `CONFIG_UNWINDER_ORC`), after objtool.

/// `__bug_table`: `struct bug_entry` (include/asm-generic/bug.h; emitted by
/// `_BUG_FLAGS` in arch/x86/include/asm/bug.h): `int bug_addr_disp; int file_disp;
/// unsigned short line; unsigned short flags;`.
pub mod bug_entry {
    pub const SECTION: &str = "__bug_table";
    pub const SIZE: u64 = 12;
    /// `bug_entry::line`, `(offset, size)`: a `__LINE__` that moved is no change.
    pub const LINE: (u64, u64) = (8, 2);
}

/// `__ex_table`: `struct exception_table_entry { int insn, fixup, data; }`
/// (arch/x86/include/asm/extable.h).
pub mod exception_table_entry {
    pub const SECTION: &str = "__ex_table";
    pub const SIZE: u64 = 12;
}

/// `__jump_table`: `struct jump_entry { s32 code; s32 target; long key; }`
/// (include/linux/jump_label.h; `JUMP_TABLE_ENTRY` in
/// arch/x86/include/asm/jump_label.h). The key's low bits are flags.
pub mod jump_entry {
    pub const SECTION: &str = "__jump_table";
    pub const SIZE: u64 = 16;
    pub const CODE: u64 = 0;
    pub const TARGET: u64 = 4;
    pub const KEY: u64 = 8;
}

/// `.altinstructions`: `struct alt_instr` (arch/x86/include/asm/alternative.h), in
/// two layouts. Linux 6.1: `{ s32 instr_offset; s32 repl_offset; u16 cpuid; u8
/// instrlen; u8 replacementlen; } __packed`, 12 bytes, `cpuid` bit 15 inverting the
/// test (`ALTINSTR_FLAG_INV`). Linux 6.3 and later (6.12): `cpuid` became `u32
/// ft_flags` (`cpuid:16` then `flags:16`, `ALT_FLAG_NOT`, `ALT_FLAG_DIRECT_CALL`;
/// "x86/alternatives: Add alt_instr.flags"), 14 bytes. An object does not say which
/// it has: [`layout_of`] tells them apart by where the relocations of the entries
/// fall, and the two never agree on a section's size.
pub mod alt_instr {
    pub const SECTION: &str = ".altinstructions";
    pub const INSTR_OFFSET: u64 = 0;
    /// Points into [`super::ALTINSTR_REPLACEMENT`].
    pub const REPL_OFFSET: u64 = 4;
    /// The CPU feature (`u16` in both layouts).
    pub const CPUID: u64 = 8;

    /// Where the fields of one layout are.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Layout {
        pub size: u64,
        pub instrlen: u64,
        /// How many bytes of the replacement section the entry uses.
        pub replacementlen: u64,
    }

    /// Linux 6.1 (Debian 12's 6.1 line).
    pub const V6_1: Layout = Layout {
        size: 12,
        instrlen: 10,
        replacementlen: 11,
    };
    /// Linux 6.3 and later (Debian's 6.12 line).
    pub const V6_3: Layout = Layout {
        size: 14,
        instrlen: 12,
        replacementlen: 13,
    };
    pub const LAYOUTS: [Layout; 2] = [V6_1, V6_3];

    /// The layout of a `.altinstructions` section of `size` bytes whose relocations
    /// are at `offsets`: every entry has exactly two, at [`INSTR_OFFSET`] and
    /// [`REPL_OFFSET`], so the entries start at the even-numbered relocations in
    /// order. `None` when neither layout fits (or the section is empty).
    pub fn layout_of(size: u64, offsets: &[u64]) -> Option<Layout> {
        let mut sorted = offsets.to_vec();
        sorted.sort_unstable();
        if sorted.is_empty() || !sorted.len().is_multiple_of(2) {
            return None;
        }
        let entries = (sorted.len() / 2) as u64;
        LAYOUTS.into_iter().find(|l| {
            l.size * entries == size
                && sorted.chunks(2).enumerate().all(|(i, pair)| {
                    pair[0] == i as u64 * l.size + INSTR_OFFSET
                        && pair[1] == i as u64 * l.size + REPL_OFFSET
                })
        })
    }
}

/// `.parainstructions`: `struct paravirt_patch_site { u8 *instr; u8 type; u8 len; }`,
/// padded to 16 (arch/x86/include/asm/paravirt_types.h).
pub mod paravirt_patch_site {
    pub const SECTION: &str = ".parainstructions";
    pub const SIZE: u64 = 16;
    pub const INSTR: u64 = 0;
    pub const TYPE: u64 = 8;
    pub const LEN: u64 = 9;
}

/// `.static_call_sites`: `struct static_call_site { s32 addr; s32 key; }`
/// (include/linux/static_call_types.h); the key's low bits are flags.
pub mod static_call_site {
    pub const SECTION: &str = ".static_call_sites";
    pub const SIZE: u64 = 8;
    pub const ADDR: u64 = 0;
    pub const KEY: u64 = 4;
    /// `STATIC_CALL_SITE_TAIL`: the site is a tail call (`jmp`).
    pub const TAIL: i64 = 1;
    /// `STATIC_CALL_SITE_INIT`: the site is in `__init` code.
    pub const INIT: i64 = 2;
    /// Both flag bits.
    pub const FLAGS: i64 = 3;
}

/// `.orc_unwind_ip`: an `int` per ORC entry (arch/x86/kernel/unwind_orc.c), with
/// `.orc_unwind` the parallel array of `struct orc_entry` (6 bytes packed,
/// arch/x86/include/asm/orc_types.h), which has no relocations.
pub mod orc {
    pub const IP_SECTION: &str = ".orc_unwind_ip";
    pub const IP_SIZE: u64 = 4;
    pub const ENTRY_SECTION: &str = ".orc_unwind";
    pub const ENTRY_SIZE: u64 = 6;
}

/// `.return_sites`, `.retpoline_sites`: an `s32` per site, written by objtool
/// (tools/objtool/check.c) and read by `apply_returns()` / `apply_retpolines()`
/// (arch/x86/kernel/alternative.c).
pub const RETURN_SITES: &str = ".return_sites";
pub const RETPOLINE_SITES: &str = ".retpoline_sites";
/// `.smp_locks`: an `s32` per `lock` prefix (`LOCK_PREFIX_HERE`,
/// arch/x86/include/asm/alternative.h).
pub const SMP_LOCKS: &str = ".smp_locks";
/// The size of the `s32` offset entries above.
pub const SITE_OFFSET_SIZE: u64 = 4;
/// `__mcount_loc`: the address of each fentry call, `unsigned long`
/// (`-mrecord-mcount`; kernel/trace/ftrace.c, `ftrace_process_locs`).
pub const MCOUNT_LOC: &str = "__mcount_loc";
pub const MCOUNT_LOC_SIZE: u64 = 8;

/// `.call_sites`: an `s32` per call, written by objtool for call-depth tracking
/// (`--hacks=skylake`, `CONFIG_MITIGATION_CALL_DEPTH_TRACKING`, 6.2 and later) and
/// read by `callthunks_patch_module_calls()` (arch/x86/kernel/callthunks.c).
pub const CALL_SITES: &str = ".call_sites";
/// `.ibt_endbr_seal`: an `s32` per `endbr64` nothing reaches indirectly (objtool
/// `--ibt`), poisoned by `apply_seal_endbr()` when the CPU has IBT.
pub const IBT_ENDBR_SEAL: &str = ".ibt_endbr_seal";
/// `.cfi_sites`: objtool's list of kCFI preambles (`--cfi`, `CONFIG_FINEIBT`).
pub const CFI_SITES: &str = ".cfi_sites";

/// The sections objtool writes from the code it reads (tools/objtool/check.c,
/// orc_gen.c): where it runs on the linked module instead of each object, it writes
/// them for the whole module, and a copy carried from a unit would make it skip its
/// own ("file already has ..."). 6.12's configuration runs it that way
/// (`delay-objtool` with `CONFIG_X86_KERNEL_IBT`, scripts/Makefile.lib); 6.1's runs it
/// on each object. `__mcount_loc` is not among them: Debian's kernels have the
/// compiler write it (`CONFIG_FTRACE_MCOUNT_USE_CC`).
pub const OBJTOOL_SECTIONS: &[&str] = &[
    orc::IP_SECTION,
    orc::ENTRY_SECTION,
    ".orc_header",
    RETURN_SITES,
    RETPOLINE_SITES,
    static_call_site::SECTION,
    CALL_SITES,
    IBT_ENDBR_SEAL,
    CFI_SITES,
];

/// Where the replacement instructions of `.altinstructions` live
/// (arch/x86/include/asm/alternative.h, `ALTERNATIVE`).
pub const ALTINSTR_REPLACEMENT: &str = ".altinstr_replacement";
/// Code that `static_cpu_has()` jumps to (arch/x86/include/asm/cpufeature.h),
/// shared by every user in the file.
pub const ALTINSTR_AUX: &str = ".altinstr_aux";

/// `__dyndbg`: the `struct _ddebug` of each pr_debug()/dev_dbg() call site
/// (include/linux/dynamic_debug.h): four pointers, then `unsigned int lineno:18`.
pub mod ddebug {
    pub const SECTION: &str = "__dyndbg";
    /// Byte offset of the word holding `_ddebug::lineno`.
    pub const LINENO_OFFSET: usize = 32;
    /// `_ddebug::lineno` is the low 18 bits of that word.
    pub const LINENO_MASK: u32 = (1 << 18) - 1;
}

/// How the entries of a special section relate to the code they describe, beyond
/// pointing at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Only the anchor field points into the code.
    Plain,
    /// `.altinstructions`: the entry also points into [`ALTINSTR_REPLACEMENT`] and
    /// covers `instrlen` bytes of the original code.
    Alternatives,
    /// `.parainstructions`: the entry covers `len` bytes of the original code.
    Paravirt,
    /// `.orc_unwind_ip`: `.orc_unwind` is a parallel array.
    OrcIp,
}

/// A special section: fixed-size entries, each belonging to the code its anchor
/// field points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialSection {
    pub name: &'static str,
    /// The size of an entry; for `.altinstructions`, 6.1's (read an object's with
    /// [`SpecialSection::entry_size_in`]).
    pub entry_size: u64,
    /// Offset in an entry of the relocated field that points into the code.
    pub anchor: u64,
    /// Byte ranges `(offset, size)` of an entry that say nothing about the code
    /// (a `__LINE__`): two builds may differ there.
    pub volatile: &'static [(u64, u64)],
    pub kind: EntryKind,
}

impl SpecialSection {
    /// The entry size of this section in an object whose section is `size` bytes
    /// with relocations at `offsets`: fixed for most, read from the entries for
    /// `.altinstructions` (see [`alt_instr`]). `None` when the entries fit no layout
    /// this kernel version has.
    pub fn entry_size_in(&self, size: u64, offsets: &[u64]) -> Option<u64> {
        match self.kind {
            EntryKind::Alternatives if size == 0 => Some(self.entry_size),
            EntryKind::Alternatives => alt_instr::layout_of(size, offsets).map(|l| l.size),
            _ => Some(self.entry_size),
        }
    }

    const fn plain(name: &'static str, entry_size: u64) -> SpecialSection {
        SpecialSection {
            name,
            entry_size,
            anchor: 0,
            volatile: &[],
            kind: EntryKind::Plain,
        }
    }
}

/// Every special section of the kernel's x86-64 objects whose entries describe
/// functions, in the order the builder carries them.
pub const SPECIAL_SECTIONS: &[SpecialSection] = &[
    SpecialSection {
        volatile: &[bug_entry::LINE],
        ..SpecialSection::plain(bug_entry::SECTION, bug_entry::SIZE)
    },
    SpecialSection::plain(exception_table_entry::SECTION, exception_table_entry::SIZE),
    SpecialSection {
        anchor: jump_entry::CODE,
        ..SpecialSection::plain(jump_entry::SECTION, jump_entry::SIZE)
    },
    SpecialSection {
        anchor: alt_instr::INSTR_OFFSET,
        kind: EntryKind::Alternatives,
        ..SpecialSection::plain(alt_instr::SECTION, alt_instr::V6_1.size)
    },
    SpecialSection {
        anchor: paravirt_patch_site::INSTR,
        kind: EntryKind::Paravirt,
        ..SpecialSection::plain(paravirt_patch_site::SECTION, paravirt_patch_site::SIZE)
    },
    SpecialSection {
        anchor: static_call_site::ADDR,
        ..SpecialSection::plain(static_call_site::SECTION, static_call_site::SIZE)
    },
    SpecialSection::plain(RETURN_SITES, SITE_OFFSET_SIZE),
    SpecialSection::plain(RETPOLINE_SITES, SITE_OFFSET_SIZE),
    SpecialSection::plain(SMP_LOCKS, SITE_OFFSET_SIZE),
    SpecialSection::plain(MCOUNT_LOC, MCOUNT_LOC_SIZE),
    SpecialSection {
        kind: EntryKind::OrcIp,
        ..SpecialSection::plain(orc::IP_SECTION, orc::IP_SIZE)
    },
];

/// The special section of that name.
pub fn special_section(name: &str) -> Option<&'static SpecialSection> {
    SPECIAL_SECTIONS.iter().find(|s| s.name == name)
}

/// Sections that hold something the special sections point into or along: the
/// replacement code of alternatives and the ORC entries.
pub fn is_special_companion(name: &str) -> bool {
    name == ALTINSTR_REPLACEMENT || name == orc::ENTRY_SECTION
}

/// Code that runs only while the kernel boots: `__init` text (freed after boot),
/// `__exit` text of built-in objects (discarded at link time), `__head` code
/// (arch/x86/kernel/head64.c). Include/linux/init.h.
pub const BOOT_ONLY_TEXT: &[&str] = &[".init.text", ".exit.text", ".head.text"];

/// Prefixes of sections the kernel frees after boot, or discards (include/linux/init.h
/// `__init`, `__initdata`, `__initconst`, `__setup`, `__exit`, `__exitdata`).
pub const FREED_AFTER_BOOT_PREFIXES: &[&str] = &[".init.", ".exit."];

/// Whether the kernel frees (or discards) a section after boot.
pub fn is_freed_after_boot(name: &str) -> bool {
    FREED_AFTER_BOOT_PREFIXES
        .iter()
        .any(|p| name.starts_with(p))
}

/// Build-time annotations: read by objtool or the linker and dropped
/// (`.discard.*`, notes, `.comment`), and [`PATCHABLE_FUNCTION_ENTRIES`].
pub const ANNOTATION_PREFIXES: &[&str] = &[
    DISCARD_PREFIX,
    ".note",
    ".comment",
    PATCHABLE_FUNCTION_ENTRIES,
];

/// Sections the linker drops (`/DISCARD/` in include/asm-generic/vmlinux.lds.h):
/// objtool's annotations and the like, which no code reaches at run time.
pub const DISCARD_PREFIX: &str = ".discard";

/// Where `-fpatchable-function-entry=16,16` (`CONFIG_CALL_PADDING`, 6.2 and later:
/// 6.12, not 6.1; arch/x86/Makefile `PADDING_CFLAGS`) records the padding before
/// each function. x86 does not use it: vmlinux's linker script discards it
/// (`PATCHABLE_DISCARDS`, include/asm-generic/vmlinux.lds.h) and a module keeps it
/// unread (scripts/module.lds.S); the padding itself is the 16 bytes before the
/// function's symbol, in the function's section.
pub const PATCHABLE_FUNCTION_ENTRIES: &str = "__patchable_function_entries";

/// Tables the kernel image or a module is registered through, whose entries are
/// named after `__LINE__` and `__COUNTER__`: initcalls, exports and their CRCs,
/// module info. A live patch cannot add to them or change them.
pub const REGISTRATION_TABLE_PREFIXES: &[&str] = &[
    ".initcall",
    ".con_initcall",
    ".security_initcall",
    "__ksymtab",
    "___ksymtab",
    "__kcrctab",
    "___kcrctab",
    ".modinfo",
    ".export_symbol",
];

/// Tables of other kernel subsystems that refer to functions by address (module
/// parameters, tracepoints, trace events, BPF raw tracepoints, dynamic debug,
/// syscall metadata, the kprobe blacklist, the printk index, IBT seal sites): a
/// reference from them says the function is registered somewhere, not that the
/// entry is part of its code.
pub const SUBSYSTEM_TABLE_PREFIXES: &[&str] = &[
    "__param",
    "__tracepoints",
    "_ftrace_events",
    "_ftrace_eval_map",
    "__bpf_raw_tp_map",
    "__dyndbg",
    "__syscalls_metadata",
    "_kprobe_blacklist",
    ".printk_index",
    ".ibt_endbr_seal",
];

/// Prefixes of the sections that hold code or data of their own (not entries that
/// describe other code): `.text*`, `.data*`, `.rodata*`, `.bss*`, and the text
/// sections the kernel places apart (`.sched.text`, `.noinstr.text`, ...).
pub const CODE_AND_DATA_PREFIXES: &[&str] = &[
    ".text",
    ".init.",
    ".exit.",
    ".ref.",
    ".meminit.",
    ".data",
    ".rodata",
    ".bss",
    ".noinstr.text",
    ".entry.text",
    ".sched.text",
    ".spinlock.text",
    ".cpuidle.text",
    ".kprobes.text",
    ".head.text",
    ".static_call.text",
];

/// Debug information (DWARF).
pub const DEBUG_PREFIX: &str = ".debug";

/// Whether `name` starts with one of `prefixes`.
pub fn has_prefix(name: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_special_section_is_listed_once_with_its_kernel_layout() {
        let mut names: Vec<&str> = SPECIAL_SECTIONS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SPECIAL_SECTIONS.len());
        assert_eq!(
            special_section("__jump_table").map(|s| s.entry_size),
            Some(16)
        );
        assert_eq!(
            special_section(".altinstructions").map(|s| s.kind),
            Some(EntryKind::Alternatives)
        );
        assert_eq!(
            special_section("__bug_table").map(|s| s.volatile),
            Some(&[(8, 2)][..])
        );
        for s in SPECIAL_SECTIONS {
            assert!(s.anchor < s.entry_size, "{}", s.name);
            for &(offset, size) in s.volatile {
                assert!(offset + size <= s.entry_size, "{}", s.name);
            }
        }
    }

    #[test]
    fn alternatives_of_6_1_and_6_12_are_told_apart_by_their_relocations() {
        // Three entries of each layout.
        let offsets =
            |size: u64| -> Vec<u64> { (0..3).flat_map(|i| [i * size, i * size + 4]).collect() };
        assert_eq!(
            alt_instr::layout_of(36, &offsets(12)),
            Some(alt_instr::V6_1)
        );
        assert_eq!(
            alt_instr::layout_of(42, &offsets(14)),
            Some(alt_instr::V6_3)
        );
        // One entry: the size alone decides.
        assert_eq!(alt_instr::layout_of(14, &[4, 0]), Some(alt_instr::V6_3));
        assert_eq!(alt_instr::layout_of(12, &[0, 4]), Some(alt_instr::V6_1));
        // Relocations that fit neither (a missing replacement, another stride).
        assert_eq!(alt_instr::layout_of(36, &[0, 4, 12, 24, 28]), None);
        assert_eq!(alt_instr::layout_of(48, &offsets(16)[..]), None);
        assert_eq!(alt_instr::layout_of(0, &[]), None);
        let alt = special_section(alt_instr::SECTION).unwrap();
        assert_eq!(alt.entry_size_in(42, &offsets(14)), Some(14));
        assert_eq!(alt.entry_size_in(0, &[]), Some(12));
        let jump = special_section(jump_entry::SECTION).unwrap();
        assert_eq!(jump.entry_size_in(32, &[0, 4, 8]), Some(16));
        // Both layouts keep the feature bits and the instruction lengths inside.
        for l in alt_instr::LAYOUTS {
            assert!(alt_instr::CPUID + 2 <= l.instrlen && l.replacementlen < l.size);
        }
    }

    #[test]
    fn boot_sections() {
        assert!(is_freed_after_boot(".init.text"));
        assert!(is_freed_after_boot(".exit.data"));
        assert!(!is_freed_after_boot(".head.text"));
        assert!(BOOT_ONLY_TEXT.contains(&".head.text"));
    }
}
