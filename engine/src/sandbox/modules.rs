//! The kernel's loadable modules in the guest: `/lib/modules/<release>` with the
//! index `depmod` wrote (`modules.dep`, `modules.alias`, ...), so that busybox's
//! `modprobe` loads a module and what it depends on, as on a real host.
//!
//! Either every module of the kernel (about 90 MB for the cloud kernel, written into
//! the initramfs at each boot) or only the named ones and their dependencies.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::SandboxError;
use super::initramfs::Initramfs;

/// The module index depmod writes, which the guest's modprobe reads.
const DEP_FILE: &str = "modules.dep";

/// Which modules go into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSet {
    All,
    /// These modules (names as `modprobe` takes them) and their dependencies.
    Named(Vec<String>),
}

/// Why the modules cannot be given to the guest.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error(
        "{dir}: no module index ({DEP_FILE}); run `cargo xtask setup` or `kstack kernel add`, which index the image's modules"
    )]
    NoIndex { dir: PathBuf },
    #[error("module {name} is not one of this kernel's modules ({dir})")]
    Unknown { name: String, dir: PathBuf },
}

/// One module of the index: its file (relative to the modules directory) and the
/// files of the modules it needs.
#[derive(Debug)]
struct Indexed {
    path: String,
    deps: Vec<String>,
}

fn module_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.split('.').next().unwrap_or(n))
        .unwrap_or(path)
        .replace('-', "_")
}

/// Adds the modules of `dir` (`.../lib/modules/<release>`) to `root`.
pub(super) fn add(root: &mut Initramfs, dir: &Path, set: &ModuleSet) -> Result<(), SandboxError> {
    let release =
        dir.file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| ModulesError::NoIndex {
                dir: dir.to_owned(),
            })?;
    let guest_dir = format!("/lib/modules/{release}");
    let dep = std::fs::read_to_string(dir.join(DEP_FILE)).map_err(|_| ModulesError::NoIndex {
        dir: dir.to_owned(),
    })?;
    let index: Vec<Indexed> = dep
        .lines()
        .filter_map(|l| {
            let (path, deps) = l.split_once(':')?;
            Some(Indexed {
                path: path.trim().to_owned(),
                deps: deps.split_whitespace().map(str::to_owned).collect(),
            })
        })
        .collect();
    let files: BTreeSet<String> = match set {
        ModuleSet::All => index.iter().map(|m| m.path.clone()).collect(),
        ModuleSet::Named(names) => {
            let mut files = BTreeSet::new();
            for name in names {
                let wanted = name.replace('-', "_");
                let module = index
                    .iter()
                    .find(|m| module_name(&m.path) == wanted)
                    .ok_or_else(|| ModulesError::Unknown {
                        name: name.clone(),
                        dir: dir.to_owned(),
                    })?;
                files.insert(module.path.clone());
                // modules.dep lists the whole closure, in load order.
                files.extend(module.deps.iter().cloned());
            }
            files
        }
    };
    for file in &files {
        root.host_file(&format!("{guest_dir}/{file}"), &dir.join(file))?;
    }
    // The index files (modules.dep, modules.alias, modules.builtin, ...).
    for entry in std::fs::read_dir(dir).map_err(|source| SandboxError::Io {
        path: dir.to_owned(),
        source,
    })? {
        let entry = entry.map_err(|source| SandboxError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("modules.") && entry.path().is_file() {
            root.host_file(&format!("{guest_dir}/{name}"), &entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_as_modprobe_takes_them() {
        assert_eq!(module_name("kernel/fs/xfs/xfs.ko"), "xfs");
        assert_eq!(module_name("kernel/net/sched/sch-fq.ko"), "sch_fq");
        assert_eq!(module_name("kernel/lib/crc32c.ko.xz"), "crc32c");
    }

    #[test]
    fn a_named_module_brings_its_dependencies() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let modules = dir.path().join("6.1.0-test");
        let write = |path: &str, text: &str| {
            let p = modules.join(path);
            std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        };
        write(
            DEP_FILE,
            "kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko\nkernel/lib/libcrc32c.ko:\nkernel/fs/fuse/fuse.ko:\n",
        );
        write("modules.alias", "");
        write("kernel/fs/xfs/xfs.ko", "xfs");
        write("kernel/lib/libcrc32c.ko", "crc");
        write("kernel/fs/fuse/fuse.ko", "fuse");
        let mut root = Initramfs::new();
        add(&mut root, &modules, &ModuleSet::Named(vec!["xfs".into()])).expect("adds");
        assert!(root.contains("/lib/modules/6.1.0-test/kernel/fs/xfs/xfs.ko"));
        assert!(root.contains("/lib/modules/6.1.0-test/kernel/lib/libcrc32c.ko"));
        assert!(!root.contains("/lib/modules/6.1.0-test/kernel/fs/fuse/fuse.ko"));
        assert!(root.contains("/lib/modules/6.1.0-test/modules.dep"));
        let err = add(&mut root, &modules, &ModuleSet::Named(vec!["nope".into()]));
        assert!(err.is_err());
    }
}
