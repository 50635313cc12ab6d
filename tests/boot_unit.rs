//! The systemd units the Debian package ships: systemd's own verifier accepts them
//! (with /usr/bin/kstack pointed at the built kstack), the boot unit's off switch is
//! the one `kstack sync --boot` honours, and the fleet timer pulls and syncs with a
//! randomised delay.

use std::path::Path;
use std::process::Command;

/// The units of `examples/systemd/`, in the order they are checked.
const UNITS: [&str; 3] = [
    "kstack-sync.service",
    "kstack-update.service",
    "kstack-update.timer",
];

fn unit(name: &str) -> String {
    let path = kstack_tests::workspace_root()
        .join("examples/systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_units_verify_with_systemd_analyze() {
    let kstack = kstack_engine::sandbox::find_guest_binary()
        .unwrap_or_else(|e| panic!("{e}\nrun `{}` first", kstack_tests::SETUP));
    let dir = tempfile::tempdir().unwrap();
    for name in UNITS {
        let text = unit(name);
        std::fs::write(
            dir.path().join(name),
            text.replace("/usr/bin/kstack", &kstack.display().to_string()),
        )
        .unwrap();
    }
    // The man: references resolve once the package installs the pages (its test
    // reads each one); here they are not installed.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(UNITS.map(|u| dir.path().join(u)))
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e}\nrun `{}` first", kstack_tests::SETUP));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_boot_unit_honours_the_off_switch() {
    let text = unit("kstack-sync.service");
    assert!(text.contains("ConditionKernelCommandLine=!kstack.sync=0"));
    assert!(text.contains("ExecStart=/usr/bin/kstack --quiet sync --boot"));
}

#[test]
fn the_fleet_timer_pulls_then_syncs_at_a_random_moment() {
    let service = unit("kstack-update.service");
    let starts: Vec<&str> = service
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(
        starts,
        [
            "ExecStart=/usr/bin/kstack --quiet pull",
            "ExecStart=/usr/bin/kstack --quiet sync"
        ]
    );
    assert!(service.contains("--format prometheus --textfile"));
    let timer = unit("kstack-update.timer");
    assert!(timer.lines().any(|l| l.starts_with("RandomizedDelaySec=")));
    assert!(timer.contains("WantedBy=timers.target"));
    assert!(Path::new(&kstack_tests::workspace_root().join("examples/systemd")).is_dir());
}
