//! `kstack try` without booting anything: its help, its usage errors, and a kernel
//! image that is not there. (The runs in the VM are `vm_try`.)

use std::process::Command;

fn kstack() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kstack"));
    cmd.env_remove("KSTACK_CONFIG");
    cmd
}

fn output_of(out: &std::process::Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn try_with_a_missing_kernel_names_the_problem() {
    let out = kstack()
        .args(["try", "--kernel", "/nonexistent/vmlinuz", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", output_of(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("kernel image not found at /nonexistent/vmlinuz"),
        "{stderr}"
    );
    assert!(stderr.contains("cargo xtask setup"), "{stderr}");
}

#[test]
fn help_explains_try() {
    let out = kstack().args(["try", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "QEMU",
        "--kernel",
        "--file",
        "SRC:DST",
        "exit status",
        "Examples",
    ] {
        assert!(help.contains(needle), "missing {needle:?} in:\n{help}");
    }
}

#[test]
fn usage_errors_exit_64() {
    let out = kstack().args(["try"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}
