//! The store commands end to end, through the `kstack` binary, in the hermetic
//! environment of `common` (fixed author, key and timestamp: stable commit ids).

mod common;

use common::{BUILD_ID, Env, stderr, stdout};
use kstack_fixtures::FakeModule;

#[test]
fn init_is_idempotent() {
    let env = Env::new();
    let out = env.ok(&["init", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["created"], false);
    assert!(env.path("store/HEAD").exists());
}

#[test]
fn key_generate_and_show() {
    let env = Env::new();
    let key = env.path("keys/new.key");
    let out = env.run(&["key", "generate", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let public = stdout(&out);
    assert!(
        public.starts_with("ed25519:") && public.trim().len() == 72,
        "{public}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(env.ok(&["key", "show", key.to_str().unwrap()]), public);
    // Never over an existing key.
    let out = env.run(&["key", "generate", "--out", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already exists; refusing to overwrite a key"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.ok(&["key", "show", key.to_str().unwrap()]), public);
}

#[test]
fn commit_log_show_verify_stacks() {
    let env = Env::new();
    let out = env.commit("fix-cmdline", &["cmdline_proc_show"]);
    insta::assert_snapshot!(out, @"
    Committed fix-cmdline to stack prod (3b43fad50348) as patch 0001-fix-cmdline
      commit   809855c13b18e2eadfeca06f67bd255d685acc45
      module   kstack_fix-cmdline for 6.1.0-56-cloud-amd64
      replaces vmlinux:cmdline_proc_show
      cumulative none: patch fix-cmdline is a prebuilt module (commit --module), which kstack cannot build into a cumulative module
    ");
    env.commit("fix-meminfo", &["meminfo_proc_show"]);

    let log = env.ok(&["log"]);
    insta::assert_snapshot!(log, @"
    commit 66a8b96af8bcbce4b941a8f09f02dcf6c90a8249 (prod)
    Author: Test Author <test@example.invalid>
    Date:   2023-11-14T22:13:20Z
    Signer: ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61 (trusted)

        add fix-meminfo

    commit 809855c13b18e2eadfeca06f67bd255d685acc45
    Author: Test Author <test@example.invalid>
    Date:   2023-11-14T22:13:20Z
    Signer: ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61 (trusted)

        add fix-cmdline
    ");
    let oneline = env.ok(&["log", "--oneline", "prod~1"]);
    insta::assert_snapshot!(oneline, @"809855c13b18 add fix-cmdline");
    let show = common::stable_windows(&env.ok(&["show"]));
    insta::assert_snapshot!(show, @"
    commit 66a8b96af8bcbce4b941a8f09f02dcf6c90a8249
    Stack:  prod for kernel 3b43fad5034874490492495d552c0af6a5fab235 (6.1.0-56-cloud-amd64)
    Author: Test Author <test@example.invalid>
    Date:   2023-11-14T22:13:20Z
    Signer: ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61 (trusted; signature and digests verified)
    Valid:  signed 2023-11-14T22:13:20Z, expires 2023-12-14T22:13:20Z (EXPIRED N days ago)

        add fix-meminfo

    Patches (2, in load order):
      0001-fix-cmdline  module kstack_fix-cmdline
          replaces vmlinux:cmdline_proc_show
          module.ko    2152 bytes  sha256:98b8736d5f35af08c56a3bafd468e1c00d3aba4062875ea626a5daf456a109de
      0002-fix-meminfo  module kstack_fix-meminfo
          replaces vmlinux:meminfo_proc_show
          module.ko    2152 bytes  sha256:dc24d092e20282c41a8d55dd564d03f245bc647251de8be636cbea0c2a46299b
    No cumulative module: patch fix-cmdline is a prebuilt module (commit --module), which kstack cannot build into a cumulative module
    ");
    let verify = common::stable_windows(&env.ok(&["verify"]));
    insta::assert_snapshot!(verify, @"ok    3b43fad5034874490492495d552c0af6a5fab235/prod 66a8b96af8bc: 2 patch(es), 2 commit(s) of history, signed by ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61; signed 2023-11-14T22:13:20Z, expires 2023-12-14T22:13:20Z (EXPIRED N days ago)");
    let stacks = env.ok(&["stacks"]);
    assert!(stacks.starts_with(BUILD_ID), "{stacks}");
    assert!(stacks.contains("prod"), "{stacks}");

    let v: serde_json::Value = serde_json::from_str(&env.ok(&["show", "--json", "prod"])).unwrap();
    assert_eq!(v["trusted"], true);
    assert_eq!(v["verified"], true);
    assert_eq!(v["patches"][1]["functions"][0], "vmlinux:meminfo_proc_show");
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["log", "--json"])).unwrap();
    assert_eq!(v["commits"].as_array().unwrap().len(), 2);
    assert_eq!(v["commits"][0]["trusted"], true);
}

#[test]
fn log_without_config_says_untrusted() {
    let env = Env::new();
    env.commit("a", &["f"]);
    let out = env
        .command(&["log", "--config", "/nonexistent/kstack.toml"])
        .output()
        .unwrap();
    // A file named on the command line that cannot be read: a bad command line.
    assert_eq!(out.status.code(), Some(64), "an explicit config must exist");
    let out = env
        .command(&["log", &format!("{BUILD_ID}/prod")])
        .env_remove("KSTACK_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("(untrusted (no config))"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn commit_refuses_a_module_for_another_release() {
    let env = Env::new();
    env.commit("a", &["f"]);
    let path = env.path("other.ko");
    let mut m = FakeModule::livepatch("kstack_other", &["g"]);
    m.vermagic = "6.1.0-99-cloud-amd64 SMP mod_unload modversions ".into();
    std::fs::write(&path, m.build()).unwrap();
    let out = env.run(&[
        "commit",
        "--module",
        path.to_str().unwrap(),
        "--name",
        "other",
        "-m",
        "m",
        "--kernel",
        BUILD_ID,
    ]);
    // A stack for another kernel is bad data.
    assert_eq!(out.status.code(), Some(65));
    insta::assert_snapshot!(stderr(&out), @"error: other.ko was built for kernel 6.1.0-99-cloud-amd64, but stack 3b43fad5034874490492495d552c0af6a5fab235/prod is pinned to 6.1.0-56-cloud-amd64");
}

#[test]
fn revert_and_refused_overlap() {
    let env = Env::new();
    env.commit("a", &["f1", "f2"]);
    env.commit("b", &["f3"]);
    env.commit("c", &["f2"]);
    let out = env.run(&["revert", "a", "-m", "drop a"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(stderr(&out), @"error: cannot revert a: patches above it replace the same functions (c: vmlinux:f2); rebuild them without it first");
    let out = env.ok(&["revert", "b", "-m", "drop b"]);
    assert!(
        out.starts_with("Reverted b from stack prod (3b43fad50348): 2 patch(es) left"),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["show", "--json"])).unwrap();
    let dirs: Vec<&str> = v["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["dir"].as_str().unwrap())
        .collect();
    assert_eq!(dirs, ["0001-a", "0002-c"]);
}

#[test]
fn verify_names_a_missing_object_and_exits_65() {
    let env = Env::new();
    env.commit("a", &["f"]);
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["show", "--json"])).unwrap();
    let module_sha = v["patches"][0]["artifacts"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(module_sha.len(), 64);
    // Remove the module's blob from the object database.
    let store = kstack_store::store::Store::open(&env.path("store")).unwrap();
    let head = store.resolve("prod", None).unwrap().commit;
    let verified = store.check(head, None).unwrap();
    let blob = verified.patches[0].module_blob.to_string();
    std::fs::remove_file(env.path(&format!("store/objects/{}/{}", &blob[..2], &blob[2..])))
        .unwrap();

    let out = env.run(&["verify"]);
    assert_eq!(out.status.code(), Some(65));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "patches/0001-a/module.ko: object {blob} is missing from the store"
        )),
        "{text}"
    );
    let out = env.run(&["show", "--json"]);
    assert_eq!(out.status.code(), Some(65));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["error"]["kind"], "data");
}

#[test]
fn untrusted_signer_fails_verify() {
    let env = Env::new();
    env.commit("a", &["f"]);
    env.write_config(&["ed25519:e2a02cc93092575359d7fe2cd7e7ef9869696d7783c491e79cc0e80f2e59e080"]);
    let out = env.run(&["verify", "prod"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stdout(&out).contains("which is not a trusted key"),
        "{}",
        stdout(&out)
    );
    assert!(env.ok(&["log"]).contains("(untrusted)"));
}

#[test]
fn pull_between_stores() {
    let upstream = Env::new();
    upstream.commit("a", &["f1"]);
    upstream.commit("b", &["f2"]);
    let host = Env::new();
    let url = upstream.path("store").display().to_string();
    let out = host.ok(&["pull", &url]);
    assert!(out.starts_with("prod (3b43fad50348): new at "), "{out}");
    assert_eq!(
        host.ok(&["log", "--oneline"]),
        upstream.ok(&["log", "--oneline"])
    );
    let out = host.ok(&["pull", &url]);
    assert_eq!(out, "prod (3b43fad50348): up to date\n");

    // A host that trusts another key refuses the next pull and keeps its refs.
    upstream.commit("c", &["f3"]);
    host.write_config(&[
        "ed25519:e2a02cc93092575359d7fe2cd7e7ef9869696d7783c491e79cc0e80f2e59e080",
    ]);
    let before = host.ok(&["log", "--oneline"]);
    let out = host.run(&["pull", &url]);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr(&out).contains("refused; local refs are unchanged"),
        "{}",
        stderr(&out)
    );
    assert_eq!(host.ok(&["log", "--oneline"]), before);
}

#[test]
fn concurrent_commits_from_two_processes() {
    let env = Env::new();
    env.commit("base", &["f0"]);
    let a = env.module("a", &["f1"]);
    let b = env.module("b", &["f2"]);
    let spawn = |module: &str, name: &str| {
        env.command(&[
            "commit", "--module", module, "--name", name, "-m", name, "--kernel", BUILD_ID,
        ])
        .spawn()
        .unwrap()
    };
    let (mut pa, mut pb) = (spawn(&a, "a"), spawn(&b, "b"));
    let (sa, sb) = (pa.wait().unwrap(), pb.wait().unwrap());
    // Each succeeds (a lost race is retried) or says to retry (exit 75).
    for s in [sa, sb] {
        assert!(s.success() || s.code() == Some(75), "{s:?}");
    }
    let wins = [sa, sb].iter().filter(|s| s.success()).count();
    let log = env.ok(&["log", "--oneline"]);
    assert_eq!(log.lines().count(), 1 + wins, "{log}");
    env.ok(&["verify"]);
}

#[test]
fn errors_in_json() {
    let env = Env::new();
    let out = env.run(&["--json", "log", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["error"]["kind"], "user");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no stack and no commit"),
        "{v}"
    );
}

/// `verify --image` with the image of another kernel build: refused as sync would
/// refuse the stack on that kernel, before any code is compared, and worded as an
/// image check.
#[test]
fn verify_image_of_another_build_is_refused() {
    use kstack_fixtures::{FakeCompression, fake_bzimage, fake_vmlinux};
    let env = Env::new();
    env.commit("fix-cmdline", &["cmdline_proc_show"]);
    let other = fake_bzimage(&fake_vmlinux(&[0x54; 20], 4096), FakeCompression::Gzip);
    std::fs::write(env.path("vmlinuz-other"), other).unwrap();
    std::fs::write(env.path("kallsyms"), "ffffffff81000000 T _stext\n").unwrap();
    let out = env.run(&[
        "verify",
        "prod",
        "--image",
        "vmlinuz-other",
        "--kallsyms",
        "kallsyms",
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(65), "{text}\n{}", stderr(&out));
    assert!(
        text.starts_with("FAIL  prod: image check: vmlinuz-other is kernel build ID 5454"),
        "{text}"
    );
    assert!(
        text.contains(&format!("the stack is pinned to {BUILD_ID}")),
        "{text}"
    );
    assert!(!text.contains("ok "), "{text}");
    assert!(!text.contains("running code"), "{text}");
}
