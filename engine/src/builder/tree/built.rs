//! What kbuild builds for the kernel's configuration, and the checks of a diff
//! against it.

use std::path::Path;
use std::process::Command;

use super::patch_file::buildable_files;
use super::{ChangeKind, FileChange, TreeError, io, parse_diff, spawn_error};

/// What kbuild builds in one directory for the kernel's configuration: the objects
/// (built in, `lib-y`, or parts of modules) and the subdirectories it descends into.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KbuildDir {
    pub objects: Vec<String>,
    pub subdirs: Vec<String>,
}

/// Asks kbuild what it builds in `dir` of the prepared `tree`: evaluates the
/// directory's Makefile with the kernel's configuration (scripts/Makefile.build, as
/// a build of that directory would) and prints its lists. Builds and writes nothing.
pub fn kbuild_dir(tree: &Path, dir: &str) -> Result<KbuildDir, TreeError> {
    const PRINT: &str = "kstack-print-objects";
    let printer = tempfile::NamedTempFile::new().map_err(io(tree))?;
    std::fs::write(
        printer.path(),
        format!(
            "{PRINT}:\n\t@echo \"objects: $(real-obj-y) $(real-obj-m) $(lib-y)\"\n\
             \t@echo \"subdirs: $(subdir-ym)\"\n"
        ),
    )
    .map_err(io(printer.path()))?;
    let output = Command::new("make")
        .arg("-C")
        .arg(tree)
        .arg("-s")
        .args(["-f", "scripts/Makefile.build", "-f"])
        .arg(printer.path())
        .arg(format!("obj={dir}"))
        .arg(format!("src={dir}"))
        .args(["srctree=.", "objtree=."])
        .arg(PRINT)
        .output()
        .map_err(|e| spawn_error("make", e))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let list = |prefix: &str| -> Vec<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    if !output.status.success() {
        return Err(TreeError::Command {
            command: format!("make -f scripts/Makefile.build obj={dir}"),
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(KbuildDir {
        objects: list("objects: "),
        subdirs: list("subdirs: "),
    })
}

/// Whether the kernel's configuration builds translation unit `unit`
/// (`fs/xfs/xfs_stats.o`): kbuild lists it in its directory, and every directory
/// above it down from the top level is descended into. [`TreeError::NotBuilt`]
/// otherwise.
pub fn check_built(tree: &Path, release: &str, unit: &str) -> Result<(), TreeError> {
    let not_built = || TreeError::NotBuilt {
        unit: unit.to_owned(),
        release: release.to_owned(),
    };
    let mut dir = Path::new(unit)
        .parent()
        .ok_or_else(not_built)?
        .to_path_buf();
    let has_makefile =
        |d: &Path| tree.join(d).join("Makefile").is_file() || tree.join(d).join("Kbuild").is_file();
    // A directory without a Makefile of its own (arch/x86/kvm/mmu) is built by its
    // parent's (`kvm-y += mmu/mmu.o`).
    while !has_makefile(&dir) {
        dir = dir.parent().ok_or_else(not_built)?.to_path_buf();
        if dir.as_os_str().is_empty() {
            return Err(not_built());
        }
    }
    let here = kbuild_dir(tree, &dir.to_string_lossy())?;
    if !here.objects.iter().any(|o| o == unit) {
        return Err(not_built());
    }
    // The top-level directories (fs, kernel, drivers, arch/x86, ...) are the top
    // Makefile's own; every directory below must be descended into by the nearest
    // directory above it that has a Makefile: drivers/net/ethernet/mellanox descends
    // into `mlx5/core/` (`obj-$(CONFIG_MLX5_CORE) += mlx5/core/`), and mlx5 has none.
    let top = |d: &Path| {
        let n = d.components().count();
        n <= 1 || n == 2 && d.starts_with("arch")
    };
    while !top(&dir) {
        let mut parent = dir.parent().ok_or_else(not_built)?.to_path_buf();
        while !has_makefile(&parent) && !top(&parent) {
            parent = parent.parent().ok_or_else(not_built)?.to_path_buf();
        }
        let listing = kbuild_dir(tree, &parent.to_string_lossy())?;
        let child = dir.to_string_lossy().into_owned();
        if !listing
            .subdirs
            .iter()
            .any(|d| d.trim_end_matches('/') == child)
        {
            return Err(not_built());
        }
        dir = parent;
    }
    Ok(())
}

/// Checks a diff against the prepared source of kernel `release` before anything is
/// built: it is a unified diff (see [`parse_diff`]), it changes a file the kernel
/// builds, and every file it modifies or deletes is in the source or is created by
/// one of the `earlier` diffs (the stack's patches below it).
pub fn check_diff(
    diff: &[u8],
    source: &Path,
    release: &str,
    earlier: &[&[u8]],
) -> Result<Vec<FileChange>, TreeError> {
    let changes = parse_diff(diff)?;
    buildable_files(&changes)?;
    let created: Vec<String> = earlier
        .iter()
        .flat_map(|d| parse_diff(d).unwrap_or_default())
        .filter(|c| c.kind == ChangeKind::Created)
        .map(|c| c.path)
        .collect();
    let missing: Vec<String> = changes
        .iter()
        .filter(|c| c.kind != ChangeKind::Created)
        .filter(|c| !source.join(&c.path).is_file() && !created.contains(&c.path))
        .map(|c| c.path.clone())
        .collect();
    if !missing.is_empty() {
        return Err(TreeError::NotInSource {
            paths: missing,
            release: release.to_owned(),
        });
    }
    Ok(changes)
}
