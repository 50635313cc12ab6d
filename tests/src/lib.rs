//! Shared set-up for kstack's integration and end-to-end tests.
//!
//! The end-to-end tests run on a real Debian kernel booted in QEMU. When the kernel,
//! QEMU or the static guest binary is missing they fail, loudly, naming the command
//! that sets everything up: they never skip.

// Test support: a failed unwrap here is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kstack_engine::builder::assets::{Cache, Kernel, KernelLine};
use kstack_engine::builder::kbuild::{self, ModuleSpec};
use kstack_engine::sandbox::{self, Sandbox, SandboxOptions};

/// The one command that installs and fetches everything the tests need.
pub const SETUP: &str = "cargo xtask setup";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace root")
        .to_owned()
}

/// Chooses the kernel the tests run on: a release (`6.12.117+deb12-cloud-amd64`) or
/// a line and flavour (`6.12-cloud-amd64`: the newest release of it in the cache).
pub const KERNEL_ENV: &str = "KSTACK_TEST_KERNEL";

/// The line and flavour of Debian's 6.12 cloud kernel, which set-up fetches beside
/// the default one and the `vm_line_612` tests run on.
pub const LINE_612: &str = "6.12-cloud-amd64";

static SELECTED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes this test process run on `which` (as [`KERNEL_ENV`] would), whatever the
/// environment says: for a test binary written for one kernel line. Call it first.
pub fn select_kernel(which: &str) {
    let chosen = SELECTED.get_or_init(|| which.to_owned());
    assert_eq!(chosen, which, "one test process runs on one kernel");
}

/// The kernel the tests run on: the one [`select_kernel`] or [`KERNEL_ENV`] names,
/// else the default kernel set-up fetched.
pub fn kernel() -> Kernel {
    let cache = Cache::from_env();
    let wanted = SELECTED
        .get()
        .cloned()
        .or_else(|| std::env::var(KERNEL_ENV).ok().filter(|v| !v.is_empty()));
    match wanted {
        None => cache
            .current()
            .unwrap_or_else(|e| panic!("no test kernel: {e}\nrun `{SETUP}` first")),
        Some(which) => find_kernel(&cache, &which),
    }
}

fn find_kernel(cache: &Cache, which: &str) -> Kernel {
    if let Ok(kernel) = cache.kernel(which) {
        return kernel;
    }
    let line = KernelLine::of_line_name(which).unwrap_or_else(|| {
        panic!("{KERNEL_ENV}={which}: kernel {which} is not in the cache\nrun `{SETUP}` first")
    });
    // Newest point release last: compare the numbers, not the text (6.12.9 < 6.12.10).
    let number = |k: &Kernel| -> Vec<u64> {
        k.release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    cache
        .kernels()
        .into_iter()
        .filter(|k| k.line().as_ref() == Some(&line))
        .max_by_key(number)
        .unwrap_or_else(|| {
            panic!(
                "no {} kernel of line {} in the cache {}\nrun `{SETUP}` first",
                line.flavour,
                line.line,
                cache.root().display()
            )
        })
}

/// A file of the examples for the test kernel's line: `examples/<dir>/<line>/<name>`
/// where the line has its own version (the source differs there), else
/// `examples/<dir>/<name>`.
pub fn example_for_line(dir: &str, name: &str) -> PathBuf {
    let base = workspace_root().join("examples").join(dir);
    if let Some(line) = kernel().line() {
        let own = base.join(&line.line).join(name);
        if own.is_file() {
            return own;
        }
    }
    base.join(name)
}

/// A sandbox on the set-up kernel with default options.
pub fn sandbox() -> Sandbox {
    sandbox_with(|_| {})
}

/// A sandbox on the set-up kernel, options adjusted by `f`.
pub fn sandbox_with(f: impl FnOnce(&mut SandboxOptions)) -> Sandbox {
    let guest = sandbox::find_guest_binary()
        .unwrap_or_else(|e| panic!("no static kstack for the guest: {e}\nrun `{SETUP}` first"));
    let mut options = SandboxOptions::new(kernel().vmlinuz(), guest);
    f(&mut options);
    if which(&options.qemu).is_none() {
        panic!(
            "{} is not installed\nrun `{SETUP}` first",
            options.qemu.display()
        );
    }
    Sandbox::new(options).unwrap_or_else(|e| panic!("{e}\nrun `{SETUP}` first"))
}

fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Builds `kmod/demo/kstack_demo.c` against the set-up kernel's headers.
pub fn build_demo_module(build_dir: &Path) -> PathBuf {
    let kernel = kernel();
    kbuild::build_module(
        &kernel.headers(),
        &ModuleSpec {
            name: "kstack_demo".into(),
            sources: vec![workspace_root().join("kmod/demo/kstack_demo.c")],
            ccflags: vec![],
        },
        build_dir,
    )
    .unwrap_or_else(|e| panic!("{e}\nrun `{SETUP}` first if the headers are missing"))
}

/// Splits guest output into sections that start with a line `== NAME`.
pub use kstack_engine::sandbox::sections;

/// Builds `kmod/test/<name>.c` against the set-up kernel's headers (see
/// [`build_module_cached`]).
pub fn build_test_module(name: &str) -> PathBuf {
    let src_dir = workspace_root().join("kmod/test");
    let read = |file: &str| {
        let path = src_dir.join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let c_file = format!("{name}.c");
    build_module_cached(
        name,
        &[
            (&c_file, read(&c_file)),
            ("proc_patch.h", read("proc_patch.h")),
        ],
    )
}

/// Builds a module from source texts against the set-up kernel's headers, once per
/// content: the result is cached under `target/kmod-test/`, built in a temporary
/// directory and renamed into place, so concurrent tests never see a half-built one.
pub fn build_module_cached(name: &str, sources: &[(&str, String)]) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let kernel = kernel();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (name, sources, &kernel.release).hash(&mut hasher);
    let cache = workspace_root()
        .join("target/kmod-test")
        .join(format!("{name}-{:016x}", hasher.finish()));
    let ko = cache.join(format!("{name}.ko"));
    if ko.is_file() {
        return ko;
    }
    let parent = cache.parent().expect("has a parent");
    std::fs::create_dir_all(parent).unwrap();
    let src = tempfile::tempdir_in(parent).unwrap();
    let mut paths = Vec::new();
    for (file, text) in sources {
        let path = src.path().join(file);
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    let tmp = tempfile::tempdir_in(parent).unwrap();
    kbuild::build_module(
        &kernel.headers(),
        &ModuleSpec {
            name: name.into(),
            sources: paths,
            ccflags: vec![],
        },
        tmp.path(),
    )
    .unwrap_or_else(|e| panic!("{e}\nrun `{SETUP}` first if the headers are missing"));
    let built = tmp.keep();
    if std::fs::rename(&built, &cache).is_err() {
        // Another test built it first; theirs is as good.
        let _ = std::fs::remove_dir_all(&built);
    }
    ko
}

pub mod corpus;
pub mod scenarios;
pub mod stack;

/// Busybox's `date` has no nanoseconds: a static helper for the benchmarks' guests
/// that prints CLOCK_MONOTONIC in nanoseconds (`/bin/now`).
pub fn clock_helper() -> PathBuf {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("now.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\n#include <time.h>\nint main(void) { struct timespec t; \
         clock_gettime(CLOCK_MONOTONIC, &t); printf(\"%lld\\n\", \
         (long long)t.tv_sec * 1000000000LL + t.tv_nsec); return 0; }\n",
    )
    .unwrap();
    let bin = dir.join("now");
    let status = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cc -static failed: run `cargo xtask setup`"
    );
    bin
}

/// The `kstack` binary the tests run as a user would: the static build (the same
/// binary the VM runs), with no config from the environment.
pub fn kstack_cli() -> std::process::Command {
    let bin = sandbox::find_guest_binary()
        .unwrap_or_else(|e| panic!("no static kstack: {e}\nrun `{SETUP}` first"));
    let mut cmd = std::process::Command::new(bin);
    cmd.env_remove("KSTACK_CONFIG")
        .env_remove("KSTACK_STORE")
        .env_remove("KSTACK_STATE_DIR")
        .env("KSTACK_AUTHOR", "kstack tests <tests@kstack.invalid>")
        .env("KSTACK_TIMESTAMP", "1700000000")
        // Commits made at that fixed time must still be valid when a VM syncs them.
        .env("KSTACK_VALID_FOR", "100years");
    cmd
}

/// Runs a command and returns its stdout, panicking with its output if it fails.
pub fn run_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A store and a signing key made with the CLI, in a temporary directory, and a
/// config for the guest that trusts the key.
#[derive(Debug)]
pub struct CliStore {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub key: PathBuf,
    pub public: String,
}

impl CliStore {
    pub fn new() -> CliStore {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let key = dir.path().join("signing.key");
        run_ok(kstack_cli().arg("--store").arg(&store).arg("init"));
        let out = run_ok(
            kstack_cli()
                .args(["--json", "key", "generate", "--out"])
                .arg(&key),
        );
        let value: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let public = value["public_key"]
            .as_str()
            .or_else(|| value["public"].as_str())
            .unwrap_or_else(|| panic!("no public key in {value}"))
            .to_owned();
        CliStore {
            dir,
            store,
            key,
            public,
        }
    }

    /// `kstack --store <store> commit --stack <stack> --key <key>`, for the caller to
    /// add its arguments and run.
    pub fn commit_command(&self, stack: &str) -> std::process::Command {
        let mut cmd = kstack_cli();
        cmd.arg("--store")
            .arg(&self.store)
            .args(["commit", "--stack", stack, "--key"])
            .arg(&self.key);
        cmd
    }

    /// `kstack commit <diff> --stack <stack>` for the test kernel; returns the JSON
    /// report.
    pub fn commit_diff(&self, stack: &str, diff: &Path) -> serde_json::Value {
        let out = run_ok(
            kstack_cli()
                .arg("--store")
                .arg(&self.store)
                .args(["--json", "commit"])
                .arg(diff)
                .args(["--stack", stack, "--key"])
                .arg(&self.key)
                .arg("--kernel")
                .arg(kernel().vmlinuz()),
        );
        serde_json::from_str(out.trim()).unwrap()
    }

    /// A guest config for `stack` (pinned to `commit` if given).
    pub fn config(&self, stack: Option<&str>, commit: Option<&str>, timeout: &str) -> String {
        let mut text = format!("[store]\npath = \"{}\"\n\n", stack::GUEST_STORE);
        if let Some(stack) = stack {
            text.push_str(&format!("[stack]\nname = \"{stack}\"\n"));
            if let Some(c) = commit {
                text.push_str(&format!("commit = \"{c}\"\n"));
            }
            text.push('\n');
        }
        text.push_str(&format!(
            "[trust]\nkeys = [\"{}\"]\n\n[sync]\ntransition_timeout = \"{timeout}\"\nstate_dir = \"{}\"\n",
            self.public,
            stack::GUEST_STATE
        ));
        text
    }

    /// Copies the store into the VM and writes `configs` as `/etc/kstack/<name>.toml`.
    pub fn install(&self, vm: &mut Sandbox, configs: &[(&str, String)]) {
        vm.add_host_tree(stack::GUEST_STORE, &self.store).unwrap();
        for (name, text) in configs {
            vm.add_file(
                &format!("{}/{name}.toml", stack::GUEST_CONFIG_DIR),
                0o644,
                text.clone(),
            )
            .unwrap();
        }
    }
}

impl Default for CliStore {
    fn default() -> Self {
        Self::new()
    }
}

/// The example patches (`examples/patches/*.diff`), in order, each in the test
/// kernel's line's version where it has one (`examples/patches/6.12/`).
pub fn example_patches() -> Vec<PathBuf> {
    let dir = workspace_root().join("examples/patches");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "diff"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.iter().map(|n| example_patch(n)).collect()
}

/// One example patch, by file name, in the test kernel's line's version where it
/// has one.
pub fn example_patch(name: &str) -> PathBuf {
    example_for_line("patches", name)
}

/// A module signing key and its self-signed X.509 certificate, made with `openssl`
/// in `dir` (`<name>.key.pem`, mode 0600, and `<name>.cert.pem`); with `key_id`, the
/// certificate has a subjectKeyIdentifier (openssl's default), else none.
pub fn module_signing_cert(dir: &Path, name: &str, key_id: bool) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key.pem"));
    let cert = dir.join(format!("{name}.cert.pem"));
    let mut cmd = std::process::Command::new("openssl");
    cmd.args([
        "req", "-new", "-x509", "-newkey", "rsa:2048", "-sha256", "-nodes",
    ])
    .args([
        "-days",
        "3650",
        "-subj",
        &format!("/CN=kstack test {name}/"),
    ])
    .arg("-keyout")
    .arg(&key)
    .arg("-out")
    .arg(&cert);
    if !key_id {
        cmd.args(["-addext", "subjectKeyIdentifier=none"])
            .args(["-addext", "authorityKeyIdentifier=none"]);
    }
    run_ok(&mut cmd);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (key, cert)
}

/// The owner GUID kstack's tests give their `db` entries (any GUID will do: the
/// kernel does not look at it).
pub const DB_OWNER_GUID: &str = "5e1f6b0a-7c2d-4e8b-9a61-6b7374616b21";

/// An OVMF variable store whose `db` holds `cert`, made with `virt-fw-vars` from the
/// venv that set-up installs: Secure Boot stays off (the unsigned Debian cloud kernel
/// must boot), but a 6.1 kernel loads `db` into its `.platform` keyring, which
/// module signature checks fall back to.
pub fn ovmf_vars_with_db(cert: &Path, out: &Path) -> PathBuf {
    let tool = Cache::from_env().root().join("venv/bin/virt-fw-vars");
    assert!(
        tool.is_file(),
        "{} is missing\nrun `{SETUP}` first",
        tool.display()
    );
    assert!(
        Path::new(sandbox::OVMF_VARS).is_file(),
        "{} is missing (Debian package ovmf)\nrun `{SETUP}` first",
        sandbox::OVMF_VARS
    );
    run_ok(
        std::process::Command::new(tool)
            .arg("--input")
            .arg(sandbox::OVMF_VARS)
            .arg("--output")
            .arg(out)
            .arg("--add-db")
            .arg(DB_OWNER_GUID)
            .arg(cert),
    );
    out.to_owned()
}
