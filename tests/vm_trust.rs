//! Trust beyond signatures, on the real Debian kernel in QEMU: what someone who can
//! write the store (or its mirror) but holds no trusted key can no longer do, and
//! what a fleet operator's policy adds. Checked in the kernel's own view
//! (`/sys/kernel/livepatch`, the `/proc` files the test patches change).
//!
//! - Rollback replay: the host synced the commit of `prod` that has patch B, then
//!   its head (a commit that reverted B); the ref is moved back to the older
//!   signed commit that still has B. `plan` and `sync` refuse it (exit 65) naming
//!   both commits; B stays off. Going back on purpose: `kstack rollback` (to the
//!   generation that had B; the next sync still refuses the rewound ref), a pin of
//!   the older commit (planned), or `sync --allow-downgrade`.
//! - Two-person rule: with `[trust] threshold = 2`, `sync` of a head signed by one
//!   key is refused and the host stays on its generation; the same head approved
//!   by a second key syncs.
//! - Revocation: a head signed only by a revoked key is refused.
//! - Freeze: an expired head is refused, or synced with a warning (exit 0) when
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
generations() {{ echo "== $1"; kstack --config /etc/kstack/prod.toml --json generations; }}
echo "== clock"; date -u +%s
mkdir -p $(dirname {ref_file}); echo {with_b} > {ref_file}
echo "== sync-with-b"; kstack --config /etc/kstack/prod.toml sync 2>&1; echo "rc=$?"
echo {head} > {ref_file}
echo "== sync"; kstack --config /etc/kstack/prod.toml sync 2>&1; echo "rc=$?"
view synced
echo {with_b} > {ref_file}
echo "== plan-rewound"; kstack --config /etc/kstack/prod.toml plan 2>&1; echo "rc=$?"
echo "== sync-rewound"; kstack --config /etc/kstack/prod.toml sync 2>&1; echo "rc=$?"
view refused
generations gen-refused
echo "== plan-pinned"; kstack --config /etc/kstack/pinned.toml plan 2>&1; echo "rc=$?"
echo "== rollback"; kstack --config /etc/kstack/prod.toml rollback 2>&1; echo "rc=$?"
view rolled-back
generations gen-rolled-back
echo "== sync-after-rollback"; kstack --config /etc/kstack/prod.toml sync 2>&1; echo "rc=$?"
echo {head} > {ref_file}
echo "== sync-forward"; kstack --config /etc/kstack/prod.toml sync 2>&1; echo "rc=$?"
view forward
echo {with_b} > {ref_file}
echo "== sync-allowed"; kstack --config /etc/kstack/prod.toml sync --allow-downgrade 2>&1; echo "rc=$?"
view allowed
generations gen-before-two
echo "== two"; kstack --config /etc/kstack/two.toml sync 2>&1; echo "rc=$?"
view two-refused
generations gen-after-two
echo "== leaked"; kstack --config /etc/kstack/leaked.toml plan 2>&1; echo "rc=$?"
echo "== stale"; kstack --config /etc/kstack/stale.toml sync 2>&1; echo "rc=$?"
echo "== two-approved"; kstack --config /etc/kstack/two-approved.toml sync 2>&1; echo "rc=$?"
view approved
echo "== status"; kstack --config /etc/kstack/two-approved.toml --json status
echo "== status-text"; kstack --config /etc/kstack/two-approved.toml status
echo "== stale-warn"; kstack --config /etc/kstack/stale-warn.toml sync 2>&1; echo "rc=$?"
generations gen-stale-warn
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

    let generations = |section: &str| -> serde_json::Value {
        serde_json::from_str(s[section].trim())
            .unwrap_or_else(|e| panic!("{section}: not JSON ({e}):\n{}", s[section]))
    };
    let current = |section: &str| -> (u64, String) {
        let g = generations(section);
        let number = g["current"].as_u64().unwrap_or_else(|| panic!("{g}"));
        let entry = g["generations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["number"] == number)
            .unwrap_or_else(|| panic!("{g}"));
        (number, entry["commit"].as_str().unwrap().to_owned())
    };

    // Generation 1 has B, generation 2 (the head) withdrew it.
    assert!(s["sync-with-b"].contains("rc=0"), "{}", s["sync-with-b"]);
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
    assert_eq!(current("gen-refused"), (2, head.to_string()));

    // Going back on purpose: a pin plans it, the flag syncs it (with a warning).
    assert!(s["plan-pinned"].contains("rc=2"), "{}", s["plan-pinned"]);
    assert!(
        s["plan-pinned"].contains("+ kstack_test_b"),
        "{}",
        s["plan-pinned"]
    );
    // `kstack rollback` goes back to the generation before, the one with B. The
    // next sync still refuses the rewound ref: it must descend from the newest
    // commit a sync made current (the head); the head itself syncs again.
    assert!(s["rollback"].contains("rc=0"), "{}", s["rollback"]);
    assert!(shows(&s["rolled-back"], B), "{}", s["rolled-back"]);
    assert_eq!(current("gen-rolled-back"), (1, with_b.to_string()));
    let after = &s["sync-after-rollback"];
    assert!(after.contains("rc=65"), "{after}");
    assert!(after.contains("does not descend"), "{after}");
    assert!(after.contains(&short(&head)), "{after}");
    assert!(s["sync-forward"].contains("rc=0"), "{}", s["sync-forward"]);
    assert!(!shows(&s["forward"], B), "{}", s["forward"]);
    let allowed = &s["sync-allowed"];
    assert!(allowed.contains("rc=0"), "{allowed}");
    assert!(allowed.contains("warning: --allow-downgrade"), "{allowed}");
    assert!(shows(&s["allowed"], B), "{}", s["allowed"]);

    // One of two signatures: sync refuses, the host stays where it was. A revoked
    // signer: refused.
    assert!(s["two"].contains("rc=65"), "{}", s["two"]);
    assert!(s["two"].contains("threshold requires 2"), "{}", s["two"]);
    assert!(s["two"].contains("kstack approve"), "{}", s["two"]);
    assert_eq!(
        generations("gen-after-two"),
        generations("gen-before-two"),
        "a refused sync makes no generation"
    );
    assert_eq!(current("gen-after-two").1, with_b.to_string());
    assert!(!shows(&s["two-refused"], C), "{}", s["two-refused"]);
    assert!(shows(&s["two-refused"], B), "{}", s["two-refused"]);
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
    // With expired = "warn", sync goes ahead (exit 0) and says why it should not.
    let warned = &s["stale-warn"];
    assert!(warned.contains("rc=0"), "{warned}");
    assert!(
        warned.contains(&format!(
            "warning: stack stale's head {} expired at 2020-09-14T12:26:40Z",
            short(&stale)
        )),
        "{warned}"
    );
    assert_eq!(current("gen-stale-warn").1, stale.to_string());

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
