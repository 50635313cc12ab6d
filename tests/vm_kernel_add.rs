//! `kstack kernel add` for an older release than the newest (fleets run those), then
//! `kernel list` and a boot of that kernel in the sandbox. The release is chosen from
//! the Debian archive at test time: the newest but one. And the generic flavour,
//! by its line name.

use std::process::Command;

fn kstack() -> Command {
    let bin = kstack_engine::sandbox::find_guest_binary()
        .unwrap_or_else(|e| panic!("{e}\nrun `{}` first", kstack_tests::SETUP));
    let mut cmd = Command::new(bin);
    cmd.env_remove("KSTACK_CONFIG");
    cmd
}

/// `kstack --json ARGS`, which must succeed; its JSON output.
fn kstack_json(args: &[&str]) -> serde_json::Value {
    let out = kstack()
        .arg("--json")
        .args(args)
        .output()
        .expect("running the static kstack");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("kstack --json prints JSON")
}

fn previous_release() -> String {
    let out = Command::new("apt-cache")
        .args([
            "search",
            "--names-only",
            "^linux-image-6.1.0-.*-cloud-amd64-unsigned$",
        ])
        .output()
        .expect("apt-cache");
    let mut abis: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("linux-image-6.1.0-"))
        .filter_map(|l| l.split('-').next()?.parse().ok())
        .collect();
    abis.sort_unstable();
    abis.dedup();
    assert!(
        abis.len() >= 2,
        "the archive lists fewer than two cloud kernels: {abis:?} (run `apt-get update`)"
    );
    format!("6.1.0-{}-cloud-amd64", abis[abis.len() - 2])
}

#[test]
fn an_older_release_is_added_listed_and_boots() {
    let release = previous_release();
    let added = kstack_json(&["kernel", "add", &release, "--no-source"]);
    assert_eq!(added["release"], release.as_str());
    // Its symbols were read in one boot and kept for builds and `verify --image`.
    let kallsyms = added["kallsyms"]
        .as_str()
        .unwrap_or_else(|| panic!("{added}"));
    let text = std::fs::read_to_string(kallsyms).unwrap();
    assert!(
        text.lines().count() > 50_000 && text.contains(" T do_sys_open"),
        "{kallsyms}: {} lines",
        text.lines().count()
    );

    let list = kstack_json(&["kernel", "list"]);
    let rows = list.as_array().unwrap();
    let older = rows
        .iter()
        .find(|r| r["release"] == release.as_str())
        .unwrap();
    let current = rows.iter().find(|r| r["default"] == true).unwrap();
    assert_ne!(older["build_id"], current["build_id"], "{list}");
    assert_eq!(older["headers"], true, "{list}");

    let image = added["image"].as_str().unwrap();
    let out = kstack()
        .args(["try", "--kernel", image, "--", "uname", "-r"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), release);
}

/// The generic flavour (bare-metal machines: an xz image with the x86 BCJ filter,
/// about 4,000 modules): its newest 6.1 release, added by its line name, listed
/// with its line and flavour, and booted.
#[test]
fn the_generic_flavour_is_added_listed_and_boots() {
    let added = kstack_json(&["kernel", "add", "6.1-amd64", "--no-source"]);
    let release = added["release"].as_str().unwrap().to_owned();
    assert!(
        release.starts_with("6.1.0-") && release.ends_with("-amd64"),
        "{added}"
    );
    assert!(!release.contains("cloud"), "{added}");
    assert_eq!(added["line"], "6.1", "{added}");
    assert_eq!(added["flavour"], "amd64", "{added}");

    let list = kstack_json(&["kernel", "list"]);
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["release"] == release.as_str())
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(row["flavour"], "amd64", "{list}");
    // The build ID comes out of the xz image.
    assert_eq!(row["build_id"].as_str().unwrap().len(), 40, "{list}");

    let out = kstack()
        .args(["try", "--kernel", added["image"].as_str().unwrap()])
        .args([
            "--",
            "uname -r; test -d /sys/kernel/livepatch && echo livepatch",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{release}\nlivepatch")
    );
}
