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
    let functions = [changed("patched")];
    let request = basic_request(&object, &functions);
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

/// A local the change renumbered is resolved, and named in its livepatch symbol,
/// by the running kernel's name the differ paired it with; one the differ paired by
/// a guess is refused.
#[test]
fn renumbered_locals_resolve_by_their_running_name_and_guesses_are_refused() {
    let object = compile("basic.c", &[]);
    // The kernel's `counter` is `counter.7`, the 3rd of that name.
    let symbols: Vec<(&str, Option<u64>)> = BASIC_SYMBOLS
        .iter()
        .map(|&(n, pos)| {
            if n == "counter" {
                ("counter.7", Some(3))
            } else {
                (n, pos)
            }
        })
        .collect();
    let resolver = FakeResolver::new(&symbols);
    let kernel_names =
        std::collections::BTreeMap::from([("counter".to_owned(), "counter.7".to_owned())]);
    let functions = [changed("patched")];
    let request = ExtractRequest {
        kernel_names: &kernel_names,
        ..basic_request(&object, &functions)
    };
    let ex = extract(&request, &resolver).unwrap();
    assert_eq!(resolver.asked_local("counter.7"), Some(true));
    assert_eq!(
        resolver.asked_local("counter"),
        None,
        "asked by the post name"
    );
    let counter = ex
        .references
        .iter()
        .find(|r| r.name == "counter.7")
        .unwrap_or_else(|| panic!("{:?}", ex.references));
    assert_eq!(counter.symbol, ".klp.sym.vmlinux.counter.7,3");

    let guessed = std::collections::BTreeSet::from(["counter".to_owned()]);
    let request = ExtractRequest {
        indistinct: &guessed,
        ..request
    };
    let err = extract(&request, &resolver).unwrap_err();
    assert!(matches!(err, KlpError::IndistinctStatic { .. }), "{err}");
    assert!(err.to_string().contains("cannot be known"), "{err}");
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

/// Data the fix brings (a new static counter and table, a print-once flag, a new
/// global) is carried in the output object, and references to it point there; a new
/// global function another file of the patch defines stays a plain reference.
#[test]
fn new_data_and_once_flags_are_carried_and_patch_globals_stay_plain() {
    let object = compile("new_data.c", &[]);
    let file = ElfFile64::<Endianness>::parse(&*object).unwrap();
    // The post names, as the differ would report them.
    let names: Vec<String> = file
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Data && s.is_definition())
        .map(|s| s.name().unwrap().to_owned())
        .collect();
    let once = names
        .iter()
        .find(|n| n.starts_with("__already_done"))
        .unwrap()
        .clone();
    let new_data: Vec<String> = names.clone();
    let provided = vec!["helper_from_other_file".to_owned()];
    let resolver = FakeResolver::new(&[
        ("__fentry__", None),
        ("__x86_return_thunk", None),
        ("printk", None),
        ("patched", Some(0)),
    ]);
    let request = ExtractRequest {
        object: &object,
        tu: "test/new_data.o",
        objname: VMLINUX,
        functions: &[changed("patched")],
        new_data: &new_data,
        provided: &provided,
        kernel_names: &std::collections::BTreeMap::new(),
        indistinct: &std::collections::BTreeSet::new(),
        objtool_at_link: false,
    };
    let ex = extract(&request, &resolver).unwrap();
    for section in [
        ".bss.counter",
        ".rodata.table",
        ".bss.new_global_total",
        ".data.once",
    ] {
        assert!(
            ex.sections.iter().any(|s| s == section),
            "{section} is not carried: {:?}",
            ex.sections
        );
    }
    // Nothing of the data is resolved in the kernel; the other file's function is a
    // plain reference for the module's own link.
    let references: Vec<(&str, &Resolution)> = ex
        .references
        .iter()
        .map(|r| (r.symbol.as_str(), &r.resolution))
        .collect();
    assert!(
        references.contains(&("helper_from_other_file", &Resolution::InPatch)),
        "{references:?}"
    );
    for name in ["counter", "table", "new_global_total", once.as_str()] {
        assert!(
            references.iter().all(|(s, _)| !s.contains(name)),
            "{name} was resolved outside the patch: {references:?}"
        );
    }
    // The output object defines the new global, so the other file can use it.
    let out = ElfFile64::<Endianness>::parse(&*ex.object).unwrap();
    assert!(
        out.symbols()
            .any(|s| s.name() == Ok("new_global_total") && s.is_definition() && s.is_global()),
        "new_global_total is not defined by the output object"
    );
}

fn extract_shared(functions: &[FunctionSpec]) -> Result<Extracted> {
    let object = compile_plain("shared.s");
    let resolver = FakeResolver::new(&[
        ("__fentry__", None),
        ("printk", None),
        ("first", Some(0)),
        ("helper", Some(0)),
        ("middle", None),
        ("last", None),
    ]);
    let request = ExtractRequest {
        object: &object,
        tu: "test/shared.o",
        objname: VMLINUX,
        functions,
        new_data: &[],
        provided: &[],
        kernel_names: &std::collections::BTreeMap::new(),
        indistinct: &std::collections::BTreeSet::new(),
        objtool_at_link: false,
    };
    extract(&request, &resolver)
}

#[test]
fn a_function_of_a_shared_section_is_carried_alone_with_its_unwind_state() {
    let ex = extract_shared(&[changed("middle")]).unwrap();
    let elf = ElfFile64::<Endianness>::parse(&*ex.object).unwrap();
    let new = ".text.__kstack_new_middle";
    let text = elf.section_by_name(new).unwrap();
    // middle's bytes alone: 0xa..0x20 of .sched.text.
    assert_eq!(text.size(), 0x16);
    let sym = elf.symbol_by_name("__kstack_new_middle").unwrap();
    assert_eq!((sym.address(), sym.size()), (0, 0x16));
    // `call first` had no relocation (the assembler resolved it within the
    // section); carried alone it needs one, to the kernel's `first`.
    assert_eq!(
        relocs(&elf, new),
        [
            (0x1, "__fentry__".into(), -4),
            (0x7, ".klp.sym.vmlinux.first,0".into(), -4),
            (0xe, "printk".into(), -4),
        ]
    );
    // No unwind entry at middle's first instruction in the input: the one in effect
    // there (first's) is copied for it, after middle's own two.
    assert_eq!(
        relocs(&elf, ".orc_unwind_ip"),
        [
            (0, new.into(), 0x6),
            (4, new.into(), 0x15),
            (8, new.into(), 0),
        ]
    );
    let orc = elf.section_by_name(".orc_unwind").unwrap();
    let states: Vec<u8> = orc.data().unwrap().chunks(6).map(|e| e[0]).collect();
    assert_eq!(states, [0x22, 0x33, 0x11]);
}

#[test]
fn functions_of_one_shared_section_reach_each_other_inside_the_patch() {
    let ex = extract_shared(&[changed("middle"), changed("last")]).unwrap();
    let elf = ElfFile64::<Endianness>::parse(&*ex.object).unwrap();
    assert_eq!(
        relocs(&elf, ".text.__kstack_new_last"),
        [
            (0x1, "__fentry__".into(), -4),
            (0x6, ".text.__kstack_new_middle".into(), -4),
            (0xb, ".klp.sym.vmlinux.first,0".into(), -4),
        ]
    );
}

#[test]
fn a_short_jump_out_of_a_shared_section_function_is_refused() {
    let err = extract_shared(&[changed("shorty")]).unwrap_err();
    assert!(
        matches!(&err, KlpError::ShortReference { symbol, section, .. }
            if symbol == "helper" && section == ".sched.text"),
        "{err}"
    );
    assert!(err.to_string().contains("short jump"), "{err}");
}

/// 6.12 (`CONFIG_CALL_PADDING`): the 16 no-ops before a function come along, with
/// the function's symbol after them, so that call-depth tracking can put the
/// function's call thunk there; 6.1's functions have none.
#[test]
fn the_padding_before_a_function_comes_along() {
    let object = compile("basic.c", &["-fpatchable-function-entry=16,16"]);
    let resolver = basic_resolver();
    let request = ExtractRequest {
        object: &object,
        tu: "test/basic.o",
        objname: VMLINUX,
        functions: &[changed("patched")],
        new_data: &[],
        provided: &[],
        kernel_names: &std::collections::BTreeMap::new(),
        indistinct: &std::collections::BTreeSet::new(),
        objtool_at_link: true,
    };
    let ex = extract(&request, &resolver).unwrap();
    let elf = ElfFile64::<object::Endianness>::parse(&*ex.object).unwrap();
    let sym = elf
        .symbols()
        .find(|s| s.name() == Ok("__kstack_new_patched"))
        .unwrap();
    assert_eq!(sym.address(), 16);
    let text = elf.section_by_name(".text.__kstack_new_patched").unwrap();
    let data = text.data().unwrap();
    assert_eq!(&data[..16], &[0x90; 16]);
    // The code after the padding is the function's: its fentry call first.
    let fentry = text.relocations().map(|(offset, _)| offset).min().unwrap();
    assert!((16..16 + 5).contains(&fentry), "{fentry}");

    // Without padding (6.1), the function starts its section.
    let (ex, _) = extract_basic(&[changed("patched")]);
    let elf = ElfFile64::<object::Endianness>::parse(&*ex.object).unwrap();
    let sym = elf
        .symbols()
        .find(|s| s.name() == Ok("__kstack_new_patched"))
        .unwrap();
    assert_eq!(sym.address(), 0);
}
