use object::read::elf::ElfFile64;
use object::{Object, ObjectSection, ObjectSymbol};

use super::super::*;
use super::*;

#[test]
fn extract_carries_the_function_and_what_belongs_to_it() {
    let (ex, resolver) = extract_basic(&[changed("patched")]);
    assert_eq!(
        ex.sections,
        [
            ".rodata.names",
            ".rodata.own_table",
            ".rodata.patched.str1.1",
            ".rodata.str1.1",
            ".text.patched",
            ".text.unlikely.patched",
            "__mcount_loc",
        ]
    );
    assert_eq!(
        ex.functions,
        [ExtractedFunction {
            post_name: "patched".into(),
            old_name: "patched".into(),
            symbol: "__kstack_new_patched".into(),
            new: false,
            old_sympos: Some(2),
        }]
    );
    let references: Vec<(&str, &Resolution)> = ex
        .references
        .iter()
        .map(|r| (r.symbol.as_str(), &r.resolution))
        .collect();
    let lp = |sympos| Resolution::Livepatch {
        object: VMLINUX.into(),
        sympos,
    };
    assert_eq!(
        references,
        [
            (".klp.sym.vmlinux.callee,0", &lp(0)),
            (".klp.sym.vmlinux.counter,0", &lp(0)),
            (".klp.sym.vmlinux.helper,1", &lp(1)),
            (".klp.sym.vmlinux.once_a,0", &lp(0)),
            (".klp.sym.vmlinux.saved_command_line,0", &lp(0)),
            (".klp.sym.vmlinux.shared_table,0", &lp(0)),
            ("__fentry__", &Resolution::Exported),
            ("printk", &Resolution::Exported),
            ("report_failure", &Resolution::Exported),
        ]
    );
    // Statics are asked for as local, so the resolver picks this file's.
    assert_eq!(resolver.asked_local("counter"), Some(true));
    assert_eq!(resolver.asked_local("once_a"), Some(true));
    assert_eq!(resolver.asked_local("saved_command_line"), Some(false));
    // once_b sits right before once_a: only decoding `cmpb $0, once_a(%rip)`
    // (an immediate after the displacement) tells them apart.
    assert_eq!(resolver.asked_local("once_b"), None);

    let elf = ElfFile64::<Endianness>::parse(&*ex.object).unwrap();
    let sym = elf
        .symbols()
        .find(|s| s.name() == Ok("__kstack_new_patched"))
        .unwrap();
    assert!(sym.is_global() && sym.kind() == object::SymbolKind::Text);
    let text = elf.section_by_name(".text.__kstack_new_patched").unwrap();
    assert_eq!(sym.section_index(), Some(text.index()));
    assert!(elf.symbols().any(|s| s.name() == Ok("patched.cold")));
    let r = relocs(&elf, ".text.__kstack_new_patched");
    let at = |o: u64| r.iter().find(|x| x.0 == o).unwrap().clone();
    assert_eq!(at(0x1), (0x1, "__fentry__".into(), -4));
    assert_eq!(
        at(0x1b),
        (0x1b, ".klp.sym.vmlinux.saved_command_line,0".into(), -4)
    );
    // `addl $1, counter(%rip)`: addend -5 stays, now relative to the symbol.
    assert_eq!(at(0x21), (0x21, ".klp.sym.vmlinux.counter,0".into(), -5));
    assert_eq!(at(0x33), (0x33, ".text.unlikely.patched".into(), -4));
    assert_eq!(at(0x39), (0x39, ".klp.sym.vmlinux.once_a,0".into(), -5));
    assert_eq!(
        at(0x6f),
        (0x6f, ".klp.sym.vmlinux.shared_table,0".into(), 0)
    );
    assert_eq!(at(0x76), (0x76, ".rodata.own_table".into(), 0));
    assert_eq!(at(0x7b), (0x7b, ".klp.sym.vmlinux.helper,1".into(), -4));
    assert_eq!(at(0x91), (0x91, ".rodata.names".into(), 0));
    // The copied table of string pointers points at the copied strings.
    assert_eq!(
        relocs(&elf, ".rodata.names"),
        [
            (0, ".rodata.str1.1".into(), 0),
            (8, ".rodata.str1.1".into(), 5)
        ]
    );
    // The cold part jumps back into the new function.
    assert!(relocs(&elf, ".text.unlikely.patched").contains(&(
        0x41,
        ".text.__kstack_new_patched".into(),
        0x98
    )));
    // ftrace's list of call sites: the new function only.
    assert_eq!(
        relocs(&elf, "__mcount_loc"),
        [(0, ".text.__kstack_new_patched".into(), 0)]
    );
    assert!(elf.section_by_name(".text.helper").is_none());
    assert!(elf.section_by_name(".rodata.shared_table").is_none());
    assert!(elf.section_by_name(".data.once").is_none());
}

#[test]
fn calls_between_carried_functions_stay_inside_the_object() {
    let (ex, _) = extract_basic(&[changed("patched"), changed("callee")]);
    let elf = ElfFile64::<Endianness>::parse(&*ex.object).unwrap();
    let r = relocs(&elf, ".text.__kstack_new_patched");
    assert!(
        r.contains(&(0x87, ".text.__kstack_new_callee".into(), -4)),
        "{r:?}"
    );
    assert!(!ex.references.iter().any(|r| r.name == "callee"));
    assert_eq!(relocs(&elf, "__mcount_loc").len(), 2);
}

#[test]
fn new_functions_are_carried_under_their_own_name() {
    let callee_new = FunctionSpec {
        new: true,
        ..changed("callee")
    };
    let (ex, resolver) = extract_basic(&[changed("patched"), callee_new]);
    assert_eq!(
        ex.functions[1],
        ExtractedFunction {
            post_name: "callee".into(),
            old_name: "callee".into(),
            symbol: "callee".into(),
            new: true,
            old_sympos: None,
        }
    );
    // Nothing asked about an old version that does not exist.
    assert_eq!(resolver.asked_local("callee"), None);
    let elf = ElfFile64::<Endianness>::parse(&*ex.object).unwrap();
    let sym = elf.symbols().find(|s| s.name() == Ok("callee")).unwrap();
    assert!(sym.is_global(), "a new global function stays global");
    let r = relocs(&elf, ".text.__kstack_new_patched");
    assert!(r.contains(&(0x87, ".text.callee".into(), -4)), "{r:?}");
}

#[test]
fn missing_symbols_and_functions_are_errors_with_context() {
    let object = compile("basic.c", &[]);
    let resolver = FakeResolver::new(&[("__fentry__", None), ("printk", None)]);
    let request = ExtractRequest {
        object: &object,
        tu: "test/basic.o",
        objname: VMLINUX,
        functions: &[changed("patched")],
    };
    let err = extract(&request, &resolver).unwrap_err().to_string();
    assert!(err.starts_with("test/basic.o: patched"), "{err}");
    assert!(err.contains("is not in the target kernel"), "{err}");

    let request = ExtractRequest {
        functions: &[changed("nonexistent")],
        ..request
    };
    assert!(matches!(
        extract(&request, &resolver),
        Err(KlpError::NoSuchFunction { .. })
    ));
}

#[test]
fn klp_names_follow_what_the_kernel_parses() {
    assert_eq!(
        klp_symbol_name("vmlinux", "foo.isra.0", 2).unwrap(),
        ".klp.sym.vmlinux.foo.isra.0,2"
    );
    assert_eq!(
        parse_klp_symbol_name(".klp.sym.ext4.ext4_attr_show.cold,1").unwrap(),
        ("ext4".into(), "ext4_attr_show.cold".into(), 1)
    );
    assert!(klp_symbol_name("my.mod", "foo", 0).is_err());
    assert!(klp_symbol_name("vmlinux", "a,b", 0).is_err());
    assert!(klp_symbol_name("vmlinux", &"x".repeat(512), 0).is_err());
    assert!(klp_symbol_name(&"m".repeat(56), "x", 0).is_err());
    assert!(parse_klp_symbol_name(".klp.sym.vmlinux.foo,").is_err());
    assert!(parse_klp_symbol_name(".klp.sym.vmlinux.foo,01").is_err());
    assert_eq!(
        new_symbol_name("foo.constprop.0").unwrap(),
        "__kstack_new_foo__constprop__0"
    );
}
