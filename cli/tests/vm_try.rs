//! `kstack try` as a user runs it: the dev build of the CLI boots the set-up kernel
//! with the static guest build inside.

use std::process::Command;

fn kstack() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kstack"));
    cmd.env_remove("KSTACK_CONFIG");
    cmd
}

fn setup_hint(out: &std::process::Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}\n(if assets are missing: run `cargo xtask setup`)",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn try_runs_a_command_and_exits_with_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload.txt");
    std::fs::write(&file, "payload from the host\n").unwrap();
    let out = kstack()
        .arg("try")
        .arg("--file")
        .arg(format!("{}:/root/payload.txt", file.display()))
        .args(["--", "cat /root/payload.txt; echo oops >&2; exit 5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", setup_hint(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "payload from the host\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("oops\n"), "{}", setup_hint(&out));
}

#[test]
fn try_json_reports_status_and_output() {
    let out = kstack()
        .args(["--json", "try", "--", "uname", "-r"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", setup_hint(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The schema of docs/json.md, `kstack try`.
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "kernel",
            "exit_code",
            "signal",
            "stdout",
            "stderr",
            "console",
            "elapsed_ms"
        ],
        "{v}"
    );
    assert_eq!(v["signal"], serde_json::Value::Null);
    assert_eq!(v["console"], serde_json::Value::Null, "no --console");
    assert!(v["elapsed_ms"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["exit_code"], 0);
    assert!(v["stdout"].as_str().unwrap().contains("cloud-amd64"), "{v}");
}
