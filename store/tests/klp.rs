//! Reading which functions a livepatch module replaces from its `klp_func` tables,
//! on synthetic modules.

use kstack_fixtures::FakeModule;
use kstack_store::klp::replaced_functions;

#[test]
fn finds_functions_in_vmlinux_and_modules() {
    let mut module = FakeModule::livepatch("kstack_0123456789ab", &["cmdline_proc_show"]);
    module.functions.push("ext4:ext4_statfs,2".parse().unwrap());
    module.functions.push("meminfo_proc_show".parse().unwrap());
    let found = replaced_functions(&module.build(), "m.ko").unwrap();
    let names: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "vmlinux:cmdline_proc_show",
            "vmlinux:meminfo_proc_show",
            "ext4:ext4_statfs,2"
        ]
    );
}

#[test]
fn a_module_without_tables_has_none() {
    let module = FakeModule::livepatch("plain", &[]);
    assert!(
        replaced_functions(&module.build(), "m.ko")
            .unwrap()
            .is_empty()
    );
}
