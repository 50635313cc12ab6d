//! A kernel its owner built from a source tree (`kstack kernel add --tree DIR
//! --image FILE`), registered in the cache beside Debian's so that the builder,
//! run-pre and the sandbox take it the same way.
//!
//! From the tree it takes the release (`include/config/kernel.release`), the
//! `.config`, `Module.symvers`, `System.map` (or a kallsyms file given instead) and
//! `vmlinux`; the image is the bootable bzImage of that build. The layout is a
//! Debian kernel's:
//!
//! ```text
//! kernels/<release>/tree                      the tree it came from (marks a tree kernel)
//! kernels/<release>/root/boot/vmlinuz-<release>, config-<release>, System.map-<release>
//! kernels/<release>/root/lib/modules/<release>/   its modules (modules.order), indexed
//! kernels/<release>/kallsyms, vmlinux.symtab, build-id
//! src/<release>/linux/                        its sources, prepared; also its headers
//! ```
//!
//! The sources are copied, not used in place: the builder hard-links its prepared
//! tree into work trees and relies on knowing which files kbuild rewrites in place
//! (what preparing generated), which a fully built tree does not say; and the owner
//! goes on working in the tree (a rebuild, a checkout), while the registered kernel
//! must stay the one the image runs. So the copy leaves out `.git` and kbuild's
//! outputs, `make mrproper` removes whatever generated file is left, and it is
//! prepared as a Debian source is (the tree's `.config`, its release, `make
//! olddefconfig prepare modules_prepare`), with the tree's `Module.symvers`: a
//! prepared tree with `Module.symvers` is what kbuild builds external modules
//! against (Documentation/kbuild/modules.rst), so it serves as the headers too.
//! Nothing is written into the owner's tree.
//!
//! A tree kernel names no Debian line or version: [`super::Kernel::line`] and
//! [`super::Kernel::version`] are `None` for it.

use std::path::{Path, PathBuf};
use std::process::Command;

use kstack_store::ident::BuildId;

use super::{AssetError, Cache, Kernel, io_err, mkdir, remove_if_exists, rename, run_ok, write};

/// The file in a kernel's directory that names the tree it was registered from.
pub(super) const TREE_ORIGIN: &str = "tree";
/// Where kbuild writes the kernel release of a configured tree
/// (`include/config/kernel.release`, top-level Makefile).
const RELEASE_FILE: &str = "include/config/kernel.release";

/// Why a tree cannot be registered.
#[derive(Debug, thiserror::Error)]
pub enum TreeKernelError {
    #[error("{tree} has no {file}: {hint}")]
    Missing {
        tree: PathBuf,
        file: &'static str,
        hint: &'static str,
    },
    #[error("kernel {release} from {tree} cannot be added: {reason}")]
    Unsupported {
        release: String,
        tree: PathBuf,
        reason: String,
    },
    #[error(
        "the image {image} (build ID {image_id}) is not the vmlinux of {tree} (build ID \
         {vmlinux_id}): the image comes from another build"
    )]
    BuildIdMismatch {
        image: PathBuf,
        image_id: BuildId,
        tree: PathBuf,
        vmlinux_id: BuildId,
    },
    #[error("kernel {release} is already in the cache {cache}")]
    AlreadyRegistered { release: String, cache: PathBuf },
    #[error("{path}: {detail}")]
    Unreadable { path: PathBuf, detail: String },
}

/// What `kstack kernel add --tree` was given.
#[derive(Debug, Clone)]
pub struct TreeInput {
    /// The built source tree.
    pub tree: PathBuf,
    /// Its bootable image (`arch/x86/boot/bzImage`).
    pub image: PathBuf,
    /// The kernel's `/proc/kallsyms` (booted with `nokaslr`), instead of the tree's
    /// `System.map`.
    pub kallsyms: Option<PathBuf>,
    /// Make it the kernel `kstack try` boots by default.
    pub make_current: bool,
}

/// The files of a built tree that registration reads, each with what makes it.
const NEEDED: &[(&str, &str)] = &[
    (
        ".config",
        "configure and build the tree first (make olddefconfig && make)",
    ),
    (
        RELEASE_FILE,
        "configure and build the tree first (make olddefconfig && make)",
    ),
    ("vmlinux", "build the kernel first (make)"),
    (
        "Module.symvers",
        "build the modules too (make, or make modules): kbuild writes it at modpost",
    ),
];
const NO_SYSTEM_MAP: &str = "build the kernel first (make), or pass --kallsyms with its /proc/kallsyms (booted with nokaslr)";

/// Checks a tree and registers it (see the module doc): refused before anything is
/// written when the tree lacks a file, cannot be live-patched, its release is in the
/// cache already, or the image is not its vmlinux. `log` receives one line per step.
pub fn add_tree_kernel(
    cache: &Cache,
    input: &TreeInput,
    log: &mut dyn FnMut(&str),
) -> Result<Kernel, AssetError> {
    let tree = std::path::absolute(&input.tree).map_err(io_err(&input.tree))?;
    for (file, hint) in NEEDED {
        if !tree.join(file).is_file() {
            return Err(missing(&tree, file, hint));
        }
    }
    let release = read(&tree.join(RELEASE_FILE))?.trim().to_owned();
    if release.is_empty() || release.contains(['/', ' ', '\t']) || release.starts_with('.') {
        return Err(TreeKernelError::Unreadable {
            path: tree.join(RELEASE_FILE),
            detail: format!("{release:?} is not a kernel release"),
        }
        .into());
    }
    let config = read(&tree.join(".config"))?;
    if let Err(reason) = super::check_config(&config) {
        return Err(TreeKernelError::Unsupported {
            release,
            tree,
            reason,
        }
        .into());
    }
    let system_map = tree.join("System.map");
    if input.kallsyms.is_none() && !system_map.is_file() {
        return Err(missing(&tree, "System.map", NO_SYSTEM_MAP));
    }
    let kernel = cache.kernel_unchecked(&release);
    if kernel.dir.exists() {
        return Err(TreeKernelError::AlreadyRegistered {
            release,
            cache: cache.root.clone(),
        }
        .into());
    }
    let image_id = kstack_store::ident::image_build_id(&input.image).map_err(|e| {
        TreeKernelError::Unreadable {
            path: input.image.clone(),
            detail: e.to_string(),
        }
    })?;
    let vmlinux = tree.join("vmlinux");
    let vmlinux_bytes = std::fs::read(&vmlinux).map_err(io_err(&vmlinux))?;
    let vmlinux_id = kstack_store::ident::elf_build_id(&vmlinux_bytes, "vmlinux").map_err(|e| {
        TreeKernelError::Unreadable {
            path: vmlinux.clone(),
            detail: e.to_string(),
        }
    })?;
    if image_id != vmlinux_id {
        return Err(TreeKernelError::BuildIdMismatch {
            image: input.image.clone(),
            image_id,
            tree,
            vmlinux_id,
        }
        .into());
    }

    let tmp = kernel.dir.with_extension("partial");
    remove_if_exists(&tmp)?;
    let boot = tmp.join("root/boot");
    mkdir(&boot)?;
    copy(&input.image, &boot.join(format!("vmlinuz-{release}")))?;
    copy(
        &tree.join(".config"),
        &boot.join(format!("config-{release}")),
    )?;
    let kallsyms = match &input.kallsyms {
        Some(file) => read(file)?,
        None => {
            let map = read(&system_map)?;
            copy(&system_map, &boot.join(format!("System.map-{release}")))?;
            let absolute_percpu = config
                .lines()
                .any(|l| l == "CONFIG_KALLSYMS_ABSOLUTE_PERCPU=y");
            kstack_kfacts::system_map::to_kallsyms(&map, absolute_percpu)
        }
    };
    write(&tmp.join("kallsyms"), &kallsyms)?;
    log("reading vmlinux's symbol table");
    let table = kstack_kfacts::symtab::LocalsByFile::read_elf(&vmlinux).map_err(|e| {
        TreeKernelError::Unreadable {
            path: vmlinux.clone(),
            detail: e.to_string(),
        }
    })?;
    write(&tmp.join("vmlinux.symtab"), &table.to_text())?;
    write(&tmp.join("build-id"), &image_id.to_hex())?;
    install_modules(&tree, &tmp.join("root"), &release, log)?;
    write(&tmp.join(TREE_ORIGIN), &tree.display().to_string())?;

    // The source is prepared before the kernel's directory appears: a kernel in the
    // cache is complete, and an interrupted registration is redone from the start.
    prepare_copy(&tree, &kernel, &config, log)?;
    rename(&tmp, &kernel.dir)?;
    if input.make_current {
        write(&cache.root.join("kernels/current"), &release)?;
    }
    Ok(kernel)
}

fn missing(tree: &Path, file: &'static str, hint: &'static str) -> AssetError {
    TreeKernelError::Missing {
        tree: tree.to_owned(),
        file,
        hint,
    }
    .into()
}

/// The tree's modules (those `modules.order` lists) as `make modules_install` lays
/// them out, with kbuild's lists of built-in modules, indexed by depmod: what the
/// sandbox's modprobe and the builder read. An empty directory for a kernel without
/// modules.
fn install_modules(
    tree: &Path,
    root: &Path,
    release: &str,
    log: &mut dyn FnMut(&str),
) -> Result<(), AssetError> {
    let dir = root.join("lib/modules").join(release);
    mkdir(&dir)?;
    let order = std::fs::read_to_string(tree.join("modules.order")).unwrap_or_default();
    let modules: Vec<String> = order
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        // 6.1 lists `.ko` files, later kernels the `.o` they are linked from.
        .map(|l| format!("{}.ko", l.trim_end_matches(".ko").trim_end_matches(".o")))
        .collect();
    if !modules.is_empty() {
        log(&format!("copying {} modules", modules.len()));
    }
    let mut installed = String::new();
    for module in &modules {
        let to = dir.join("kernel").join(module);
        mkdir(to.parent().expect("a module path has a parent"))?;
        copy(&tree.join(module), &to)?;
        installed.push_str(&format!("kernel/{module}\n"));
    }
    write(&dir.join("modules.order"), &installed)?;
    for list in ["modules.builtin", "modules.builtin.modinfo"] {
        if tree.join(list).is_file() {
            copy(&tree.join(list), &dir.join(list))?;
        }
    }
    run_ok(Command::new("depmod").arg("-b").arg(root).arg(release))?;
    Ok(())
}

/// Copies the tree's sources to the kernel's source directory and prepares them as
/// a Debian source is prepared (see the module doc), with the tree's
/// `Module.symvers`.
fn prepare_copy(
    tree: &Path,
    kernel: &Kernel,
    config: &str,
    log: &mut dyn FnMut(&str),
) -> Result<(), AssetError> {
    let dest = kernel.src.clone();
    remove_if_exists(&dest)?;
    mkdir(&dest)?;
    log(&format!("copying the sources of {}", tree.display()));
    copy_sources(tree, &dest)?;
    log("removing what the tree's build left (make mrproper)");
    run_ok(
        Command::new("make")
            .arg("-C")
            .arg(&dest)
            .args(["-s", "mrproper"]),
    )?;
    let cutoff = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    let wanted = super::blank_signing_keys(config);
    super::prepare_unpacked(&kernel.release, &dest, &wanted, log)?;
    copy(&tree.join("Module.symvers"), &dest.join("Module.symvers"))?;
    super::mark_prepared(&dest, cutoff, &format!("tree {}\n", tree.display()))
}

/// Copies the files of `from` to `to` with their modification times, symbolic links
/// as links, without the Git
/// directory and the files kbuild built (those that have a `.<name>.cmd` record
/// beside them, and the records).
fn copy_sources(from: &Path, to: &Path) -> Result<(), AssetError> {
    let entries: Vec<_> = std::fs::read_dir(from)
        .map_err(io_err(from))?
        .collect::<Result<_, _>>()
        .map_err(io_err(from))?;
    let names: std::collections::HashSet<std::ffi::OsString> =
        entries.iter().map(|e| e.file_name()).collect();
    for entry in entries {
        let name = entry.file_name();
        let text = name.to_string_lossy();
        if text == ".git" {
            continue;
        }
        let built = names.contains(std::ffi::OsStr::new(&format!(".{text}.cmd")));
        let record = text.starts_with('.') && text.ends_with(".cmd");
        if built || record {
            continue;
        }
        let path = entry.path();
        let target = to.join(&name);
        let kind = entry.file_type().map_err(io_err(&path))?;
        if kind.is_symlink() {
            let link = std::fs::read_link(&path).map_err(io_err(&path))?;
            std::os::unix::fs::symlink(&link, &target).map_err(io_err(&target))?;
        } else if kind.is_dir() {
            mkdir(&target)?;
            copy_sources(&path, &target)?;
        } else if kind.is_file() {
            copy(&path, &target)?;
            // The sources keep their times: what preparing writes is told apart from
            // them by being newer (`GENERATED_LIST`).
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(io_err(&path))?;
            std::fs::File::options()
                .write(true)
                .open(&target)
                .and_then(|f| f.set_modified(modified))
                .map_err(io_err(&target))?;
        }
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<(), AssetError> {
    std::fs::copy(from, to).map(drop).map_err(io_err(from))
}

fn read(path: &Path) -> Result<String, AssetError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}
