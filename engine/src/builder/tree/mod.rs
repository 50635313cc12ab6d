//! Source trees for building a patch: a private copy of the prepared distribution
//! tree with the stack's earlier patches applied, and kbuild compiling the touched
//! translation units with the kernel's own flags plus per-function sections.
//!
//! The cached prepared tree is never modified: each build works in a hard-linked copy
//! (`cp -al`, about a second for the 80,000 files of a 6.1 tree). `patch` replaces a
//! file it changes (write a new file, rename it over the old one), so the link to the
//! cached tree's file is broken, not written through.
//!
//! `work` is that copy and what is compiled in it, `patch_file` reads a unified
//! diff, `built` asks kbuild what the configuration builds and checks a diff
//! against it; this file holds the errors and the commands they share.

use std::path::{Path, PathBuf};
use std::process::Command;

mod built;
mod patch_file;
mod work;

pub use built::{KbuildDir, check_built, check_diff, kbuild_dir};
pub use patch_file::{ChangeKind, FileChange, changed_files, parse_diff};
pub use work::WorkTree;

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
    use super::patch_file::buildable_files;
    use super::work::{absolute, is_tool_command_record};
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
