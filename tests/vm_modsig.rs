//! Module signatures on a kernel that enforces them (`module.sig_enforce=1`,
//! `lockdown=integrity`, UEFI Secure Boot).
//!
//! Plain boot: the kernel trusts only its own build key, so kstack refuses both an
//! unsigned patch and one signed by a key of ours before loading, naming why, and the
//! kernel agrees (`insmod` of the same signed module: "Key was rejected").
//!
//! Boot through UEFI firmware (OVMF) whose `db` holds our certificate, as a real host
//! that enrolled it: the kernel's `.platform` keyring has the key, a patch that
//! `kstack commit` built and signed with `[build] module_signing_key` loads and works,
//! while a patch signed by another key and an unsigned one are still refused.
//!
//! Booted with `lockdown=integrity` (what Secure Boot sets), kstack names lockdown as
//! the reason it refuses an unsigned patch, and the kernel refuses it too.
//!
//! Booted with UEFI Secure Boot on (OVMF's Secure Boot build, our certificate as
//! PK, KEK and db, the kernel image signed with sbsign by the db key): the kernel
//! locks itself down, `status` reads Secure Boot from efivarfs, and a patch signed
//! by the db key loads while an unsigned one is refused.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kstack_engine::builder::assets::Cache;
use kstack_engine::builder::sign::ModuleSigner;
use kstack_engine::sandbox::Firmware;
use kstack_engine::sandbox::modules::ModuleSet;
use kstack_tests::{
    CliStore, DB_OWNER_GUID, SETUP, build_demo_module, example_patch, kernel, kstack_cli,
    module_signing_cert, ovmf_vars_with_db, run_ok, sandbox_with, sections,
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

/// What a host's init does before kstack runs: efivarfs is a module in Debian's
/// cloud kernel (CONFIG_EFIVAR_FS=m; signed with the kernel's build key, so it loads
/// under enforcement too), and the guest's init can mount it only when built in
/// ([`add_efivarfs`] puts the module in the guest).
///
/// The first `echo` ends the line OVMF's terminal set-up leaves on every serial port.
const EFIVARFS: &str = "echo\n\
    modprobe efivarfs 2>&1\n\
    mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>&1\n\
    echo '== efivarfs'; ls /sys/firmware/efi/efivars | grep -E '^(SecureBoot|PK|db)-'\n";

/// Puts the kernel's efivarfs module in the guest, for [`EFIVARFS`].
fn add_efivarfs(vm: &mut kstack_engine::sandbox::Sandbox) {
    vm.add_modules(
        &kernel().modules_dir(),
        &ModuleSet::Named(vec!["efivarfs".into()]),
    )
    .unwrap();
}

#[test]
fn under_lockdown_an_unsigned_patch_is_refused_before_loading() {
    let store = CliStore::new();
    let dir = tempfile::tempdir().unwrap();
    let demo = build_demo_module(&dir.path().join("demo"));
    commit_module(&store, "unsigned", "demo", &demo);

    // Lockdown as Secure Boot sets it, here from the command line; sig_enforce off.
    let mut vm = sandbox_with(|o| o.kernel_args.push("lockdown=integrity".into()));
    store.install(
        &mut vm,
        &[
            ("none", store.config(None, None, "15s")),
            ("unsigned", store.config(Some("unsigned"), None, "15s")),
        ],
    );
    vm.add_host_file("/root/unsigned.ko", &demo).unwrap();
    let mut script = sync_script(&["unsigned"]);
    script.push_str("echo '== insmod'; insmod /root/unsigned.ko 2>&1; echo \"rc=$?\"\n");
    script.push_str("echo '== dmesg'; dmesg | grep 'Lockdown:'\n");
    let run = vm.run(&script).unwrap();
    eprintln!("{}\n{}", run.stdout, run.stderr);
    let s = sections(&run.stdout);

    assert!(
        s["status"].contains("signatures: enforced (lockdown=integrity)"),
        "{}",
        s["status"]
    );
    let status: serde_json::Value = serde_json::from_str(s["status-json"].trim()).unwrap();
    let signing = &status["module_signing"];
    assert_eq!(signing["enforced"], true, "{signing}");
    assert_eq!(signing["sig_enforce"], false, "{signing}");
    assert_eq!(signing["lockdown"], "integrity", "{signing}");
    // No firmware: no EFI variables, so Secure Boot is not known.
    assert_eq!(signing["secure_boot"], serde_json::Value::Null, "{signing}");

    let unsigned = &s["sync unsigned"];
    assert!(unsigned.contains(REFUSED), "{unsigned}");
    assert!(
        unsigned.contains(
            "refused before anything was loaded: the kernel enforces module signatures \
             (lockdown=integrity); module kstack_demo (patch demo) is unsigned"
        ),
        "{unsigned}"
    );
    assert_eq!(
        s["after unsigned"].lines().count(),
        1,
        "{}",
        s["after unsigned"]
    );
    // The kernel agrees: lockdown refuses the unsigned module.
    assert!(!s["insmod"].contains("rc=0"), "{}", s["insmod"]);
    assert!(
        s["dmesg"].contains("unsigned module loading is restricted"),
        "{}",
        s["dmesg"]
    );
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
    add_efivarfs(&mut vm);
    store.install(
        &mut vm,
        &[
            ("none", store.config(None, None, "15s")),
            ("unsigned", store.config(Some("unsigned"), None, "15s")),
            ("stranger", store.config(Some("stranger"), None, "15s")),
            ("signed", store.config(Some("signed"), None, "15s")),
        ],
    );
    let mut script = String::from(EFIVARFS);
    script.push_str(&sync_script(&["unsigned", "stranger", "signed"]));
    script.push_str("echo '== taint'; kstack --config /etc/kstack/none.toml --json status\n");
    let run = vm.run(&script).unwrap();
    eprintln!("{}\n{}", run.stdout, run.stderr);
    let s = sections(&run.stdout);

    let status: serde_json::Value = serde_json::from_str(s["status-json"].trim()).unwrap();
    let signing = &status["module_signing"];
    assert_eq!(signing["enforced"], true, "{status}");
    // The certificate came from the firmware's db into the platform keyring.
    assert_our_certificate_is_in_the_platform_keyring(signing);
    // Secure Boot is off (these variables have no PK): read from efivarfs.
    let efivars = s
        .get("efivarfs")
        .unwrap_or_else(|| panic!("no efivarfs section in {:?}", run.stdout));
    assert!(efivars.contains("SecureBoot-"), "{efivars}");
    assert_eq!(signing["secure_boot"], false, "{signing}");
    assert_eq!(signing["sig_enforce"], true, "{signing}");
    assert_eq!(signing["lockdown"], "none", "{signing}");
    assert!(
        s["status"].contains("signatures: enforced (module.sig_enforce=1)"),
        "{}",
        s["status"]
    );

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

/// The certificate the test enrolled in the firmware (`kstack test fleet: ...`) is
/// among the keys `status` reports, in the kernel's `.platform` keyring: the kernel
/// took it from the firmware's `db`.
fn assert_our_certificate_is_in_the_platform_keyring(signing: &serde_json::Value) {
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
}

/// OVMF variables with Secure Boot on: `cert` is the platform key, the KEK and in
/// `db` (a host's owner enrolling their own keys), made with `virt-fw-vars`.
fn secure_boot_vars(cert: &Path, out: &Path) -> PathBuf {
    let tool = Cache::from_env().root().join("venv/bin/virt-fw-vars");
    assert!(
        tool.is_file(),
        "{} is missing\nrun `{SETUP}` first",
        tool.display()
    );
    run_ok(
        std::process::Command::new(tool)
            .arg("--input")
            .arg(kstack_engine::sandbox::OVMF_VARS)
            .arg("--output")
            .arg(out)
            .args(["--set-pk", DB_OWNER_GUID])
            .arg(cert)
            .args(["--add-kek", DB_OWNER_GUID])
            .arg(cert)
            .args(["--add-db", DB_OWNER_GUID])
            .arg(cert)
            .arg("--secure-boot"),
    );
    out.to_owned()
}

/// The kernel image with an Authenticode signature by `key` (sbsigntool's
/// `sbsign`), as Debian signs its own images for shim; verified with `sbverify`.
fn sbsign((key, cert): &(PathBuf, PathBuf), image: &Path, out: &Path) -> PathBuf {
    let tool = |name: &str| {
        let mut cmd = std::process::Command::new(name);
        cmd.env("PATH", "/usr/bin:/bin");
        cmd
    };
    let signed = tool("sbsign")
        .arg("--key")
        .arg(key)
        .arg("--cert")
        .arg(cert)
        .arg("--output")
        .arg(out)
        .arg(image)
        .output()
        .unwrap_or_else(|e| panic!("sbsign: {e} (Debian package sbsigntool)\nrun `{SETUP}` first"));
    assert!(
        signed.status.success(),
        "sbsign: {}",
        String::from_utf8_lossy(&signed.stderr)
    );
    run_ok(tool("sbverify").arg("--cert").arg(cert).arg(out));
    out.to_owned()
}

#[test]
fn under_uefi_secure_boot_the_kernel_locks_down_and_a_patch_signed_by_a_db_key_loads() {
    let store = CliStore::new();
    let dir = tempfile::tempdir().unwrap();
    let ours = module_signing_cert(dir.path(), "fleet", true);
    let module = commit_diff(&store, "signed", Some(&ours));
    commit_diff(&store, "unsigned", None);
    let vars = secure_boot_vars(&ours.1, &dir.path().join("vars.fd"));
    // The firmware boots only what db's key signed (the cloud kernel's own
    // signature is Debian's, which this db does not hold).
    let image = sbsign(
        &ours,
        &kernel().vmlinuz(),
        &dir.path().join("vmlinuz.signed"),
    );

    // No module.sig_enforce: the kernel locks itself down because the firmware
    // booted it with Secure Boot.
    let mut vm = sandbox_with(|o| {
        o.kernel = image.clone();
        o.firmware = Some(Firmware::ovmf_secure_boot(&vars));
    });
    add_efivarfs(&mut vm);
    store.install(
        &mut vm,
        &[
            ("none", store.config(None, None, "15s")),
            ("unsigned", store.config(Some("unsigned"), None, "15s")),
            ("signed", store.config(Some("signed"), None, "15s")),
        ],
    );
    let mut script = String::from(EFIVARFS);
    script.push_str(&sync_script(&["unsigned", "signed"]));
    script.push_str("echo '== taint'; kstack --config /etc/kstack/none.toml --json status\n");
    script.push_str("echo '== dmesg'; dmesg | grep -iE 'secure ?boot|locked down'\n");
    let run = vm.run(&script).unwrap();
    eprintln!("{}\n{}", run.stdout, run.stderr);
    let s = sections(&run.stdout);

    assert!(
        s["dmesg"].contains("Kernel is locked down from EFI Secure Boot"),
        "{}",
        s["dmesg"]
    );
    // Debian's kernel also sets module.sig_enforce itself when the firmware booted
    // with Secure Boot (the command line does not set it here).
    assert!(
        s["status"].contains(
            "signatures: enforced (module.sig_enforce=1, lockdown=integrity (UEFI Secure Boot))"
        ),
        "{}",
        s["status"]
    );
    let status: serde_json::Value = serde_json::from_str(s["status-json"].trim()).unwrap();
    let signing = &status["module_signing"];
    assert_eq!(signing["enforced"], true, "{signing}");
    assert_eq!(signing["secure_boot"], true, "{signing}");
    assert_eq!(signing["lockdown"], "integrity", "{signing}");
    assert_eq!(signing["sig_enforce"], true, "{signing}");
    assert_our_certificate_is_in_the_platform_keyring(signing);

    let unsigned = &s["sync unsigned"];
    assert!(unsigned.contains(REFUSED), "{unsigned}");
    assert!(
        unsigned.contains(
            "the kernel enforces module signatures \
             (module.sig_enforce=1, lockdown=integrity (UEFI Secure Boot))"
        ),
        "{unsigned}"
    );
    assert!(unsigned.contains("is unsigned"), "{unsigned}");
    assert_eq!(s["after unsigned"].lines().count(), 1);

    assert!(s["sync signed"].contains("rc=0"), "{}", s["sync signed"]);
    let after = &s["after signed"];
    assert!(after.contains(&module), "{after}");
    assert!(
        after
            .lines()
            .any(|l| l == "live-patched: proc-version-banner"),
        "{after}"
    );
    let taint: serde_json::Value = serde_json::from_str(s["taint"].trim()).unwrap();
    let flags = taint["taint_flags"].as_str().unwrap();
    assert!(flags.contains('K') && !flags.contains('E'), "{flags}");
    assert!(!run.console.contains("Oops"), "{}", run.console);
}
