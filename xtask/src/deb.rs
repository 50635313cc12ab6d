//! The Debian package: `kstack_<version>-<revision>_amd64.deb`, assembled from the
//! static kstack and the repository's files with `dpkg-deb` (no debhelper: the
//! binary is built by cargo, not by `debian/rules`).
//!
//! Contents: `/usr/bin/kstack`; the manual pages that the binary writes from its
//! clap definitions (`kstack man`) and its completion scripts (`kstack completion`);
//! the systemd units of `examples/systemd/` (shipped, not enabled); the example
//! config as the conffile `/etc/kstack/kstack.toml`; in `/usr/share/doc/kstack/` the
//! copyright (with the statically linked crates listed in `third-party.txt.gz`), the
//! Debian changelog, the README, the operator's guide and the `--json` schema; the
//! lintian overrides, each with its reason. The sources of what is not generated are
//! in `packaging/debian/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The Debian revision of the package.
pub const REVISION: &str = "1";
/// kstack's version, the package's upstream version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Where systemd units go on Debian 12 (debhelper's choice for bookworm).
pub const UNIT_DIR: &str = "lib/systemd/system";
/// The units of `examples/systemd/` that the package ships.
pub const UNITS: [&str; 3] = [
    "kstack-sync.service",
    "kstack-update.service",
    "kstack-update.timer",
];
/// The conffile.
pub const CONFFILE: &str = "etc/kstack/kstack.toml";

/// What a package is made of.
#[derive(Debug, Clone)]
pub struct DebInput {
    /// The workspace root.
    pub root: PathBuf,
    /// The static kstack (`cargo xtask static`).
    pub binary: PathBuf,
    /// Where the package (and its staging tree) is written.
    pub out_dir: PathBuf,
}

/// The package's file name.
pub fn file_name() -> String {
    format!("kstack_{VERSION}-{REVISION}_amd64.deb")
}

/// Builds the package and returns its path.
pub fn build(input: &DebInput) -> Result<PathBuf> {
    if !kstack_engine::sandbox::is_static_elf(&input.binary) {
        bail!(
            "{} is not a static kstack (run `cargo xtask static`)",
            input.binary.display()
        );
    }
    let pkg = input.root.join("packaging/debian");
    let stage = input
        .out_dir
        .join(format!("kstack_{VERSION}-{REVISION}_amd64"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    let doc = "usr/share/doc/kstack";

    let binary = stage.join("usr/bin/kstack");
    install(&input.binary, &binary, 0o755)?;
    // The compiler's version notes: nothing at run time needs them.
    run(Command::new("objcopy")
        .arg("--remove-section=.comment")
        .arg(&binary))?;

    // Manual pages, written by the binary itself from its clap definitions.
    let man_out = input.out_dir.join("man");
    if man_out.exists() {
        std::fs::remove_dir_all(&man_out)?;
    }
    run(Command::new(&input.binary)
        .args(["--quiet", "man", "--out"])
        .arg(&man_out))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man_out)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    pages.sort();
    for page in pages {
        let name = page
            .file_name()
            .expect("a page")
            .to_string_lossy()
            .into_owned();
        let section = name.rsplit('.').next().expect("NAME.SECTION");
        let dest = stage.join(format!("usr/share/man/man{section}/{name}"));
        install(&page, &dest, 0o644)?;
        gzip(&dest)?;
    }

    // Completions.
    for (shell, dest) in [
        ("bash", "usr/share/bash-completion/completions/kstack"),
        ("zsh", "usr/share/zsh/vendor-completions/_kstack"),
        ("fish", "usr/share/fish/vendor_completions.d/kstack.fish"),
    ] {
        let out = output(Command::new(&input.binary).args(["completion", shell]))?;
        write(&stage.join(dest), out.as_bytes(), 0o644)?;
    }

    for unit in UNITS {
        install(
            &input.root.join("examples/systemd").join(unit),
            &stage.join(UNIT_DIR).join(unit),
            0o644,
        )?;
    }
    let example = input.root.join("examples/kstack.toml");
    install(&example, &stage.join(CONFFILE), 0o644)?;
    install(
        &example,
        &stage.join(doc).join("examples/kstack.toml"),
        0o644,
    )?;

    install(
        &pkg.join("copyright"),
        &stage.join(doc).join("copyright"),
        0o644,
    )?;
    for (src, dest) in [
        (pkg.join("changelog"), "changelog.Debian"),
        (input.root.join("README.md"), "README.md"),
        (input.root.join("docs/operators.md"), "operators.md"),
        (input.root.join("docs/json.md"), "json.md"),
    ] {
        let dest = stage.join(doc).join(dest);
        install(&src, &dest, 0o644)?;
        gzip(&dest)?;
    }
    let third_party = stage.join(doc).join("third-party.txt");
    write(
        &third_party,
        third_party_crates(&input.root)?.as_bytes(),
        0o644,
    )?;
    gzip(&third_party)?;
    install(
        &pkg.join("lintian-overrides"),
        &stage.join("usr/share/lintian/overrides/kstack"),
        0o644,
    )?;

    // DEBIAN/: control, conffiles, maintainer scripts, md5sums.
    let control = stage.join("DEBIAN");
    for script in ["postinst", "prerm", "postrm"] {
        install(&pkg.join(script), &control.join(script), 0o755)?;
    }
    write(
        &control.join("conffiles"),
        format!("/{CONFFILE}\n").as_bytes(),
        0o644,
    )?;
    let md5sums = output(
        Command::new("sh")
            .arg("-c")
            .arg("find . -type f ! -path './DEBIAN/*' -printf '%P\\0' | LC_ALL=C sort -z | xargs -0 md5sum")
            .current_dir(&stage),
    )?;
    write(&control.join("md5sums"), md5sums.as_bytes(), 0o644)?;
    let installed_kib = output(
        Command::new("du")
            .args(["-s", "-k", "--exclude=DEBIAN", "."])
            .current_dir(&stage),
    )?;
    let installed_kib = installed_kib.split_whitespace().next().unwrap_or("0");
    write(
        &control.join("control"),
        control_file(installed_kib).as_bytes(),
        0o644,
    )?;

    let deb = input.out_dir.join(file_name());
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    Ok(deb)
}

fn control_file(installed_kib: &str) -> String {
    format!(
        "Package: kstack
Version: {VERSION}-{REVISION}
Architecture: amd64
Maintainer: kstack developers <kstack@lists.example.org>
Installed-Size: {installed_kib}
Section: admin
Priority: optional
Depends: init-system-helpers (>= 1.54~)
Suggests: build-essential, bc, bison, flex, libelf-dev, libssl-dev, dwarves, patch, git, qemu-system-x86, busybox-static, cpio
Homepage: https://kstack.example.org/
Description: live-patch a running Linux kernel from signed, declarative stacks
 kstack keeps a running kernel patched without reboots, in the line of
 Ksplice: a source fix is compiled into a livepatch module and applied by
 the kernel's livepatch core. Patches live in a content-addressed store (a
 Git repository) as ordered, ed25519-signed stacks pinned to one kernel build
 ID; a config file declares the stack a host runs, and kstack sync applies or
 reverts modules until the kernel matches it, undoing everything on failure.
 .
 This package has the static kstack binary, its manual pages and shell
 completions, the boot-time sync unit and a timer that pulls stacks from a
 Git server and syncs (neither enabled by default). Building patches (kstack
 commit) also needs a compiler, the kernel's headers and source; trying them
 in a VM (kstack try) needs QEMU and busybox.
"
    )
}

/// Every crate linked into kstack, with its version and licence (from `cargo
/// metadata`, following normal dependencies from the `kstack` package), then each
/// crate's licence and copyright files from cargo's registry sources (as
/// cargo-about gathers them).
pub fn third_party_crates(root: &Path) -> Result<String> {
    let text = output(
        Command::new(env!("CARGO"))
            .args([
                "metadata",
                "--format-version",
                "1",
                "--locked",
                "--filter-platform",
                kstack_engine::sandbox::STATIC_TARGET,
            ])
            .current_dir(root),
    )?;
    let meta: serde_json::Value = serde_json::from_str(&text).context("cargo metadata")?;
    let packages = meta["packages"].as_array().context("packages")?;
    let nodes = meta["resolve"]["nodes"].as_array().context("resolve")?;
    let by_id = |id: &str| packages.iter().find(|p| p["id"] == id);
    let root_id = packages
        .iter()
        .find(|p| p["name"] == "kstack")
        .and_then(|p| p["id"].as_str())
        .context("the kstack package")?
        .to_owned();
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![root_id];
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(node) = nodes.iter().find(|n| n["id"] == id.as_str()) else {
            continue;
        };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            if normal && let Some(pkg) = dep["pkg"].as_str() {
                todo.push(pkg.to_owned());
            }
        }
    }
    let mut crates: Vec<&serde_json::Value> = seen
        .iter()
        .filter_map(|id| by_id(id))
        .filter(|p| p["source"].is_string())
        .collect();
    let key = |p: &serde_json::Value| {
        (
            p["name"].as_str().unwrap_or("").to_owned(),
            p["version"].as_str().unwrap_or("").to_owned(),
        )
    };
    crates.sort_by_key(|p| key(p));
    crates.dedup_by_key(|p| key(p));
    let title = |p: &serde_json::Value| {
        format!(
            "{} {}: {}",
            p["name"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?"),
            p["license"].as_str().unwrap_or("(see the crate)")
        )
    };
    let mut out = String::from(
        "The Rust crates statically linked into /usr/bin/kstack, from crates.io, with\n\
         their versions and licences (SPDX expressions, as the crates declare them).\n\
         Their licence and copyright files follow the list, as each crate ships them.\n\n",
    );
    for p in &crates {
        out.push_str(&title(p));
        out.push('\n');
    }
    // Each crate's own licence and copyright files, which name its copyright holders
    // (what MIT, BSD and Zlib require to be reproduced); a text that an earlier crate
    // already showed word for word is referred to, not repeated.
    let mut shown: Vec<(String, String)> = Vec::new();
    for p in &crates {
        out.push_str(&format!("\n\n======== {} ========\n", title(p)));
        let dir = p["manifest_path"]
            .as_str()
            .and_then(|m| Path::new(m).parent())
            .context("a crate without a manifest path")?;
        let files = licence_files(dir)?;
        if files.is_empty() {
            let authors: Vec<&str> = p["authors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
                .collect();
            out.push_str(&format!(
                "The crate ships no licence file. Copyright: its authors ({}). \
                 The licence texts are in /usr/share/doc/kstack/copyright.\n",
                if authors.is_empty() {
                    "not named in its Cargo.toml".to_owned()
                } else {
                    authors.join(", ")
                }
            ));
            continue;
        }
        for file in files {
            let name = file
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let text = text.trim_end().to_owned();
            match shown.iter().find(|(t, _)| *t == text) {
                Some((_, first)) => {
                    out.push_str(&format!("\n-- {name}: the same text as {first}\n"));
                }
                None => {
                    out.push_str(&format!("\n-- {name}\n\n{text}\n"));
                    shown.push((text, format!("{name} of {}", title(p))));
                }
            }
        }
    }
    Ok(out)
}

/// A crate's licence and copyright files (LICENSE*, LICENCE*, COPYING*,
/// COPYRIGHT*, NOTICE*, UNLICENSE*), sorted by name.
fn licence_files(dir: &Path) -> Result<Vec<PathBuf>> {
    const PREFIXES: [&str; 6] = [
        "LICENSE",
        "LICENCE",
        "COPYING",
        "COPYRIGHT",
        "NOTICE",
        "UNLICENSE",
    ];
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_uppercase())
            .unwrap_or_default();
        if path.is_file() && PREFIXES.iter().any(|p| name.starts_with(p)) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn install(src: &Path, dest: &Path, mode: u32) -> Result<()> {
    let bytes = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    write(dest, &bytes, mode)
}

fn write(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut dir = dest.parent();
    let mut created = Vec::new();
    while let Some(d) = dir {
        if d.exists() {
            break;
        }
        created.push(d.to_owned());
        dir = d.parent();
    }
    for d in created.iter().rev() {
        std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::write(dest, bytes).with_context(|| format!("writing {}", dest.display()))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `gzip -9n`: no name or time stamp in the header, so the package is reproducible.
fn gzip(path: &Path) -> Result<()> {
    run(Command::new("gzip").args(["-9nf"]).arg(path))
}

fn run(cmd: &mut Command) -> Result<()> {
    output(cmd).map(|_| ())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
