//! kstack on a kernel without livepatch support, what an operator meets on a kernel
//! built without `CONFIG_LIVEPATCH`. The livepatch sysfs directory is pointed at one
//! that does not exist (`KSTACK_LIVEPATCH_SYSFS`), so the test holds whatever the
//! host's own kernel supports.

use std::process::Command;

#[test]
fn sync_on_a_kernel_without_livepatch_says_so_and_suggests_try() {
    let kstack = kstack_engine::sandbox::find_guest_binary()
        .unwrap_or_else(|e| panic!("{e}\nrun `{}` first", kstack_tests::SETUP));
    let dir = tempfile::tempdir().unwrap();
    let no_livepatch = dir.path().join("sys/kernel/livepatch");
    let store = dir.path().join("store");
    kstack_store::store::Store::init(&store).unwrap();
    let config = dir.path().join("kstack.toml");
    std::fs::write(&config, "[stack]\nname = \"prod\"\n").unwrap();
    let out = Command::new(kstack)
        .arg("--config")
        .arg(&config)
        .arg("--store")
        .arg(&store)
        .arg("sync")
        .env("KSTACK_STATE_DIR", dir.path().join("state"))
        .env(kstack_engine::host::kernel::ROOT_ENV, &no_livepatch)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("no livepatch support"), "{stderr}");
    assert!(stderr.contains("kstack try --config"), "{stderr}");
}

#[test]
fn help_names_the_livepatch_directory_variable() {
    let kstack = kstack_engine::sandbox::find_guest_binary()
        .unwrap_or_else(|e| panic!("{e}\nrun `{}` first", kstack_tests::SETUP));
    let out = Command::new(kstack).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(
        help.contains(kstack_engine::host::kernel::ROOT_ENV),
        "{help}"
    );
}
