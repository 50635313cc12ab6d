//! Source trees for building a patch: a private copy of the prepared distribution
//! tree with the stack's earlier patches applied, and kbuild compiling the touched
//! translation units with the kernel's own flags plus per-function sections.
//!
//! The cached prepared tree is never modified: each build works in a hard-linked copy
//! (`cp -al`, about a second for the 80,000 files of a 6.1 tree). `patch` replaces a
//! file it changes (write a new file, rename it over the old one), so the link to the
//! cached tree's file is broken, not written through.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What every pre and post object is compiled with, on top of the kernel's flags:
/// one section per function and per data object, so the differ can compare them one
/// by one (DESIGN.md, "Builder").
pub const EXTRA_CFLAGS: &str = "-ffunction-sections -fdata-sections";

/// How many translation units a header change may pull in before it is refused.
pub const MAX_HEADER_UNITS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },
    #[error("{what} does not apply to the kernel source:\n{output}")]
    Apply { what: String, output: String },
    #[error("the diff touches no file the kernel builds (it changes: {0})")]
    NothingToBuild(String),
    #[error(
        "the diff changes header {header}, which {units} translation units include; \
         rebuilding them all is too broad for a live patch: change the .c files instead"
    )]
    HeaderTooBroad { header: String, units: usize },
    #[error(
        "the diff changes header {header}, which no translation unit of its directory includes: {why}"
    )]
    HeaderUnknown { header: String, why: String },
    #[error("cannot compile {units}:\n{output}")]
    Compile { units: String, output: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_owned(),
        source,
    }
}

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
        let list = prepared.join(super::assets::GENERATED_LIST);
        let generated = std::fs::read_to_string(&list).map_err(io(&list))?;
        for rel in generated.lines().filter(|l| !l.is_empty()) {
            unshare(&dir.path().join(rel))?;
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
            .map_err(|e| TreeError::Command {
                command: "patch".into(),
                output: e.to_string(),
            })?;
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
    /// rebuilt: its `.c` files, and for a header the `.c` files of the header's own
    /// directory that include it by name (a wider header change is refused).
    pub fn units_for(&self, diff: &[u8]) -> Result<Vec<String>, TreeError> {
        let files = changed_files(diff);
        let mut units = Vec::new();
        for file in &files {
            if let Some(stem) = file.strip_suffix(".c") {
                units.push(format!("{stem}.o"));
            } else if file.ends_with(".h") {
                for unit in self.units_including(file)? {
                    if !units.contains(&unit) {
                        units.push(unit);
                    }
                }
            }
        }
        if units.is_empty() {
            return Err(TreeError::NothingToBuild(files.join(", ")));
        }
        units.sort();
        units.dedup();
        Ok(units)
    }

    fn units_including(&self, header: &str) -> Result<Vec<String>, TreeError> {
        let path = Path::new(header);
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(TreeError::HeaderUnknown {
                header: header.to_owned(),
                why: "not a path".into(),
            });
        };
        if header.starts_with("include/") || header.starts_with("arch/x86/include/") {
            return Err(TreeError::HeaderTooBroad {
                header: header.to_owned(),
                units: usize::MAX,
            });
        }
        let needle = format!("#include \"{name}\"");
        let abs = self.path().join(dir);
        let mut units = Vec::new();
        for entry in std::fs::read_dir(&abs).map_err(io(&abs))?.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = file.strip_suffix(".c")
                && std::fs::read_to_string(entry.path()).is_ok_and(|t| t.contains(&needle))
            {
                units.push(format!("{}/{stem}.o", dir.display()));
            }
        }
        match units.len() {
            0 => Err(TreeError::HeaderUnknown {
                header: header.to_owned(),
                why: format!("no .c file in {} has {needle}", dir.display()),
            }),
            n if n > MAX_HEADER_UNITS => Err(TreeError::HeaderTooBroad {
                header: header.to_owned(),
                units: n,
            }),
            _ => Ok(units),
        }
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
            .map_err(|e| TreeError::Command {
                command: "make".into(),
                output: e.to_string(),
            })?;
        if !output.status.success() {
            return Err(TreeError::Compile {
                units: units.join(" "),
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
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

/// Replaces a hard link by a copy with the same times (so make sees nothing new).
fn unshare(path: &Path) -> Result<(), TreeError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let copy = path.with_extension("kstack-unshare");
    std::fs::copy(path, &copy).map_err(io(path))?;
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

/// The files a unified diff changes (the `+++ b/...` side, or `--- a/...` for a
/// deletion), without the `a/`/`b/` prefix.
pub fn changed_files(diff: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(diff);
    let mut files = Vec::new();
    let mut minus: Option<String> = None;
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("--- ") {
            minus = Some(strip_prefix(path));
        } else if let Some(path) = line.strip_prefix("+++ ") {
            let plus = strip_prefix(path);
            let file = if plus == "/dev/null" {
                minus.take().unwrap_or_default()
            } else {
                plus
            };
            if !file.is_empty() && !files.contains(&file) {
                files.push(file);
            }
        }
    }
    files
}

fn strip_prefix(path: &str) -> String {
    let path = path.split('\t').next().unwrap_or(path).trim();
    if path == "/dev/null" {
        return path.to_owned();
    }
    path.split_once('/')
        .map_or(path, |(_, rest)| rest)
        .to_owned()
}

fn run(cmd: &mut Command) -> Result<(), TreeError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| TreeError::Command {
        command: shown.clone(),
        output: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(TreeError::Command {
            command: shown,
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_files_of_git_and_plain_diffs() {
        let diff = b"diff --git a/fs/proc/cmdline.c b/fs/proc/cmdline.c\n\
--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -1 +1 @@\n-a\n+b\n\
--- a/fs/gone.c\t2024-01-01\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n\
--- /dev/null\n+++ b/fs/proc/new.h\n@@ -0,0 +1 @@\n+y\n";
        assert_eq!(
            changed_files(diff),
            ["fs/proc/cmdline.c", "fs/gone.c", "fs/proc/new.h"]
        );
    }
}
