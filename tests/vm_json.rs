//! The `--json` documents of the commands that act on the kernel (`plan`, `sync`,
//! `status`, `rollback`, `generations`), made by the real Debian kernel in QEMU and
//! snapshotted whole: the schema of docs/json.md, checked field by field on a
//! real stack of two livepatch modules.
//!
//! What changes from run to run or from kernel to kernel is redacted by its shape,
//! wherever it appears (a field or inside a message): commit ids by the fixture's
//! name for them (`[one]`, `[two]`), the kernel's build ID and release, other
//! 40-hex ids, SHA-256 digests, kernel addresses, times, durations (`ms`) and the
//! kernel's module-signing keys; the fixture's signing key shows as `[KEY]`.

use std::collections::BTreeMap;

use kstack_tests::stack::StackFixture;
use kstack_tests::{build_test_module, sandbox, sections};
use serde_json::Value;

/// Redacts one document. `names` maps full commit ids to the names the snapshots
/// show; `fixed` replaces exact strings (the build ID, the release) first.
struct Redactor {
    names: BTreeMap<String, String>,
    fixed: Vec<(String, &'static str)>,
}

impl Redactor {
    fn document(&self, text: &str) -> String {
        let mut value: Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("--json printed no JSON ({e}):\n{text}"));
        self.value(None, &mut value);
        serde_json::to_string_pretty(&value).expect("a JSON value prints")
    }

    fn value(&self, key: Option<&str>, value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    self.value(Some(k), v);
                }
            }
            Value::Array(items) => {
                // The kernel's keyrings hold its distribution's signing keys: they
                // differ by kernel, and are not kstack's output.
                if key == Some("trusted_keys") {
                    *value = Value::String(format!("[{} keys]", items.len()));
                    return;
                }
                for item in items {
                    self.value(key, item);
                }
            }
            Value::Number(_) if key.is_some_and(|k| k == "ms" || k.ends_with("_ms")) => {
                *value = Value::String("[MS]".into());
            }
            Value::String(s) => *s = self.text(s),
            _ => {}
        }
    }

    /// Replaces every hex word (a run of hex digits between non-alphanumerics) of
    /// 8 or more digits, and every RFC 3339 time, in `text`.
    fn text(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (from, to) in &self.fixed {
            text = text.replace(from, to);
        }
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(start) = rest.find(|c: char| c.is_ascii_alphanumeric()) {
            out.push_str(&rest[..start]);
            rest = &rest[start..];
            if let Some(len) = time_len(rest) {
                out.push_str("[TIME]");
                rest = &rest[len..];
                continue;
            }
            let end = rest
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .unwrap_or(rest.len());
            let word = &rest[..end];
            // Ids of the usual lengths whatever their digits; other hex words only
            // with a digit, so that a word like "deadbeef" or "acceded" stays.
            let hex = word.bytes().all(|b| b.is_ascii_hexdigit())
                && (matches!(word.len(), 12 | 16 | 40 | 64)
                    || word.bytes().any(|b| b.is_ascii_digit()));
            out.push_str(&match (hex, word.len()) {
                (true, 40) => self
                    .names
                    .get(word)
                    .map_or_else(|| "[ID]".to_owned(), |n| format!("[{n}]")),
                (true, 12) => self
                    .names
                    .iter()
                    .find(|(id, _)| id.starts_with(word))
                    .map_or_else(|| "[HEX]".to_owned(), |(_, n)| format!("[{n}]")),
                (true, 64) => "[SHA256]".to_owned(),
                (true, 16) => "[ADDR]".to_owned(),
                (true, n) if n >= 8 => "[HEX]".to_owned(),
                _ => word.to_owned(),
            });
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }
}

/// The length of an RFC 3339 UTC time (`2023-11-14T22:13:20Z`, with optional
/// fractional seconds) at the start of `s`.
fn time_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    let shape = digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && b.get(10) == Some(&b'T')
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19);
    if !shape {
        return None;
    }
    let mut len = 19;
    if b.get(len) == Some(&b'.') {
        len += 1;
        while b.get(len).is_some_and(u8::is_ascii_digit) {
            len += 1;
        }
    }
    if b.get(len) == Some(&b'Z') {
        len += 1;
    } else if matches!(b.get(len), Some(b'+' | b'-')) && digits(len + 1..len + 3) {
        len += 6;
    }
    Some(len)
}

#[test]
fn the_json_of_plan_sync_status_rollback_and_generations() {
    let fx = StackFixture::new();
    let one = fx.commit("prod", "a", &build_test_module("kstack_test_a"));
    let two = fx.commit("prod", "b", &build_test_module("kstack_test_b"));
    let mut vm = sandbox();
    fx.install(
        &mut vm,
        &[
            ("one", fx.config("prod", Some(one), "10s")),
            ("two", fx.config("prod", None, "10s")),
        ],
    );
    // Each command's document (one line) and its exit code; what it says on
    // stderr goes to the run's stderr.
    let script = r#"export KSTACK_STATE_DIR=/var/lib/kstack
j() { name=$1; shift; out=$(kstack --json "$@"); rc=$?; echo "== $name"; echo "$out"; echo "== $name-rc"; echo "$rc"; }
j plan --config /etc/kstack/one.toml plan
j sync --config /etc/kstack/one.toml sync
j plan-two --config /etc/kstack/two.toml plan
j sync-two --config /etc/kstack/two.toml sync
j sync-nothing --config /etc/kstack/two.toml sync
j status --config /etc/kstack/two.toml status
j rollback --config /etc/kstack/two.toml rollback
j generations --config /etc/kstack/two.toml generations
"#;
    let run = vm.run(script).expect("the VM runs the script to its end");
    eprintln!(
        "guest stdout:\n{}\nguest stderr:\n{}",
        run.stdout, run.stderr
    );
    let s = sections(&run.stdout);
    let redactor = Redactor {
        names: [
            (one.to_string(), "one".into()),
            (two.to_string(), "two".into()),
        ]
        .into(),
        fixed: vec![
            (fx.build_id.to_hex(), "[BUILD_ID]"),
            (fx.release.clone(), "[RELEASE]"),
            (fx.trusted_key(), "[KEY]"),
        ],
    };
    let doc = |name: &str, rc: i32| -> String {
        assert_eq!(
            s[&format!("{name}-rc")].trim(),
            rc.to_string(),
            "exit code of {name}:\n{}",
            s[name]
        );
        redactor.document(&s[name])
    };

    // Before the first sync: patch a to apply (exit 2, changes).
    insta::assert_snapshot!(doc("plan", 2), @r#"
    {
      "kernel": {
        "release": "[RELEASE]",
        "build_id": "[BUILD_ID]"
      },
      "stack": "prod",
      "commit": "[one]",
      "keep": [],
      "steps": [
        {
          "action": "apply",
          "module": "kstack_test_a",
          "index": 0,
          "cumulative": false,
          "replaces": []
        }
      ],
      "mode": "stack",
      "fallback": "the stack has no cumulative module: its commit was made before kstack built them",
      "cumulative": null,
      "foreign": [],
      "changes": true,
      "run_pre": {
        "matched": 0,
        "unproven": [
          "a"
        ],
        "functions": [],
        "ms": "[MS]"
      },
      "validity": {
        "signed_at": "[TIME]",
        "expires": "[TIME]",
        "expired": false
      },
      "warnings": [],
      "signatures": {
        "enforced": false,
        "reasons": [],
        "modules": [
          {
            "module": "kstack_test_a",
            "patch": "a",
            "signature": "unsigned",
            "signer": null,
            "trust": null,
            "detail": "unsigned"
          }
        ]
      }
    }
    "#);
    // The first sync: generation 1.
    insta::assert_snapshot!(doc("sync", 0), @r#"
    {
      "kernel": {
        "release": "[RELEASE]",
        "build_id": "[BUILD_ID]"
      },
      "stack": "prod",
      "commit": "[one]",
      "keep": [],
      "steps": [
        {
          "action": "apply",
          "module": "kstack_test_a",
          "index": 0,
          "cumulative": false,
          "replaces": []
        }
      ],
      "mode": "stack",
      "fallback": "the stack has no cumulative module: its commit was made before kstack built them",
      "cumulative": null,
      "foreign": [],
      "changes": true,
      "run_pre": {
        "matched": 0,
        "unproven": [
          "a"
        ],
        "functions": [],
        "ms": "[MS]"
      },
      "validity": {
        "signed_at": "[TIME]",
        "expires": "[TIME]",
        "expired": false
      },
      "warnings": [],
      "signatures": {
        "enforced": false,
        "reasons": [],
        "modules": [
          {
            "module": "kstack_test_a",
            "patch": "a",
            "signature": "unsigned",
            "signer": null,
            "trust": null,
            "detail": "unsigned"
          }
        ]
      },
      "generation": 1,
      "timings": [
        {
          "step": {
            "action": "apply",
            "module": "kstack_test_a",
            "index": 0,
            "cumulative": false,
            "replaces": []
          },
          "ms": "[MS]",
          "left_loaded": []
        }
      ],
      "kernel_ms": "[MS]",
      "kstack_ms": "[MS]",
      "kstack_phases": [
        {
          "phase": "identify and verify",
          "ms": "[MS]"
        },
        {
          "phase": "read the kernel and the state",
          "ms": "[MS]"
        },
        {
          "phase": "plan",
          "ms": "[MS]"
        },
        {
          "phase": "check module signatures",
          "ms": "[MS]"
        },
        {
          "phase": "run-pre",
          "ms": "[MS]"
        },
        {
          "phase": "record the generation",
          "ms": "[MS]"
        }
      ]
    }
    "#);
    insta::assert_snapshot!(doc("plan-two", 2), @r#"
    {
      "kernel": {
        "release": "[RELEASE]",
        "build_id": "[BUILD_ID]"
      },
      "stack": "prod",
      "commit": "[two]",
      "keep": [
        "kstack_test_a"
      ],
      "steps": [
        {
          "action": "apply",
          "module": "kstack_test_b",
          "index": 1,
          "cumulative": false,
          "replaces": []
        }
      ],
      "mode": "stack",
      "fallback": "the stack has no cumulative module: its commit was made before kstack built them",
      "cumulative": null,
      "foreign": [],
      "changes": true,
      "run_pre": {
        "matched": 0,
        "unproven": [
          "b"
        ],
        "functions": [],
        "ms": "[MS]"
      },
      "validity": {
        "signed_at": "[TIME]",
        "expires": "[TIME]",
        "expired": false
      },
      "warnings": [],
      "signatures": {
        "enforced": false,
        "reasons": [],
        "modules": [
          {
            "module": "kstack_test_b",
            "patch": "b",
            "signature": "unsigned",
            "signer": null,
            "trust": null,
            "detail": "unsigned"
          }
        ]
      }
    }
    "#);
    insta::assert_snapshot!(doc("sync-two", 0), @r#"
    {
      "kernel": {
        "release": "[RELEASE]",
        "build_id": "[BUILD_ID]"
      },
      "stack": "prod",
      "commit": "[two]",
      "keep": [
        "kstack_test_a"
      ],
      "steps": [
        {
          "action": "apply",
          "module": "kstack_test_b",
          "index": 1,
          "cumulative": false,
          "replaces": []
        }
      ],
      "mode": "stack",
      "fallback": "the stack has no cumulative module: its commit was made before kstack built them",
      "cumulative": null,
      "foreign": [],
      "changes": true,
      "run_pre": {
        "matched": 0,
        "unproven": [
          "b"
        ],
        "functions": [],
        "ms": "[MS]"
      },
      "validity": {
        "signed_at": "[TIME]",
        "expires": "[TIME]",
        "expired": false
      },
      "warnings": [],
      "signatures": {
        "enforced": false,
        "reasons": [],
        "modules": [
          {
            "module": "kstack_test_b",
            "patch": "b",
            "signature": "unsigned",
            "signer": null,
            "trust": null,
            "detail": "unsigned"
          }
        ]
      },
      "generation": 2,
      "timings": [
        {
          "step": {
            "action": "apply",
            "module": "kstack_test_b",
            "index": 1,
            "cumulative": false,
            "replaces": []
          },
          "ms": "[MS]",
          "left_loaded": []
        }
      ],
      "kernel_ms": "[MS]",
      "kstack_ms": "[MS]",
      "kstack_phases": [
        {
          "phase": "identify and verify",
          "ms": "[MS]"
        },
        {
          "phase": "read the kernel and the state",
          "ms": "[MS]"
        },
        {
          "phase": "plan",
          "ms": "[MS]"
        },
        {
          "phase": "check module signatures",
          "ms": "[MS]"
        },
        {
          "phase": "run-pre",
          "ms": "[MS]"
        },
        {
          "phase": "record the generation",
          "ms": "[MS]"
        }
      ]
    }
    "#);
    // Nothing to do: no generation recorded.
    insta::assert_snapshot!(doc("sync-nothing", 0), @r#"
    {
      "kernel": {
        "release": "[RELEASE]",
        "build_id": "[BUILD_ID]"
      },
      "stack": "prod",
      "commit": "[two]",
      "keep": [
        "kstack_test_a",
        "kstack_test_b"
      ],
      "steps": [],
      "mode": "stack",
      "fallback": "the stack has no cumulative module: its commit was made before kstack built them",
      "cumulative": null,
      "foreign": [],
      "changes": false,
      "run_pre": {
        "matched": 0,
        "unproven": [],
        "functions": [],
        "ms": "[MS]"
      },
      "validity": {
        "signed_at": "[TIME]",
        "expires": "[TIME]",
        "expired": false
      },
      "warnings": [],
      "signatures": {
        "enforced": false,
        "reasons": [],
        "modules": []
      },
      "generation": null,
      "timings": [],
      "kernel_ms": "[MS]",
      "kstack_ms": "[MS]",
      "kstack_phases": [
        {
          "phase": "identify and verify",
          "ms": "[MS]"
        },
        {
          "phase": "read the kernel and the state",
          "ms": "[MS]"
        },
        {
          "phase": "plan",
          "ms": "[MS]"
        },
        {
          "phase": "check module signatures",
          "ms": "[MS]"
        },
        {
          "phase": "run-pre",
          "ms": "[MS]"
        },
        {
          "phase": "record the generation",
          "ms": "[MS]"
        }
      ]
    }
    "#);
    insta::assert_snapshot!(doc("status", 0), @r#"
    {
      "release": "[RELEASE]",
      "build_id": "[BUILD_ID]",
      "livepatch": true,
      "mode": "replace",
      "generation": {
        "number": 2,
        "commit": "[two]",
        "stack": "prod",
        "build_id": "[BUILD_ID]",
        "created_at": "[TIME]",
        "modules": [
          "kstack_test_a",
          "kstack_test_b"
        ]
      },
      "applied": [
        {
          "module": "kstack_test_a",
          "enabled": true,
          "transition": false,
          "patch": "a",
          "functions": [
            "vmlinux:cmdline_proc_show"
          ],
          "holds": [],
          "objects": [
            {
              "name": "vmlinux",
              "patched": true
            }
          ]
        },
        {
          "module": "kstack_test_b",
          "enabled": true,
          "transition": false,
          "patch": "b",
          "functions": [
            "vmlinux:version_proc_show"
          ],
          "holds": [],
          "objects": [
            {
              "name": "vmlinux",
              "patched": true
            }
          ]
        }
      ],
      "foreign": [],
      "drift": [],
      "taint": 45056,
      "taint_flags": "OEK",
      "validity": {
        "signed_at": "[TIME]",
        "expires": "[TIME]",
        "expired": false
      },
      "signers": [
        "[KEY]"
      ],
      "module_signing": {
        "enforced": false,
        "sig_enforce": false,
        "lockdown": "none",
        "secure_boot": null,
        "trusted_keys": "[1 keys]",
        "trusted_keys_error": null
      },
      "last_sync": {
        "operation": "sync",
        "finished_at": "[TIME]",
        "ok": true,
        "generation": 2,
        "error": null
      }
    }
    "#);
    // Back to generation 1: b reverted.
    insta::assert_snapshot!(doc("rollback", 0), @r#"
    {
      "kernel": {
        "release": "[RELEASE]",
        "build_id": "[BUILD_ID]"
      },
      "stack": "prod",
      "commit": "[one]",
      "keep": [
        "kstack_test_a"
      ],
      "steps": [
        {
          "action": "revert",
          "module": "kstack_test_b",
          "cumulative": false,
          "replaces": []
        }
      ],
      "mode": "stack",
      "fallback": "the stack has no cumulative module: its commit was made before kstack built them",
      "cumulative": null,
      "foreign": [],
      "changes": true,
      "run_pre": {
        "matched": 0,
        "unproven": [],
        "functions": [],
        "ms": "[MS]"
      },
      "validity": {
        "signed_at": "[TIME]",
        "expires": "[TIME]",
        "expired": false
      },
      "warnings": [],
      "signatures": {
        "enforced": false,
        "reasons": [],
        "modules": []
      },
      "generation": 1,
      "timings": [
        {
          "step": {
            "action": "revert",
            "module": "kstack_test_b",
            "cumulative": false,
            "replaces": []
          },
          "ms": "[MS]",
          "left_loaded": []
        }
      ],
      "kernel_ms": "[MS]",
      "kstack_ms": "[MS]",
      "kstack_phases": [
        {
          "phase": "identify and verify",
          "ms": "[MS]"
        },
        {
          "phase": "read the kernel and the state",
          "ms": "[MS]"
        },
        {
          "phase": "plan",
          "ms": "[MS]"
        },
        {
          "phase": "check module signatures",
          "ms": "[MS]"
        },
        {
          "phase": "run-pre",
          "ms": "[MS]"
        },
        {
          "phase": "record the generation",
          "ms": "[MS]"
        }
      ]
    }
    "#);
    insta::assert_snapshot!(doc("generations", 0), @r#"
    {
      "current": 1,
      "generations": [
        {
          "number": 1,
          "commit": "[one]",
          "stack": "prod",
          "build_id": "[BUILD_ID]",
          "created_at": "[TIME]",
          "modules": [
            "kstack_test_a"
          ]
        },
        {
          "number": 2,
          "commit": "[two]",
          "stack": "prod",
          "build_id": "[BUILD_ID]",
          "created_at": "[TIME]",
          "modules": [
            "kstack_test_a",
            "kstack_test_b"
          ]
        }
      ]
    }
    "#);
}

#[test]
fn redaction_keeps_words_and_replaces_ids_times_and_addresses() {
    let r = Redactor {
        names: [("ab".repeat(20), "one".to_owned())].into(),
        fixed: vec![("6.1.0-56-cloud-amd64".into(), "[RELEASE]")],
    };
    assert_eq!(
        r.text(&format!(
            "commit {} ({}) at 2026-11-28T05:09:05.123Z on 6.1.0-56-cloud-amd64: cmdline_proc_show+0x0 ffffffff81234567 {} {} kstack_test_a deadbeef acceded 12345678",
            "ab".repeat(20),
            "ab".repeat(6),
            "cd".repeat(20),
            "0e".repeat(32)
        )),
        "commit [one] ([one]) at [TIME] on [RELEASE]: cmdline_proc_show+0x0 [ADDR] [ID] [SHA256] kstack_test_a deadbeef acceded [HEX]"
    );
}
