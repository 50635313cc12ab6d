//! The hermetic environment of the CLI tests: a temporary HOME, store, config, state
//! directory and kernel cache, a cleared environment, a fixed author, key and
//! timestamp, so commit ids (and the snapshots) are the same on every machine.
// Each test binary uses part of this; a failed unwrap here is a failed test.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kstack_fixtures::{FakeCompression, FakeModule, fake_bzimage, fake_vmlinux};

pub const BUILD_ID: &str = "3b43fad5034874490492495d552c0af6a5fab235";
/// `ed25519-secret:` of a fixed seed, so signatures (and commit ids) are stable.
pub const SECRET: &str =
    "ed25519-secret:2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a";
/// The release of the fake kernel in the cache (no machine has its headers).
pub const CACHE_RELEASE: &str = "6.1.0-99-kstack-test";

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        let key = env.path("signing.key");
        std::fs::write(&key, format!("{SECRET}\n")).unwrap();
        set_mode(&key, 0o600);
        let public = env
            .command(&["key", "show", key.to_str().unwrap()])
            .env_remove("KSTACK_CONFIG")
            .output()
            .unwrap();
        assert!(public.status.success(), "{}", stderr(&public));
        env.write_config(&[stdout(&public).trim()]);
        let out = env.run(&["init"]);
        assert!(out.status.success(), "{}", stderr(&out));
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write_config(&self, keys: &[&str]) {
        let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
        std::fs::write(
            self.path("kstack.toml"),
            format!(
                "[stack]\nname = \"prod\"\n\n[trust]\nkeys = [{}]\nsigning_key = {:?}\n",
                keys.join(", "),
                self.path("signing.key")
            ),
        )
        .unwrap();
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kstack"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("KSTACK_STORE", self.path("store"))
            .env("KSTACK_CONFIG", self.path("kstack.toml"))
            .env("KSTACK_CACHE", self.path("cache"))
            .env("KSTACK_STATE_DIR", self.path("state"))
            .env("KSTACK_TIMESTAMP", "1700000000")
            .env("KSTACK_AUTHOR", "Test Author <test@example.invalid>")
            .current_dir(self.dir.path())
            .args(args);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kstack {args:?} failed ({:?}):\n{}",
            out.status.code(),
            stderr(&out)
        );
        stdout(&out)
    }

    /// Runs `kstack --json ARGS` and returns the exit code and the JSON document,
    /// pretty-printed in the order kstack wrote its fields, with this environment's
    /// directory shown as `[TMP]`.
    pub fn json(&self, args: &[&str]) -> (i32, String) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        let text = stdout(&out);
        assert_eq!(
            text.lines().count(),
            1,
            "--json prints one line:\n{text}\nstderr:\n{}",
            stderr(&out)
        );
        let value: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"));
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        (out.status.code().unwrap(), self.redact(&pretty))
    }

    /// Shows this environment's directory as `[TMP]`.
    pub fn redact(&self, text: &str) -> String {
        text.replace(&self.dir.path().display().to_string(), "[TMP]")
    }

    /// Writes a synthetic livepatch module and returns its path.
    pub fn module(&self, name: &str, functions: &[&str]) -> String {
        let path = self.path(&format!("{name}.ko"));
        let mut m = FakeModule::livepatch(&format!("kstack_{name}"), functions);
        m.seed = name.len() as u64 + 1;
        std::fs::write(&path, m.build()).unwrap();
        path.display().to_string()
    }

    pub fn commit(&self, name: &str, functions: &[&str]) -> String {
        let module = self.module(name, functions);
        self.ok(&[
            "commit",
            "--module",
            &module,
            "--name",
            name,
            "-m",
            &format!("add {name}"),
            "--kernel",
            BUILD_ID,
        ])
    }

    /// A kernel cache (`KSTACK_CACHE`) with one kernel, [`CACHE_RELEASE`], whose
    /// image has the build ID [`BUILD_ID`], and, with `prepared`, a prepared source
    /// tree holding `files` (paths relative to the tree's top).
    pub fn fake_cache(&self, prepared: bool, files: &[&str]) {
        let cache = self.path("cache");
        let kernel = cache.join("kernels").join(CACHE_RELEASE);
        let boot = kernel.join("root/boot");
        std::fs::create_dir_all(&boot).unwrap();
        let build_id = hex_bytes(BUILD_ID);
        let image = fake_bzimage(&fake_vmlinux(&build_id, 4096), FakeCompression::Gzip);
        std::fs::write(boot.join(format!("vmlinuz-{CACHE_RELEASE}")), image).unwrap();
        std::fs::write(kernel.join("version"), "6.1.999-1\n").unwrap();
        std::fs::write(cache.join("kernels/current"), format!("{CACHE_RELEASE}\n")).unwrap();
        let src = cache.join("src").join(CACHE_RELEASE).join("linux");
        std::fs::create_dir_all(&src).unwrap();
        if prepared {
            std::fs::write(src.join(".kstack-prepared"), "").unwrap();
            std::fs::write(src.join(".kstack-generated"), "").unwrap();
        }
        for file in files {
            let path = src.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "/* a file of the fake kernel source */\n").unwrap();
        }
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Replaces how long ago a validity window expired (or how long it has left), which
/// changes every day, by `N days`: `(EXPIRED N days ago)`, `(in N days)`.
pub fn stable_windows(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("(EXPIRED ").or_else(|| rest.find("(in ")) {
        let open = if rest[at..].starts_with("(EXPIRED ") {
            "(EXPIRED "
        } else {
            "(in "
        };
        out.push_str(&rest[..at + open.len()]);
        let after = &rest[at + open.len()..];
        let end = after.find(')').unwrap_or(after.len());
        out.push_str(if open == "(in " {
            "N days"
        } else {
            "N days ago"
        });
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}
