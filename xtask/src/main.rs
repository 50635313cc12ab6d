//! `cargo xtask`: set-up, demo and test driver for kstack on a fresh Debian machine.
//!
//! - `cargo xtask setup`: install the Debian packages kstack's build and tests use,
//!   fetch the current Debian cloud kernel (image, headers, prepared source) into the
//!   cache, and the newest of Debian 12's 6.12 cloud line beside it (the
//!   `vm_line_612` tests run on it), build a small kernel from that source the way
//!   an owner builds one (the `--tree` tests register it; [`xtask::tree_kernel`]),
//!   and build the static `kstack` that the sandbox VM runs. Idempotent: a second
//!   run with nothing new takes seconds.
//! - `cargo xtask demo`: set-up, then the demo in the sandbox VM.
//! - `cargo xtask test`: set-up, then every check and test (what CI runs), with a
//!   short bounded run of every fuzz target.
//! - `cargo xtask fuzz [SECONDS [TARGET...]]`: a long run of every fuzz target, or
//!   of those named (default 300 s each).
//! - `cargo xtask deb`: the Debian package (see [`xtask::deb`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use kstack_engine::builder::assets::{self, Cache, FetchOptions};

mod fuzz;

/// How long each fuzz target runs in `cargo xtask test` (13 targets: about a
/// minute in all).
const SHORT_FUZZ: Duration = Duration::from_secs(5);
/// How long each runs in `cargo xtask fuzz` unless told.
const LONG_FUZZ: Duration = Duration::from_secs(300);

/// Debian packages: QEMU and the initramfs tools for the sandbox, the kernel build
/// prerequisites for kbuild and the source tree (`patch` applies a stack's diffs;
/// `dwarves` is pahole, whose version the kernel's configuration depends on),
/// git for the distribution tests, systemd's verifier for the boot unit's test;
/// OVMF (UEFI firmware), openssl, sbsigntool and a Python venv for the module signing
/// tests (keys, `sbsign` to sign the kernel image for Secure Boot, and `virt-fw-vars`
/// to enrol certificates in the firmware's variables); lintian,
/// man-db, zsh and fish for the Debian package's test.
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
    "dwarves",
    "xz-utils",
    "kmod",
    "git",
    "patch",
    "systemd",
    "ovmf",
    "openssl",
    "sbsigntool",
    "python3-venv",
    "lintian",
    "man-db",
    "zsh",
    "fish",
];

/// Python tools from PyPI, installed into a venv in the cache (never into the
/// checkout or the system's Python): `virt-firmware` edits OVMF variable stores.
const PYTHON_TOOLS: &[&str] = &["virt-firmware==26.10"];

/// Kernel lines set-up fetches beside the default (6.1 cloud) kernel, by their
/// metapackage names: the tests run on them too.
const SECOND_LINES: &[&str] = &["6.12-cloud-amd64"];

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
        Some("fuzz") => {
            let each = match args.get(1) {
                Some(secs) => Duration::from_secs(secs.parse().context("fuzz SECONDS")?),
                None => LONG_FUZZ,
            };
            let only: Vec<&str> = args.iter().skip(2).map(String::as_str).collect();
            run_fuzz(&root, each, &only)
        }
        Some("deb") => {
            let binary = build_static(&root)?;
            step("building the Debian package");
            let deb = xtask::deb::build(&xtask::deb::DebInput {
                root: root.clone(),
                binary,
                out_dir: target_dir(&root).join("deb"),
            })?;
            println!("{}", deb.display());
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 setup   install packages, fetch the Debian cloud kernel, build the static kstack\n\
                 demo    setup, then live-patch a kernel in the sandbox VM, step by step\n\
                 test    setup, then fmt, clippy and every test (what CI runs)\n\
                 static  only build the static kstack for the sandbox\n\
                 deb     build the Debian package (target/deb/kstack_*.deb)\n\
                 fuzz [SECONDS]  run every fuzz target for SECONDS (default 300) each\n\n\
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

pub(crate) fn step(text: &str) {
    eprintln!("\x1b[1m==> {text}\x1b[0m");
}

/// Everything the demo and the tests need; returns the kernel.
fn setup(root: &Path) -> Result<assets::Kernel> {
    let started = Instant::now();
    install_packages()?;
    let cache = Cache::from_env();
    step(&format!("kernel assets in {}", cache.root().display()));
    install_python_tools(&cache)?;
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
            symbols: true,
        },
        &mut |line| eprintln!("    {line}"),
    )
    .with_context(|| format!("fetching kernel {release}"))?;
    // The second line the tests run on (`vm_line_612`, or any VM test with
    // KSTACK_TEST_KERNEL=6.12-cloud-amd64): its newest release, resolved from apt.
    for line in SECOND_LINES {
        let line = assets::KernelLine::of_line_name(line).expect("a line name");
        let (release, version) = assets::resolve_newest_release(&line)
            .with_context(|| format!("resolving the newest {} kernel", line.metapackage()))?;
        eprintln!(
            "    newest Debian {} kernel: {release} ({version})",
            line.line
        );
        assets::fetch_kernel(
            &cache,
            &release,
            &version,
            FetchOptions {
                headers: true,
                source: true,
                make_current: false,
                symbols: true,
            },
            &mut |line| eprintln!("    {line}"),
        )
        .with_context(|| format!("fetching kernel {release}"))?;
    }
    step("the test kernel built from a source tree (tinyconfig with live patching)");
    match xtask::tree_kernel::build(&cache, &kernel, &mut |line| eprintln!("    {line}"))
        .context("building the test kernel from a source tree")?
    {
        Some(took) => eprintln!(
            "    built {} in {:.0}s",
            xtask::tree_kernel::tree(&cache).display(),
            took.as_secs_f64()
        ),
        None => eprintln!(
            "    {} is built",
            xtask::tree_kernel::tree(&cache).display()
        ),
    }
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

/// The venv of [`PYTHON_TOOLS`] (`<cache>/venv`), made with Debian's Python.
fn install_python_tools(cache: &Cache) -> Result<()> {
    let venv = cache.root().join("venv");
    let stamp = venv.join(".kstack-tools");
    let wanted = PYTHON_TOOLS.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|t| t == wanted) {
        return Ok(());
    }
    step(&format!(
        "Python tools in {}: {}",
        venv.display(),
        PYTHON_TOOLS.join(" ")
    ));
    std::fs::create_dir_all(cache.root())?;
    let status = Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .context("running python3 -m venv (Debian package python3-venv)")?;
    if !status.success() {
        bail!("python3 -m venv {} failed ({status})", venv.display());
    }
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PYTHON_TOOLS)
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("pip install {} failed ({status})", PYTHON_TOOLS.join(" "));
    }
    std::fs::write(&stamp, wanted)?;
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

fn test(root: &Path, extra: &[String]) -> Result<()> {
    let started = Instant::now();
    step("cargo fmt --check");
    cargo(&["fmt", "--all", "--", "--check"])?;
    // The fuzz crate is its own workspace (nightly, sanitizers): checked apart.
    cargo(&[
        "fmt",
        "--manifest-path",
        "tests/fuzz/Cargo.toml",
        "--",
        "--check",
    ])?;
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
    // The fuzz crate, like its fmt check: its own workspace, checked (a plain
    // stable check, no sanitizers) in the workspace's target directory, where the
    // clippy run above left the dependencies both share: only what differs is
    // checked again (its own directory cost a cold CI run about 4 minutes).
    let fuzz_clippy = target_dir(root);
    cargo(&[
        "clippy",
        "--manifest-path",
        "tests/fuzz/Cargo.toml",
        "--all-targets",
        "--quiet",
        "--target-dir",
        &fuzz_clippy.to_string_lossy(),
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
        "fuzz targets, {} s each (cargo xtask fuzz runs them longer)",
        SHORT_FUZZ.as_secs()
    ));
    run_fuzz(root, SHORT_FUZZ, &[])?;
    step(&format!(
        "all tests passed in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Builds and runs every fuzz target (or those named in `only`) for `each`; fails
/// naming the crashing inputs.
fn run_fuzz(root: &Path, each: Duration, only: &[&str]) -> Result<()> {
    let targets: Vec<&fuzz::Target> = fuzz::TARGETS
        .iter()
        .filter(|t| only.is_empty() || only.contains(&t.name))
        .collect();
    if let Some(unknown) = only
        .iter()
        .find(|name| !fuzz::TARGETS.iter().any(|t| t.name == **name))
    {
        let names: Vec<&str> = fuzz::TARGETS.iter().map(|t| t.name).collect();
        bail!(
            "no fuzz target {unknown}; the targets are {}",
            names.join(", ")
        );
    }
    fuzz::ensure_tools()?;
    let dir = target_dir(root).join("fuzz");
    let build_dir = dir.join("build");
    fuzz::build(root, &build_dir)?;
    step(&format!(
        "running {} fuzz targets, {} s each",
        targets.len(),
        each.as_secs()
    ));
    let outcomes = fuzz::run_all(root, &build_dir, &dir, &targets, each)?;
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.failure.as_ref().map(|f| format!("{}: {f}", o.name)))
        .collect();
    if !failed.is_empty() {
        bail!("fuzz targets failed:\n{}", failed.join("\n"));
    }
    let runs: u64 = outcomes.iter().map(|o| o.runs).sum();
    eprintln!("    {runs} inputs in all");
    eprintln!("fuzz: {} passed, 0 failed", outcomes.len());
    Ok(())
}

fn demo(root: &Path, kernel: &assets::Kernel) -> Result<()> {
    let kstack = target_dir(root)
        .join(kstack_engine::sandbox::STATIC_TARGET)
        .join("release/kstack");
    let work = target_dir(root).join("demo");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let store = work.join("store");
    let key = work.join("signing.key");
    let config = work.join("kstack.toml");
    let patches = root.join("examples/patches");
    let banner = patches.join("0001-proc-version-banner.diff");
    let loadavg = patches.join("0004-loadavg-running-percent.diff");
    let kstack_cmd = |args: &[&str]| -> Result<String> {
        eprintln!("\n\x1b[1m$ kstack {}\x1b[0m", args.join(" "));
        let mut cmd = Command::new(&kstack);
        cmd.args(args).env("KSTACK_STORE", &store);
        if config.exists() {
            cmd.env("KSTACK_CONFIG", &config);
        }
        let out = cmd
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", kstack.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{text}");
        if !out.status.success() {
            bail!("kstack {} failed ({})", args.join(" "), out.status);
        }
        Ok(text)
    };
    let path = |p: &Path| p.display().to_string();

    step("a signing key and a store");
    let public = kstack_cmd(&["key", "generate", "--out", &path(&key)])?;
    let public = public
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("keys = [\"")
                .and_then(|l| l.strip_suffix("\"]"))
        })
        .or_else(|| public.lines().find(|l| l.starts_with("ed25519:")))
        .context("the public key line")?
        .to_owned();
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n\n[stack]\nname = \"demo\"\n\n[trust]\nkeys = [\"{public}\"]\nsigning_key = \"{}\"\n\n[sync]\ntransition_timeout = \"30s\"\n",
            store.display(),
            key.display()
        ),
    )?;
    kstack_cmd(&["init"])?;

    step(&format!(
        "two fixes, built from their diffs for Debian's {} (compile before and after, diff the objects, link a livepatch module)",
        kernel.release
    ));
    kstack_cmd(&["commit", &path(&banner)])?;
    kstack_cmd(&["commit", &path(&loadavg)])?;
    kstack_cmd(&["log"])?;
    kstack_cmd(&["show", "demo"])?;

    step("the stack in a VM running that kernel: kstack sync, then the patched /proc files");
    kstack_cmd(&["try", "--", "cat /proc/version; cat /proc/loadavg"])?;

    step("revert one patch (a new signed commit), and sync again in a fresh VM");
    kstack_cmd(&[
        "revert",
        "loadavg-running-percent",
        "-m",
        "demo: take the loadavg change back",
    ])?;
    kstack_cmd(&["log", "--oneline"])?;
    kstack_cmd(&["try", "--", "cat /proc/version; cat /proc/loadavg"])?;
    step(
        "done: two source fixes became signed live patches, applied to and reverted from a running kernel",
    );
    Ok(())
}
