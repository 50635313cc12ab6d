//! The systemd units the Debian package ships: systemd's own verifier accepts them
//! (with /usr/bin/kstack pointed at the built kstack), the boot unit's off switch is
//! the one `kstack sync --boot` honours, and the fleet timer pulls and syncs every
//! hour with a randomised delay (`tests/vm_sync.rs` runs the service's lines).

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
fn the_fleet_service_pulls_then_syncs_and_exports_metrics() {
    let service = unit("kstack-update.service");
    let starts: Vec<&str> = service
        .lines()
        .filter(|l| l.starts_with("ExecStart"))
        .collect();
    assert_eq!(
        starts,
        [
            "ExecStartPre=/usr/bin/kstack --quiet init",
            "ExecStart=/usr/bin/kstack --quiet pull",
            "ExecStart=/usr/bin/kstack --quiet sync"
        ]
    );
    // The textfile is written whatever happened (ExecStopPost), and its failure does
    // not fail the unit ("-").
    let post: Vec<&str> = service
        .lines()
        .filter(|l| l.starts_with("ExecStopPost="))
        .collect();
    assert_eq!(post.len(), 1, "{service}");
    assert!(post[0].starts_with("ExecStopPost=-"), "{}", post[0]);
    assert!(post[0].contains("status --format prometheus --textfile"));
    // tests/vm_sync.rs runs these lines in the VM, as systemd would.
}

/// The value of `key=` in a unit's text (the last one, as systemd takes it).
fn setting<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn the_fleet_timer_runs_every_hour_at_a_random_fixed_moment() {
    let timer = unit("kstack-update.timer");
    // A calendar event: monotonic OnUnitActiveSec= would add the random delay to
    // every period (1 to 2 hours between runs).
    assert_eq!(setting(&timer, "OnUnitActiveSec"), None, "{timer}");
    let calendar = setting(&timer, "OnCalendar").expect("an OnCalendar= event");
    // systemd's own reading of the event: three elapses one hour apart.
    let out = Command::new("systemd-analyze")
        .args(["calendar", "--iterations=3", calendar])
        .env("TZ", "UTC")
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e}\nrun `{}` first", kstack_tests::SETUP));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hours: Vec<u32> = text
        .lines()
        .filter(|l| l.contains("Next elapse:") || l.contains("Iter. #"))
        .map(|l| {
            // "... Sat 2026-11-28 06:00:00 UTC": the hour, and on the full hour.
            let time = l.split_whitespace().rev().nth(1).expect("a time");
            assert!(time.ends_with(":00:00"), "{l}");
            time[..2].parse().expect("an hour")
        })
        .collect();
    assert_eq!(hours.len(), 3, "{text}");
    for pair in hours.windows(2) {
        assert_eq!((pair[0] + 1) % 24, pair[1], "{text}");
    }
    // Each host its own moment within the hour, the same one every hour.
    assert_eq!(setting(&timer, "RandomizedDelaySec"), Some("1h"));
    assert_eq!(setting(&timer, "FixedRandomDelay"), Some("true"));
    assert_eq!(setting(&timer, "OnBootSec"), Some("15min"));
    assert!(timer.contains("WantedBy=timers.target"));
}
