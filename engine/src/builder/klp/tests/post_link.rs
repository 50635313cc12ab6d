use object::read::elf::{ElfFile64, SectionHeader as _};
use object::{Object, ObjectSection, ObjectSymbol};

use super::*;
use object::read::elf::{Rela as _, Sym as _};

/// The raw entries of relocation section `name`: (offset, symbol name, addend).
fn relas_of(elf: &ElfFile64<'_>, data: &[u8], name: &str) -> Vec<(u64, String, i64)> {
    let endian = Endianness::Little;
    let section = elf.section_by_name(name).unwrap();
    let (relas, _) = section
        .elf_section_header()
        .rela(endian, data)
        .unwrap()
        .unwrap();
    let symbols = elf.elf_symbol_table();
    relas
        .iter()
        .map(|r| {
            let index = object::SymbolIndex(r.r_sym(endian, false) as usize);
            let sym = symbols.symbol(index).unwrap();
            let sym_name = symbols.symbol_name(endian, sym).unwrap();
            (
                r.r_offset(endian),
                String::from_utf8_lossy(sym_name).into_owned(),
                r.r_addend(endian),
            )
        })
        .collect()
}

fn linked_module() -> Vec<u8> {
    linked_module_of(VMLINUX)
}

fn linked_module_of(objname: &str) -> Vec<u8> {
    let object = compile("basic.c", &[]);
    let request = ExtractRequest {
        object: &object,
        tu: "test/basic.o",
        objname,
        functions: &[changed("patched")],
        new_data: &[],
        provided: &[],
        kernel_names: &std::collections::BTreeMap::new(),
        indistinct: &std::collections::BTreeSet::new(),
        objtool_at_link: false,
    };
    let resolver = FakeResolver::new(&[
        ("__fentry__", None),
        ("printk", None),
        ("report_failure", None),
        ("saved_command_line", Some(0)),
        ("counter", Some(0)),
        ("helper", Some(1)),
        ("shared_table", Some(0)),
        ("once_a", Some(0)),
        ("callee", Some(0)),
        ("patched", Some(0)),
    ]);
    let extracted = extract(&request, &resolver).unwrap();
    link(&[&compile_plain("template.c"), &extracted.object])
}

#[test]
fn post_link_moves_livepatch_relocations_into_klp_rela_sections() {
    let ko = linked_module();
    let before = ElfFile64::<Endianness>::parse(&*ko).unwrap();
    // Counted from the raw tables: the reader's own view of relocations treats
    // allocated relocation sections differently.
    let count = |elf: &ElfFile64<'_>| -> usize {
        elf.sections()
            .filter(|s| s.elf_section_header().sh_type(Endianness::Little) == elf::SHT_RELA)
            .map(|s| s.size() as usize / 24)
            .sum()
    };
    let total_before = count(&before);

    let done = post_link(&ko).unwrap();
    let text = ".text.__kstack_new_patched";
    let klp_text = format!(".klp.rela.vmlinux.{text}");
    let mut names: Vec<(&str, &str)> = done
        .sections
        .iter()
        .map(|s| (s.name.as_str(), s.target.as_str()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            (klp_text.as_str(), text),
            (
                ".klp.rela.vmlinux..text.unlikely.patched",
                ".text.unlikely.patched"
            )
        ]
    );
    assert_eq!(
        done.symbols,
        [
            ".klp.sym.vmlinux.callee,0",
            ".klp.sym.vmlinux.counter,0",
            ".klp.sym.vmlinux.helper,1",
            ".klp.sym.vmlinux.once_a,0",
            ".klp.sym.vmlinux.saved_command_line,0",
            ".klp.sym.vmlinux.shared_table,0",
        ]
    );

    let elf = ElfFile64::<Endianness>::parse(&*done.ko).unwrap();
    let endian = Endianness::Little;
    assert_eq!(count(&elf), total_before, "no relocation lost or added");
    let klp = elf.section_by_name(&klp_text).unwrap();
    let header = klp.elf_section_header();
    assert_eq!(header.sh_type(endian), elf::SHT_RELA);
    let flags = header.sh_flags(endian).0;
    assert_eq!(
        flags,
        SHF_RELA_LIVEPATCH | elf::SHF_ALLOC.0 | elf::SHF_INFO_LINK.0
    );
    let target = elf.section_by_name(text).unwrap();
    assert_eq!(header.sh_info(endian) as usize, target.index().0);
    let symtab = elf.section_by_name(".symtab").unwrap();
    assert_eq!(header.sh_link(endian) as usize, symtab.index().0);

    // Every livepatch symbol is SHN_LIVEPATCH; nothing else is.
    for sym in elf.symbols() {
        let name = sym.name().unwrap();
        let shndx = sym.elf_symbol().st_shndx(endian).0;
        assert_eq!(
            name.starts_with(KLP_SYM_PREFIX),
            shndx == SHN_LIVEPATCH,
            "{name}: {shndx:#x}"
        );
    }
    // The ordinary relocations stay where they were, the livepatch ones moved.
    for section in elf.sections() {
        let name = section.name().unwrap();
        if name.starts_with(".rela") {
            assert!(
                relas_of(&elf, &done.ko, name)
                    .iter()
                    .all(|r| !r.1.starts_with(KLP_SYM_PREFIX)),
                "{name} kept a livepatch relocation"
            );
        }
    }
    let relas = |name: &str| relas_of(&elf, &done.ko, name);
    let moved = relas(&klp_text);
    assert!(moved.contains(&(0x1b, ".klp.sym.vmlinux.saved_command_line,0".into(), -4)));
    assert!(moved.contains(&(0x39, ".klp.sym.vmlinux.once_a,0".into(), -5)));
    assert!(moved.iter().all(|r| r.1.starts_with(KLP_SYM_PREFIX)));
    assert!(relas(&format!(".rela{text}")).contains(&(1, "__fentry__".into(), -4)));

    // Once only.
    assert!(matches!(
        post_link(&done.ko),
        Err(KlpError::AlreadyPostLinked { .. })
    ));
}

#[test]
fn post_link_refuses_what_the_kernel_would_refuse() {
    let twice = compile_plain("twice.s");
    assert!(matches!(
        post_link(&twice),
        Err(KlpError::DuplicateRelocation { offset: 0, .. })
    ));
    let bad = compile_plain("badname.c");
    let err = post_link(&bad).unwrap_err();
    assert!(
        matches!(&err, KlpError::BadKlpName { name, .. } if name == ".klp.sym.vmlinux.no_position"),
        "{err}"
    );
}

#[test]
fn post_link_without_livepatch_symbols_changes_nothing_that_matters() {
    let plain = compile_plain("template.c");
    let done = post_link(&plain).unwrap();
    assert!(done.sections.is_empty() && done.symbols.is_empty());
    let before = ElfFile64::<Endianness>::parse(&*plain).unwrap();
    let after = ElfFile64::<Endianness>::parse(&*done.ko).unwrap();
    let names = |elf: &ElfFile64<'_>| -> Vec<String> {
        elf.sections()
            .map(|s| s.name().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&before), names(&after));
}

#[test]
fn another_modules_symbols_are_applied_with_the_patched_modules_relocations() {
    // Module code whose livepatch symbols are of module `nf_conntrack` (exports of a
    // module the patched one, `xt_nat`, depends on).
    let ko = linked_module_of("nf_conntrack");
    let text = ".text.__kstack_new_patched";
    // As the pipeline maps them: every section of the unit's output object.
    let applied_with = [text, ".text.unlikely.patched"]
        .map(|s| (s.to_owned(), "xt_nat".to_owned()))
        .into();
    let done = post_link_applied(&ko, &applied_with).unwrap();
    let names: Vec<&str> = done.sections.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&format!(".klp.rela.xt_nat.{text}").as_str()),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with(".klp.rela.nf_conntrack.")),
        "{names:?}"
    );
    let elf = ElfFile64::<Endianness>::parse(&*done.ko).unwrap();
    let relas = relas_of(&elf, &done.ko, &format!(".klp.rela.xt_nat.{text}"));
    assert!(
        relas
            .iter()
            .all(|(_, sym, _)| sym.starts_with(".klp.sym.nf_conntrack.")),
        "{relas:?}"
    );
}
