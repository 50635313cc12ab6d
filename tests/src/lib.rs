//! Shared set-up for kstack's integration and end-to-end tests.
//!
//! The end-to-end tests run on a real Debian kernel booted in QEMU. When the kernel,
//! QEMU or the static guest binary is missing they fail, loudly, naming the command
//! that sets everything up: they never skip.

// Test support: a failed unwrap here is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kstack_engine::assets::{Cache, Kernel};
use kstack_engine::kbuild::{self, ModuleSpec};
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

/// The kernel that set-up fetched.
pub fn kernel() -> Kernel {
    Cache::from_env()
        .current()
        .unwrap_or_else(|e| panic!("no test kernel: {e}\nrun `{SETUP}` first"))
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
pub fn sections(output: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in output.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            if let Some((n, body)) = current.take() {
                out.insert(n, body);
            }
            current = Some((name.trim().to_owned(), String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    if let Some((n, body)) = current {
        out.insert(n, body);
    }
    out
}

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

pub mod stack;
