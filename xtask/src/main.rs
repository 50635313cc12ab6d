//! `cargo xtask`: set-up, demo and test driver for kstack on a fresh Debian machine.
//!
//! - `cargo xtask setup`: install the Debian packages kstack's build and tests use,
//!   fetch the current Debian cloud kernel (image, headers, prepared source) into the
//!   cache, and build the static `kstack` that the sandbox VM runs. Idempotent: a
//!   second run with nothing new takes seconds.
//! - `cargo xtask demo`: set-up, then the demo in the sandbox VM.
//! - `cargo xtask test`: set-up, then every check and test (what CI runs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use kstack_engine::assets::{self, Cache, FetchOptions};

/// Debian packages: QEMU and the initramfs tools for the sandbox, the kernel build
/// prerequisites for kbuild and the source tree, git for the distribution tests.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "build-essential",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    "xz-utils",
    "kmod",
    "git",
    "systemd",
];

/// apt lists older than this are refreshed, so "current kernel" means current.
const APT_LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root).context("cd to the workspace root")?;
    match args.first().map(String::as_str) {
        Some("setup") => setup(&root).map(|_| ()),
        Some("demo") => {
            let kernel = setup(&root)?;
            demo(&root, &kernel)
        }
        Some("test") => {
            setup(&root)?;
            test(&root, &args[1..])
        }
        Some("static") => build_static(&root).map(|_| ()),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 setup   install packages, fetch the Debian cloud kernel, build the static kstack\n\
                 demo    setup, then live-patch a kernel in the sandbox VM, step by step\n\
                 test    setup, then fmt, clippy and every test (what CI runs)\n\
                 static  only build the static kstack for the sandbox\n\n\
                 The cache lives in $KSTACK_CACHE (default ~/.cache/kstack)."
            );
            bail!("no command given")
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_owned()
}

fn step(text: &str) {
    eprintln!("\x1b[1m==> {text}\x1b[0m");
}

/// Everything the demo and the tests need; returns the kernel.
fn setup(root: &Path) -> Result<assets::Kernel> {
    let started = Instant::now();
    install_packages()?;
    let cache = Cache::from_env();
    step(&format!("kernel assets in {}", cache.root().display()));
    let (release, version) = resolve_release(&cache)?;
    eprintln!("    current Debian cloud kernel: {release} ({version})");
    let kernel = assets::fetch_kernel(
        &cache,
        &release,
        &version,
        FetchOptions {
            headers: true,
            source: true,
            make_current: true,
        },
        &mut |line| eprintln!("    {line}"),
    )
    .with_context(|| format!("fetching kernel {release}"))?;
    build_static(root)?;
    step(&format!(
        "set-up done in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(kernel)
}

fn install_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    apt_update()?;
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install (are you root?)")?;
    if !status.success() {
        bail!("apt-get install {} failed ({status})", missing.join(" "));
    }
    Ok(())
}

fn package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt_update() -> Result<()> {
    step("apt-get update");
    let status = Command::new("apt-get")
        .args(["update", "-q"])
        .status()
        .context("running apt-get update (are you root?)")?;
    if !status.success() {
        bail!("apt-get update failed ({status}): the Debian archive cannot be reached");
    }
    Ok(())
}

/// Written after each `apt-get update` that set-up runs. (The lists' own mtimes are
/// the archive's release dates, not when they were fetched.)
fn apt_stamp(cache: &Cache) -> PathBuf {
    cache.root().join("apt-updated")
}

/// How long ago set-up last refreshed apt's lists.
fn apt_lists_age(cache: &Cache) -> Option<Duration> {
    let modified = std::fs::metadata(apt_stamp(cache)).ok()?.modified().ok()?;
    SystemTime::now().duration_since(modified).ok()
}

fn resolve_release(cache: &Cache) -> Result<(String, String)> {
    let refresh = |cache: &Cache| -> Result<()> {
        apt_update()?;
        std::fs::create_dir_all(cache.root())?;
        std::fs::write(apt_stamp(cache), "")?;
        Ok(())
    };
    if apt_lists_age(cache).is_none_or(|age| age > APT_LISTS_MAX_AGE) {
        refresh(cache)?;
    }
    match assets::resolve_current_release() {
        Ok(found) => Ok(found),
        Err(_) => {
            // The lists may predate the package; one refresh, then a real error.
            refresh(cache)?;
            Ok(assets::resolve_current_release()?)
        }
    }
}

/// Builds the statically linked kstack that the sandbox VM runs as /init.
fn build_static(root: &Path) -> Result<PathBuf> {
    step("building the static kstack for the sandbox");
    let target = kstack_engine::sandbox::STATIC_TARGET;
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--profile",
            "guest",
            "-p",
            "kstack",
            "--target",
            target,
        ])
        // Static, and not position-independent: a static PIE applies every relocation
        // of the binary at each start, which costs tens of milliseconds under TCG.
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C relocation-model=static",
        )
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the static kstack failed");
    }
    let built = target_dir(root).join(target).join("guest/kstack");
    // Where `kstack_engine::sandbox::find_guest_binary` looks beside a dev build.
    let release_dir = target_dir(root).join(target).join("release");
    std::fs::create_dir_all(&release_dir)?;
    let dest = release_dir.join("kstack");
    let tmp = release_dir.join(".kstack.tmp");
    std::fs::copy(&built, &tmp).with_context(|| format!("copying {}", built.display()))?;
    std::fs::rename(&tmp, &dest)?;
    if !kstack_engine::sandbox::is_static_elf(&dest) {
        bail!("{} is not statically linked", dest.display());
    }
    Ok(dest)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn cargo(args: &[&str]) -> Result<()> {
    eprintln!("    cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO"))
        .args(args)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn test(_root: &Path, extra: &[String]) -> Result<()> {
    let started = Instant::now();
    step("cargo fmt --check");
    cargo(&["fmt", "--all", "--", "--check"])?;
    step("cargo clippy");
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ])?;
    step("tests (unit, integration, and end-to-end in the VM)");
    let mut args = vec!["nextest", "run", "--workspace", "--profile", "ci"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)?;
    step("doc tests");
    cargo(&["test", "--workspace", "--doc", "--quiet"])?;
    step(&format!(
        "all tests passed in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn demo(root: &Path, kernel: &assets::Kernel) -> Result<()> {
    step("building the demo livepatch module (kmod/demo/kstack_demo.c) with kbuild");
    let build_dir = target_dir(root).join("kmod/demo");
    let ko = kstack_engine::kbuild::build_module(
        &kernel.headers(),
        &kstack_engine::kbuild::ModuleSpec {
            name: "kstack_demo".into(),
            sources: vec![root.join("kmod/demo/kstack_demo.c")],
            ccflags: vec![],
        },
        &build_dir,
    )?;
    eprintln!("    {}", ko.display());
    let kstack = target_dir(root)
        .join(kstack_engine::sandbox::STATIC_TARGET)
        .join("release/kstack");
    let script = root.join("examples/demo-first-module.sh");
    let args = [
        "try".to_owned(),
        "--file".to_owned(),
        format!("{}:/root/kstack_demo.ko", ko.display()),
        "--file".to_owned(),
        format!("{}:/root/demo.sh", script.display()),
        "--".to_owned(),
        "sh".to_owned(),
        "/root/demo.sh".to_owned(),
    ];
    step(&format!(
        "booting Debian's {} in QEMU and live-patching it\n    kstack {}",
        kernel.release,
        args.join(" ")
    ));
    let status = Command::new(&kstack).args(&args).status()?;
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}
