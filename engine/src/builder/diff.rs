//! The ELF differ: compares the "pre" and "post" relocatable objects of one
//! translation unit and says which functions changed, which are new, and what must
//! be refused.
//!
//! Both objects are x86-64 `.o` files compiled with the kernel's flags plus
//! `-ffunction-sections -fdata-sections`, so (nearly) every function and data object
//! has its own section. The differ
//!
//! 1. correlates functions and data objects by name with compiler suffixes removed
//!    (`.constprop.N`, `.isra.N`, `.part.N`, numbered static locals, the counter of
//!    `__UNIQUE_ID_*`), pairing same-named candidates by content and by who refers
//!    to them; `foo.cold` is a part of `foo`, not a function of its own;
//! 2. compares a pair by its bytes with every relocated field zeroed, and by what each
//!    relocation refers to (a correlated symbol, the contents of a string literal),
//!    never by offsets that the layout of the rest of the object decides;
//! 3. counts the special-section entries that point into a function (`__bug_table`,
//!    `__jump_table`, `.altinstructions`, ORC, ...) as part of it, except a WARN's or
//!    BUG's line number;
//! 4. refuses what a live patch cannot do: changed data, changed `__init` code, and
//!    changed functions that ftrace cannot redirect (no `call __fentry__`).
//!
//! When in doubt a function is "changed": a false "unchanged" would ship a patch that
//! silently misses part of the fix. The result is a [`DiffReport`] whose findings
//! carry stable keys (`function:changed:foo`, `refuse:data:bar`) so that callers can
//! filter and tests can snapshot it.
//!
//! Not here: building the output object ([`super::klp`]), which uses
//! [`special_entries`] to copy the entries that belong to a function, and resolving
//! symbols against the running kernel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use object::elf;
use object::read::elf::ElfFile64;
use object::{
    Endianness, Object, ObjectKind, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget,
    SectionFlags, SectionIndex, SymbolIndex, SymbolKind, SymbolSection,
};
use serde::Serialize;

// ---------------------------------------------------------------------------------
// Kernel facts
// ---------------------------------------------------------------------------------

/// The ftrace entry hook that `-pg -mfentry` calls first thing in every traceable
/// function; livepatch redirects a function through it (kernel/livepatch/patch.c,
/// `klp_patch_func` via `ftrace_location`).
const FENTRY: &str = "__fentry__";

/// Furthest offset from a function's start of the `call __fentry__` relocation: the
/// `e8` opcode sits at 0 so the field at 1, or after a 4-byte `endbr64` with
/// CONFIG_X86_KERNEL_IBT (arch/x86/include/asm/ibt.h).
const FENTRY_MAX_RELOC_OFFSET: u64 = 5;

/// `struct bug_entry` with CONFIG_GENERIC_BUG_RELATIVE_POINTERS and
/// CONFIG_DEBUG_BUGVERBOSE (include/asm-generic/bug.h; emitted by `_BUG_FLAGS` in
/// arch/x86/include/asm/bug.h): `int bug_addr_disp; int file_disp; unsigned short
/// line; unsigned short flags;`.
pub const BUG_ENTRY_SIZE: u64 = 12;
/// Where `bug_entry::line` is: a `__LINE__` that moved is no change.
const BUG_ENTRY_LINE: (u64, u64) = (8, 2);

/// `struct exception_table_entry { int insn, fixup, data; }`
/// (arch/x86/include/asm/extable.h).
pub const EXCEPTION_TABLE_ENTRY_SIZE: u64 = 12;

/// `struct jump_entry { s32 code; s32 target; long key; }` with
/// CONFIG_HAVE_ARCH_JUMP_LABEL_RELATIVE (include/linux/jump_label.h; emitted by
/// `JUMP_TABLE_ENTRY` in arch/x86/include/asm/jump_label.h).
pub const JUMP_ENTRY_SIZE: u64 = 16;

/// `struct alt_instr { s32 instr_offset; s32 repl_offset; u16 cpuid; u8 instrlen;
/// u8 replacementlen; } __packed` (arch/x86/include/asm/alternative.h, 6.1).
pub const ALT_INSTR_SIZE: u64 = 12;
/// `alt_instr::repl_offset`: points into `.altinstr_replacement`.
const ALT_INSTR_REPL_OFFSET: u64 = 4;
/// `alt_instr::replacementlen`: how many bytes of `.altinstr_replacement` it uses.
const ALT_INSTR_REPLACEMENTLEN: u64 = 11;
/// Where the replacement instructions of `.altinstructions` live
/// (arch/x86/include/asm/alternative.h, `ALTERNATIVE`).
const ALTINSTR_REPLACEMENT: &str = ".altinstr_replacement";

/// `struct static_call_site { s32 addr; s32 key; }`
/// (include/linux/static_call_types.h).
pub const STATIC_CALL_SITE_SIZE: u64 = 8;

/// `.return_sites`, `.retpoline_sites`: an `s32` per site, written by objtool and
/// read by `apply_returns()` / `apply_retpolines()` (arch/x86/kernel/alternative.c).
pub const SITE_OFFSET_SIZE: u64 = 4;

/// `.smp_locks`: an `s32` per `lock` prefix (`LOCK_PREFIX_HERE` in
/// arch/x86/include/asm/alternative.h).
pub const SMP_LOCK_SIZE: u64 = 4;

/// `.orc_unwind_ip`: an `int` per ORC entry (arch/x86/kernel/unwind_orc.c,
/// `__start_orc_unwind_ip`).
pub const ORC_IP_SIZE: u64 = 4;
/// `.orc_unwind`: `struct orc_entry` (arch/x86/include/asm/orc_types.h), 6 bytes
/// packed, one per `.orc_unwind_ip` entry, in the same order; it has no relocations.
pub const ORC_ENTRY_SIZE: u64 = 6;
/// The table parallel to `.orc_unwind_ip`.
const ORC_UNWIND: &str = ".orc_unwind";

/// `__mcount_loc`: an `unsigned long` address of each fentry call
/// (kernel/trace/ftrace.c, `ftrace_process_locs`).
pub const MCOUNT_LOC_SIZE: u64 = 8;

/// `struct paravirt_patch_site { u8 *instr; u8 type; u8 len; }`, padded to 16
/// (arch/x86/include/asm/paravirt_types.h).
pub const PARAVIRT_PATCH_SITE_SIZE: u64 = 16;

/// `__dyndbg`: the `struct _ddebug` of each pr_debug()/dev_dbg() call site
/// (include/linux/dynamic_debug.h): four pointers, then `unsigned int lineno:18`.
const DYNDBG_SECTION: &str = "__dyndbg";
/// Byte offset of the word holding `_ddebug::lineno`.
const DDEBUG_LINENO_OFFSET: usize = 32;
/// `_ddebug::lineno` is the low 18 bits of that word.
const DDEBUG_LINENO_MASK: u32 = (1 << 18) - 1;

/// Sections of code that runs only while booting and is freed after
/// (include/linux/init.h `__init`; `__exit` code of built-in objects is discarded
/// at link time; arch/x86/kernel/head64.c `__head`).
const INIT_TEXT_SECTIONS: &[&str] = &[".init.text", ".exit.text", ".head.text"];

/// Prefixes of data sections freed after boot (include/linux/init.h `__initdata`,
/// `__initconst`, `__setup`, `__exitdata`).
const INIT_DATA_PREFIXES: &[&str] = &[".init.", ".exit."];

/// Allocated sections that are neither code nor data a patched function uses:
/// build-time annotations (`.discard.*`, read by objtool and dropped by the linker),
/// initcall and export tables (their entries are named after `__LINE__` and
/// `__COUNTER__`, and a live patch cannot add or change either), module info.
const IGNORED_PREFIXES: &[&str] = &[
    ".discard",
    ".initcall",
    ".con_initcall",
    ".security_initcall",
    "__ksymtab",
    "___ksymtab",
    "__kcrctab",
    ".modinfo",
    ".note",
    ".export_symbol",
];

/// A special section whose entries point into functions and belong to them.
struct SpecialSection {
    name: &'static str,
    entry_size: u64,
    /// Offset in an entry of the relocated field that points into the function.
    anchor: u64,
    /// Byte ranges of an entry that take no part in the comparison.
    ignored: &'static [(u64, u64)],
}

/// The special sections of x86-64 6.1 objects (after objtool), with the kernel
/// structure that defines their entries (see the constants above).
const SPECIAL_SECTIONS: &[SpecialSection] = &[
    SpecialSection {
        name: "__bug_table",
        entry_size: BUG_ENTRY_SIZE,
        anchor: 0,
        ignored: &[BUG_ENTRY_LINE],
    },
    SpecialSection {
        name: "__ex_table",
        entry_size: EXCEPTION_TABLE_ENTRY_SIZE,
        anchor: 0,
        ignored: &[],
    },
    SpecialSection {
        name: "__jump_table",
        entry_size: JUMP_ENTRY_SIZE,
        anchor: 0,
        ignored: &[],
    },
    SpecialSection {
        name: ".altinstructions",
        entry_size: ALT_INSTR_SIZE,
        anchor: 0,
        ignored: &[],
    },
    SpecialSection {
        name: ".static_call_sites",
        entry_size: STATIC_CALL_SITE_SIZE,
        anchor: 0,
        ignored: &[],
    },
    SpecialSection {
        name: ".return_sites",
        entry_size: SITE_OFFSET_SIZE,
        anchor: 0,
        ignored: &[],
    },
    SpecialSection {
        name: ".retpoline_sites",
        entry_size: SITE_OFFSET_SIZE,
        anchor: 0,
        ignored: &[],
    },
    SpecialSection {
        name: ".smp_locks",
        entry_size: SMP_LOCK_SIZE,
        anchor: 0,
        ignored: &[],
    },
    SpecialSection {
        name: ".orc_unwind_ip",
        entry_size: ORC_IP_SIZE,
        anchor: 0,
        ignored: &[],
    },
    SpecialSection {
        name: "__mcount_loc",
        entry_size: MCOUNT_LOC_SIZE,
        anchor: 0,
        ignored: &[],
    },
    SpecialSection {
        name: ".parainstructions",
        entry_size: PARAVIRT_PATCH_SITE_SIZE,
        anchor: 0,
        ignored: &[],
    },
];

// ---------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------

/// Which object an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Pre,
    Post,
    /// The object given to [`special_entries`].
    Object,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Pre => "pre",
            Side::Post => "post",
            Side::Object => "the",
        })
    }
}

/// Why two objects could not be compared.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{side} object is not a readable ELF object: {source}")]
    Parse {
        side: Side,
        #[source]
        source: object::Error,
    },
    #[error("{side} object is {found}; expected an x86-64 relocatable object (.o)")]
    Unsupported { side: Side, found: String },
    #[error("{side} object, section {section}: {detail}")]
    Malformed {
        side: Side,
        section: String,
        detail: String,
    },
}

/// What the caller allows beyond the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiffOptions {
    /// Data objects whose change a hook of the patch handles (by pre or post
    /// symbol name, or the name without compiler suffixes): reported as changed but
    /// not refused.
    pub allowed_data: BTreeSet<String>,
}

/// How a function or data object differs between pre and post.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Unchanged,
    Changed,
    /// Only in post.
    New,
    /// Only in pre.
    Removed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unchanged => "unchanged",
            Status::Changed => "changed",
            Status::New => "new",
            Status::Removed => "removed",
        }
    }
}

/// One symbol as it is in one of the objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SymbolInfo {
    /// The symbol's name in that object (for pre: its name in vmlinux).
    pub name: String,
    /// The section that holds it.
    pub section: String,
    /// `static`: not visible outside the translation unit.
    pub local: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub weak: bool,
    /// Its size in bytes.
    pub size: u64,
}

/// One function of the translation unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FunctionReport {
    /// `function:<status>:<name>`.
    pub key: String,
    pub status: Status,
    /// The post name, or the pre name of a removed function.
    pub name: String,
    /// What differs (empty unless changed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre: Option<SymbolInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post: Option<SymbolInfo>,
    /// The post `.cold` parts that GCC split off the function: they go with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub post_parts: Vec<SymbolInfo>,
}

/// One data object of the translation unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataReport {
    /// `data:<status>:<name>`.
    pub key: String,
    pub status: Status,
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre: Option<SymbolInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post: Option<SymbolInfo>,
    /// Changed, and [`DiffOptions::allowed_data`] says a hook handles it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allowed: bool,
}

/// Why a patch cannot be built from this diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RefusalKind {
    /// Initialised data, read-only data or a `.bss` object's size changed.
    Data,
    /// `__init` code or data changed: it ran at boot and was freed.
    Init,
    /// A changed function has no fentry call: ftrace cannot redirect it.
    Notrace,
}

impl RefusalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Data => "data",
            RefusalKind::Init => "init",
            RefusalKind::Notrace => "notrace",
        }
    }
}

/// A finding that refuses the patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// `refuse:<kind>:<symbol>`.
    pub key: String,
    pub kind: RefusalKind,
    pub symbol: String,
    /// What changed.
    pub reason: String,
    /// What to do instead.
    pub remedy: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.symbol, self.reason, self.remedy)
    }
}

/// The findings of one pre/post comparison, sorted by key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffReport {
    pub functions: Vec<FunctionReport>,
    pub data: Vec<DataReport>,
    pub refusals: Vec<Refusal>,
}

impl DiffReport {
    /// No finding refuses the patch.
    pub fn is_patchable(&self) -> bool {
        self.refusals.is_empty()
    }

    /// The functions a patch must carry: changed and new ones.
    pub fn patched_functions(&self) -> impl Iterator<Item = &FunctionReport> {
        self.functions
            .iter()
            .filter(|f| matches!(f.status, Status::Changed | Status::New))
    }

    /// Every finding's key, in report order.
    pub fn keys(&self) -> Vec<&str> {
        let functions = self.functions.iter().map(|f| f.key.as_str());
        let data = self.data.iter().map(|d| d.key.as_str());
        let refusals = self.refusals.iter().map(|r| r.key.as_str());
        functions.chain(data).chain(refusals).collect()
    }

    /// Whether a finding with this key exists.
    pub fn has(&self, key: &str) -> bool {
        self.keys().contains(&key)
    }
}

/// An entry of a special section that belongs to a function: the output object
/// must carry it with the function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecialEntry {
    /// The special section (`__bug_table`, `.orc_unwind`, `.altinstr_replacement`).
    pub section: String,
    pub section_index: usize,
    /// Where the entry starts in that section.
    pub offset: u64,
    /// Its size: the struct's size, or for `.altinstr_replacement` the length of
    /// the replacement instructions.
    pub size: u64,
    /// The offset in the function's section that the entry refers to.
    pub target: u64,
}

/// Compares the pre and post objects of one translation unit.
pub fn diff_objects(pre: &[u8], post: &[u8], opts: &DiffOptions) -> Result<DiffReport, DiffError> {
    let pre_file = parse(pre, Side::Pre)?;
    let post_file = parse(post, Side::Post)?;
    let pre = Elf::load(&pre_file, Side::Pre)?;
    let post = Elf::load(&post_file, Side::Post)?;
    Ok(Differ::new(&pre, &post).report(opts))
}

/// The special-section entries that point into `function_section` of `obj`, in
/// section order, then entry order. `.altinstructions` entries are followed by the
/// `.altinstr_replacement` bytes they use and `.orc_unwind_ip` entries by their
/// `.orc_unwind` entry.
pub fn special_entries<'data>(
    obj: &impl Object<'data>,
    function_section: SectionIndex,
) -> Result<Vec<SpecialEntry>, DiffError> {
    let elf = Elf::load(obj, Side::Object)?;
    let mut out = Vec::new();
    for special in elf.specials.iter() {
        if special.target_section != function_section.0 {
            continue;
        }
        for part in &special.parts {
            out.push(SpecialEntry {
                section: elf.sections[part.section].name.clone(),
                section_index: part.section,
                offset: part.offset,
                size: part.size,
                target: special.target,
            });
        }
    }
    Ok(out)
}

fn parse(data: &[u8], side: Side) -> Result<ElfFile64<'_, Endianness>, DiffError> {
    let file =
        ElfFile64::<Endianness>::parse(data).map_err(|source| DiffError::Parse { side, source })?;
    if file.architecture() != object::Architecture::X86_64 || file.kind() != ObjectKind::Relocatable
    {
        return Err(DiffError::Unsupported {
            side,
            found: format!("{:?} {:?}", file.architecture(), file.kind()),
        });
    }
    Ok(file)
}

// ---------------------------------------------------------------------------------
// The object model
// ---------------------------------------------------------------------------------

/// What a section holds, as far as the differ cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Text,
    InitText,
    Data,
    InitData,
    /// String literals (`SHF_MERGE | SHF_STRINGS`, `.rodata.str1.*`): compared by
    /// contents where referred to.
    Strings,
    /// One of [`SPECIAL_SECTIONS`], `.orc_unwind` or `.altinstr_replacement`.
    Special,
    /// Not allocated, or in [`IGNORED_PREFIXES`].
    Ignored,
}

#[derive(Debug)]
struct Sec<'d> {
    name: String,
    class: Class,
    data: &'d [u8],
    size: u64,
    nobits: bool,
    /// For `SHF_MERGE` constants (`.rodata.cst16`): the size of one constant.
    merge_entsize: Option<u64>,
    /// `SHF_EXECINSTR`.
    exec: bool,
    /// Sorted by offset.
    relocs: Vec<Rel>,
    /// The places in this section that relocations through its section symbol
    /// refer to, sorted: where anonymous pieces of it begin.
    entry_points: Vec<i64>,
}

#[derive(Debug, Clone, Copy)]
struct Rel {
    offset: u64,
    r_type: elf::RelocationType,
    addend: i64,
    sym: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SymKind {
    Func,
    Object,
    Section,
    Other,
}

#[derive(Debug, Clone)]
struct Sym {
    name: String,
    kind: SymKind,
    section: Option<usize>,
    value: u64,
    size: u64,
    local: bool,
    weak: bool,
}

/// An entry of a special section, with what it refers to.
#[derive(Debug, Clone)]
struct Special {
    /// The entry itself, then what it drags along (replacement code, ORC entry).
    parts: Vec<Piece>,
    target_section: usize,
    target: u64,
    /// Byte ranges of the entry (first part) left out of the comparison.
    ignored: &'static [(u64, u64)],
}

#[derive(Debug, Clone, Copy)]
struct Piece {
    section: usize,
    offset: u64,
    size: u64,
}

#[derive(Debug)]
struct Elf<'d> {
    side: Side,
    sections: Vec<Sec<'d>>,
    symbols: Vec<Sym>,
    /// Per section: its function and object symbols, by address.
    by_section: Vec<Vec<usize>>,
    specials: Vec<Special>,
    /// Per function section: indices into `specials`.
    specials_by_target: HashMap<usize, Vec<usize>>,
}

impl<'d> Elf<'d> {
    fn load(obj: &impl Object<'d>, side: Side) -> Result<Self, DiffError> {
        let count = obj.sections().map(|s| s.index().0 + 1).max().unwrap_or(0);
        let mut sections: Vec<Sec<'d>> = (0..count)
            .map(|_| Sec {
                name: String::new(),
                class: Class::Ignored,
                data: &[],
                size: 0,
                nobits: false,
                merge_entsize: None,
                exec: false,
                relocs: Vec::new(),
                entry_points: Vec::new(),
            })
            .collect();
        for section in obj.sections() {
            let name = section.name().unwrap_or("").to_owned();
            let (sh_type, sh_flags) = match section.flags() {
                SectionFlags::Elf { sh_type, sh_flags } => (sh_type, sh_flags.0),
                _ => (elf::SHT_NULL, 0),
            };
            let nobits = sh_type == elf::SHT_NOBITS;
            let class = classify(&name, sh_flags);
            let malformed = |detail: String| DiffError::Malformed {
                side,
                section: name.clone(),
                detail,
            };
            let data = if nobits || class == Class::Ignored {
                &[][..]
            } else {
                section.data().map_err(|e| malformed(e.to_string()))?
            };
            let mut relocs = Vec::new();
            if class != Class::Ignored {
                for (offset, rel) in section.relocations() {
                    let RelocationFlags::Elf { r_type } = rel.flags() else {
                        return Err(malformed("a relocation that is not ELF".into()));
                    };
                    let sym = match rel.target() {
                        RelocationTarget::Symbol(SymbolIndex(i)) => Some(i),
                        RelocationTarget::Absolute => None,
                        other => {
                            return Err(malformed(format!("relocation target {other:?}")));
                        }
                    };
                    let size = field_size(r_type);
                    if offset + size > data.len() as u64 {
                        return Err(malformed(format!(
                            "relocation at {offset:#x} is outside the section"
                        )));
                    }
                    relocs.push(Rel {
                        offset,
                        r_type,
                        addend: rel.addend(),
                        sym,
                    });
                }
                relocs.sort_by_key(|r| r.offset);
            }
            let merge_entsize = (sh_flags & elf::SHF_MERGE.0 != 0
                && sh_flags & elf::SHF_STRINGS.0 == 0)
                .then(|| merge_constant_size(&name))
                .flatten();
            sections[section.index().0] = Sec {
                name,
                class,
                data,
                size: section.size(),
                nobits,
                merge_entsize,
                exec: sh_flags & elf::SHF_EXECINSTR.0 != 0,
                relocs,
                entry_points: Vec::new(),
            };
        }

        let mut symbols: Vec<Sym> = Vec::new();
        for symbol in obj.symbols() {
            let index = symbol.index().0;
            if symbols.len() <= index {
                symbols.resize(
                    index + 1,
                    Sym {
                        name: String::new(),
                        kind: SymKind::Other,
                        section: None,
                        value: 0,
                        size: 0,
                        local: true,
                        weak: false,
                    },
                );
            }
            let section = match symbol.section() {
                SymbolSection::Section(SectionIndex(i)) if i < sections.len() => Some(i),
                _ => None,
            };
            let kind = match symbol.kind() {
                SymbolKind::Text => SymKind::Func,
                SymbolKind::Data => SymKind::Object,
                SymbolKind::Section => SymKind::Section,
                _ => SymKind::Other,
            };
            let name = match (kind, section) {
                (SymKind::Section, Some(s)) => sections[s].name.clone(),
                _ => symbol.name().unwrap_or("").to_owned(),
            };
            symbols[index] = Sym {
                name,
                kind,
                section,
                value: symbol.address(),
                size: symbol.size(),
                local: symbol.is_local(),
                weak: symbol.is_weak(),
            };
        }
        for section in &sections {
            if let Some(bad) = section
                .relocs
                .iter()
                .find(|r| r.sym.is_some_and(|s| s >= symbols.len()))
            {
                return Err(DiffError::Malformed {
                    side,
                    section: section.name.clone(),
                    detail: format!("relocation at {:#x} names no symbol", bad.offset),
                });
            }
        }

        let mut entry_points: Vec<Vec<i64>> = vec![Vec::new(); sections.len()];
        for section in &sections {
            for rel in &section.relocs {
                let Some(sym) = rel.sym.map(|i| &symbols[i]) else {
                    continue;
                };
                if let (SymKind::Section, Some(target)) = (sym.kind, sym.section) {
                    let slack = if section.exec && is_pc_relative(rel.r_type) {
                        4
                    } else {
                        0
                    };
                    entry_points[target].push(rel.addend + slack);
                }
            }
        }
        for (section, mut points) in sections.iter_mut().zip(entry_points) {
            points.sort_unstable();
            points.dedup();
            section.entry_points = points;
        }

        let mut by_section: Vec<Vec<usize>> = vec![Vec::new(); sections.len()];
        for (i, sym) in symbols.iter().enumerate() {
            if let (Some(s), SymKind::Func | SymKind::Object) = (sym.section, sym.kind) {
                by_section[s].push(i);
            }
        }
        for list in &mut by_section {
            // Aliases: the larger symbol first, then the global one, so that lookups
            // are deterministic.
            list.sort_by_key(|&i| {
                let s = &symbols[i];
                (s.value, std::cmp::Reverse(s.size), s.local, i)
            });
        }

        let mut elf = Elf {
            side,
            sections,
            symbols,
            by_section,
            specials: Vec::new(),
            specials_by_target: HashMap::new(),
        };
        elf.index_specials()?;
        Ok(elf)
    }

    fn section_named(&self, name: &str) -> Option<usize> {
        self.sections.iter().position(|s| s.name == name)
    }

    /// Finds the entries of every special section and what they point at.
    fn index_specials(&mut self) -> Result<(), DiffError> {
        let orc = self.section_named(ORC_UNWIND);
        let replacement = self.section_named(ALTINSTR_REPLACEMENT);
        let mut specials = Vec::new();
        for (index, sec) in self.sections.iter().enumerate() {
            let Some(kind) = SPECIAL_SECTIONS.iter().find(|k| k.name == sec.name) else {
                continue;
            };
            let malformed = |detail: String| DiffError::Malformed {
                side: self.side,
                section: sec.name.clone(),
                detail,
            };
            if sec.size % kind.entry_size != 0 {
                return Err(malformed(format!(
                    "size {:#x} is not a multiple of the {}-byte entry this kernel \
                     version uses",
                    sec.size, kind.entry_size
                )));
            }
            for rel in sec.relocs.iter() {
                if rel.offset % kind.entry_size != kind.anchor {
                    continue;
                }
                let entry = rel.offset - kind.anchor;
                let Some((target_section, target)) = self.data_reloc_target(rel) else {
                    continue;
                };
                let mut parts = vec![Piece {
                    section: index,
                    offset: entry,
                    size: kind.entry_size,
                }];
                if kind.name == ".orc_unwind_ip" {
                    let orc = orc.ok_or_else(|| malformed(format!("{ORC_UNWIND} is missing")))?;
                    let offset = entry / ORC_IP_SIZE * ORC_ENTRY_SIZE;
                    if offset + ORC_ENTRY_SIZE > self.sections[orc].size {
                        return Err(malformed(format!(
                            "entry {entry:#x} has no {ORC_UNWIND} entry"
                        )));
                    }
                    parts.push(Piece {
                        section: orc,
                        offset,
                        size: ORC_ENTRY_SIZE,
                    });
                }
                if kind.name == ".altinstructions" {
                    parts.extend(self.alt_replacement(sec, entry, replacement));
                }
                specials.push(Special {
                    parts,
                    target_section,
                    target,
                    ignored: kind.ignored,
                });
            }
        }
        for (i, special) in specials.iter().enumerate() {
            self.specials_by_target
                .entry(special.target_section)
                .or_default()
                .push(i);
        }
        self.specials = specials;
        Ok(())
    }

    /// The replacement instructions that an `.altinstructions` entry uses.
    fn alt_replacement(&self, sec: &Sec<'_>, entry: u64, repl: Option<usize>) -> Option<Piece> {
        let repl = repl?;
        let rel = sec
            .relocs
            .iter()
            .find(|r| r.offset == entry + ALT_INSTR_REPL_OFFSET)?;
        let (section, offset) = self.data_reloc_target(rel)?;
        let len = *sec
            .data
            .get(usize::try_from(entry + ALT_INSTR_REPLACEMENTLEN).ok()?)?;
        (section == repl && len > 0).then_some(Piece {
            section,
            offset,
            size: u64::from(len),
        })
    }

    /// Section and offset that a relocation in data (`.long sym - .`, `.quad sym`)
    /// points at: there the addend is exact.
    fn data_reloc_target(&self, rel: &Rel) -> Option<(usize, u64)> {
        let sym = &self.symbols[rel.sym?];
        let section = sym.section?;
        let offset = u64::try_from(sym.value as i64 + rel.addend).ok()?;
        Some((section, offset))
    }

    /// The function or object symbol of `section` that holds offset `at`. A
    /// PC-relative field in code is followed by up to 4 bytes of immediate, so
    /// `slack` lets the target start up to that many bytes after `at`; failing
    /// both, the symbol that ends at `at`.
    fn symbol_at(&self, section: usize, at: i64, slack: i64) -> Option<usize> {
        let list = &self.by_section[section];
        let holds = |&i: &usize| {
            let s = &self.symbols[i];
            let start = s.value as i64;
            start <= at && at < start + (s.size.max(1) as i64)
        };
        if let Some(&i) = list.iter().rev().find(|i| holds(i)) {
            return Some(i);
        }
        (1..=slack)
            .find_map(|k| {
                list.iter()
                    .copied()
                    .find(|&i| self.symbols[i].value as i64 == at + k)
            })
            // One past the end of an array (`arr + ARRAY_SIZE(arr)`).
            .or_else(|| {
                list.iter()
                    .copied()
                    .find(|&i| (self.symbols[i].value + self.symbols[i].size) as i64 == at)
            })
    }

    fn relocs_in(&self, section: usize, start: u64, end: u64) -> &[Rel] {
        let relocs = &self.sections[section].relocs;
        let lo = relocs.partition_point(|r| r.offset < start);
        let hi = relocs.partition_point(|r| r.offset < end);
        &relocs[lo..hi]
    }
}

fn classify(name: &str, sh_flags: u64) -> Class {
    let has = |flag: object::elf::SectionFlags| sh_flags & flag.0 != 0;
    if !has(elf::SHF_ALLOC) || IGNORED_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Class::Ignored;
    }
    if SPECIAL_SECTIONS.iter().any(|s| s.name == name)
        || name == ORC_UNWIND
        || name == ALTINSTR_REPLACEMENT
    {
        return Class::Special;
    }
    if has(elf::SHF_EXECINSTR) {
        return if INIT_TEXT_SECTIONS.contains(&name) {
            Class::InitText
        } else {
            Class::Text
        };
    }
    if has(elf::SHF_MERGE) && has(elf::SHF_STRINGS) {
        return Class::Strings;
    }
    if INIT_DATA_PREFIXES.iter().any(|p| name.starts_with(p)) {
        Class::InitData
    } else {
        Class::Data
    }
}

/// GCC names its merged constant pools `.rodata.cst<size>`.
fn merge_constant_size(name: &str) -> Option<u64> {
    name.rsplit_once(".cst")
        .and_then(|(_, n)| n.parse().ok())
        .filter(|&n| n > 0)
}

/// Bytes that a relocation of this type overwrites.
fn field_size(r_type: elf::RelocationType) -> u64 {
    match r_type {
        elf::R_X86_64_64 | elf::R_X86_64_PC64 => 8,
        elf::R_X86_64_PC32
        | elf::R_X86_64_PLT32
        | elf::R_X86_64_32
        | elf::R_X86_64_32S
        | elf::R_X86_64_GOTPCREL
        | elf::R_X86_64_GOTPCRELX
        | elf::R_X86_64_REX_GOTPCRELX => 4,
        elf::R_X86_64_16 | elf::R_X86_64_PC16 => 2,
        elf::R_X86_64_8 | elf::R_X86_64_PC8 => 1,
        // Unknown: nothing masked, so the raw bytes take part in the comparison.
        _ => 0,
    }
}

/// PC-relative relocations in code are relative to the end of the field, not of
/// the instruction: their addend is the target minus 4 (minus any immediate that
/// follows the field).
fn is_pc_relative(r_type: elf::RelocationType) -> bool {
    matches!(r_type, elf::R_X86_64_PC32 | elf::R_X86_64_PLT32)
}

// ---------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------

/// The name with GCC's numbering removed: `foo.constprop.0` → `foo.constprop`,
/// `count.3` → `count`, `__UNIQUE_ID_ddebug123` → `__UNIQUE_ID_ddebug`. The
/// clone kind stays: `foo.isra` and `foo.constprop` have different calling
/// conventions and are different functions.
pub fn normalize_name(name: &str) -> String {
    let mut parts = name.split('.');
    let mut base = parts.next().unwrap_or("").to_owned();
    // `__UNIQUE_ID(prefix)` appends `__COUNTER__` (include/linux/compiler-gcc.h).
    if base.starts_with("__UNIQUE_ID_") {
        base.truncate(base.trim_end_matches(|c: char| c.is_ascii_digit()).len());
    }
    for part in parts {
        if !part.is_empty() && !part.bytes().all(|b| b.is_ascii_digit()) {
            base.push('.');
            base.push_str(part);
        }
    }
    base
}

/// `foo.cold` or `foo.isra.0.cold.3` → `foo` / `foo.isra.0`: the part of a function
/// that GCC moved to `.text.unlikely`, entered by a jump from the function.
fn cold_parent(name: &str) -> Option<&str> {
    if let Some(parent) = name.strip_suffix(".cold") {
        return Some(parent);
    }
    let (rest, number) = name.rsplit_once('.')?;
    if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
        return rest.strip_suffix(".cold");
    }
    None
}

// ---------------------------------------------------------------------------------
// Entities: the functions and data objects that the report is about
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Function,
    Data,
}

#[derive(Debug, Clone)]
struct Entity {
    sym: usize,
    kind: Kind,
    norm: String,
    /// `.cold` parts of a function.
    parts: Vec<usize>,
}

fn entities(elf: &Elf<'_>) -> Vec<Entity> {
    let mut out: Vec<Entity> = Vec::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    let mut cold = Vec::new();
    for (i, sym) in elf.symbols.iter().enumerate() {
        let Some(section) = sym.section else { continue };
        let class = elf.sections[section].class;
        let kind = match (sym.kind, class) {
            (SymKind::Func, Class::Text | Class::InitText) if sym.size > 0 => Kind::Function,
            (SymKind::Object, Class::Data | Class::InitData) => Kind::Data,
            _ => continue,
        };
        if kind == Kind::Function && cold_parent(&sym.name).is_some() {
            cold.push(i);
            continue;
        }
        by_name.insert(&sym.name, out.len());
        out.push(Entity {
            sym: i,
            kind,
            norm: normalize_name(&sym.name),
            parts: Vec::new(),
        });
    }
    for i in cold {
        let name = &elf.symbols[i].name;
        match cold_parent(name).and_then(|p| by_name.get(p)) {
            Some(&parent) if out[parent].kind == Kind::Function => out[parent].parts.push(i),
            // An orphan: compare it as a function of its own.
            _ => out.push(Entity {
                sym: i,
                kind: Kind::Function,
                norm: normalize_name(name),
                parts: Vec::new(),
            }),
        }
    }
    out
}

/// What a relocation refers to, as a string that is equal in pre and post exactly
/// when the referent is the same.
struct Namer<'a> {
    /// Correlated names of entity symbols; other symbols go by their own name.
    names: &'a HashMap<usize, String>,
    /// Whether anonymous sections are identified by their contents (a digest).
    digest_anonymous: bool,
}

/// The piece of a section that one entity, or one special entry, occupies: masked
/// bytes and normalised relocations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Shape {
    size: u64,
    bytes: Vec<u8>,
    relocs: Vec<NormRel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct NormRel {
    /// From the start of the piece.
    offset: u64,
    r_type: elf::RelocationType,
    target: String,
    /// The field is the operand of a `call`, `jmp` or `jcc`: the target is a callee.
    branch: bool,
}

impl<'d> Elf<'d> {
    fn shape(&self, piece: Piece, code: bool, namer: &Namer<'_>) -> Shape {
        let sec = &self.sections[piece.section];
        let bytes = if sec.nobits {
            Vec::new()
        } else {
            let start = usize::try_from(piece.offset).unwrap_or(usize::MAX);
            let end = usize::try_from(piece.offset + piece.size).unwrap_or(usize::MAX);
            sec.data
                .get(start..end)
                .map(<[u8]>::to_vec)
                .unwrap_or_default()
        };
        let mut shape = Shape {
            size: piece.size,
            bytes,
            relocs: Vec::new(),
        };
        for rel in self.relocs_in(piece.section, piece.offset, piece.offset + piece.size) {
            let offset = rel.offset - piece.offset;
            let branch = code && is_pc_relative(rel.r_type) && is_branch(&shape.bytes, offset);
            mask(&mut shape.bytes, offset, field_size(rel.r_type));
            shape.relocs.push(NormRel {
                offset,
                r_type: rel.r_type,
                target: self.describe(rel, code, namer),
                branch,
            });
        }
        shape
    }

    /// Names the referent of a relocation: a symbol by its correlated name plus
    /// the addend relative to it, a string literal by its contents.
    fn describe(&self, rel: &Rel, code: bool, namer: &Namer<'_>) -> String {
        // The place referred to: a PC-relative field in code is relative to its own
        // end, so its addend is 4 short (more if an immediate follows the field).
        let slack = if code && is_pc_relative(rel.r_type) {
            4
        } else {
            0
        };
        let at = rel.addend + slack;
        let Some(sym_index) = rel.sym else {
            return format!("absolute{}", signed_hex(at));
        };
        let sym = &self.symbols[sym_index];
        // A string literal reached through a local label (`.LC5`, as GCC emits for
        // the file names of `__bug_table` entries): its contents, not its label,
        // whose number shifts with every other literal of the file.
        if let Some(section) = sym.section
            && self.sections[section].class == Class::Strings
            && let Some(text) = c_string_at(self.sections[section].data, sym.value as i64 + at)
        {
            return format!("\"{}\"", text.escape_ascii());
        }
        let (SymKind::Section, Some(section)) = (sym.kind, sym.section) else {
            return format!("{}{}", self.name_of(sym_index, namer), signed_hex(at));
        };
        // A reference through a section symbol: what is at that place?
        let sec = &self.sections[section];
        if sec.class == Class::Strings
            && let Some(text) = c_string_at(sec.data, at)
        {
            return format!("\"{}\"", text.escape_ascii());
        }
        if let Some(target) = self.symbol_at(section, at, slack) {
            let relative = at - self.symbols[target].value as i64;
            return format!("{}{}", self.name_of(target, namer), signed_hex(relative));
        }
        if let (Some(size), Ok(start)) = (sec.merge_entsize, usize::try_from(at)) {
            let end = start.saturating_add(size as usize);
            if let Some(bytes) = sec.data.get(start..end) {
                return format!("constant {}", hex(bytes));
            }
        }
        let name = normalize_section(&sec.name);
        if !namer.digest_anonymous {
            return format!("{name}{}", signed_hex(at));
        }
        let inner = Namer {
            names: namer.names,
            digest_anonymous: false,
        };
        if sec.exec {
            // Anonymous code: the snippets that `static_cpu_has()` puts in
            // `.altinstr_aux`, each entered from one place and jumping back into
            // its function. A snippet runs from where it is entered to where the
            // next one is, and is what it contains, wherever it sits.
            let start = u64::try_from(at).unwrap_or(0).min(sec.size);
            let end = sec
                .entry_points
                .iter()
                .copied()
                .find(|&p| p > at)
                .map_or(sec.size, |p| u64::try_from(p).unwrap_or(sec.size));
            let snippet = Piece {
                section,
                offset: start,
                size: end.max(start) - start,
            };
            let digest = fnv1a(format!("{:?}", self.shape(snippet, true, &inner)).as_bytes());
            return format!("{name} snippet [{digest:08x}]");
        }
        // Anonymous data: by offset, and by the whole section's contents so that
        // any change in it counts.
        let whole = Piece {
            section,
            offset: 0,
            size: sec.size,
        };
        let digest = fnv1a(format!("{:?}", self.shape(whole, false, &inner)).as_bytes());
        format!("{name}{} [{digest:08x}]", signed_hex(at))
    }

    fn name_of(&self, sym: usize, namer: &Namer<'_>) -> String {
        match namer.names.get(&sym) {
            Some(name) => name.clone(),
            None => self.symbols[sym].name.clone(),
        }
    }

    /// The function's or object's own piece of its section.
    fn piece(&self, sym: usize) -> Piece {
        let s = &self.symbols[sym];
        Piece {
            section: s.section.unwrap_or(0),
            offset: s.value,
            size: s.size,
        }
    }

    /// The special entries that point into a symbol's piece. An entry at the very
    /// end belongs to it too (the ORC terminator) unless another symbol starts there.
    fn specials_of(&self, sym: usize) -> Vec<&Special> {
        let s = &self.symbols[sym];
        let Some(section) = s.section else {
            return Vec::new();
        };
        let end = s.value + s.size;
        let next_starts_at_end = self.by_section[section]
            .iter()
            .any(|&i| i != sym && self.symbols[i].value == end);
        self.specials_by_target
            .get(&section)
            .into_iter()
            .flatten()
            .map(|&i| &self.specials[i])
            .filter(|sp| {
                (s.value..end).contains(&sp.target) || (sp.target == end && !next_starts_at_end)
            })
            .collect()
    }

    fn has_fentry(&self, sym: usize) -> bool {
        let s = &self.symbols[sym];
        let Some(section) = s.section else {
            return false;
        };
        self.relocs_in(section, s.value, s.value + FENTRY_MAX_RELOC_OFFSET + 1)
            .iter()
            .any(|r| {
                is_pc_relative(r.r_type) && r.sym.is_some_and(|i| self.symbols[i].name == FENTRY)
            })
    }

    /// The symbol that a relocation refers to, through a section symbol if need be.
    fn referent(&self, rel: &Rel, code: bool) -> Option<usize> {
        let sym = &self.symbols[rel.sym?];
        match (sym.kind, sym.section) {
            (SymKind::Section, Some(section)) => {
                let slack = if code && is_pc_relative(rel.r_type) {
                    4
                } else {
                    0
                };
                self.symbol_at(section, rel.addend + slack, slack)
            }
            _ => rel.sym,
        }
    }
}

/// Whether the rel32 field at `offset` is the operand of `call` (`e8`), `jmp`
/// (`e9`) or a conditional jump (`0f 80`..`0f 8f`).
fn is_branch(bytes: &[u8], offset: u64) -> bool {
    let Some(at) = usize::try_from(offset).ok().filter(|&at| at >= 1) else {
        return false;
    };
    match bytes.get(at - 1) {
        Some(0xe8 | 0xe9) => true,
        Some(0x80..=0x8f) => at >= 2 && bytes.get(at - 2) == Some(&0x0f),
        _ => false,
    }
}

fn mask(bytes: &mut [u8], offset: u64, size: u64) {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let end = usize::try_from(offset + size)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    bytes[start..end].fill(0);
}

fn c_string_at(data: &[u8], at: i64) -> Option<&[u8]> {
    let rest = data.get(usize::try_from(at).ok()?..)?;
    let len = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..len])
}

/// A section's name without the numbering GCC put in it (`.rodata.__func__.12`).
fn normalize_section(name: &str) -> String {
    name.split('.')
        .filter(|part| part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(".")
}

fn signed_hex(value: i64) -> String {
    match value {
        0 => String::new(),
        v if v < 0 => format!("-{:#x}", v.unsigned_abs()),
        v => format!("+{v:#x}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// FNV-1a, 32 bits: a digest that is the same in every run and Rust version, for
/// reasons that the snapshots keep.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h: u32, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

// ---------------------------------------------------------------------------------
// Correlation and comparison
// ---------------------------------------------------------------------------------

/// Everything the comparison of one entity looks at.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Fingerprint {
    /// Where the entity lives, beyond its own name: `.sched.text`, `.bss`, ...
    placement: String,
    main: Shape,
    parts: Vec<Shape>,
    /// The special-section entries that point into the function, sorted.
    specials: Vec<EntryPrint>,
}

/// One special-section entry as the comparison sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct EntryPrint {
    section: String,
    /// 0: the function itself, i: its cold part i.
    piece: usize,
    /// Where the entry points, from the start of that piece.
    at: u64,
    /// The entry, then what it drags along.
    shapes: Vec<Shape>,
}

struct Differ<'a, 'd> {
    pre: &'a Elf<'d>,
    post: &'a Elf<'d>,
    pre_entities: Vec<Entity>,
    post_entities: Vec<Entity>,
}

/// A correlated pair (or a lone entity) by indices into the entity lists.
type Pair = (Option<usize>, Option<usize>);

impl<'a, 'd> Differ<'a, 'd> {
    fn new(pre: &'a Elf<'d>, post: &'a Elf<'d>) -> Self {
        Differ {
            pre,
            post,
            pre_entities: entities(pre),
            post_entities: entities(post),
        }
    }

    fn report(&self, opts: &DiffOptions) -> DiffReport {
        let pairs = self.correlate();

        // Correlated names: what references to either side of a pair compare as.
        let mut pre_names = HashMap::new();
        let mut post_names = HashMap::new();
        for &(a, b) in &pairs {
            match (a, b) {
                (Some(a), Some(b)) => {
                    let (a, b) = (&self.pre_entities[a], &self.post_entities[b]);
                    let name = self.post.symbols[b.sym].name.clone();
                    pre_names.insert(a.sym, name.clone());
                    post_names.insert(b.sym, name);
                    for (i, &part) in b.parts.iter().enumerate() {
                        let name = self.post.symbols[part].name.clone();
                        if let Some(&pre_part) = a.parts.get(i) {
                            pre_names.insert(pre_part, name.clone());
                        }
                        post_names.insert(part, name);
                    }
                    for &pre_part in a.parts.iter().skip(b.parts.len()) {
                        let name = format!("{} (removed)", self.pre.symbols[pre_part].name);
                        pre_names.insert(pre_part, name);
                    }
                }
                (Some(a), None) => {
                    let a = &self.pre_entities[a];
                    for &sym in std::iter::once(&a.sym).chain(&a.parts) {
                        let name = format!("{} (removed)", self.pre.symbols[sym].name);
                        pre_names.insert(sym, name);
                    }
                }
                (None, Some(b)) => {
                    let b = &self.post_entities[b];
                    for &sym in std::iter::once(&b.sym).chain(&b.parts) {
                        let name = format!("{} (new)", self.post.symbols[sym].name);
                        post_names.insert(sym, name);
                    }
                }
                (None, None) => {}
            }
        }
        let pre_namer = Namer {
            names: &pre_names,
            digest_anonymous: true,
        };
        let post_namer = Namer {
            names: &post_names,
            digest_anonymous: true,
        };

        let mut functions = Vec::new();
        let mut data = Vec::new();
        let mut refusals = Vec::new();
        for (a, b) in pairs {
            let a = a.map(|i| &self.pre_entities[i]);
            let b = b.map(|i| &self.post_entities[i]);
            let Some(kind) = a.or(b).map(|e| e.kind) else {
                continue;
            };
            let (status, reasons) = match (a, b) {
                (Some(a), Some(b)) => {
                    let reasons = compare(
                        kind,
                        &self.pre.fingerprint(a, &pre_namer),
                        &self.post.fingerprint(b, &post_namer),
                        self.pre.symbols[a.sym].local != self.post.symbols[b.sym].local,
                    );
                    if reasons.is_empty() {
                        (Status::Unchanged, reasons)
                    } else {
                        (Status::Changed, reasons)
                    }
                }
                (Some(_), None) => (Status::Removed, Vec::new()),
                (None, _) => (Status::New, Vec::new()),
            };
            let pre = a.map(|e| self.pre.info(e.sym));
            let post = b.map(|e| self.post.info(e.sym));
            let name = match (&post, &pre) {
                (Some(info), _) | (None, Some(info)) => info.name.clone(),
                (None, None) => continue,
            };
            let key = |what: &str| format!("{what}:{}:{name}", status.as_str());
            match kind {
                Kind::Function => {
                    refusals.extend(self.function_refusal(a, b, status, &name));
                    functions.push(FunctionReport {
                        key: key("function"),
                        status,
                        name: name.clone(),
                        reasons,
                        pre,
                        post,
                        post_parts: b
                            .map(|e| e.parts.iter().map(|&p| self.post.info(p)).collect())
                            .unwrap_or_default(),
                    });
                }
                Kind::Data => {
                    let allowed = status == Status::Changed && {
                        let names = [a, b]
                            .into_iter()
                            .flatten()
                            .map(|e| e.norm.clone())
                            .chain(pre.iter().map(|i| i.name.clone()))
                            .chain(post.iter().map(|i| i.name.clone()));
                        names.into_iter().any(|n| opts.allowed_data.contains(&n))
                    };
                    if status == Status::Changed && !allowed {
                        refusals.push(self.data_refusal(a, &name, &reasons));
                    }
                    data.push(DataReport {
                        key: key("data"),
                        status,
                        name: name.clone(),
                        reasons,
                        pre,
                        post,
                        allowed,
                    });
                }
            }
        }
        functions.sort_by(|x, y| x.key.cmp(&y.key));
        data.sort_by(|x, y| x.key.cmp(&y.key));
        refusals.sort_by(|x, y| x.key.cmp(&y.key));
        DiffReport {
            functions,
            data,
            refusals,
        }
    }

    fn function_refusal(
        &self,
        pre: Option<&Entity>,
        post: Option<&Entity>,
        status: Status,
        name: &str,
    ) -> Option<Refusal> {
        if !matches!(status, Status::Changed | Status::New) {
            return None;
        }
        let in_init = |elf: &Elf<'_>, e: Option<&Entity>| {
            e.and_then(|e| elf.symbols[e.sym].section)
                .is_some_and(|s| elf.sections[s].class == Class::InitText)
        };
        if in_init(self.pre, pre) || in_init(self.post, post) {
            return Some(refusal(
                RefusalKind::Init,
                name,
                format!("__init function {}", status.as_str()),
                "__init code has already run at boot and was freed; patch the runtime \
                 path that uses its results instead",
            ));
        }
        // Livepatch redirects the old function (pre, as in vmlinux) through its
        // fentry call; a new function is only called, never redirected.
        let pre = pre?;
        (!self.pre.has_fentry(pre.sym)).then(|| {
            refusal(
                RefusalKind::Notrace,
                name,
                format!("changed, and has no call to {FENTRY} (notrace or noinstr)"),
                "it cannot be live-patched: not traceable; patch its traceable callers \
                 instead",
            )
        })
    }

    fn data_refusal(&self, pre: Option<&Entity>, name: &str, reasons: &[String]) -> Refusal {
        let init = pre
            .and_then(|e| self.pre.symbols[e.sym].section)
            .is_some_and(|s| self.pre.sections[s].class == Class::InitData);
        if init {
            return refusal(
                RefusalKind::Init,
                name,
                format!("__initdata object changed ({})", reasons.join(", ")),
                "__init data was used at boot and freed; patch the runtime path instead",
            );
        }
        refusal(
            RefusalKind::Data,
            name,
            format!("data object changed ({})", reasons.join(", ")),
            "the running kernel keeps its old contents: leave the object as it is and \
             use a shadow variable or a hook (see kmod/include), then allow it with \
             DiffOptions::allowed_data",
        )
    }

    /// Pairs pre and post entities: by normalised name; among several candidates,
    /// first by identical contents and referrers, then referrers, then contents,
    /// then order of appearance.
    fn correlate(&self) -> Vec<Pair> {
        // (kind, normalised name) → (pre candidates, post candidates).
        type Candidates = (Vec<usize>, Vec<usize>);
        let mut groups: BTreeMap<(Kind, &str), Candidates> = BTreeMap::new();
        for (i, e) in self.pre_entities.iter().enumerate() {
            groups.entry((e.kind, &e.norm)).or_default().0.push(i);
        }
        for (i, e) in self.post_entities.iter().enumerate() {
            groups.entry((e.kind, &e.norm)).or_default().1.push(i);
        }
        let ambiguous = groups.values().any(|(a, b)| a.len() > 1 || b.len() > 1);
        let (pre_keys, post_keys) = if ambiguous {
            (self.pairing_keys(true), self.pairing_keys(false))
        } else {
            (Vec::new(), Vec::new())
        };

        let mut pairs = Vec::new();
        for (pre, post) in groups.into_values() {
            if pre.len() <= 1 && post.len() <= 1 {
                pairs.push((pre.first().copied(), post.first().copied()));
                continue;
            }
            let mut pre_left: Vec<Option<usize>> = pre.into_iter().map(Some).collect();
            let mut post_left: Vec<Option<usize>> = post.into_iter().map(Some).collect();
            type Stage = fn(&PairingKey, &PairingKey) -> bool;
            let stages: [Stage; 4] = [
                |x, y| x == y,
                |x, y| x.referrers == y.referrers,
                |x, y| x.content == y.content,
                |_, _| true,
            ];
            for same in stages {
                for slot in pre_left.iter_mut() {
                    let Some(a) = *slot else { continue };
                    let found = post_left
                        .iter_mut()
                        .find(|b| b.is_some_and(|b| same(&pre_keys[a], &post_keys[b])));
                    if let Some(b) = found {
                        pairs.push((Some(a), b.take()));
                        *slot = None;
                    }
                }
            }
            pairs.extend(pre_left.into_iter().flatten().map(|a| (Some(a), None)));
            pairs.extend(post_left.into_iter().flatten().map(|b| (None, Some(b))));
        }
        pairs
    }

    /// Per entity of one side: its contents with references by normalised names,
    /// and the normalised names of the functions and objects that refer to it.
    fn pairing_keys(&self, pre: bool) -> Vec<PairingKey> {
        let (elf, list) = if pre {
            (self.pre, &self.pre_entities)
        } else {
            (self.post, &self.post_entities)
        };
        let mut names = HashMap::new();
        let mut owner = HashMap::new();
        for (i, e) in list.iter().enumerate() {
            for &sym in std::iter::once(&e.sym).chain(&e.parts) {
                names.insert(sym, e.norm.clone());
                owner.insert(sym, i);
            }
        }
        let namer = Namer {
            names: &names,
            digest_anonymous: false,
        };
        let mut referrers: Vec<BTreeSet<String>> = vec![BTreeSet::new(); list.len()];
        for e in list {
            for &sym in std::iter::once(&e.sym).chain(&e.parts) {
                let piece = elf.piece(sym);
                let code = e.kind == Kind::Function;
                for rel in elf.relocs_in(piece.section, piece.offset, piece.offset + piece.size) {
                    if let Some(&target) = elf.referent(rel, code).and_then(|t| owner.get(&t)) {
                        referrers[target].insert(e.norm.clone());
                    }
                }
            }
        }
        list.iter()
            .zip(referrers)
            .map(|(e, referrers)| PairingKey {
                content: fnv1a(format!("{:?}", elf.fingerprint(e, &namer)).as_bytes()),
                referrers,
            })
            .collect()
    }
}

#[derive(Debug, PartialEq, Eq)]
struct PairingKey {
    content: u32,
    referrers: BTreeSet<String>,
}

fn refusal(kind: RefusalKind, name: &str, reason: String, remedy: &str) -> Refusal {
    Refusal {
        key: format!("refuse:{}:{name}", kind.as_str()),
        kind,
        symbol: name.to_owned(),
        reason,
        remedy: remedy.to_owned(),
    }
}

impl<'d> Elf<'d> {
    fn info(&self, sym: usize) -> SymbolInfo {
        let s = &self.symbols[sym];
        SymbolInfo {
            name: s.name.clone(),
            section: s
                .section
                .map(|i| self.sections[i].name.clone())
                .unwrap_or_default(),
            local: s.local,
            weak: s.weak,
            size: s.size,
        }
    }

    fn fingerprint(&self, e: &Entity, namer: &Namer<'_>) -> Fingerprint {
        let code = e.kind == Kind::Function;
        let mut main = self.shape(self.piece(e.sym), code, namer);
        let section = self.symbols[e.sym].section.map(|s| &self.sections[s]);
        if section.is_some_and(|s| s.name == DYNDBG_SECTION) {
            mask_ddebug_lineno(&mut main.bytes);
        }
        let mut specials = Vec::new();
        for (piece, &sym) in std::iter::once(&e.sym).chain(&e.parts).enumerate() {
            let start = self.symbols[sym].value;
            for special in self.specials_of(sym) {
                let mut shapes: Vec<Shape> = special
                    .parts
                    .iter()
                    .map(|&piece| {
                        let code = self.sections[piece.section].class == Class::Special
                            && self.sections[piece.section].name == ALTINSTR_REPLACEMENT;
                        self.shape(piece, code, namer)
                    })
                    .collect();
                if let Some(entry) = shapes.first_mut() {
                    for &(offset, size) in special.ignored {
                        mask(&mut entry.bytes, offset, size);
                    }
                }
                specials.push(EntryPrint {
                    section: self.sections[special.parts[0].section].name.clone(),
                    piece,
                    at: special.target - start,
                    shapes,
                });
            }
        }
        specials.sort();
        Fingerprint {
            placement: section
                .map(|s| placement(&s.name, &self.symbols[e.sym].name, s.nobits))
                .unwrap_or_default(),
            main,
            parts: e
                .parts
                .iter()
                .map(|&p| self.shape(self.piece(p), true, namer))
                .collect(),
            specials,
        }
    }
}

/// A section name with the symbol's own name taken out: `.text.foo` → `.text.*`,
/// `.bss.counter.3` → `.bss.*`, `.sched.text` stays; `nobits` as `(nobits)`.
fn placement(section: &str, symbol: &str, nobits: bool) -> String {
    let mut out = match section.strip_suffix(symbol) {
        Some(prefix) if prefix.ends_with('.') => format!("{prefix}*"),
        _ => normalize_section(section),
    };
    if nobits {
        out.push_str(" (nobits)");
    }
    out
}

impl PartialOrd for Shape {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Shape {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.size, &self.bytes, &self.relocs).cmp(&(other.size, &other.bytes, &other.relocs))
    }
}

fn mask_ddebug_lineno(bytes: &mut [u8]) {
    let Some(word) = bytes.get_mut(DDEBUG_LINENO_OFFSET..DDEBUG_LINENO_OFFSET + 4) else {
        return;
    };
    let mut value = [0u8; 4];
    value.copy_from_slice(word);
    let masked = u32::from_le_bytes(value) & !DDEBUG_LINENO_MASK;
    word.copy_from_slice(&masked.to_le_bytes());
}

/// The same things are referred to, from other places.
const RELOCATIONS_MOVED: &str = "relocations moved";

/// At most this many relocation reasons per piece: enough to say what changed.
const MAX_RELOC_REASONS: usize = 4;

/// Why two fingerprints differ; empty when they do not.
fn compare(
    kind: Kind,
    pre: &Fingerprint,
    post: &Fingerprint,
    binding_changed: bool,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if binding_changed {
        reasons.push("binding (static or not)".to_owned());
    }
    if pre.placement != post.placement {
        reasons.push(format!("section {} -> {}", pre.placement, post.placement));
    }
    let what = match kind {
        Kind::Function => "code",
        Kind::Data => "contents",
    };
    shape_reasons("", what, &pre.main, &post.main, &mut reasons);
    if pre.parts.len() != post.parts.len() {
        reasons.push(format!(
            "cold parts {} -> {}",
            pre.parts.len(),
            post.parts.len()
        ));
    } else {
        for (a, b) in pre.parts.iter().zip(&post.parts) {
            shape_reasons("cold part: ", "code", a, b, &mut reasons);
        }
    }
    // Entries move with the code they point into: they are worth a reason only
    // when nothing else explains the change.
    if pre.specials != post.specials && reasons.is_empty() {
        let sections: BTreeSet<&String> = pre
            .specials
            .iter()
            .chain(&post.specials)
            .map(|entry| &entry.section)
            .collect();
        for section in sections {
            let select = |list: &'_ [EntryPrint]| -> Vec<EntryPrint> {
                list.iter()
                    .filter(|e| &e.section == section)
                    .cloned()
                    .collect()
            };
            let (a, b) = (select(&pre.specials), select(&post.specials));
            if a.len() != b.len() {
                reasons.push(format!("{section}: {} -> {} entries", a.len(), b.len()));
            } else if a != b {
                reasons.push(format!("{section}: entries differ"));
            }
        }
    }
    reasons
}

fn shape_reasons(prefix: &str, what: &str, pre: &Shape, post: &Shape, reasons: &mut Vec<String>) {
    if pre.size != post.size {
        reasons.push(format!("{prefix}size {:#x} -> {:#x}", pre.size, post.size));
    }
    let bytes_differ = pre.bytes != post.bytes;
    if bytes_differ {
        reasons.push(format!("{prefix}{what}"));
    }
    let mut found = reloc_reasons(&pre.relocs, &post.relocs);
    // Relocations that only moved say nothing that a change of the bytes has not.
    if bytes_differ {
        found.retain(|r| r != RELOCATIONS_MOVED);
    }
    if found.len() > MAX_RELOC_REASONS {
        let more = found.len() - MAX_RELOC_REASONS;
        found.truncate(MAX_RELOC_REASONS);
        found.push(format!("{more} more relocation differences"));
    }
    reasons.extend(found.into_iter().map(|r| format!("{prefix}{r}")));
}

/// Relocation differences in words: "relocation target X -> Y" when the same
/// places refer to other things, else what is referred to in addition or no more.
fn reloc_reasons(pre: &[NormRel], post: &[NormRel]) -> Vec<String> {
    if pre == post {
        return Vec::new();
    }
    let same_places = pre.len() == post.len()
        && pre
            .iter()
            .zip(post)
            .all(|(a, b)| a.offset == b.offset && a.r_type == b.r_type);
    let mut out = Vec::new();
    let mut push = |s: String| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    if same_places {
        for (a, b) in pre.iter().zip(post) {
            if a.target != b.target {
                push(format!(
                    "relocation target {} -> {}",
                    short(&a.target),
                    short(&b.target)
                ));
            }
        }
        return out;
    }
    let (before, after) = (count_targets(pre), count_targets(post));
    for (&(target, call), &n) in &after {
        if before.get(&(target, call)).copied().unwrap_or(0) < n {
            push(if call {
                format!("new callee {}", short(target))
            } else {
                format!("new reference {}", short(target))
            });
        }
    }
    for (&(target, call), &n) in &before {
        if after.get(&(target, call)).copied().unwrap_or(0) < n {
            push(if call {
                format!("no longer calls {}", short(target))
            } else {
                format!("no longer references {}", short(target))
            });
        }
    }
    if out.is_empty() {
        out.push(RELOCATIONS_MOVED.to_owned());
    }
    out
}

/// How often each target is referred to, by branches (`true`) and otherwise.
fn count_targets(list: &[NormRel]) -> BTreeMap<(&str, bool), usize> {
    let mut m = BTreeMap::new();
    for r in list {
        *m.entry((r.target.as_str(), r.branch)).or_default() += 1;
    }
    m
}

/// Long string literals shortened for a reason line.
fn short(target: &str) -> String {
    const MAX: usize = 60;
    if target.chars().count() <= MAX {
        target.to_owned()
    } else {
        let cut: String = target.chars().take(MAX).collect();
        format!("{cut}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_gcc_numbering_but_keep_clone_kinds() {
        assert_eq!(normalize_name("foo.constprop.0"), "foo.constprop");
        assert_eq!(normalize_name("foo.constprop.1"), "foo.constprop");
        assert_eq!(normalize_name("foo.isra.0"), "foo.isra");
        assert_eq!(normalize_name("foo.part.3"), "foo.part");
        assert_eq!(normalize_name("foo.lto_priv.0"), "foo.lto_priv");
        assert_eq!(normalize_name("count.2"), "count");
        assert_eq!(normalize_name("__func__.432"), "__func__");
        assert_eq!(
            normalize_name("__UNIQUE_ID_ddebug123"),
            "__UNIQUE_ID_ddebug"
        );
        assert_eq!(
            normalize_name("__UNIQUE_ID___addressable_foo567.12"),
            "__UNIQUE_ID___addressable_foo"
        );
        assert_eq!(normalize_name("plain"), "plain");
        assert_eq!(normalize_name("x86_64_thing2"), "x86_64_thing2");
    }

    #[test]
    fn cold_parts_name_their_parent() {
        assert_eq!(cold_parent("foo.cold"), Some("foo"));
        assert_eq!(cold_parent("foo.isra.0.cold"), Some("foo.isra.0"));
        assert_eq!(cold_parent("foo.cold.7"), Some("foo"));
        assert_eq!(cold_parent("foo.constprop.0"), None);
        assert_eq!(cold_parent("cold"), None);
    }

    #[test]
    fn sections_are_classified_by_flags_and_kernel_names() {
        let ax = elf::SHF_ALLOC.0 | elf::SHF_EXECINSTR.0;
        let a = elf::SHF_ALLOC.0;
        let ams = a | elf::SHF_MERGE.0 | elf::SHF_STRINGS.0;
        assert_eq!(classify(".text.foo", ax), Class::Text);
        assert_eq!(classify(".sched.text", ax), Class::Text);
        assert_eq!(classify(".init.text", ax), Class::InitText);
        assert_eq!(classify(".rodata.foo.str1.8", ams), Class::Strings);
        assert_eq!(classify(".init.rodata", a), Class::InitData);
        assert_eq!(classify("__bug_table", a), Class::Special);
        assert_eq!(classify(".altinstr_replacement", ax), Class::Special);
        assert_eq!(classify(".discard.addressable", a), Class::Ignored);
        assert_eq!(classify(".initcall5.init", a), Class::Ignored);
        assert_eq!(classify(".debug_info", 0), Class::Ignored);
        assert_eq!(classify(".data..read_mostly", a), Class::Data);
    }

    #[test]
    fn placement_hides_the_symbols_own_name() {
        assert_eq!(placement(".text.foo", "foo", false), ".text.*");
        assert_eq!(
            placement(".text.unlikely.foo", "foo", false),
            ".text.unlikely.*"
        );
        assert_eq!(
            placement(".bss.count.3", "count.3", true),
            ".bss.* (nobits)"
        );
        assert_eq!(placement(".sched.text", "schedule", false), ".sched.text");
        assert_eq!(
            placement(".data..once", "__already_done.3", false),
            ".data..once"
        );
        assert_eq!(normalize_section(".rodata.__func__.12"), ".rodata.__func__");
    }

    fn rel(offset: u64, r_type: elf::RelocationType, target: &str) -> NormRel {
        NormRel {
            offset,
            r_type,
            target: target.to_owned(),
            branch: r_type == elf::R_X86_64_PLT32,
        }
    }

    #[test]
    fn branches_are_recognised_by_their_opcode() {
        let code = [
            0xe8, 0, 0, 0, 0, 0x0f, 0x85, 0, 0, 0, 0, 0x48, 0x8b, 0x05, 0, 0, 0, 0,
        ];
        assert!(is_branch(&code, 1));
        assert!(is_branch(&code, 7));
        assert!(!is_branch(&code, 14));
        assert!(!is_branch(&code, 0));
    }

    #[test]
    fn relocation_reasons_name_what_changed() {
        let call = elf::R_X86_64_PLT32;
        let abs = elf::R_X86_64_32S;
        let pre = [rel(1, call, "__fentry__"), rel(9, abs, "\"a\"")];
        let swapped = [rel(1, call, "__fentry__"), rel(9, abs, "\"b\"")];
        assert_eq!(
            reloc_reasons(&pre, &swapped),
            ["relocation target \"a\" -> \"b\""]
        );
        let more = [
            rel(1, call, "__fentry__"),
            rel(9, abs, "\"a\""),
            rel(14, call, "helper"),
        ];
        assert_eq!(reloc_reasons(&pre, &more), ["new callee helper"]);
        assert_eq!(reloc_reasons(&more, &pre), ["no longer calls helper"]);
        assert!(reloc_reasons(&pre, &pre).is_empty());
    }

    #[test]
    fn ddebug_line_numbers_are_masked() {
        let mut bytes = vec![0u8; 40];
        bytes[32..36].copy_from_slice(&(0x00ab_c000u32 | 1234).to_le_bytes());
        mask_ddebug_lineno(&mut bytes);
        let word = u32::from_le_bytes([bytes[32], bytes[33], bytes[34], bytes[35]]);
        assert_eq!(word, 0x00ab_c000 & !DDEBUG_LINENO_MASK);
    }
}
