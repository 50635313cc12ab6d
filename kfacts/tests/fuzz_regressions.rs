//! Inputs the `elf_object` fuzz target found (tests/fuzz/regressions/elf_object/):
//! the object reader and what the differ and the run-pre matcher ask of its symbols
//! and sections never panic on them (one had a symbol whose value plus size
//! overflowed, another overflowed where `symbol_at` computes where a symbol ends).
//! The calls are the fuzz target's, less those of crates above this one.

use kstack_kfacts::elf::RelObject;

#[test]
fn fuzz_regressions_do_not_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fuzz/regressions/elf_object");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("the regression directory") {
        let path = entry.expect("a directory entry").path();
        let bytes = std::fs::read(&path).expect("a regression input");
        if let Ok(object) = RelObject::parse(&bytes) {
            for (i, sym) in object.symbols.iter().enumerate() {
                let _ = (sym.end(), object.display_name(i));
                if let Some(sec) = sym.section {
                    let _ = object.symbol_at(sec, sym.value as i64);
                    let _ = object.place(sec, sym.value);
                }
                let _ = object.function(&sym.name);
            }
            for section in &object.sections {
                let _ = section.relocs_in(0, section.size);
            }
            let _ = kstack_kfacts::kallsyms::module_symbols(&object);
        }
        seen += 1;
    }
    assert!(seen > 0, "no regression inputs in {}", dir.display());
}
