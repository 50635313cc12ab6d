//! The example systemd unit: systemd's own verifier accepts it (with ExecStart pointed
//! at the built kstack), and its off switch is the one `kstack sync --boot` honours.

use std::process::Command;

#[test]
fn the_unit_verifies_with_systemd_analyze() {
    let unit = kstack_tests::workspace_root().join("examples/systemd/kstack-sync.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("ConditionKernelCommandLine=!kstack.sync=0"));
    assert!(text.contains("kstack --quiet sync --boot"));
    let kstack = kstack_engine::sandbox::find_guest_binary()
        .unwrap_or_else(|e| panic!("{e}\nrun `{}` first", kstack_tests::SETUP));
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("kstack-sync.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/kstack", &kstack.display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e}\nrun `{}` first", kstack_tests::SETUP));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
