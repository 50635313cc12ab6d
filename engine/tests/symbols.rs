//! Resolving same-named statics of the real kernel: with vmlinux's full symbol table
//! (`linux-image-*-dbg`, kept by set-up as `vmlinux.symtab`), the resolver finds the
//! one a translation unit defines exactly, where the neighbour heuristic guessed.

#![allow(clippy::unwrap_used)] // a test: any failure should stop it loudly

#[path = "runpre/common.rs"]
mod common;

use std::collections::HashMap;

use kstack_engine::builder::symbols::KernelSymbols;
use kstack_kfacts::symtab::LocalsByFile;

#[test]
fn same_named_statics_resolve_exactly_from_the_kernels_symbol_table() {
    let kernel = common::kernel();
    let text = std::fs::read_to_string(kernel.symtab()).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\nrun `{}` (it keeps vmlinux's symbol table from the -dbg package)",
            kernel.symtab().display(),
            common::SETUP
        )
    });
    let locals = LocalsByFile::parse(&text).unwrap();
    let index = common::kallsyms();

    // Source files whose base name one object of the kernel has: the translation
    // unit is then known by that name alone.
    let mut objects_per_file: HashMap<String, usize> = HashMap::new();
    let groups: Vec<_> = locals_groups(&locals);
    for g in &groups {
        *objects_per_file.entry(g.file.clone()).or_default() += 1;
    }

    let mut exact = KernelSymbols::parse(common::kallsyms_text(), "").unwrap();
    exact.set_locals(locals.clone());
    let mut heuristic = KernelSymbols::parse(common::kallsyms_text(), "").unwrap();
    let (mut checked, mut sampled, mut heuristic_wrong) = (0usize, 0usize, 0usize);
    for g in groups.iter().filter(|g| objects_per_file[&g.file] == 1) {
        let Some(stem) = g.file.strip_suffix(".c") else {
            continue;
        };
        let tu = format!("somewhere/{stem}.o");
        let names: Vec<String> = g
            .symbols
            .iter()
            .map(|(n, _)| kstack_engine::builder::diff::normalize_name(n))
            .collect();
        exact.add_translation_unit(&tu, names.clone());
        heuristic.add_translation_unit(&tu, names);
        for (name, addr) in &g.symbols {
            let entries: Vec<_> = index.named(name).collect();
            if entries.len() < 2 || !entries.iter().any(|e| e.addr == *addr) {
                continue;
            }
            let (found, _) = exact
                .livepatch_entry(name, &tu, true)
                .unwrap_or_else(|e| panic!("{name} of {}: {e}", g.file));
            assert_eq!(found, *addr, "{name} of {}", g.file);
            checked += 1;
            // The heuristic is slow; a sample shows how often it goes wrong.
            if checked % 8 == 0 {
                sampled += 1;
                if heuristic.livepatch_entry(name, &tu, true).map(|(a, _)| a) != Ok(*addr) {
                    heuristic_wrong += 1;
                }
            }
        }
    }
    assert!(checked > 200, "only {checked} same-named statics checked");
    eprintln!(
        "{checked} same-named statics resolved exactly; the neighbour heuristic missed \
         {heuristic_wrong} of {sampled} sampled"
    );
}

fn locals_groups(locals: &LocalsByFile) -> Vec<kstack_kfacts::symtab::FileSymbols> {
    // Every group, through the text form (the table's groups are private).
    let text = locals.to_text();
    let mut out: Vec<kstack_kfacts::symtab::FileSymbols> = Vec::new();
    for line in text.lines() {
        if let Some(file) = line.strip_prefix("F ") {
            out.push(kstack_kfacts::symtab::FileSymbols {
                file: file.to_owned(),
                symbols: Vec::new(),
            });
        } else if let Some((addr, name)) = line.split_once(' ') {
            let addr = u64::from_str_radix(addr, 16).unwrap();
            out.last_mut()
                .unwrap()
                .symbols
                .push((name.to_owned(), addr));
        }
    }
    out
}

/// A patch to one module that reaches a global another module keeps to itself (it
/// does not export it) is refused naming that module: the loader cannot resolve it
/// and a livepatch relocation of the patched module cannot name another object.
/// A name no module and not vmlinux has is reported as such.
#[test]
fn another_modules_unexported_global_is_refused_naming_its_module() {
    use kstack_engine::builder::{ResolveError, SymbolResolver};
    use kstack_engine::runpre::ModulesDir;

    let installed = ModulesDir::new(common::kernel().modules_dir());
    let dir = tempfile::tempdir().unwrap();
    for (module, path) in [("xfs", "fs/xfs"), ("binfmt_misc", "fs")] {
        let ko = installed.ko(module).unwrap().expect("in the image package");
        std::fs::create_dir_all(dir.path().join(path)).unwrap();
        std::fs::write(dir.path().join(path).join(format!("{module}.ko")), ko).unwrap();
    }
    let mut symbols = KernelSymbols::parse(common::kallsyms_text(), "").unwrap();
    let binfmt = installed.ko("binfmt_misc").unwrap().unwrap();
    symbols.add_module("binfmt_misc", &binfmt).unwrap();
    symbols.set_modules_dir(dir.path());

    let err = symbols
        .resolve("binfmt_misc", "xfs_stats_format", "fs/binfmt_misc.o", false)
        .unwrap_err();
    assert_eq!(
        err,
        ResolveError::OtherModule {
            name: "xfs_stats_format".into(),
            module: "binfmt_misc".into(),
            owner: "xfs".into(),
        }
    );
    assert!(
        err.to_string().contains("not exported by module xfs"),
        "{err}"
    );
    let err = symbols
        .resolve(
            "binfmt_misc",
            "no_such_symbol_anywhere",
            "fs/binfmt_misc.o",
            false,
        )
        .unwrap_err();
    assert!(matches!(err, ResolveError::NotInModule { .. }), "{err}");
}
