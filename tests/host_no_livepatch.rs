//! kstack on a kernel without livepatch support: the development and CI hosts' own
//! kernel has no module support at all (LAB.md), a real case of what an operator
//! meets on such a kernel.

use std::process::Command;

#[test]
fn sync_on_a_kernel_without_livepatch_says_so_and_suggests_try() {
    assert!(
        !std::path::Path::new("/sys/kernel/livepatch").exists(),
        "this test needs a host kernel without livepatch support, as the project's machines have"
    );
    let kstack = kstack_engine::sandbox::find_guest_binary()
        .unwrap_or_else(|e| panic!("{e}\nrun `{}` first", kstack_tests::SETUP));
    let dir = tempfile::tempdir().unwrap();
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
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("no livepatch support"), "{stderr}");
    assert!(stderr.contains("kstack try --config"), "{stderr}");
}
