//! Module signatures on a kernel that enforces them (`module.sig_enforce=1`).
//!
//! Plain boot: the kernel trusts only its own build key, so kstack refuses both an
//! unsigned patch and one signed by a key of ours before loading, naming why, and the
//! kernel agrees (`insmod` of the same signed module: "Key was rejected").
//!
//! Boot through UEFI firmware (OVMF) whose `db` holds our certificate, as a real host
//! that enrolled it: the kernel's `.platform` keyring has the key, a patch that
//! `kstack commit` built and signed with `[build] module_signing_key` loads and works,
//! while a patch signed by another key and an unsigned one are still refused.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kstack_engine::builder::sign::ModuleSigner;
use kstack_engine::sandbox::Firmware;
use kstack_tests::{
    CliStore, build_demo_module, example_patch, kernel, kstack_cli, module_signing_cert,
    ovmf_vars_with_db, run_ok, sandbox_with, sections,
};

/// The exit code of a refusal before anything was loaded (bad data).
const REFUSED: &str = "rc=65";

fn commit_module(store: &CliStore, stack: &str, name: &str, ko: &Path) {
    run_ok(
        kstack_cli()
            .arg("--store")
            .arg(&store.store)
            .args(["commit", "--module"])
            .arg(ko)
            .args([
                "--name", name, "-m", "a module", "--stack", stack, "--kernel",
            ])
            .arg(kernel().vmlinuz())
            .arg("--key")
            .arg(&store.key),
    );
}

/// `kstack commit DIFF --stack STACK`, with `[build]` signing by `signing` if given;
/// the name of the module sync loads.
fn commit_diff(store: &CliStore, stack: &str, signing: Option<&(PathBuf, PathBuf)>) -> String {
    let config = store.dir.path().join(format!("build-{stack}.toml"));
    let mut text = String::new();
    if let Some((key, cert)) = signing {
        text.push_str(&format!(
            "[build]\nmodule_signing_key = {:?}\nmodule_signing_cert = {:?}\n",
            key, cert
        ));
    }
    std::fs::write(&config, text).unwrap();
    let out = run_ok(
        kstack_cli()
            .arg("--store")
            .arg(&store.store)
            .arg("--config")
            .arg(&config)
            .args(["--json", "commit"])
            .arg(example_patch("0001-proc-version-banner.diff"))
            .args(["--stack", stack, "--key"])
            .arg(&store.key)
            .arg("--kernel")
            .arg(kernel().vmlinuz()),
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // Sync loads the stack's cumulative module (replace mode, the default): it is
    // built and signed with the patch's own.
    v["cumulative"]["module_name"]
        .as_str()
        .unwrap_or_else(|| panic!("no cumulative module: {v}"))
        .to_owned()
}

fn sync_script(stacks: &[&str]) -> String {
    let mut script = String::from(
        "export KSTACK_STATE_DIR=/var/lib/kstack\n\
         echo '== status'; kstack --config /etc/kstack/none.toml status 2>&1\n\
         echo '== status-json'; kstack --config /etc/kstack/none.toml --json status\n",
    );
    for stack in stacks {
        script.push_str(&format!(
            "echo '== plan {stack}'; kstack --config /etc/kstack/{stack}.toml --json plan 2>&1; echo \"rc=$?\"\n\
             echo '== sync {stack}'; kstack --config /etc/kstack/{stack}.toml sync 2>&1; echo \"rc=$?\"\n\
             echo '== after {stack}'; ls /sys/kernel/livepatch; cat /proc/version\n"
        ));
    }
    script
}

#[test]
fn under_sig_enforce_unsigned_and_untrusted_patches_are_refused_before_loading() {
    let store = CliStore::new();
    let dir = tempfile::tempdir().unwrap();
    let demo = build_demo_module(&dir.path().join("demo"));
    let (key, cert) = module_signing_cert(dir.path(), "ours", true);
    let signer = ModuleSigner::load(&key, &cert).unwrap();
    let signed = signer
        .sign(
            &std::fs::read(&demo).unwrap(),
            &kernel().headers(),
            &dir.path().join("sign"),
        )
        .unwrap();
    let signed_ko = dir.path().join("kstack_demo.signed.ko");
    std::fs::write(&signed_ko, &signed).unwrap();
    commit_module(&store, "unsigned", "demo", &demo);
    commit_module(&store, "signed", "demo", &signed_ko);

    let mut vm = sandbox_with(|o| o.kernel_args.push("module.sig_enforce=1".into()));
    store.install(
        &mut vm,
        &[
            ("none", store.config(None, None, "15s")),
            ("unsigned", store.config(Some("unsigned"), None, "15s")),
            ("signed", store.config(Some("signed"), None, "15s")),
        ],
    );
    vm.add_host_file("/root/signed.ko", &signed_ko).unwrap();
    let mut script = sync_script(&["unsigned", "signed"]);
    script.push_str("echo '== insmod'; insmod /root/signed.ko 2>&1; echo \"rc=$?\"\n");
    let run = vm.run(&script).unwrap();
    eprintln!("{}\n{}", run.stdout, run.stderr);
    let s = sections(&run.stdout);

    assert!(
        s["status"].contains("signatures: enforced (module.sig_enforce=1)"),
        "{}",
        s["status"]
    );
    let status: serde_json::Value = serde_json::from_str(s["status-json"].trim()).unwrap();
    assert_eq!(status["module_signing"]["enforced"], true);
    assert_eq!(status["module_signing"]["sig_enforce"], true);
    // The kernel's own build key is there, ours is not.
    let keys = status["module_signing"]["trusted_keys"].as_array().unwrap();
    assert!(!keys.is_empty(), "{status}");
    assert!(!keys.iter().any(|k| {
        k["description"]
            .as_str()
            .unwrap()
            .contains("kstack test ours")
    }));

    let unsigned = &s["sync unsigned"];
    assert!(unsigned.contains(REFUSED), "{unsigned}");
    assert!(
        unsigned.contains(
            "refused before anything was loaded: the kernel enforces module signatures \
             (module.sig_enforce=1); module kstack_demo (patch demo) is unsigned"
        ),
        "{unsigned}"
    );
    let plan: serde_json::Value =
        serde_json::from_str(s["plan unsigned"].lines().next().unwrap()).unwrap();
    assert_eq!(plan["error"]["exit_code"], 65, "{plan}");
    let untrusted = &s["sync signed"];
    assert!(untrusted.contains(REFUSED), "{untrusted}");
    assert!(
        untrusted.contains("a key the kernel does not trust"),
        "{untrusted}"
    );
    let key_id = kstack_kfacts::modsig::hex(signer.cert.key_id.as_ref().unwrap());
    assert!(untrusted.contains(&key_id), "{untrusted}");
    // Nothing reached the kernel.
    assert_eq!(
        s["after unsigned"].lines().count(),
        1,
        "{}",
        s["after unsigned"]
    );
    assert_eq!(
        s["after signed"].lines().count(),
        1,
        "{}",
        s["after signed"]
    );
    // The kernel agrees with kstack's verdict.
    assert!(
        s["insmod"].contains("Key was rejected by service"),
        "{}",
        s["insmod"]
    );
}

#[test]
fn with_the_certificate_in_the_firmware_db_a_signed_build_loads_under_enforcement() {
    let store = CliStore::new();
    let dir = tempfile::tempdir().unwrap();
    let ours = module_signing_cert(dir.path(), "fleet", true);
    let other = module_signing_cert(dir.path(), "stranger", true);
    let module = commit_diff(&store, "signed", Some(&ours));
    commit_diff(&store, "stranger", Some(&other));
    commit_diff(&store, "unsigned", None);
    let vars = ovmf_vars_with_db(&ours.1, &dir.path().join("vars.fd"));

    let mut vm = sandbox_with(|o| {
        o.kernel_args.push("module.sig_enforce=1".into());
        o.firmware = Some(Firmware::ovmf(&vars));
    });
    store.install(
        &mut vm,
        &[
            ("none", store.config(None, None, "15s")),
            ("unsigned", store.config(Some("unsigned"), None, "15s")),
            ("stranger", store.config(Some("stranger"), None, "15s")),
            ("signed", store.config(Some("signed"), None, "15s")),
        ],
    );
    let mut script = sync_script(&["unsigned", "stranger", "signed"]);
    script.push_str("echo '== taint'; kstack --config /etc/kstack/none.toml --json status\n");
    let run = vm.run(&script).unwrap();
    eprintln!("{}\n{}", run.stdout, run.stderr);
    let s = sections(&run.stdout);

    let status: serde_json::Value = serde_json::from_str(s["status-json"].trim()).unwrap();
    let signing = &status["module_signing"];
    assert_eq!(signing["enforced"], true, "{status}");
    // The certificate came from the firmware's db into the platform keyring.
    let keys = signing["trusted_keys"].as_array().unwrap();
    let ours_key = keys
        .iter()
        .find(|k| {
            k["description"]
                .as_str()
                .unwrap()
                .starts_with("kstack test fleet: ")
        })
        .unwrap_or_else(|| panic!("our certificate is not among {keys:?}"));
    assert_eq!(ours_key["keyring"], ".platform");
    // Secure Boot is off (the unsigned cloud kernel must boot). The guest cannot
    // read the variable (efivarfs is a module in this kernel): unknown, never true.
    assert_ne!(signing["secure_boot"], true, "{signing}");

    for refused in ["unsigned", "stranger"] {
        let out = &s[&format!("sync {refused}")];
        assert!(out.contains(REFUSED), "{refused}: {out}");
        assert_eq!(s[&format!("after {refused}")].lines().count(), 1);
    }
    assert!(s["sync unsigned"].contains("is unsigned"));
    assert!(s["sync stranger"].contains("a key the kernel does not trust"));

    let plan: serde_json::Value =
        serde_json::from_str(s["plan signed"].lines().next().unwrap()).unwrap();
    let sig = &plan["signatures"]["modules"][0];
    assert_eq!(sig["module"], module.as_str(), "{plan}");
    assert_eq!(sig["signature"], "signed");
    assert_eq!(sig["trust"], "trusted");
    assert_eq!(plan["signatures"]["enforced"], true);

    assert!(s["sync signed"].contains("rc=0"), "{}", s["sync signed"]);
    let after = &s["after signed"];
    assert!(after.contains(&module), "{after}");
    // The example patch's own check (0001-proc-version-banner.check): it is live.
    assert!(
        after
            .lines()
            .any(|l| l == "live-patched: proc-version-banner"),
        "{after}"
    );
    let taint: serde_json::Value = serde_json::from_str(s["taint"].trim()).unwrap();
    let flags = taint["taint_flags"].as_str().unwrap();
    assert!(flags.contains('K'), "{flags}");
    // A module whose signature verified does not taint the kernel as unsigned.
    assert!(!flags.contains('E'), "{flags}");
    assert!(!run.console.contains("Oops"), "{}", run.console);
}
