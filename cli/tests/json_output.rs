//! The `--json` output of every command that runs without a VM, snapshotted: the
//! schema in docs/json.md, checked. Paths of the test's directory show as `[TMP]`;
//! times, keys and commit ids are fixed by the environment (`common`).

mod common;

use common::{BUILD_ID, Env};

#[test]
fn init() {
    let env = Env::new();
    let (code, json) = env.json(&["init"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(json, @r#"
    {
      "store": "[TMP]/store",
      "created": false
    }
    "#);
    let (_, json) = env.json(&["--store", env.path("other").to_str().unwrap(), "init"]);
    insta::assert_snapshot!(json, @r#"
    {
      "store": "[TMP]/other",
      "created": true
    }
    "#);
}

#[test]
fn key_show_and_generate() {
    let env = Env::new();
    let (code, json) = env.json(&["key", "show", "signing.key"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(json, @r#"
    {
      "path": "signing.key",
      "public_key": "ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61"
    }
    "#);
    let (code, json) = env.json(&["key", "generate", "--out", "keys/new.key"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["path"], "keys/new.key");
    let public = v["public_key"].as_str().unwrap();
    assert!(
        public.starts_with("ed25519:") && public.len() == 72,
        "{public}"
    );
}

#[test]
fn commit_of_a_module() {
    let env = Env::new();
    let module = env.module("fix-cmdline", &["cmdline_proc_show"]);
    let (code, json) = env.json(&[
        "commit",
        "--module",
        &module,
        "--name",
        "fix-cmdline",
        "-m",
        "Fix /proc/cmdline",
        "--kernel",
        BUILD_ID,
    ]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(json, @r#"
    {
      "commit": "e31548953193005b77d54167f4f0e11c6c618bff",
      "parent": null,
      "stack": {
        "build_id": "3b43fad5034874490492495d552c0af6a5fab235",
        "name": "prod"
      },
      "kernel_release": "6.1.0-56-cloud-amd64",
      "patch": {
        "name": "fix-cmdline",
        "dir": "0001-fix-cmdline",
        "module_name": "kstack_fix-cmdline",
        "manifest_sha256": "3d8993d55f04030fda67cba2c87fd3962ccefdd269d2cd4de1342b6b3d7b32cd",
        "functions": [
          "vmlinux:cmdline_proc_show"
        ]
      },
      "signer": "ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61",
      "validity": {
        "signed_at": "2023-11-14T22:13:20Z",
        "expires": "2023-12-14T22:13:20Z",
        "expired": true
      },
      "cumulative": {
        "module_name": null,
        "patches": [],
        "functions": [],
        "none_reason": "patch fix-cmdline is a prebuilt module (commit --module), which kstack cannot build into a cumulative module"
      }
    }
    "#);
}

/// A stack `prod` of two patches (two stack commits).
fn stack_with_history() -> Env {
    let env = Env::new();
    env.commit("fix-cmdline", &["cmdline_proc_show"]);
    env.commit("fix-meminfo", &["meminfo_proc_show"]);
    env
}

#[test]
fn log() {
    let env = stack_with_history();
    let (code, json) = env.json(&["log", "-n", "1"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(json, @r#"
    {
      "stack": {
        "build_id": "3b43fad5034874490492495d552c0af6a5fab235",
        "name": "prod"
      },
      "commits": [
        {
          "id": "66a8b96af8bcbce4b941a8f09f02dcf6c90a8249",
          "parents": [
            "809855c13b18e2eadfeca06f67bd255d685acc45"
          ],
          "author": "Test Author",
          "email": "test@example.invalid",
          "time": "2023-11-14T22:13:20Z",
          "message": "add fix-meminfo",
          "signer": "ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61",
          "signers": [
            {
              "key": "ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61",
              "standing": "trusted"
            }
          ],
          "trusted": true,
          "promoted_from": null
        }
      ]
    }
    "#);
}

#[test]
fn show() {
    let env = stack_with_history();
    let (code, json) = env.json(&["show", "prod~1"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(json, @r#"
    {
      "commit": "809855c13b18e2eadfeca06f67bd255d685acc45",
      "parents": [],
      "stack": {
        "build_id": "3b43fad5034874490492495d552c0af6a5fab235",
        "name": "prod",
        "kernel_release": "6.1.0-56-cloud-amd64"
      },
      "stack_sha256": "94789df40e96943926a0e3f549236b5836b4a8e6ba8c9af53b5a6e144887eba3",
      "author": "Test Author",
      "email": "test@example.invalid",
      "time": "2023-11-14T22:13:20Z",
      "message": "add fix-cmdline",
      "signer": "ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61",
      "signers": [
        {
          "key": "ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61",
          "standing": "trusted"
        }
      ],
      "trusted": true,
      "validity": {
        "signed_at": "2023-11-14T22:13:20Z",
        "expires": "2023-12-14T22:13:20Z",
        "expired": true
      },
      "verified": true,
      "promoted_from": null,
      "patches": [
        {
          "name": "fix-cmdline",
          "dir": "0001-fix-cmdline",
          "manifest_sha256": "3d8993d55f04030fda67cba2c87fd3962ccefdd269d2cd4de1342b6b3d7b32cd",
          "source": "prebuilt",
          "module_file": "fix-cmdline.ko",
          "module_name": "kstack_fix-cmdline",
          "vermagic": "6.1.0-56-cloud-amd64 SMP preempt mod_unload modversions ",
          "created_by": "Test Author <test@example.invalid>",
          "created_at": "2023-11-14T22:13:20Z",
          "functions": [
            "vmlinux:cmdline_proc_show"
          ],
          "artifacts": [
            {
              "path": "module.ko",
              "sha256": "98b8736d5f35af08c56a3bafd468e1c00d3aba4062875ea626a5daf456a109de",
              "size": 2152
            }
          ]
        }
      ],
      "cumulative": {
        "module_name": null,
        "patches": [],
        "functions": [],
        "none_reason": "patch fix-cmdline is a prebuilt module (commit --module), which kstack cannot build into a cumulative module"
      }
    }
    "#);
}

#[test]
fn verify() {
    let env = stack_with_history();
    let (code, json) = env.json(&["verify"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(json, @r#"
    {
      "results": [
        {
          "rev": "3b43fad5034874490492495d552c0af6a5fab235/prod",
          "commit": "66a8b96af8bcbce4b941a8f09f02dcf6c90a8249",
          "ok": true,
          "patches": 2,
          "history": 2,
          "history_vouched": 0,
          "signer": "ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61",
          "signers": [
            "ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61"
          ],
          "validity": {
            "signed_at": "2023-11-14T22:13:20Z",
            "expires": "2023-12-14T22:13:20Z",
            "expired": true
          },
          "run_pre": null
        }
      ],
      "failed": 0
    }
    "#);
    // A failed verification is a result, and the exit code says so.
    env.write_config(&["ed25519:e2a02cc93092575359d7fe2cd7e7ef9869696d7783c491e79cc0e80f2e59e080"]);
    let (code, json) = env.json(&["verify"]);
    assert_eq!(code, 65);
    insta::assert_snapshot!(json, @r#"
    {
      "results": [
        {
          "rev": "3b43fad5034874490492495d552c0af6a5fab235/prod",
          "commit": "66a8b96af8bcbce4b941a8f09f02dcf6c90a8249",
          "ok": false,
          "error": "commit 66a8b96af8bc: signed by ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61, which is not a trusted key"
        }
      ],
      "failed": 1
    }
    "#);
}

#[test]
fn stacks() {
    let env = stack_with_history();
    let (code, json) = env.json(&["stacks"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(json, @r#"
    {
      "stacks": [
        {
          "build_id": "3b43fad5034874490492495d552c0af6a5fab235",
          "name": "prod",
          "head": "66a8b96af8bcbce4b941a8f09f02dcf6c90a8249",
          "time": "2023-11-14T22:13:20Z",
          "summary": "add fix-meminfo",
          "signer": "ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61",
          "trusted": true,
          "running_kernel": false
        }
      ]
    }
    "#);
}

#[test]
fn revert() {
    let env = stack_with_history();
    let (code, json) = env.json(&["revert", "fix-cmdline", "-m", "drop it"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(json, @r#"
    {
      "commit": "ce612fcdf34de491de1cc477c5cc5aee5347433a",
      "parent": "66a8b96af8bcbce4b941a8f09f02dcf6c90a8249",
      "stack": {
        "build_id": "3b43fad5034874490492495d552c0af6a5fab235",
        "name": "prod"
      },
      "reverted": "fix-cmdline",
      "patches": [
        "fix-meminfo"
      ],
      "cumulative": {
        "module_name": null,
        "patches": [],
        "functions": [],
        "none_reason": "patch fix-meminfo is a prebuilt module (commit --module), which kstack cannot build into a cumulative module"
      }
    }
    "#);
}

/// A second key, the approver's (fixed seed, so ids stay stable).
const SECOND_SECRET: &str =
    "ed25519-secret:2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b";

#[test]
fn approve_and_renew() {
    let env = stack_with_history();
    let second = env.path("second.key");
    std::fs::write(&second, format!("{SECOND_SECRET}\n")).unwrap();
    common::set_mode(&second, 0o600);
    let first_public = env.ok(&["key", "show", "signing.key"]);
    let second_public = env.ok(&["key", "show", "second.key"]);
    // Two of two: the head alone is not trusted, approved it is.
    env.write_config(&[first_public.trim(), second_public.trim()]);
    let config = std::fs::read_to_string(env.path("kstack.toml")).unwrap();
    std::fs::write(
        env.path("kstack.toml"),
        config.replace("[trust]\n", "[trust]\nthreshold = 2\n"),
    )
    .unwrap();
    let (code, _) = env.json(&["verify", "prod"]);
    assert_eq!(code, 65);
    let (code, json) = env.json(&["approve", "prod", "--key", "second.key"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(json, @r#"
    {
      "commit": "7d385ad7cd8f195db396a6fa7855832c0a0b1024",
      "replaces": "66a8b96af8bcbce4b941a8f09f02dcf6c90a8249",
      "stack": {
        "build_id": "3b43fad5034874490492495d552c0af6a5fab235",
        "name": "prod"
      },
      "stack_sha256": "e8aa7c5357d86b7a5853d6ed0a0d09c3987e4ce8d2127e336d42534ac01e5ecf",
      "signers": [
        {
          "key": "ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61",
          "standing": "trusted"
        },
        {
          "key": "ed25519:4508a07aa941707f3eb2db94c8897a80b2c1197476b6de213ac273df7d86c4ff",
          "standing": "trusted"
        }
      ],
      "trusted": true
    }
    "#);
    let (code, _) = env.json(&["verify", "prod"]);
    assert_eq!(code, 0);
    // `log` and `show` list both signers: the author's key, then the approval.
    let (first, second) = (first_public.trim(), second_public.trim());
    let text = env.ok(&["log", "-n", "1"]);
    assert!(
        text.contains(&format!("Signer: {first} (trusted)\n"))
            && text.contains(&format!("Approved-by: {second} (trusted)\n")),
        "{text}"
    );
    let text = env.ok(&["show", "prod"]);
    assert!(
        text.contains(&format!("Signer: {first} (trusted;"))
            && text.contains(&format!("Approved-by: {second} (trusted;")),
        "{text}"
    );
    let signers = |json: &serde_json::Value| -> Vec<(String, String)> {
        json["signers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["key"].to_string(), s["standing"].to_string()))
            .collect()
    };
    let both = vec![
        (format!("{first:?}"), "\"trusted\"".to_owned()),
        (format!("{second:?}"), "\"trusted\"".to_owned()),
    ];
    let (code, json) = env.json(&["log", "-n", "1"]);
    assert_eq!(code, 0);
    let log: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(signers(&log["commits"][0]), both, "{json}");
    assert_eq!(log["commits"][0]["trusted"], true, "{json}");
    let (code, json) = env.json(&["show", "prod"]);
    assert_eq!(code, 0);
    let show: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(signers(&show), both, "{json}");
    assert_eq!(show["signer"].as_str(), Some(first), "{json}");
    assert_eq!(show["trusted"], true, "{json}");

    let (code, json) = env.json(&["approve", "prod", "--key", "second.key"]);
    assert_eq!(code, 1, "{json}");
    assert!(json.contains("already signed"), "{json}");

    let (code, json) = env.json(&["renew", "prod", "--valid-for", "7d"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(json, @r#"
    {
      "commit": "42c7992107342ea6b491e8c15ba9ee1af6d63c82",
      "parent": "7d385ad7cd8f195db396a6fa7855832c0a0b1024",
      "stack": {
        "build_id": "3b43fad5034874490492495d552c0af6a5fab235",
        "name": "prod"
      },
      "validity": {
        "signed_at": "2023-11-14T22:13:20Z",
        "expires": "2023-11-21T22:13:20Z",
        "expired": true
      },
      "signer": "ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61"
    }
    "#);
}

/// Writes the config's `[trust]` with these keys and revoked keys.
fn write_trust(env: &Env, keys: &[&str], revoked: &[&str]) {
    env.write_config(keys);
    let revoked: Vec<String> = revoked.iter().map(|k| format!("{k:?}")).collect();
    let config = std::fs::read_to_string(env.path("kstack.toml")).expect("the config");
    std::fs::write(
        env.path("kstack.toml"),
        config.replace(
            "[trust]\n",
            &format!("[trust]\nrevoked = [{}]\n", revoked.join(", ")),
        ),
    )
    .expect("writing the config");
}

#[test]
fn verify_vouches_for_history_signed_by_a_key_rotated_out_or_revoked() {
    // The first commit is signed by the old key, the second by the new one.
    let env = Env::new();
    let new_key = env.path("second.key");
    std::fs::write(&new_key, format!("{SECOND_SECRET}\n")).unwrap();
    common::set_mode(&new_key, 0o600);
    let old = env.ok(&["key", "show", "signing.key"]);
    let new = env.ok(&["key", "show", "second.key"]);
    let (old, new) = (old.trim(), new.trim());
    env.commit("fix-cmdline", &["cmdline_proc_show"]);
    write_trust(&env, &[old, new], &[]);
    let module = env.module("fix-meminfo", &["meminfo_proc_show"]);
    env.ok(&[
        "commit",
        "--module",
        &module,
        "--name",
        "fix-meminfo",
        "-m",
        "add fix-meminfo",
        "--key",
        "second.key",
    ]);

    // The old key removed from [trust] keys, then kept there but revoked: either
    // way the history it signed verifies, vouched for by the trusted head.
    for (keys, revoked) in [(vec![new], vec![]), (vec![old, new], vec![old])] {
        write_trust(&env, &keys, &revoked);
        let out = env.run(&["verify", "prod"]);
        let text = common::stdout(&out);
        assert_eq!(out.status.code(), Some(0), "{text}{}", common::stderr(&out));
        assert!(
            text.contains(
                "2 commit(s) of history (1 signed by keys not trusted today, vouched for by the head)"
            ),
            "{text}"
        );
        let (code, json) = env.json(&["verify", "prod"]);
        assert_eq!(code, 0, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let result = &v["results"][0];
        assert_eq!(result["ok"], true, "{json}");
        assert_eq!(result["history"], 2, "{json}");
        assert_eq!(result["history_vouched"], 1, "{json}");
        assert_eq!(result["signers"], serde_json::json!([new]), "{json}");
    }

    // A head signed only by the revoked key is refused, whatever it signs on.
    write_trust(&env, &[old, new], &[]);
    env.commit("fix-version", &["version_proc_show"]);
    write_trust(&env, &[old, new], &[old]);
    let out = env.run(&["verify", "prod"]);
    let text = common::stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(65),
        "{text}{}",
        common::stderr(&out)
    );
    assert!(text.contains("FAIL") && text.contains("revoked"), "{text}");
    let (code, json) = env.json(&["verify", "prod"]);
    assert_eq!(code, 65, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["results"][0]["ok"], false, "{json}");
    assert_eq!(v["failed"], 1, "{json}");
    let error = v["results"][0]["error"].as_str().unwrap();
    assert!(error.contains(old) && error.contains("revoked"), "{error}");
}

#[test]
fn pull() {
    let upstream = stack_with_history();
    let host = Env::new();
    let url = upstream.path("store").display().to_string();
    let (code, json) = host.json(&["pull", &url]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(upstream.redact(&json), @r#"
    {
      "url": "[TMP]/store",
      "stacks": [
        {
          "build_id": "3b43fad5034874490492495d552c0af6a5fab235",
          "name": "prod",
          "old": null,
          "new": "66a8b96af8bcbce4b941a8f09f02dcf6c90a8249",
          "outcome": "updated"
        }
      ]
    }
    "#);
}

#[test]
fn generations() {
    let env = Env::new();
    let (code, json) = env.json(&["generations"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(json, @r#"
    {
      "current": null,
      "generations": []
    }
    "#);
    std::fs::create_dir_all(env.path("state")).unwrap();
    std::fs::write(
        env.path("state/state.toml"),
        format!(
            "current = 2\n\n\
             [[generation]]\nnumber = 1\ncommit = \"\"\nstack = \"\"\nbuild_id = \"{BUILD_ID}\"\n\
             created_at = \"2023-11-14T22:13:20Z\"\nmodules = []\n\n\
             [[generation]]\nnumber = 2\ncommit = \"d513e202825a496e538c61232a07a4fae1193389\"\n\
             stack = \"prod\"\nbuild_id = \"{BUILD_ID}\"\ncreated_at = \"2023-11-14T22:15:00Z\"\n\
             modules = [\"kstack_fix-cmdline\"]\n"
        ),
    )
    .unwrap();
    let (code, json) = env.json(&["generations"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(json, @r#"
    {
      "current": 2,
      "generations": [
        {
          "number": 1,
          "commit": "",
          "stack": "",
          "build_id": "3b43fad5034874490492495d552c0af6a5fab235",
          "created_at": "2023-11-14T22:13:20Z",
          "modules": []
        },
        {
          "number": 2,
          "commit": "d513e202825a496e538c61232a07a4fae1193389",
          "stack": "prod",
          "build_id": "3b43fad5034874490492495d552c0af6a5fab235",
          "created_at": "2023-11-14T22:15:00Z",
          "modules": [
            "kstack_fix-cmdline"
          ]
        }
      ]
    }
    "#);
}

#[test]
fn kernel_list() {
    let env = Env::new();
    let (code, json) = env.json(&["kernel", "list"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(json, @"[]");
    env.fake_cache(true, &[]);
    let (code, json) = env.json(&["kernel", "list"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(json, @r#"
    [
      {
        "release": "6.1.0-99-kstack-test",
        "line": "6.1",
        "flavour": "kstack-test",
        "version": "6.1.999-1",
        "build_id": "3b43fad5034874490492495d552c0af6a5fab235",
        "default": true,
        "headers": false,
        "source": "[TMP]/cache/src/6.1.0-99-kstack-test/linux",
        "tree": null
      }
    ]
    "#);
}

/// `kernel add` refuses a flavour or line kstack does not build for before it asks
/// apt for anything.
#[test]
fn kernel_add_refuses_other_lines_and_flavours() {
    let env = Env::new();
    let (code, json) = env.json(&["kernel", "add", "6.1.0-56-rt-amd64"]);
    assert_eq!(code, 64);
    insta::assert_snapshot!(json, @r#"
    {
      "error": {
        "kind": "usage",
        "message": "kernel 6.1.0-56-rt-amd64 cannot be added: flavour rt-amd64 is not one kstack builds for and tests on (it takes cloud-amd64 and amd64)",
        "chain": [
          "kernel 6.1.0-56-rt-amd64 cannot be added: flavour rt-amd64 is not one kstack builds for and tests on (it takes cloud-amd64 and amd64)"
        ],
        "hint": "kstack takes Debian 12's 6.1 and 6.12 lines, flavours cloud-amd64 and amd64 (`kstack kernel add 6.12-cloud-amd64` for 6.12's newest)",
        "exit_code": 64
      }
    }
    "#);
    let (code, json) = env.json(&["kernel", "add", "5.10-amd64"]);
    assert_eq!(code, 64);
    insta::assert_snapshot!(json, @r#"
    {
      "error": {
        "kind": "usage",
        "message": "kernel 5.10-amd64 cannot be added: line 5.10 is not one kstack builds for (it builds for Debian 12's lines 6.1 and 6.12)",
        "chain": [
          "kernel 5.10-amd64 cannot be added: line 5.10 is not one kstack builds for (it builds for Debian 12's lines 6.1 and 6.12)"
        ],
        "hint": "kstack takes Debian 12's 6.1 and 6.12 lines, flavours cloud-amd64 and amd64 (`kstack kernel add 6.12-cloud-amd64` for 6.12's newest)",
        "exit_code": 64
      }
    }
    "#);
}

/// Errors are one document too, with the kind, the chain of causes and the exit code.
#[test]
fn errors() {
    let env = Env::new();
    // A store that is not there (status reads the store before the kernel).
    let (code, json) = env.json(&["--store", "nowhere", "status"]);
    assert_eq!(code, 1);
    insta::assert_snapshot!(json, @r#"
    {
      "error": {
        "kind": "user",
        "message": "nowhere is not a kstack store (no bare Git repository there); run `kstack init`: \"nowhere\" does not appear to be a git repository: Could not retrieve metadata of \"nowhere\": No such file or directory (os error 2)",
        "chain": [
          "nowhere is not a kstack store (no bare Git repository there); run `kstack init`",
          "\"nowhere\" does not appear to be a git repository",
          "Could not retrieve metadata of \"nowhere\"",
          "No such file or directory (os error 2)"
        ],
        "hint": "create it with `kstack init --store nowhere`, or point --store at it",
        "exit_code": 1
      }
    }
    "#);
    // A config that does not parse.
    std::fs::write(env.path("bad.toml"), "[stack\nname = 1\n").unwrap();
    let (code, json) = env.json(&["--config", "bad.toml", "plan"]);
    assert_eq!(code, 65);
    insta::assert_snapshot!(json, @r#"
    {
      "error": {
        "kind": "data",
        "message": "invalid config bad.toml:\nTOML parse error at line 1, column 7\n  |\n1 | [stack\n  |       ^\nunclosed table, expected `]`\n",
        "chain": [
          "invalid config bad.toml:\nTOML parse error at line 1, column 7\n  |\n1 | [stack\n  |       ^\nunclosed table, expected `]`\n"
        ],
        "hint": null,
        "exit_code": 65
      }
    }
    "#);
    // A revision that names nothing.
    let (code, json) = env.json(&["show", "nope"]);
    assert_eq!(code, 1);
    insta::assert_snapshot!(json, @r#"
    {
      "error": {
        "kind": "user",
        "message": "revision \"nope\" names no stack and no commit in the store",
        "chain": [
          "revision \"nope\" names no stack and no commit in the store"
        ],
        "hint": "see `kstack stacks` and `kstack log`",
        "exit_code": 1
      }
    }
    "#);
    // Usage errors of kstack's own (clap's are text on stderr, exit 64).
    let (code, json) = env.json(&["revert", "Bad Name", "-m", "m"]);
    assert_eq!(code, 64);
    insta::assert_snapshot!(json, @r#"
    {
      "error": {
        "kind": "usage",
        "message": "bad patch name \"Bad Name\": use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        "chain": [
          "bad patch name \"Bad Name\": use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        ],
        "hint": "name a patch of the stack (see `kstack show`)",
        "exit_code": 64
      }
    }
    "#);
}

#[test]
fn promote_and_the_log_of_a_promotion() {
    let env = stack_with_history();
    let (code, json) = env.json(&["promote", "prod", "production"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(json, @r#"
    {
      "commit": "644294b41f92091e8dc91dd5122451163719dc3a",
      "parent": null,
      "stack": {
        "build_id": "3b43fad5034874490492495d552c0af6a5fab235",
        "name": "production"
      },
      "promoted_from": {
        "stack": "prod",
        "commit": "66a8b96af8bcbce4b941a8f09f02dcf6c90a8249"
      },
      "changed": true,
      "validity": {
        "signed_at": "2023-11-14T22:13:20Z",
        "expires": "2023-12-14T22:13:20Z",
        "expired": true
      },
      "patches": [
        "fix-cmdline",
        "fix-meminfo"
      ]
    }
    "#);
    // Again: production has these patches already.
    let (code, json) = env.json(&["promote", "prod", "production"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["changed"], false);
    assert_eq!(v["parent"], serde_json::Value::Null);
    let (code, json) = env.json(&["log", "production"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(json, @r#"
    {
      "stack": {
        "build_id": "3b43fad5034874490492495d552c0af6a5fab235",
        "name": "production"
      },
      "commits": [
        {
          "id": "644294b41f92091e8dc91dd5122451163719dc3a",
          "parents": [],
          "author": "Test Author",
          "email": "test@example.invalid",
          "time": "2023-11-14T22:13:20Z",
          "message": "Promote prod 66a8b96af8bc to production",
          "signer": "ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61",
          "signers": [
            {
              "key": "ed25519:197f6b23e16c8532c6abc838facd5ea789be0c76b2920334039bfa8b3d368d61",
              "standing": "trusted"
            }
          ],
          "trusted": true,
          "promoted_from": {
            "stack": "prod",
            "commit": "66a8b96af8bcbce4b941a8f09f02dcf6c90a8249"
          }
        }
      ]
    }
    "#);
    let text = env.ok(&["log", "--oneline", "production"]);
    assert!(text.contains("[from prod 66a8b96af8bc]"), "{text}");
    let (_, show) = env.json(&["show", "production"]);
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(v["promoted_from"]["stack"], "prod");
    // Promoting onto itself is a usage error.
    let (code, json) = env.json(&["promote", "prod", "prod"]);
    assert_eq!(code, 64, "{json}");
}
