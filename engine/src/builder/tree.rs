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

use kstack_kfacts::livepatch::VMLINUX;

use super::units::UnitCommand;

/// What every pre and post object is compiled with, on top of the kernel's flags:
/// one section per function and per data object, so the differ can compare them one
/// by one (DESIGN.md, "Builder").
pub const EXTRA_CFLAGS: &str = "-ffunction-sections -fdata-sections";

/// The tools a build runs: `cp` (work trees), `patch`, `make`, and the compiler
/// that the kernel's Makefile calls (`CC = $(CROSS_COMPILE)gcc`).
pub const BUILD_TOOLS: [&str; 4] = ["cp", "patch", "make", "gcc"];

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
    #[error("`{tool}` is not installed (not found in PATH); building a patch needs it")]
    ToolMissing { tool: String },
    #[error("not a unified diff: {detail}")]
    NotADiff { detail: String },
    #[error(
        "the diff changes {}, which the source of kernel {release} does not have",
        .paths.join(", ")
    )]
    NotInSource { paths: Vec<String>, release: String },
    #[error("{what} does not apply to the kernel source:\n{output}")]
    Apply { what: String, output: String },
    #[error("the diff touches no file the kernel builds (it changes: {0})")]
    NothingToBuild(String),
    #[error(
        "the diff changes header {header}, which at least {units} translation units built \
         for this kernel include; a header change may reach {limit} (each is compiled twice \
         and compared): change the .c files that need the fix instead"
    )]
    HeaderTooBroad {
        header: String,
        units: usize,
        limit: usize,
    },
    #[error(
        "the diff changes header {header}, which no translation unit built for this kernel includes: {why}"
    )]
    HeaderUnknown { header: String, why: String },
    #[error("cannot compile {units}:\n{output}")]
    Compile { units: String, output: String },
    #[error(
        "{unit} is not built for kernel {release}: its configuration does not enable it \
         (kbuild has no rule for it)"
    )]
    NotBuilt { unit: String, release: String },
    #[error("{unit}: kbuild's record of how it compiled it ({cmd}) is missing or unreadable")]
    NoCompileRecord { unit: String, cmd: PathBuf },
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
                units.extend(super::deps::units_including(
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
                    .envs(super::kbuild::EXPORTED_ENV.iter().copied())
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
        let cmd = super::units::cmd_file(self.path(), unit);
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

/// The module a compile command builds for (`-DMODULE` and
/// `-DKBUILD_MODNAME='"xfs"'`, scripts/Makefile.lib `modname_flags`), if any.
pub(crate) fn object_of_compile(command: &str) -> Option<String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    if !words.contains(&"-DMODULE") {
        return None;
    }
    let name = words
        .iter()
        .find_map(|w| w.strip_prefix("-DKBUILD_MODNAME="))?;
    let name = name.trim_matches(|c| c == '\'' || c == '"' || c == '\\');
    (!name.is_empty()).then(|| name.replace('-', "_"))
}

/// A compile that failed because the disk is full is the machine's failure, not the
/// diff's: an I/O error, not "cannot compile".
fn out_of_space(tree: &Path, stderr: &str) -> Result<(), TreeError> {
    if stderr.contains("No space left on device") {
        return Err(TreeError::Io {
            path: tree.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        });
    }
    Ok(())
}

/// A program that could not be started: [`TreeError::ToolMissing`] when it is not
/// installed, else a failed command.
fn spawn_error(program: &str, err: std::io::Error) -> TreeError {
    if err.kind() == std::io::ErrorKind::NotFound {
        TreeError::ToolMissing {
            tool: program.to_owned(),
        }
    } else {
        TreeError::Command {
            command: program.to_owned(),
            output: err.to_string(),
        }
    }
}

/// Checks that every tool of [`BUILD_TOOLS`] is on `PATH`, so that a missing one is
/// named before a build starts rather than in the middle of `make`'s output.
pub fn check_tools() -> Result<(), TreeError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in BUILD_TOOLS {
        let found = std::env::split_paths(&path).any(|dir| is_executable(&dir.join(tool)));
        if !found {
            return Err(TreeError::ToolMissing {
                tool: tool.to_owned(),
            });
        }
    }
    Ok(())
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
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
fn is_tool_command_record(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    rel.starts_with("tools/") && name.starts_with('.') && name.ends_with(".cmd")
}

/// A path as make's `$(abspath ...)` spells it: absolute, symbolic links resolved.
fn absolute(path: &Path) -> Result<PathBuf, TreeError> {
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

/// How a diff changes one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Modified,
    Created,
    Deleted,
}

/// One file a unified diff changes, by its path in the source tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// Relative to the top of the tree, without the `a/`/`b/` prefix (`patch -p1`).
    pub path: String,
    pub kind: ChangeKind,
}

/// The files a unified diff changes (the `+++ b/...` side, or `--- a/...` for a
/// deletion), without the `a/`/`b/` prefix; nothing if it is not a diff.
pub fn changed_files(diff: &[u8]) -> Vec<String> {
    parse_diff(diff)
        .map(|changes| changes.into_iter().map(|c| c.path).collect())
        .unwrap_or_default()
}

/// Reads a unified diff as `patch -p1` will: text before the first file header (a
/// commit message, `git format-patch` headers) is skipped; each `--- `/`+++ ` header
/// pair must be followed by hunks whose lengths match their `@@` headers. Refuses a
/// text with no file header, a header without hunks, a hunk cut short and paths that
/// leave the tree, so that a bad file is named before anything is built.
pub fn parse_diff(diff: &[u8]) -> Result<Vec<FileChange>, TreeError> {
    let text = String::from_utf8_lossy(diff);
    let lines: Vec<&str> = text.lines().collect();
    let bad = |line: usize, detail: String| TreeError::NotADiff {
        detail: format!("line {line}: {detail}"),
    };
    let mut changes: Vec<FileChange> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let (Some(minus), Some(plus)) = (
            lines[i].strip_prefix("--- "),
            lines.get(i + 1).and_then(|l| l.strip_prefix("+++ ")),
        ) else {
            i += 1;
            continue;
        };
        let header = i + 1;
        let (old, new) = (diff_path(minus), diff_path(plus));
        let (path, kind) = match (old, new) {
            (Some(_), Some(new)) => (new, ChangeKind::Modified),
            (None, Some(new)) => (new, ChangeKind::Created),
            (Some(old), None) => (old, ChangeKind::Deleted),
            (None, None) => {
                return Err(bad(
                    header,
                    "both sides of the file header are /dev/null".into(),
                ));
            }
        };
        if path.is_empty() || path.split('/').any(|part| part == "..") {
            return Err(bad(
                header,
                format!("path {path:?} is not inside the source tree"),
            ));
        }
        i += 2;
        let mut hunks = 0;
        while let Some(line) = lines.get(i).filter(|l| l.starts_with("@@ ")) {
            let start = i + 1;
            let (mut old_left, mut new_left) = hunk_lengths(line)
                .ok_or_else(|| bad(start, format!("bad hunk header {line:?}")))?;
            i += 1;
            while (old_left > 0 || new_left > 0) && i < lines.len() {
                // An empty line is a context line whose space an editor or a mailer
                // removed; `patch` takes it as one too.
                let short = || {
                    bad(
                        i + 1,
                        format!(
                            "the hunk that starts at line {start} is shorter than its header says"
                        ),
                    )
                };
                let (old_step, new_step) = match lines[i].as_bytes().first() {
                    Some(b' ') | None => (1, 1),
                    Some(b'-') => (1, 0),
                    Some(b'+') => (0, 1),
                    Some(b'\\') => (0, 0),
                    Some(_) => return Err(short()),
                };
                if old_step > old_left || new_step > new_left {
                    return Err(short());
                }
                old_left -= old_step;
                new_left -= new_step;
                i += 1;
            }
            // At the very end, only context lines may be missing (trailing blank
            // context that was stripped); anything else is a truncated diff.
            if old_left != new_left {
                return Err(bad(
                    start,
                    "the diff ends in the middle of this hunk".into(),
                ));
            }
            while lines.get(i).is_some_and(|l| l.starts_with('\\')) {
                i += 1;
            }
            hunks += 1;
        }
        if hunks == 0 {
            return Err(bad(
                header,
                format!("the header of {path} is not followed by a hunk (@@ -N,N +N,N @@)"),
            ));
        }
        if !changes.iter().any(|c| c.path == path) {
            changes.push(FileChange { path, kind });
        }
    }
    if changes.is_empty() {
        return Err(TreeError::NotADiff {
            detail: "it has no file header (a line `--- a/FILE` followed by `+++ b/FILE`)".into(),
        });
    }
    Ok(changes)
}

/// The line counts of a hunk header `@@ -OLD[,N] +NEW[,N] @@` (a missing count is 1).
fn hunk_lengths(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("@@ -")?;
    let (ranges, _) = rest.split_once(" @@")?;
    let (old, new) = ranges.split_once(" +")?;
    let count = |range: &str| -> Option<u64> {
        match range.split_once(',') {
            Some((start, n)) => {
                start.parse::<u64>().ok()?;
                n.parse().ok()
            }
            None => range.parse::<u64>().ok().map(|_| 1),
        }
    };
    Some((count(old)?, count(new)?))
}

/// The path of one side of a file header, `None` for `/dev/null`: what follows the
/// first `/` (`patch -p1`), without a trailing tab and timestamp (`diff -u`).
fn diff_path(side: &str) -> Option<String> {
    let path = side.split('\t').next().unwrap_or(side).trim();
    if path == "/dev/null" {
        return None;
    }
    Some(
        path.split_once('/')
            .map_or(path, |(_, rest)| rest)
            .to_owned(),
    )
}

/// The changed files a kernel build compiles (`.c`) or that translation units
/// include (`.h`); an error if there are none.
fn buildable_files(changes: &[FileChange]) -> Result<Vec<&str>, TreeError> {
    let files: Vec<&str> = changes
        .iter()
        .map(|c| c.path.as_str())
        .filter(|p| p.ends_with(".c") || p.ends_with(".h"))
        .collect();
    if files.is_empty() {
        let all: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        return Err(TreeError::NothingToBuild(all.join(", ")));
    }
    Ok(files)
}

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

fn run(cmd: &mut Command) -> Result<(), TreeError> {
    let shown = format!("{cmd:?}");
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| match spawn_error(&program, e) {
        TreeError::Command { output, .. } => TreeError::Command {
            command: shown.clone(),
            output,
        },
        other => other,
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

    /// A tree with a stand-in for scripts/Makefile.build that lists what kbuild's
    /// would (scripts/Makefile.lib: `real-obj-*` with a module's parts, `subdir-ym`
    /// with the directory prefixed), and `files` (path, text).
    fn fake_kbuild_tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let tree = tempfile::tempdir().unwrap();
        let build = "include $(src)/Makefile\n\
                     parts := $(foreach m,$(obj-y) $(obj-m),$($(m:.o=-y)))\n\
                     real-obj-y := $(addprefix $(obj)/,$(filter %.o,$(obj-y)))\n\
                     real-obj-m := $(addprefix $(obj)/,$(filter %.o,$(obj-m) $(parts)))\n\
                     subdir-ym := $(addprefix $(obj)/,$(patsubst %/,%,$(filter %/,$(obj-y) $(obj-m))))\n";
        for (path, text) in [("scripts/Makefile.build", build)].iter().chain(files) {
            let path = tree.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        tree
    }

    #[test]
    fn a_unit_below_a_directory_without_a_makefile_is_found_built() {
        // drivers/net/ethernet/mellanox/Makefile descends into `mlx5/core/`; mlx5/ has
        // no Makefile, and mlx5_core's parts are in core/en/ (no Makefile either).
        let tree = fake_kbuild_tree(&[
            ("drivers/Makefile", "obj-y += vendor/\n"),
            ("drivers/vendor/Makefile", "obj-m += mlx5/core/\n"),
            (
                "drivers/vendor/mlx5/core/Makefile",
                "obj-m += mlx5_core.o\nmlx5_core-y := main.o en/rqt.o\n",
            ),
        ]);
        let tree = tree.path();
        check_built(tree, "r", "drivers/vendor/mlx5/core/en/rqt.o").unwrap();
        assert!(matches!(
            check_built(tree, "r", "drivers/vendor/mlx5/core/en/other.o"),
            Err(TreeError::NotBuilt { .. })
        ));
        // Not descended into: not built, whatever the directory's own Makefile says.
        std::fs::write(tree.join("drivers/vendor/Makefile"), "obj-m += other/\n").unwrap();
        assert!(matches!(
            check_built(tree, "r", "drivers/vendor/mlx5/core/en/rqt.o"),
            Err(TreeError::NotBuilt { .. })
        ));
    }

    #[test]
    fn a_work_tree_renames_the_prepared_tree_in_the_tools_command_records() {
        let prepared = tempfile::tempdir().unwrap();
        let root = absolute(prepared.path()).unwrap();
        let cmd = "tools/objtool/.elf.o.cmd";
        let other = "scripts/mod/.modpost.o.cmd";
        for rel in [cmd, other] {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, format!("cmd_{}/{rel} := gcc", root.display())).unwrap();
        }
        std::fs::write(
            root.join(super::super::assets::GENERATED_LIST),
            format!("{cmd}\n{other}\n"),
        )
        .unwrap();
        let parent = tempfile::tempdir().unwrap();
        let work = WorkTree::new(&root, parent.path(), "6.1.0-test").unwrap();
        let here = absolute(work.path()).unwrap();
        let read = |dir: &Path, rel: &str| std::fs::read_to_string(dir.join(rel)).unwrap();
        assert_eq!(
            read(&here, cmd),
            format!("cmd_{}/{cmd} := gcc", here.display())
        );
        // The shared tree keeps its own; records outside tools/ are plain copies.
        assert_eq!(
            read(&root, cmd),
            format!("cmd_{}/{cmd} := gcc", root.display())
        );
        assert_eq!(read(&here, other), read(&root, other));
        assert!(is_tool_command_record("tools/lib/subcmd/.exec-cmd.o.cmd"));
        assert!(!is_tool_command_record("tools/objtool/objtool"));
    }

    #[test]
    fn a_full_disk_is_an_io_error_not_a_compile_error() {
        let err = out_of_space(
            Path::new("/t"),
            "fatal error: error writing to /tmp/cc.s: No space left on device",
        )
        .unwrap_err();
        assert!(
            matches!(&err, TreeError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull),
            "{err}"
        );
        assert!(out_of_space(Path::new("/t"), "error: no member named shost").is_ok());
    }

    #[test]
    fn the_object_a_unit_belongs_to_comes_from_its_compile_command() {
        let module = "cmd_fs/xfs/xfs_stats.o := gcc -Wp,-MMD -nostdinc -DMODULE \
                      -DKBUILD_BASENAME='\"xfs_stats\"' -DKBUILD_MODNAME='\"xfs\"' \
                      -D__KBUILD_MODNAME=kmod_xfs -c -o fs/xfs/xfs_stats.o fs/xfs/xfs_stats.c";
        assert_eq!(object_of_compile(module).as_deref(), Some("xfs"));
        let builtin =
            "cmd_fs/proc/cmdline.o := gcc -DKBUILD_MODNAME='\"proc\"' -c fs/proc/cmdline.c";
        assert_eq!(object_of_compile(builtin), None);
    }

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
        let kinds: Vec<ChangeKind> = parse_diff(diff).unwrap().iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [
                ChangeKind::Modified,
                ChangeKind::Deleted,
                ChangeKind::Created
            ]
        );
    }

    #[test]
    fn a_commit_message_before_the_diff_and_removed_lines_that_look_like_headers() {
        // `--- ` inside a hunk is a removed line `-- `, not a file header.
        let diff =
            b"Subject: fix\n\n--- a/x.c\n+++ b/x.c\n@@ -1,3 +1,2 @@\n ctx\n--- a/y.c\n+++ b/y.c\n\
@@ -9 +9 @@\n-old\n+new\n";
        let err = parse_diff(diff).unwrap_err().to_string();
        assert_eq!(
            err,
            "not a unified diff: line 9: the hunk that starts at line 5 is shorter than its header says"
        );
        let diff = b"Subject: fix\n\n--- a/x.c\n+++ b/x.c\n@@ -1,3 +1,2 @@\n ctx\n--- a/y.c\n\n\
--- a/z.c\n+++ b/z.c\n@@ -9 +9 @@\n-old\n+new\n\\ No newline at end of file\n";
        assert_eq!(changed_files(diff), ["x.c", "z.c"]);
    }

    #[test]
    fn texts_that_are_not_diffs_are_named() {
        let cases: [(&[u8], &str); 5] = [
            (
                b"int main(void) { return 0; }\n",
                "it has no file header (a line `--- a/FILE` followed by `+++ b/FILE`)",
            ),
            (
                b"",
                "it has no file header (a line `--- a/FILE` followed by `+++ b/FILE`)",
            ),
            (
                b"--- a/x.c\n+++ b/x.c\nno hunk\n",
                "line 1: the header of x.c is not followed by a hunk (@@ -N,N +N,N @@)",
            ),
            (
                b"--- a/x.c\n+++ b/x.c\n@@ -1,3 +1,2 @@\n-a\n+b\n",
                "line 3: the diff ends in the middle of this hunk",
            ),
            (
                b"--- a/../etc/passwd\n+++ b/../etc/passwd\n@@ -1 +1 @@\n-a\n+b\n",
                "line 1: path \"../etc/passwd\" is not inside the source tree",
            ),
        ];
        for (diff, detail) in cases {
            let err = parse_diff(diff).unwrap_err();
            assert_eq!(err.to_string(), format!("not a unified diff: {detail}"));
        }
        // Stripped trailing context is what `patch` accepts too.
        assert_eq!(
            changed_files(b"--- a/x.c\n+++ b/x.c\n@@ -1,3 +1,3 @@\n-a\n+b\n ctx\n"),
            ["x.c"]
        );
    }

    #[test]
    fn a_diff_is_checked_against_the_source() {
        let source = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(source.path().join("fs/proc")).unwrap();
        std::fs::write(source.path().join("fs/proc/cmdline.c"), "x\n").unwrap();
        let modify =
            |path: &str| format!("--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-x\n+y\n").into_bytes();
        check_diff(&modify("fs/proc/cmdline.c"), source.path(), "r", &[]).unwrap();
        let err = check_diff(&modify("fs/proc/nope.c"), source.path(), "r", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the diff changes fs/proc/nope.c, which the source of kernel r does not have"
        );
        // A file that an earlier patch of the stack creates is there to change.
        let create = b"--- /dev/null\n+++ b/fs/proc/nope.c\n@@ -0,0 +1 @@\n+x\n";
        check_diff(&modify("fs/proc/nope.c"), source.path(), "r", &[create]).unwrap();
        let err = check_diff(&modify("Documentation/x.rst"), source.path(), "r", &[]).unwrap_err();
        assert!(matches!(err, TreeError::NothingToBuild(_)), "{err}");
    }

    /// Every diff kstack ships as an example is a diff by this reading, and changes
    /// the files `patch` will change.
    #[test]
    fn the_example_diffs_parse() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut seen = 0;
        for dir in ["patches", "hooks"] {
            for entry in std::fs::read_dir(examples.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "diff") {
                    let changes = parse_diff(&std::fs::read(&path).unwrap())
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    assert!(buildable_files(&changes).is_ok(), "{}", path.display());
                    seen += 1;
                }
            }
        }
        assert!(seen >= 4, "{seen}");
    }
}
