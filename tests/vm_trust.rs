//! Trust beyond signatures, on the real Debian kernel in QEMU: what someone who can
//! write the store (or its mirror) but holds no trusted key can no longer do, and
//! what a fleet operator's policy adds. Checked in the kernel's own view
//! (`/sys/kernel/livepatch`, the `/proc` files the test patches change).
//!
//! - Rollback replay: the host runs the head of `prod` (a commit that reverted
//!   patch B); the ref is moved back to the older signed commit that still has B.
//!   `plan` and `sync` refuse it (exit 65) naming both commits; B stays off. A pin
//!   of the older commit, or `sync --allow-downgrade`, goes back on purpose.
//! - Two-person rule: with `[trust] threshold = 2`, a head signed by one key is
//!   refused, the same head approved by a second key syncs.
//! - Revocation: a head signed only by a revoked key is refused.
//! - Freeze: an expired head is refused, or synced with a warning when
//!   `[trust] expired = "warn"`; `status` shows the window.
//! - Strict modes: `sync --boot` and `rollback` refuse a config or state directory
//!   that other users can write, naming the path.

use std::time::Duration;

use kstack_store::keys::SecretKey;
use kstack_store::store::Author;
use kstack_tests::stack::{GUEST_STATE, GUEST_STORE, StackFixture, author};
use kstack_tests::{build_test_module, sandbox, sections};

const A: &str = "kstack-test-a"; // /proc/cmdline
const B: &str = "kstack-test-b"; // /proc/version
const C: &str = "kstack-test-c"; // /proc/loadavg

const VIEW: &str = r#"view() { echo "== $1"; cat /proc/cmdline /proc/version /proc/loadavg; echo "lp: $(ls /sys/kernel/livepatch | tr '\n' ' ')"; }
export KSTACK_STATE_DIR=/var/lib/kstack
"#;

fn shows(view: &str, marker: &str) -> bool {
    view.lines().any(|l| l == marker)
}

fn short(id: &gix::ObjectId) -> String {
    id.to_hex_with_len(12).to_string()
}

#[test]
fn trust_beyond_signatures_in_the_vm() {
    let fx = StackFixture::new();
    let second = SecretKey::from_seed(&[8; 32]);
    let leaked = SecretKey::from_seed(&[9; 32]);
    let a = build_test_module("kstack_test_a");
    let b = build_test_module("kstack_test_b");
    let c = build_test_module("kstack_test_c");

    // prod: [A], [A, B], then B withdrawn: the head is [A].
    fx.commit("prod", "a", &a);
    let with_b = fx.commit("prod", "b", &b);
    let head = fx.revert("prod", "b");
    // two: signed by one key; two-approved: the same, approved by a second key.
    fx.commit("two", "c", &c);
    fx.commit("two-approved", "c", &c);
    let approved = fx.approve("two-approved", &second);
    // leaked: signed only by a key the config then revokes.
    fx.commit_signed("leaked", "c", &c, &author(), &leaked);
    // stale: its window ran out in 2020.
    let old = Author {
        time: 1_600_000_000,
        valid_for: Duration::from_secs(86_400),
        ..author()
    };
    let stale = fx.commit_signed("stale", "c", &c, &old, &fx.key);

    let trust_line = format!("keys = [\"{}\"]", fx.trusted_key());
    let with_trust = |stack: &str, extra: &str| {
        fx.config(stack, None, "10s").replace(
            &trust_line,
            &format!(
                "keys = [\"{}\", \"{}\", \"{}\"]\n{extra}",
                fx.trusted_key(),
                second.public(),
                leaked.public()
            ),
        )
    };
    let mut vm = sandbox();
    fx.install(
        &mut vm,
        &[
            ("prod", fx.config("prod", None, "10s")),
            ("pinned", fx.config("prod", Some(with_b), "10s")),
            ("two", with_trust("two", "threshold = 2")),
            ("two-approved", with_trust("two-approved", "threshold = 2")),
            (
                "leaked",
                with_trust("leaked", &format!("revoked = [\"{}\"]", leaked.public())),
            ),
            ("stale", fx.config("stale", None, "10s")),
            ("stale-warn", with_trust("stale", "expired = \"warn\"")),
        ],
    );
    let ref_file = format!("{GUEST_STORE}/{}", fx.stack("prod").ref_name());
    let script = format!(
        r#"{VIEW}
echo "== clock"; date -u +%s
echo "== sync"; kstack --config /etc/kstack/prod.toml sync 2>&1; echo "rc=$?"
view synced
mkdir -p $(dirname {ref_file}); echo {with_b} > {ref_file}
echo "== plan-rewound"; kstack --config /etc/kstack/prod.toml plan 2>&1; echo "rc=$?"
echo "== sync-rewound"; kstack --config /etc/kstack/prod.toml sync 2>&1; echo "rc=$?"
view refused
echo "== plan-pinned"; kstack --config /etc/kstack/pinned.toml plan 2>&1; echo "rc=$?"
echo "== sync-allowed"; kstack --config /etc/kstack/prod.toml sync --allow-downgrade 2>&1; echo "rc=$?"
view allowed
echo "== two"; kstack --config /etc/kstack/two.toml plan 2>&1; echo "rc=$?"
echo "== leaked"; kstack --config /etc/kstack/leaked.toml plan 2>&1; echo "rc=$?"
echo "== stale"; kstack --config /etc/kstack/stale.toml sync 2>&1; echo "rc=$?"
echo "== stale-warn"; kstack --config /etc/kstack/stale-warn.toml plan 2>&1; echo "rc=$?"
echo "== two-approved"; kstack --config /etc/kstack/two-approved.toml sync 2>&1; echo "rc=$?"
view approved
echo "== status"; kstack --config /etc/kstack/two-approved.toml --json status
echo "== status-text"; kstack --config /etc/kstack/two-approved.toml status
chmod 0666 /etc/kstack/two-approved.toml
echo "== boot-writable-config"; kstack --config /etc/kstack/two-approved.toml sync --boot 2>&1; echo "rc=$?"
chmod 0644 /etc/kstack/two-approved.toml
chmod 0777 {GUEST_STATE}
echo "== rollback-writable-state"; kstack --config /etc/kstack/two-approved.toml rollback 2>&1; echo "rc=$?"
chmod 0700 {GUEST_STATE}
echo "== modes"; stat -c '%a %n' {GUEST_STATE}/state.toml {GUEST_STATE}/lock
view end
"#
    );
    let run = vm.run(&script).expect("the VM runs the script to its end");
    eprintln!(
        "guest stdout:\n{}\nguest stderr:\n{}",
        run.stdout, run.stderr
    );
    let s = sections(&run.stdout);

    // The guest's clock is the host's: windows are judged against real time.
    let now: i64 = s["clock"].trim().parse().unwrap();
    assert!(now > 1_700_000_000, "{}", s["clock"]);

    assert!(s["sync"].contains("rc=0"), "{}", s["sync"]);
    assert!(
        shows(&s["synced"], A) && !shows(&s["synced"], B),
        "{}",
        s["synced"]
    );

    // The ref moved back to the commit that still has B: refused, B stays off.
    for section in ["plan-rewound", "sync-rewound"] {
        let text = &s[section];
        assert!(text.contains("rc=65"), "{text}");
        assert!(text.contains(&short(&with_b)), "{text}");
        assert!(text.contains(&short(&head)), "{text}");
        assert!(text.contains("does not descend"), "{text}");
        assert!(text.contains("--allow-downgrade"), "{text}");
    }
    assert!(!shows(&s["refused"], B), "{}", s["refused"]);
    assert!(
        s["refused"].contains("lp: kstack_test_a "),
        "{}",
        s["refused"]
    );

    // Going back on purpose: a pin plans it, the flag syncs it (with a warning).
    assert!(s["plan-pinned"].contains("rc=2"), "{}", s["plan-pinned"]);
    assert!(
        s["plan-pinned"].contains("+ kstack_test_b"),
        "{}",
        s["plan-pinned"]
    );
    let allowed = &s["sync-allowed"];
    assert!(allowed.contains("rc=0"), "{allowed}");
    assert!(allowed.contains("warning: --allow-downgrade"), "{allowed}");
    assert!(shows(&s["allowed"], B), "{}", s["allowed"]);

    // One of two signatures: refused. A revoked signer: refused.
    assert!(s["two"].contains("rc=65"), "{}", s["two"]);
    assert!(s["two"].contains("threshold requires 2"), "{}", s["two"]);
    assert!(s["two"].contains("kstack approve"), "{}", s["two"]);
    assert!(s["leaked"].contains("rc=65"), "{}", s["leaked"]);
    assert!(s["leaked"].contains("revoked"), "{}", s["leaked"]);

    // Expired: refused, or a warning when the config says so.
    let stale_text = &s["stale"];
    assert!(stale_text.contains("rc=65"), "{stale_text}");
    assert!(stale_text.contains(&short(&stale)), "{stale_text}");
    assert!(
        stale_text.contains("expired at 2020-09-14T12:26:40Z"),
        "{stale_text}"
    );
    assert!(stale_text.contains("kstack renew"), "{stale_text}");
    assert!(s["stale-warn"].contains("rc=2"), "{}", s["stale-warn"]);
    assert!(
        s["stale-warn"].contains("Warning: stack stale's head"),
        "{}",
        s["stale-warn"]
    );
    assert!(s["stale-warn"].contains("EXPIRED"), "{}", s["stale-warn"]);

    // Two of two: synced.
    assert!(s["two-approved"].contains("rc=0"), "{}", s["two-approved"]);
    assert!(shows(&s["approved"], C), "{}", s["approved"]);
    let status: serde_json::Value = serde_json::from_str(s["status"].trim()).unwrap();
    assert_eq!(
        status["generation"]["commit"],
        approved.to_string(),
        "{status}"
    );
    assert_eq!(status["signers"].as_array().unwrap().len(), 2, "{status}");
    assert_eq!(status["validity"]["expired"], false, "{status}");
    assert_eq!(
        status["validity"]["signed_at"], "2023-11-14T22:13:20Z",
        "{status}"
    );
    assert!(
        s["status-text"].contains("validity:   signed 2023-11-14T22:13:20Z"),
        "{}",
        s["status-text"]
    );

    // Strict modes: the path is named, nothing changes.
    let boot = &s["boot-writable-config"];
    assert!(boot.contains("rc=65"), "{boot}");
    assert!(boot.contains("/etc/kstack/two-approved.toml"), "{boot}");
    assert!(boot.contains("every user"), "{boot}");
    let rollback = &s["rollback-writable-state"];
    assert!(rollback.contains("rc=65"), "{rollback}");
    assert!(rollback.contains(&format!("{GUEST_STATE},")), "{rollback}");
    assert!(rollback.contains("every user"), "{rollback}");
    assert!(shows(&s["end"], C), "{}", s["end"]);
    // What kstack created itself is private.
    assert!(
        s["modes"].contains(&format!("600 {GUEST_STATE}/state.toml")),
        "{}",
        s["modes"]
    );
    assert!(
        s["modes"].contains(&format!("600 {GUEST_STATE}/lock")),
        "{}",
        s["modes"]
    );
}
