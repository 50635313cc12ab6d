//! Reading a unified diff: the files it changes and how.

use super::TreeError;

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
pub(super) fn buildable_files(changes: &[FileChange]) -> Result<Vec<&str>, TreeError> {
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
