//! The kernels kstack targets: Debian 12's kernels (the 6.1 and 6.12 lines, cloud
//! and generic flavours; see [`line`]), fetched into a cache, and kernels their
//! owners built from a source tree, registered in it ([`tree`]).
//!
//! For one kernel release (`6.1.0-56-cloud-amd64`, `6.12.117+deb12-cloud-amd64`) the
//! cache holds the unpacked `-unsigned` image package (the `vmlinuz` the sandbox
//! boots, its modules, decompressed, and config) and the distribution source
//! (`linux-source-6.1` or `linux-source-6.12`, of exactly the image's Debian version)
//! prepared with the headers' `.config`, as the builder needs it. The
//! headers themselves are installed with apt (`/usr/src/linux-headers-<release>`), so
//! kbuild works the usual way.
//!
//! Layout under the cache root (`$KSTACK_CACHE`, else `$XDG_CACHE_HOME/kstack`, else
//! `~/.cache/kstack`):
//!
//! ```text
//! debs/<package>_<version>_<arch>.deb      downloads, kept
//! kernels/current                           the release `setup` resolved last
//! kernels/<release>/version                 the Debian version of the image
//! kernels/<release>/root/boot/vmlinuz-<release>
//! src/<release>/linux/                      prepared source (marker `.kstack-prepared`)
//! ```
//!
//! Every step checks for its result first and writes into a temporary name that is
//! renamed when complete, so a second run with nothing new takes seconds and an
//! interrupted run never leaves a half-unpacked tree that looks complete.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod line;
mod tree;
pub use line::{KernelLine, SUPPORTED_FLAVOURS, SUPPORTED_LINES};
pub use tree::{TreeInput, TreeKernelError, add_tree_kernel};

/// The metapackage that names Debian's current cloud kernel ABI.
pub const CLOUD_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// Written when a prepared source tree is complete.
const PREPARED_MARKER: &str = ".kstack-prepared";
/// The files that preparing the tree generated (one relative path a line): kbuild
/// rewrites them in place, so a hard-linked copy must copy them instead.
pub const GENERATED_LIST: &str = ".kstack-generated";

/// An asset that is missing or could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("no kernel has been set up in {cache} (missing {missing})")]
    NotSetUp { cache: PathBuf, missing: PathBuf },
    #[error("kernel {release} is not in the cache {cache}")]
    UnknownRelease { release: String, cache: PathBuf },
    #[error("kernel {release} cannot be added: {reason}")]
    Unsupported { release: String, reason: String },
    #[error("cannot resolve {package} from the Debian archive: {reason}")]
    Resolve { package: String, reason: String },
    #[error("cannot fetch {package}={version}: {reason}")]
    Fetch {
        package: String,
        version: String,
        reason: String,
    },
    #[error("`{command}` failed: {reason}")]
    Command { command: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the source of kernel {release} would not build the shipped kernel: `make olddefconfig` \
         changed {} of its options ({}){}",
        .differences.len(),
        .differences.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        .hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default()
    )]
    Config {
        release: String,
        differences: Vec<super::config::ConfigDifference>,
        hint: Option<String>,
    },
    #[error(transparent)]
    Tree(#[from] TreeKernelError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AssetError + '_ {
    move |source| AssetError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The cache of downloaded and prepared kernels.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// The cache named by the environment (see the module doc).
    pub fn from_env() -> Cache {
        let root = if let Some(dir) = std::env::var_os("KSTACK_CACHE") {
            PathBuf::from(dir)
        } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
            PathBuf::from(dir).join("kstack")
        } else {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/kstack")
        };
        Cache { root }
    }

    pub fn at(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn debs(&self) -> PathBuf {
        self.root.join("debs")
    }

    /// The kernel that set-up resolved last: the one `kstack try` boots by default.
    pub fn current(&self) -> Result<Kernel, AssetError> {
        let marker = self.root.join("kernels/current");
        let release = std::fs::read_to_string(&marker).map_err(|_| AssetError::NotSetUp {
            cache: self.root.clone(),
            missing: marker.clone(),
        })?;
        self.kernel(release.trim())
    }

    /// A kernel release that is in the cache.
    pub fn kernel(&self, release: &str) -> Result<Kernel, AssetError> {
        let kernel = self.kernel_unchecked(release);
        if !kernel.vmlinuz().is_file() {
            return Err(AssetError::UnknownRelease {
                release: release.to_owned(),
                cache: self.root.clone(),
            });
        }
        Ok(kernel)
    }

    fn kernel_unchecked(&self, release: &str) -> Kernel {
        Kernel {
            release: release.to_owned(),
            dir: self.root.join("kernels").join(release),
            src: self.root.join("src").join(release).join("linux"),
        }
    }

    /// The kernel in the cache with that build ID.
    pub fn kernel_with_build_id(&self, build_id: &kstack_store::ident::BuildId) -> Option<Kernel> {
        self.kernels()
            .into_iter()
            .find(|k| k.build_id().is_ok_and(|id| &id == build_id))
    }

    /// Every kernel release in the cache.
    pub fn kernels(&self) -> Vec<Kernel> {
        let mut out = Vec::new();
        if let Ok(dir) = std::fs::read_dir(self.root.join("kernels")) {
            for entry in dir.flatten() {
                if let Some(name) = entry.file_name().to_str()
                    && let Ok(kernel) = self.kernel(name)
                {
                    out.push(kernel);
                }
            }
        }
        out.sort_by(|a, b| a.release.cmp(&b.release));
        out
    }
}

/// One kernel release's assets in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub release: String,
    dir: PathBuf,
    src: PathBuf,
}

impl Kernel {
    /// The release's directory in the cache (kstack keeps derived files there too,
    /// such as the kernel's captured kallsyms).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The compressed kernel image (bzImage) to boot.
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir
            .join("root/boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    /// The kernel's loadable modules as the image package ships them
    /// (`lib/modules/<release>`), with the index `depmod` writes (`modules.dep`).
    pub fn modules_dir(&self) -> PathBuf {
        self.dir.join("root/lib/modules").join(&self.release)
    }

    /// The `.ko` file of module `name` (`xfs`, `nf_tables`; `-` and `_` are the same
    /// in module names), from the index of the image's modules.
    pub fn module_file(&self, name: &str) -> Option<PathBuf> {
        let dep = std::fs::read_to_string(self.modules_dir().join("modules.dep")).ok()?;
        let wanted = name.replace('-', "_");
        dep.lines()
            .filter_map(|l| l.split_once(':').map(|(path, _)| path))
            .find(|path| {
                Path::new(path)
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|s| s.replace('-', "_") == wanted)
            })
            .map(|path| self.modules_dir().join(path))
    }

    /// vmlinux's local symbols by source file, from its full symbol table (see
    /// `kstack_kfacts::symtab`), when set-up fetched it.
    pub fn symtab(&self) -> PathBuf {
        self.dir.join("vmlinux.symtab")
    }

    /// The kernel's `.config`.
    pub fn config(&self) -> PathBuf {
        self.dir
            .join("root/boot")
            .join(format!("config-{}", self.release))
    }

    /// Whether kbuild runs objtool on linked modules (and vmlinux.o) instead of on
    /// each object: `delay-objtool` with `CONFIG_X86_KERNEL_IBT` or
    /// `CONFIG_LTO_CLANG` (scripts/Makefile.lib; 6.12's cloud and generic configs,
    /// not 6.1's).
    pub fn objtool_at_link(&self) -> bool {
        std::fs::read_to_string(self.config()).is_ok_and(|text| {
            text.lines()
                .any(|l| l == "CONFIG_X86_KERNEL_IBT=y" || l == "CONFIG_LTO_CLANG=y")
        })
    }

    /// The GNU build ID of the image, read once from the vmlinux inside it and kept
    /// beside it (`build-id`).
    pub fn build_id(&self) -> Result<kstack_store::ident::BuildId, AssetError> {
        let cached = self.dir.join("build-id");
        if let Ok(text) = std::fs::read_to_string(&cached)
            && let Ok(id) = text.trim().parse()
        {
            return Ok(id);
        }
        let id =
            kstack_store::ident::image_build_id(&self.vmlinuz()).map_err(|e| AssetError::Io {
                path: self.vmlinuz(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let _ = std::fs::write(&cached, id.to_hex());
        Ok(id)
    }

    /// The line and flavour its release names (`None` for a release that names
    /// none, which Debian's never are, and for a kernel built from a tree, whatever
    /// its release looks like).
    pub fn line(&self) -> Option<KernelLine> {
        if self.tree().is_some() {
            return None;
        }
        KernelLine::of_release(&self.release)
    }

    /// The source tree a kernel its owner built was registered from
    /// (`kstack kernel add --tree`); `None` for a Debian kernel.
    pub fn tree(&self) -> Option<PathBuf> {
        std::fs::read_to_string(self.dir.join(tree::TREE_ORIGIN))
            .ok()
            .map(|text| PathBuf::from(text.trim_end_matches('\n')))
    }

    /// The source package of its line, `linux-source-6.1` when the release names
    /// no line. A Debian kernel's only: a kernel built from a tree has its
    /// [`Kernel::tree`].
    pub fn source_package(&self) -> String {
        self.line()
            .map_or_else(|| "linux-source-6.1".to_owned(), |l| l.source_package())
    }

    /// The Debian package version (`6.1.192-2`); `None` for a kernel built from a
    /// tree.
    pub fn version(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("version"))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// The headers kbuild builds external modules against: Debian's installed
    /// package (`/usr/src/linux-headers-<release>`), or for a kernel built from a
    /// tree its prepared source, which holds the tree's `Module.symvers`.
    pub fn headers(&self) -> PathBuf {
        if self.tree().is_some() {
            return self.src.clone();
        }
        PathBuf::from(format!("/usr/src/linux-headers-{}", self.release))
    }

    /// The configuration a prepared tree is given: the one the kernel was built with
    /// (the headers package's `.config`, else the image's; a tree's own), less the
    /// signing keys Debian's build named and did not ship.
    pub fn wanted_config(&self) -> Result<String, AssetError> {
        let headers = self.headers().join(".config");
        let config = if self.tree().is_none() && headers.is_file() {
            headers
        } else {
            self.config()
        };
        let text = std::fs::read_to_string(&config).map_err(io_err(&config))?;
        Ok(blank_signing_keys(&text))
    }

    /// The options of the prepared tree's configuration that are not the shipped
    /// ones ([`super::config::differences`]): empty for a tree prepared by this
    /// version, which refuses to prepare otherwise.
    pub fn config_differences(&self) -> Result<Vec<super::config::ConfigDifference>, AssetError> {
        let made = self.src.join(".config");
        let made = std::fs::read_to_string(&made).map_err(io_err(&made))?;
        Ok(super::config::differences(&self.wanted_config()?, &made))
    }

    /// The prepared distribution source tree, if set-up prepared it.
    pub fn source(&self) -> Option<PathBuf> {
        self.src
            .join(PREPARED_MARKER)
            .is_file()
            .then(|| self.src.clone())
    }
}

/// A configuration without the trusted and revocation key files it names, which a
/// build of the kernel's code does not need and Debian does not ship.
fn blank_signing_keys(config: &str) -> String {
    let mut text = config
        .lines()
        .map(|l| {
            if l.starts_with("CONFIG_SYSTEM_TRUSTED_KEYS=") {
                "CONFIG_SYSTEM_TRUSTED_KEYS=\"\""
            } else if l.starts_with("CONFIG_SYSTEM_REVOCATION_KEYS=") {
                "CONFIG_SYSTEM_REVOCATION_KEYS=\"\""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    text
}

/// Resolves the release that `linux-image-cloud-amd64` currently depends on, and its
/// Debian version, from the local apt lists.
pub fn resolve_current_release() -> Result<(String, String), AssetError> {
    resolve_metapackage(CLOUD_METAPACKAGE)
}

/// Resolves the newest release of a line and flavour (what its metapackage depends
/// on now, `linux-image-6.12-cloud-amd64` for 6.12's cloud kernel), and its Debian
/// version, from the local apt lists.
pub fn resolve_newest_release(line: &KernelLine) -> Result<(String, String), AssetError> {
    resolve_metapackage(&line.metapackage())
}

fn resolve_metapackage(metapackage: &str) -> Result<(String, String), AssetError> {
    let out = run_ok(Command::new("apt-cache").args(["depends", metapackage]))
        .map_err(|e| resolve_err(metapackage, e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let image = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|dep| dep.starts_with("linux-image-"))
        .ok_or_else(|| AssetError::Resolve {
            package: metapackage.into(),
            reason: "apt knows no such package (run `apt-get update`)".into(),
        })?;
    let release = image.trim_start_matches("linux-image-").to_owned();
    let version = package_version(&format!("linux-image-{release}-unsigned"))?;
    Ok((release, version))
}

/// Refuses a release of a line or flavour kstack does not build for, before
/// anything is downloaded.
pub fn check_release(release: &str) -> Result<KernelLine, AssetError> {
    let line = KernelLine::of_release(release).ok_or_else(|| AssetError::Unsupported {
        release: release.to_owned(),
        reason: "not a Debian kernel release (`6.1.0-56-cloud-amd64`, \
                 `6.12.117+deb12-amd64`) nor a line (`6.12-cloud-amd64`)"
            .into(),
    })?;
    line.check_supported()
        .map_err(|reason| AssetError::Unsupported {
            release: release.to_owned(),
            reason,
        })?;
    Ok(line)
}

/// The candidate version of a package in the local apt lists.
pub fn package_version(package: &str) -> Result<String, AssetError> {
    let out = run_ok(Command::new("apt-cache").args(["show", "--no-all-versions", package]))
        .map_err(|e| resolve_err(package, e))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| AssetError::Resolve {
            package: package.into(),
            reason: "apt knows no version of it (run `apt-get update`)".into(),
        })
}

fn resolve_err(package: &str, e: AssetError) -> AssetError {
    match e {
        AssetError::Command { reason, .. } => AssetError::Resolve {
            package: package.into(),
            reason,
        },
        other => other,
    }
}

/// What [`fetch_kernel`] should do beyond the image.
#[derive(Debug, Clone, Copy)]
pub struct FetchOptions {
    /// Install the headers package with apt (needs root).
    pub headers: bool,
    /// Fetch, unpack and prepare the source tree (about a minute the first time).
    pub source: bool,
    /// Make this the default kernel (`kernels/current`).
    pub make_current: bool,
    /// Fetch the kernel's full symbol table (from `linux-image-<release>-dbg`) and
    /// keep its locals by source file (`vmlinux.symtab`), for exact resolution of
    /// same-named statics.
    pub symbols: bool,
}

/// Fetches one kernel release into the cache: image, headers and source, each only if
/// it is not already there. `log` receives one line per step that does work.
pub fn fetch_kernel(
    cache: &Cache,
    release: &str,
    version: &str,
    options: FetchOptions,
    log: &mut dyn FnMut(&str),
) -> Result<Kernel, AssetError> {
    let kernel = cache.kernel_unchecked(release);
    let debs = cache.debs();
    mkdir(&debs)?;

    // The image: unpacked, never installed.
    if !kernel.vmlinuz().is_file() {
        let package = format!("linux-image-{release}-unsigned");
        let deb = download(&debs, &package, version, log)?;
        log(&format!("unpacking {package}"));
        let tmp = kernel.dir.with_extension("partial");
        remove_if_exists(&tmp)?;
        mkdir(&tmp)?;
        run_ok(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(tmp.join("root")),
        )?;
        decompress_modules(&tmp.join("root/lib/modules"), log)?;
        let config = tmp.join("root/boot").join(format!("config-{release}"));
        let text = std::fs::read_to_string(&config).map_err(io_err(&config))?;
        if let Err(reason) = check_config(&text) {
            remove_if_exists(&tmp)?;
            return Err(AssetError::Unsupported {
                release: release.to_owned(),
                reason,
            });
        }
        write(&tmp.join("version"), version)?;
        remove_if_exists(&kernel.dir)?;
        rename(&tmp, &kernel.dir)?;
    }

    // The package ships no module index (its postinst runs depmod): write it, so the
    // sandbox's modprobe and the builder find a module's file.
    if !kernel.modules_dir().join("modules.dep").is_file() {
        log(&format!("indexing the modules of {release} (depmod)"));
        run_ok(
            Command::new("depmod")
                .arg("-b")
                .arg(kernel.dir.join("root"))
                .arg(release),
        )?;
    }

    if options.headers && !kernel.headers().join(".config").is_file() {
        let package = format!("linux-headers-{release}");
        log(&format!("installing {package}={version}"));
        run_ok(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .arg(format!("{package}={version}"))
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .map_err(|e| fetch_err(&package, version, e))?;
    }

    if options.source && kernel.source().is_none() {
        prepare_source(cache, &kernel, version, log)?;
    }

    if options.symbols && !kernel.symtab().is_file() {
        fetch_symtab(cache, &kernel, version, log)?;
    }

    if options.make_current {
        write(&cache.root.join("kernels/current"), release)?;
    }
    Ok(kernel)
}

/// Downloads the kernel's debug package, reads vmlinux's symbol table out of it and
/// keeps only its locals by source file (a few MB of the package's 280): the package
/// and the extracted vmlinux are deleted.
fn fetch_symtab(
    cache: &Cache,
    kernel: &Kernel,
    version: &str,
    log: &mut dyn FnMut(&str),
) -> Result<(), AssetError> {
    let package = format!("linux-image-{}-dbg", kernel.release);
    let deb = download(&cache.debs(), &package, version, log)?;
    log(&format!("reading vmlinux's symbol table out of {package}"));
    let tmp = kernel.dir.join("symtab.partial");
    remove_if_exists(&tmp)?;
    mkdir(&tmp)?;
    let member = format!("./usr/lib/debug/boot/vmlinux-{}", kernel.release);
    let script = format!(
        "dpkg-deb --fsys-tarfile '{deb}' | tar -x -C '{tmp}' '{member}'",
        deb = deb.display(),
        tmp = tmp.display(),
    );
    run_ok(Command::new("bash").args(["-c", &script]))?;
    let vmlinux = tmp.join(&member);
    let table =
        kstack_kfacts::symtab::LocalsByFile::read_elf(&vmlinux).map_err(|e| AssetError::Io {
            path: vmlinux.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let partial = kernel.symtab().with_extension("partial");
    write(&partial, &table.to_text())?;
    rename(&partial, &kernel.symtab())?;
    remove_if_exists(&tmp)?;
    remove_if_exists(&deb)?;
    Ok(())
}

fn prepare_source(
    cache: &Cache,
    kernel: &Kernel,
    version: &str,
    log: &mut dyn FnMut(&str),
) -> Result<(), AssetError> {
    let parent = kernel.src.parent().expect("the source dir has a parent");
    mkdir(parent)?;
    // Prepared in place: kbuild records absolute paths (objtool's build), which each
    // work tree renames in its copies of those records (`WorkTree::new`). The
    // marker, written last, says the tree is complete; without it the tree is redone.
    let tmp = kernel.src.clone();
    remove_if_exists(&tmp)?;
    unpack_source(cache, kernel, version, &tmp, log)?;
    // tar gives the sources their release dates: whatever is newer than this, the
    // preparation wrote.
    let cutoff = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    prepare_unpacked(&kernel.release, &tmp, &kernel.wanted_config()?, log)?;
    mark_prepared(&tmp, cutoff, version)
}

/// Unpacks the Debian source of a Debian kernel (its line's `linux-source-*` of
/// exactly `version`, downloaded into the cache unless it is there) into `dest`,
/// as it is, neither configured nor prepared.
pub fn unpack_source(
    cache: &Cache,
    kernel: &Kernel,
    version: &str,
    dest: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<(), AssetError> {
    let package = kernel.source_package();
    let tarball = kernel.line().map_or_else(
        || "usr/src/linux-source-6.1.tar.xz".to_owned(),
        |l| l.source_tarball(),
    );
    let deb = download(&cache.debs(), &package, version, log)?;
    mkdir(dest)?;
    log(&format!("unpacking {package}={version}"));
    // The .deb holds a tarball of the (Debian-patched) tree; unpack it straight from
    // the package's data without writing the tarball to disk.
    let script = format!(
        "dpkg-deb --fsys-tarfile '{deb}' | tar -xO ./{tarball} | tar -xJ -C '{dest}' --strip-components=1",
        deb = deb.display(),
        dest = dest.display(),
    );
    run_ok(Command::new("bash").args(["-ec", &format!("set -o pipefail; {script}")]))?;
    Ok(())
}

/// Prepares an unpacked source tree in place for a release, with the configuration
/// it was built with (`wanted`): `make olddefconfig` (refused if that changes one of
/// its options), `prepare modules_prepare`.
fn prepare_unpacked(
    release: &str,
    tmp: &Path,
    wanted: &str,
    log: &mut dyn FnMut(&str),
) -> Result<(), AssetError> {
    log("preparing the source tree (make olddefconfig prepare modules_prepare)");
    write(&tmp.join(".config"), wanted)?;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    // KERNELRELEASE as Debian's build sets it: without it UTS_RELEASE differs and
    // code that embeds the release string compiles differently (LAB.md).
    let release_arg = format!("KERNELRELEASE={release}");
    // Kconfig evaluates the tools it finds here; hide those the build machine did not
    // have. Only while configuring: the tools' names (`RUSTC=rustc`) stay what kbuild
    // records in auto.conf.cmd, so later builds in the tree do not reconfigure it.
    let hidden = hide_tools(&super::config::tools_the_build_lacked(wanted))?;
    let path = hidden.as_ref().map(|h| h.path_var());
    let with_path = |cmd: &mut Command| {
        if let Some(path) = &path {
            cmd.env("PATH", path);
        }
    };
    let mut olddefconfig = Command::new("make");
    olddefconfig
        .arg("-C")
        .arg(tmp)
        .args(["-s", "olddefconfig"])
        .arg(&release_arg);
    with_path(&mut olddefconfig);
    run_ok(&mut olddefconfig)?;
    let made = tmp.join(".config");
    let made = std::fs::read_to_string(&made).map_err(io_err(&made))?;
    let differences = super::config::differences(wanted, &made);
    if !differences.is_empty() {
        return Err(AssetError::Config {
            release: release.to_owned(),
            hint: super::config::hint(&differences),
            differences,
        });
    }
    let mut prepare = Command::new("make");
    prepare
        .arg("-C")
        .arg(tmp)
        .arg("-s")
        .arg(format!("-j{jobs}"))
        .args(["prepare", "modules_prepare"])
        .arg(&release_arg);
    // `prepare` runs syncconfig, which evaluates the tools again.
    with_path(&mut prepare);
    run_ok(&mut prepare)?;
    drop(hidden);
    Ok(())
}

/// Lists what was written in a prepared tree since `cutoff` ([`GENERATED_LIST`]),
/// then marks the tree complete with `marker` (the Debian version it was prepared
/// from, or the tree it was copied from).
fn mark_prepared(
    tmp: &Path,
    cutoff: std::time::SystemTime,
    marker: &str,
) -> Result<(), AssetError> {
    let mut generated = Vec::new();
    list_newer(tmp, tmp, cutoff, &mut generated)?;
    generated.sort();
    write(&tmp.join(GENERATED_LIST), &generated.join("\n"))?;
    write(&tmp.join(PREPARED_MARKER), marker)
}

/// A directory of stand-ins for tools, first in `PATH`: each fails as a missing
/// command does (exit 127, nothing on stdout).
struct HiddenTools {
    dir: tempfile::TempDir,
}

impl HiddenTools {
    /// `PATH` with the stand-ins first.
    fn path_var(&self) -> std::ffi::OsString {
        let mut dirs = vec![self.dir.path().to_owned()];
        dirs.extend(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths),
        );
        std::env::join_paths(dirs).unwrap_or_else(|_| self.dir.path().as_os_str().to_owned())
    }
}

/// Stand-ins that hide `tools` from the commands run with [`HiddenTools::path_var`];
/// `None` when there is nothing to hide.
fn hide_tools(tools: &[&str]) -> Result<Option<HiddenTools>, AssetError> {
    use std::os::unix::fs::PermissionsExt;
    if tools.is_empty() {
        return Ok(None);
    }
    let dir = tempfile::tempdir().map_err(io_err(&std::env::temp_dir()))?;
    for tool in tools {
        let path = dir.path().join(tool);
        write(
            &path,
            &format!("#!/bin/sh\necho \"{tool}: not found (hidden by kstack)\" >&2\nexit 127\n"),
        )?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err(&path))?;
    }
    Ok(Some(HiddenTools { dir }))
}

/// Refuses a kernel configuration kstack cannot build live patches for, with the
/// reason. What Debian's 6.12 enables beyond 6.1 (IBT, call padding, call-depth
/// tracking, objtool at link time) is handled; these are not:
fn check_config(config: &str) -> Result<(), String> {
    let enabled = |option: &str| {
        config
            .lines()
            .any(|l| l.strip_prefix(option).is_some_and(|rest| rest == "=y"))
    };
    if !enabled("CONFIG_LIVEPATCH") {
        return Err(
            "its configuration has no CONFIG_LIVEPATCH: it cannot load live patches".into(),
        );
    }
    if enabled("CONFIG_CFI_CLANG") {
        // include/linux/cfi.h, arch/x86/kernel/alternative.c (FineIBT).
        return Err(
            "it is built with kCFI (CONFIG_CFI_CLANG): every function a patch \
                    carries would need the `__cfi_` preamble with the type hash of the \
                    original, which FineIBT rewrites at boot; kstack does not write them"
                .into(),
        );
    }
    if enabled("CONFIG_LTO_CLANG") {
        return Err(
            "it is built with LTO (CONFIG_LTO_CLANG): a translation unit compiled \
                    alone is not the code the kernel runs"
                .into(),
        );
    }
    Ok(())
}

/// Decompresses the modules of an unpacked image package in place (`xfs.ko.xz` to
/// `xfs.ko`): 6.12's packages ship them xz-compressed (`CONFIG_MODULE_COMPRESS_XZ`),
/// 6.1's plain. The builder reads their symbol tables and the sandbox's busybox
/// `modprobe` loads them, both from plain `.ko` files; depmod indexes what is there.
fn decompress_modules(dir: &Path, log: &mut dyn FnMut(&str)) -> Result<(), AssetError> {
    let mut compressed = Vec::new();
    find_suffix(dir, ".ko.xz", &mut compressed)?;
    if compressed.is_empty() {
        return Ok(());
    }
    log(&format!("decompressing {} modules", compressed.len()));
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    // One xz per core, each on its share of the files.
    let children: Vec<_> = compressed
        .chunks(compressed.len().div_ceil(jobs))
        .map(|chunk| {
            Command::new("xz")
                .args(["-d", "-q"])
                .args(chunk)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| AssetError::Command {
                    command: "xz -d".into(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<_, _>>()?;
    for child in children {
        let out = child.wait_with_output().map_err(|e| AssetError::Command {
            command: "xz -d".into(),
            reason: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(AssetError::Command {
                command: "xz -d".into(),
                reason: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
    }
    Ok(())
}

fn find_suffix(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) -> Result<(), AssetError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry.map_err(io_err(dir))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        if meta.is_dir() {
            find_suffix(&path, suffix, out)?;
        } else if path.to_str().is_some_and(|p| p.ends_with(suffix)) {
            out.push(path);
        }
    }
    Ok(())
}

/// Files under `dir` modified at or after `cutoff`, relative to `root`.
fn list_newer(
    root: &Path,
    dir: &Path,
    cutoff: std::time::SystemTime,
    out: &mut Vec<String>,
) -> Result<(), AssetError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        if meta.is_dir() {
            list_newer(root, &path, cutoff, out)?;
        } else if meta.is_file() && meta.modified().map_err(io_err(&path))? >= cutoff {
            let rel = path.strip_prefix(root).expect("under the root");
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// Downloads one package version into `dir` unless it is there already.
fn download(
    dir: &Path,
    package: &str,
    version: &str,
    log: &mut dyn FnMut(&str),
) -> Result<PathBuf, AssetError> {
    // Debian escapes the epoch colon as %3a in file names.
    let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
    if let Some(found) = find_deb(dir, &prefix)? {
        return Ok(found);
    }
    log(&format!("downloading {package}={version}"));
    let partial = dir.join(".partial");
    remove_if_exists(&partial)?;
    mkdir(&partial)?;
    run_ok(
        Command::new("apt-get")
            .args(["download", "-q"])
            .arg(format!("{package}={version}"))
            .current_dir(&partial),
    )
    .map_err(|e| fetch_err(package, version, e))?;
    let got = find_deb(&partial, &prefix)?.ok_or_else(|| AssetError::Fetch {
        package: package.into(),
        version: version.into(),
        reason: "apt-get download succeeded but wrote no .deb".into(),
    })?;
    let dest = dir.join(got.file_name().expect("a found file has a name"));
    rename(&got, &dest)?;
    remove_if_exists(&partial)?;
    Ok(dest)
}

fn find_deb(dir: &Path, prefix: &str) -> Result<Option<PathBuf>, AssetError> {
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    Ok(entries.flatten().map(|e| e.path()).find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".deb"))
    }))
}

fn fetch_err(package: &str, version: &str, e: AssetError) -> AssetError {
    match e {
        AssetError::Command { reason, .. } => AssetError::Fetch {
            package: package.into(),
            version: version.into(),
            reason,
        },
        other => other,
    }
}

/// Runs a command; a non-zero exit becomes an error carrying the tail of its stderr.
fn run_ok(cmd: &mut Command) -> Result<Output, AssetError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| AssetError::Command {
        command: shown.clone(),
        reason: e.to_string(),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(AssetError::Command {
            command: shown,
            reason: format!("{}\n{}", out.status, tail.join("\n")),
        });
    }
    Ok(out)
}

fn mkdir(path: &Path) -> Result<(), AssetError> {
    std::fs::create_dir_all(path).map_err(io_err(path))
}

fn write(path: &Path, text: &str) -> Result<(), AssetError> {
    std::fs::write(path, text).map_err(io_err(path))
}

fn rename(from: &Path, to: &Path) -> Result<(), AssetError> {
    std::fs::rename(from, to).map_err(io_err(from))
}

fn remove_if_exists(path: &Path) -> Result<(), AssetError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(io_err(path)),
        Ok(_) => std::fs::remove_file(path).map_err(io_err(path)),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_kernel_built_from_a_tree_is_no_debian_line_whatever_its_release() {
        let cache = tempfile::tempdir().expect("a temporary directory");
        let cache = super::Cache::at(cache.path());
        // A release that looks like Debian's: the tree marker decides.
        let kernel = cache.kernel_unchecked("6.1.0-56-cloud-amd64");
        assert!(kernel.line().is_some());
        assert_eq!(
            kernel.headers(),
            std::path::Path::new("/usr/src/linux-headers-6.1.0-56-cloud-amd64")
        );
        std::fs::create_dir_all(kernel.dir()).expect("the kernel's directory");
        std::fs::write(kernel.dir().join(super::tree::TREE_ORIGIN), "/src/linux\n")
            .expect("the tree marker");
        assert_eq!(kernel.line(), None);
        assert_eq!(kernel.tree(), Some("/src/linux".into()));
        assert_eq!(kernel.version(), None);
        // Its headers are its prepared source, which holds its Module.symvers.
        assert_eq!(kernel.headers(), kernel.src);
    }

    #[test]
    fn a_hidden_tool_reads_as_missing_to_kconfigs_version_scripts() {
        // What 6.12's scripts/rustc-version.sh does with `$(RUSTC)`: 0 when
        // `rustc --version` fails.
        let script = "if out=$(rustc --version 2>/dev/null); then echo \"$out\"; else echo 0; fi";
        let hidden = super::hide_tools(&["rustc"]).unwrap().unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", script])
            .env("PATH", hidden.path_var())
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");
        // The rest of PATH is still there.
        let out = std::process::Command::new("sh")
            .args(["-c", "command -v sh"])
            .env("PATH", hidden.path_var())
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(super::hide_tools(&[]).unwrap().is_none());
    }

    #[test]
    fn configurations_kstack_cannot_patch_are_refused_with_the_reason() {
        let debian_612 = "CONFIG_LIVEPATCH=y\nCONFIG_X86_KERNEL_IBT=y\nCONFIG_CALL_PADDING=y\n\
                          CONFIG_MITIGATION_CALL_DEPTH_TRACKING=y\n# CONFIG_CFI_CLANG is not set\n";
        assert_eq!(super::check_config(debian_612), Ok(()));
        let kcfi = format!("{debian_612}CONFIG_CFI_CLANG=y\nCONFIG_FINEIBT=y\n");
        let err = super::check_config(&kcfi).unwrap_err();
        assert!(err.contains("kCFI") && err.contains("__cfi_"), "{err}");
        let err = super::check_config("CONFIG_LIVEPATCH=y\nCONFIG_LTO_CLANG=y\n").unwrap_err();
        assert!(err.contains("LTO"), "{err}");
        let err = super::check_config("# CONFIG_LIVEPATCH is not set\n").unwrap_err();
        assert!(err.contains("CONFIG_LIVEPATCH"), "{err}");
    }
}
