use object::read::elf::ElfFile64;
use object::{Object, ObjectSection};

use super::super::*;
use super::*;

fn special_resolver() -> FakeResolver {
    FakeResolver::new(&[
        ("__fentry__", None),
        ("printk", None),
        ("orig_insn", None),
        ("repl_insn", None),
        ("boot_cpu_data", None),
        ("__x86_indirect_thunk_rax", None),
        ("__SCK__my_call", Some(0)),
        ("my_key", Some(0)),
        ("__UNIQUE_ID_ddebug7", Some(0)),
        ("__tracepoint_my_event", Some(0)),
        ("__SCK__tp_func_my_event", Some(0)),
        ("patched", Some(0)),
    ])
}

fn extract_special(extra: &[&str], objname: &str) -> Result<Extracted> {
    extract_special_with(extra, objname, &[])
}

fn extract_special_with(extra: &[&str], objname: &str, new_data: &[String]) -> Result<Extracted> {
    extract_special_as(extra, objname, new_data, false)
}

fn extract_special_as(
    extra: &[&str],
    objname: &str,
    new_data: &[String],
    objtool_at_link: bool,
) -> Result<Extracted> {
    let object = compile("special.c", extra);
    let request = ExtractRequest {
        object: &object,
        tu: "test/special.o",
        objname,
        functions: &[changed("patched")],
        new_data,
        provided: &[],
        kernel_names: &std::collections::BTreeMap::new(),
        indistinct: &std::collections::BTreeSet::new(),
        objtool_at_link,
    };
    extract(&request, &special_resolver())
}

/// 6.12: objtool runs on the linked patch module and writes ORC, return, retpoline,
/// static call and call sites for all of it; the unit's copies are left to it (a
/// carried `.orc_unwind` would make it skip the module's), while the compiler's and
/// the assembler's sections still come along.
#[test]
fn objtool_sections_are_left_to_objtool_when_it_runs_at_link() {
    let ex = extract_special_as(&["-DCALL_SITES"], VMLINUX, &[], true).unwrap();
    let elf = ElfFile64::<Endianness>::parse(&*ex.object).unwrap();
    for gone in [
        ".orc_unwind_ip",
        ".orc_unwind",
        ".return_sites",
        ".retpoline_sites",
        ".static_call_sites",
        ".call_sites",
    ] {
        assert!(elf.section_by_name(gone).is_none(), "{gone} carried");
    }
    for kept in [
        "__bug_table",
        "__ex_table",
        "__jump_table",
        ".altinstructions",
        "__mcount_loc",
    ] {
        assert!(elf.section_by_name(kept).is_some(), "{kept} not carried");
    }
    // Where objtool ran on the unit alone (6.1), an unknown table of objtool's is
    // refused rather than dropped.
    let err = extract_special_as(&["-DCALL_SITES"], VMLINUX, &[], false).unwrap_err();
    assert!(err.to_string().contains(".call_sites"), "{err}");
}

#[test]
fn special_section_entries_of_the_function_come_along() {
    let ex = extract_special(&[], VMLINUX).unwrap();
    let elf = ElfFile64::<Endianness>::parse(&*ex.object).unwrap();
    let size = |name: &str| elf.section_by_name(name).map(|s| s.size());
    let new = ".text.__kstack_new_patched";
    // One entry each: `other`'s are left behind.
    for (section, bytes) in [
        ("__bug_table", 12),
        ("__ex_table", 12),
        ("__jump_table", 16),
        (".altinstructions", 24),
        (".static_call_sites", 8),
        (".retpoline_sites", 4),
        (".return_sites", 4),
        (".smp_locks", 4),
        (".parainstructions", 16),
        (".orc_unwind_ip", 8),
        (".orc_unwind", 12),
        ("__mcount_loc", 8),
        // `jmp %l[t_no]` and `call repl_insn`, not `other`'s replacements.
        (".altinstr_replacement", 10),
    ] {
        assert_eq!(size(section), Some(bytes), "{section}");
    }
    let r = relocs(&elf, "__bug_table");
    assert_eq!(r[0], (0, new.into(), 0x14));
    // bug_entry::file: the file name, in whichever string section gcc put it.
    let strings = elf.section_by_name(&r[1].1).unwrap().data().unwrap();
    let file = &strings[r[1].2 as usize..];
    assert!(file.starts_with(fixture("special.c").to_str().unwrap().as_bytes()));
    assert_eq!(
        relocs(&elf, "__jump_table"),
        [
            (0, new.into(), 0x1f),
            (4, new.into(), 0x50),
            (8, ".klp.sym.vmlinux.my_key,0".into(), 1)
        ]
    );
    assert_eq!(
        relocs(&elf, ".altinstructions"),
        [
            (0, new.into(), 0x24),
            (4, ".altinstr_replacement".into(), 0),
            (12, new.into(), 0x2c),
            (16, ".altinstr_replacement".into(), 5)
        ]
    );
    assert_eq!(
        relocs(&elf, ".altinstr_replacement"),
        [(1, new.into(), 0x28), (6, "repl_insn".into(), -4)]
    );
    // The static_cpu_has() snippet: test, jnz back, jmp back.
    let aux = relocs(&elf, ".altinstr_aux");
    assert_eq!(
        aux,
        [
            (2, "boot_cpu_data".into(), 7),
            (9, new.into(), 0x25),
            (14, new.into(), 0x28)
        ]
    );
    let jmp = relocs(&elf, new);
    assert!(jmp.contains(&(0x25, ".altinstr_aux".into(), -4)), "{jmp:?}");
    assert_eq!(
        relocs(&elf, ".static_call_sites"),
        [
            (0, new.into(), 0x31),
            (4, ".klp.sym.vmlinux.__SCK__my_call,0".into(), 0)
        ]
    );
    assert_eq!(
        relocs(&elf, ".orc_unwind_ip"),
        [(0, new.into(), 0x31), (4, new.into(), 0x3f)]
    );
    assert_eq!(relocs(&elf, ".parainstructions"), [(0, new.into(), 0x3f)]);
    assert_eq!(relocs(&elf, ".return_sites"), [(0, new.into(), 0x41)]);
}

#[test]
fn unknown_special_sections_are_refused() {
    let err = extract_special(&["-DWEIRD"], VMLINUX).unwrap_err();
    assert!(
        matches!(&err, KlpError::UnknownSpecialSection { section, .. } if section == ".weird_table"),
        "{err}"
    );
}

#[test]
fn module_targets_refuse_livepatch_relocations_in_special_sections() {
    let err = extract_special(&[], "ext4").unwrap_err();
    assert!(
        matches!(&err, KlpError::ModuleSpecialRelocation { symbol, .. } if symbol == ".klp.sym.ext4.my_key,0"),
        "{err}"
    );
}

/// A module's own tracepoint in patched code: its jump label and its static call
/// site are left out (the site stays off), with a note; in vmlinux they resolve.
#[test]
fn a_modules_own_tracepoint_is_left_off_with_a_note() {
    let ex = extract_special(&["-DTRACEPOINT"], "ib_core").unwrap();
    let elf = ElfFile64::<Endianness>::parse(&*ex.object).unwrap();
    for section in ["__jump_table", ".static_call_sites"] {
        let size = elf.section_by_name(section).map_or(0, |s| s.size());
        assert_eq!(size, 0, "{section} of the module's tracepoint was carried");
    }
    assert!(
        ex.notes
            .iter()
            .any(|n| n.contains("tracepoint my_event") && n.contains("module ib_core")),
        "{:?}",
        ex.notes
    );
    let ex = extract_special(&["-DTRACEPOINT"], VMLINUX).unwrap();
    let elf = ElfFile64::<Endianness>::parse(&*ex.object).unwrap();
    assert_eq!(
        elf.section_by_name("__jump_table").map(|s| s.size()),
        Some(16)
    );
    assert!(ex.notes.is_empty(), "{:?}", ex.notes);
}

#[test]
fn module_debug_sites_are_left_at_their_default_with_a_note() {
    let ex = extract_special(&["-DDDEBUG"], "ext4").unwrap();
    let elf = ElfFile64::<Endianness>::parse(&*ex.object).unwrap();
    let jump = elf.section_by_name("__jump_table").map_or(0, |s| s.size());
    assert_eq!(jump, 0, "the debug site's jump label was carried");
    assert!(
        ex.notes
            .iter()
            .any(|n| n.contains("pr_debug") && n.contains("module ext4")),
        "{:?}",
        ex.notes
    );
    // A call site the patch adds has its descriptor, key and all, in the patch
    // module: its jump label is carried.
    let ex = extract_special_with(&["-DDDEBUG"], "ext4", &["__UNIQUE_ID_ddebug7".into()]).unwrap();
    let elf = ElfFile64::<Endianness>::parse(&*ex.object).unwrap();
    assert_eq!(
        elf.section_by_name("__jump_table").map(|s| s.size()),
        Some(16)
    );
    assert!(ex.notes.is_empty(), "{:?}", ex.notes);
    // In vmlinux the key resolves like any other.
    let ex = extract_special(&["-DDDEBUG"], VMLINUX);
    assert!(
        ex.as_ref().is_ok_and(|e| e.notes.is_empty()),
        "{:?}",
        ex.map(|e| e.notes)
    );
}
