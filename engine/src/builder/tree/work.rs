//! A build's private working copy of the prepared tree.

use std::path::{Path, PathBuf};
use std::process::Command;

use kstack_kfacts::livepatch::VMLINUX;

use super::patch_file::buildable_files;
use super::{
    ChangeKind, EXTRA_CFLAGS, TreeError, io, object_of_compile, out_of_space, parse_diff, run,
    spawn_error,
};
use crate::builder::units::UnitCommand;

/// A private working copy of a prepared tree.
#[derive(Debug)]
pub struct WorkTree {
    dir: tempfile::TempDir,
    release: String,
}

impl WorkTree {
    /// Hard-links `prepared` into a new directory under `parent`.
    pub fn new(prepared: &Path, parent: &Path, release: &str) -> Result<WorkTree, TreeError> {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let dir = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(parent)
            .map_err(io(parent))?;
        run(Command::new("cp")
            .arg("-al")
            .arg(format!("{}/.", prepared.display()))
            .arg(dir.path()))?;
        // kbuild rewrites the files that preparing generated (.cmd, .d, objtool's
        // build) by truncating them: those must be copies, or the write would land in
        // the shared tree.
        let list = prepared.join(crate::builder::assets::GENERATED_LIST);
        let generated = std::fs::read_to_string(&list).map_err(io(&list))?;
        // The tools kbuild builds before any object (objtool, resolve_btfids) record
        // their commands with the tree's absolute path (`O=$(abspath $(objtree))`):
        // as the prepared tree wrote them, every command would differ from the one
        // make runs here, and each build would compile them all again (about 60
        // files, two thirds of a small patch's build time).
        let rename = (
            absolute(prepared)?,
            absolute(dir.path())?.display().to_string(),
        );
        for rel in generated.lines().filter(|l| !l.is_empty()) {
            let path = dir.path().join(rel);
            if is_tool_command_record(rel) {
                unshare_renamed(&path, &rename.0.display().to_string(), &rename.1)?;
            } else {
                unshare(&path)?;
            }
        }
        Ok(WorkTree {
            dir,
            release: release.to_owned(),
        })
    }

    /// A work tree that shares `prepared` through symbolic links: only the
    /// directories on the way to `paths` (the files the diffs change, relative to
    /// the top) are real directories, holding links to their other entries, and the
    /// files of `paths` are copies. Cheap to make, whatever the size of the tree,
    /// but only for compiling with recorded commands ([`WorkTree::compile_recorded`]),
    /// which write nothing outside those directories: kbuild itself writes all over
    /// a tree and needs [`WorkTree::new`].
    pub fn sparse(
        prepared: &Path,
        parent: &Path,
        release: &str,
        paths: &[String],
    ) -> Result<WorkTree, TreeError> {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let dir = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(parent)
            .map_err(io(parent))?;
        // Every directory on the way to a changed file, the top included.
        let mut real: std::collections::BTreeSet<PathBuf> = std::collections::BTreeSet::new();
        let mut copies: std::collections::BTreeSet<PathBuf> = std::collections::BTreeSet::new();
        for path in paths {
            let path = Path::new(path);
            copies.insert(path.to_owned());
            real.extend(path.ancestors().skip(1).map(Path::to_owned));
        }
        // Parents sort before their children.
        for rel in &real {
            let at = dir.path().join(rel);
            std::fs::create_dir_all(&at).map_err(io(&at))?;
            let from = prepared.join(rel);
            let Ok(entries) = std::fs::read_dir(&from) else {
                continue; // a directory a diff creates
            };
            for entry in entries {
                let entry = entry.map_err(io(&from))?;
                let name = rel.join(entry.file_name());
                let target = dir.path().join(&name);
                if real.contains(&name) {
                    continue;
                }
                if copies.contains(&name) {
                    std::fs::copy(entry.path(), &target).map_err(io(&target))?;
                } else {
                    std::os::unix::fs::symlink(entry.path(), &target).map_err(io(&target))?;
                }
            }
        }
        Ok(WorkTree {
            dir,
            release: release.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the tree (it is otherwise removed when dropped) and returns its path.
    pub fn into_path(self) -> PathBuf {
        self.dir.keep()
    }

    /// Applies a unified diff (`-p1`, as `git diff` writes them); `what` names it in
    /// errors.
    pub fn apply(&self, diff: &[u8], what: &str) -> Result<(), TreeError> {
        use std::io::Write;
        let mut child = Command::new("patch")
            .args([
                "-p1",
                "--batch",
                "--forward",
                "--no-backup-if-mismatch",
                "-s",
            ])
            .current_dir(self.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error("patch", e))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(diff);
        }
        let out = child.wait_with_output().map_err(|e| TreeError::Command {
            command: "patch".into(),
            output: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(TreeError::Apply {
                what: what.to_owned(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(())
    }

    /// The translation units (object paths, `fs/proc/cmdline.o`) a diff needs
    /// rebuilt: its `.c` files, and for a header every built unit whose compile
    /// includes it ([`super::deps`]; `source` is the cached prepared tree, `cache`
    /// where the include index and dependency lists are kept). A header the diff
    /// creates is reached only through the files that include it, which the diff
    /// changes too.
    pub fn units_for(
        &self,
        diff: &[u8],
        source: &Path,
        cache: &Path,
    ) -> Result<Vec<String>, TreeError> {
        let changes = parse_diff(diff)?;
        let files = buildable_files(&changes)?;
        let mut units = Vec::new();
        for file in files {
            if let Some(stem) = file.strip_suffix(".c") {
                units.push(format!("{stem}.o"));
            } else if file.ends_with(".h") {
                let created = changes
                    .iter()
                    .any(|c| c.path == file && c.kind == ChangeKind::Created);
                if created {
                    continue;
                }
                units.extend(crate::builder::deps::units_including(
                    self.path(),
                    source,
                    &self.release,
                    file,
                    cache,
                )?);
            }
        }
        units.sort();
        units.dedup();
        if units.is_empty() {
            let all: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
            return Err(TreeError::NothingToBuild(all.join(", ")));
        }
        Ok(units)
    }

    /// Compiles translation units with the kernel's flags plus [`EXTRA_CFLAGS`] and
    /// copies each object to `out/<unit path with / as __>`; returns those paths in
    /// the order of `units`.
    pub fn compile(&self, units: &[String], out: &Path) -> Result<Vec<PathBuf>, TreeError> {
        std::fs::create_dir_all(out).map_err(io(out))?;
        // Stale objects (hard-linked from nowhere, but from a previous compile in
        // this tree) must not be taken for fresh ones.
        for unit in units {
            let _ = std::fs::remove_file(self.path().join(unit));
        }
        let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
        let output = Command::new("make")
            .arg("-C")
            .arg(self.path())
            .arg("-s")
            .arg(format!("-j{jobs}"))
            .arg(format!("KERNELRELEASE={}", self.release))
            .arg(format!("KCFLAGS={EXTRA_CFLAGS}"))
            .args(units)
            .output()
            .map_err(|e| spawn_error("make", e))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            out_of_space(self.path(), &stderr)?;
            // kbuild has no rule for an object its configuration leaves out.
            if let Some(unit) = units
                .iter()
                .find(|u| stderr.contains(&format!("No rule to make target '{u}'")))
            {
                return Err(TreeError::NotBuilt {
                    unit: unit.clone(),
                    release: self.release.clone(),
                });
            }
            return Err(TreeError::Compile {
                units: units.join(" "),
                output: stderr,
            });
        }
        self.collect(units, out)
    }

    /// Compiles translation units with the commands kbuild ran for them before
    /// ([`super::units`]), from the top of the tree, as many at once as there are
    /// CPUs; copies each object to `out` as [`WorkTree::compile`] does.
    pub fn compile_recorded(
        &self,
        commands: &[UnitCommand],
        out: &Path,
    ) -> Result<Vec<PathBuf>, TreeError> {
        std::fs::create_dir_all(out).map_err(io(out))?;
        let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
        for batch in commands.chunks(jobs) {
            let mut children = Vec::new();
            for c in batch {
                // The outputs are new files: never a write through a link into the
                // shared tree, never a stale object taken for a fresh one.
                let object = self.path().join(&c.unit);
                let _ = std::fs::remove_file(&object);
                let _ = std::fs::remove_file(object.with_file_name(format!(
                    ".{}.d",
                    object.file_name().and_then(|n| n.to_str()).unwrap_or_default()
                )));
                let child = Command::new("sh")
                    .arg("-c")
                    .arg(&c.command)
                    .envs(crate::builder::kbuild::EXPORTED_ENV.iter().copied())
                    .current_dir(self.path())
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| spawn_error("sh", e))?;
                children.push((c, child));
            }
            for (c, child) in children {
                let output = child.wait_with_output().map_err(|e| TreeError::Command {
                    command: c.command.clone(),
                    output: e.to_string(),
                })?;
                if !output.status.success() {
                    out_of_space(self.path(), &String::from_utf8_lossy(&output.stderr))?;
                    return Err(TreeError::Compile {
                        units: c.unit.clone(),
                        output: format!(
                            "{}{}",
                            String::from_utf8_lossy(&output.stdout),
                            String::from_utf8_lossy(&output.stderr)
                        ),
                    });
                }
            }
        }
        let units: Vec<String> = commands.iter().map(|c| c.unit.clone()).collect();
        self.collect(&units, out)
    }

    /// Copies each unit's object to `out/<unit path with / as __>`.
    fn collect(&self, units: &[String], out: &Path) -> Result<Vec<PathBuf>, TreeError> {
        let mut objects = Vec::new();
        for unit in units {
            let src = self.path().join(unit);
            let dest = out.join(unit.replace('/', "__"));
            std::fs::copy(&src, &dest).map_err(io(&src))?;
            objects.push(dest);
        }
        Ok(objects)
    }
}

impl WorkTree {
    /// The livepatch object a compiled translation unit is part of, as kbuild
    /// decided: a module (`xfs`) when it compiled the unit with `-DMODULE`, named by
    /// its `KBUILD_MODNAME`, else `vmlinux`. Read from kbuild's record of the compile
    /// (`dir/.unit.o.cmd`).
    pub fn unit_object(&self, unit: &str) -> Result<String, TreeError> {
        let cmd = crate::builder::units::cmd_file(self.path(), unit);
        let missing = || TreeError::NoCompileRecord {
            unit: unit.to_owned(),
            cmd: cmd.clone(),
        };
        let text = std::fs::read_to_string(&cmd).map_err(|_| missing())?;
        let line = text
            .lines()
            .find(|l| l.starts_with("cmd_") || l.starts_with("savedcmd_"))
            .ok_or_else(missing)?;
        Ok(object_of_compile(line).unwrap_or_else(|| VMLINUX.to_owned()))
    }
}

/// Replaces a hard link by a copy with the same times (so make sees nothing new).
fn unshare(path: &Path) -> Result<(), TreeError> {
    unshare_with(path, |copy| std::fs::copy(path, copy).map(|_| ()))
}

/// [`unshare`], with the text `from` replaced by `to` in the copy.
fn unshare_renamed(path: &Path, from: &str, to: &str) -> Result<(), TreeError> {
    unshare_with(path, |copy| {
        let text = std::fs::read_to_string(path)?;
        std::fs::write(copy, text.replace(from, to))
    })
}

/// kbuild's record of how it built a file of `tools/` (`tools/objtool/.elf.o.cmd`).
pub(super) fn is_tool_command_record(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    rel.starts_with("tools/") && name.starts_with('.') && name.ends_with(".cmd")
}

/// A path as make's `$(abspath ...)` spells it: absolute, symbolic links resolved.
pub(super) fn absolute(path: &Path) -> Result<PathBuf, TreeError> {
    std::fs::canonicalize(path).map_err(io(path))
}

/// Replaces a hard link with a copy that `write` makes, keeping the times (make
/// compares them).
fn unshare_with(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), TreeError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let copy = path.with_extension("kstack-unshare");
    write(&copy).map_err(io(path))?;
    let times = std::fs::FileTimes::new()
        .set_accessed(meta.accessed().map_err(io(path))?)
        .set_modified(meta.modified().map_err(io(path))?);
    std::fs::File::options()
        .write(true)
        .open(&copy)
        .and_then(|f| f.set_times(times))
        .map_err(io(&copy))?;
    std::fs::rename(&copy, path).map_err(io(path))
}
