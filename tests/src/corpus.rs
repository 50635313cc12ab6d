//! A corpus of real fixes for the coverage benchmark (`benches/coverage.rs`): the
//! difference between two Debian source releases of one kernel line (`6.1` or
//! `6.12`: [`CorpusLine`]), cut into fixes, drawn by a fixed seed; and the
//! classification of what kstack made of each.
//!
//! Without the upstream history between two releases, a "fix" is the change to one
//! source file, grouped with the changed headers that file includes directly (a new
//! struct member and its users stay together), and with the other changed files that
//! include the same changed headers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

mod line;

pub use line::{CorpusLine, LINE_6_1, LINE_6_12, LINE_ENV};

/// Directories of the tree that hold no kernel code for x86-64.
const SKIPPED: [&str; 6] = [
    "Documentation",
    "tools",
    "samples",
    "scripts",
    "usr",
    "LICENSES",
];

/// The `.c` and `.h` files of the kernel proper (x86 only) that differ between
/// `base` and `target` or exist only in `target`, sorted. Files only in `base` (a
/// removal) are not fixes a live patch can carry and are left out.
pub fn changed_files(base: &Path, target: &Path) -> Vec<String> {
    let mut files = Vec::new();
    walk(target, Path::new(""), &mut files);
    let mut out: Vec<String> = files
        .into_iter()
        .filter(|f| {
            let new = std::fs::read(target.join(f)).ok();
            let old = std::fs::read(base.join(f)).ok();
            new != old
        })
        .collect();
    out.sort();
    out
}

fn walk(tree: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(tree.join(dir)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = dir.join(&name);
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            let top = dir.as_os_str().is_empty();
            if (top && SKIPPED.contains(&name.as_str()))
                || (dir == Path::new("arch") && name != "x86")
                || name == "generated"
            {
                continue;
            }
            walk(tree, &rel, out);
        } else if name.ends_with(".c") || name.ends_with(".h") {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

/// Groups changed files into fixes: a changed file and the changed headers it
/// includes (`includes_of` gives a file's resolved includes) are one fix,
/// transitively. A file's includes are followed through unchanged headers of the
/// source directories (a driver's `sas_internal.h` that includes the changed
/// `include/scsi/libsas.h`), not through the kernel-wide ones of `include/` and
/// `arch/*/include/`, which reach nearly everything. Each group is sorted; groups
/// are sorted by their first file.
pub fn group(files: &[String], includes_of: impl Fn(&str) -> Vec<String>) -> Vec<Vec<String>> {
    let index: BTreeMap<&str, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.as_str(), i))
        .collect();
    let mut parent: Vec<usize> = (0..files.len()).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let kernel_wide =
        |f: &str| f.starts_with("include/") || (f.starts_with("arch/") && f.contains("/include/"));
    for (i, f) in files.iter().enumerate() {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut pending = includes_of(f);
        while let Some(inc) = pending.pop() {
            if !seen.insert(inc.clone()) {
                continue;
            }
            if let Some(&j) = index.get(inc.as_str()) {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                parent[a] = b;
            } else if !kernel_wide(&inc) {
                pending.extend(includes_of(&inc));
            }
        }
    }
    let mut groups: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        let root = find(&mut parent, i);
        groups.entry(root).or_default().insert(f.clone());
    }
    let mut out: Vec<Vec<String>> = groups
        .into_values()
        .map(|g| g.into_iter().collect())
        .collect();
    out.sort();
    out
}

/// SplitMix64: a small, fixed pseudo-random sequence, the same on every machine.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `items` in the order a Fisher-Yates shuffle with `seed` puts them.
pub fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut out = items.to_vec();
    let mut rng = SplitMix64::new(seed);
    for i in (1..out.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        out.swap(i, j);
    }
    out
}

/// A unified diff (`-p1`, `a/` and `b/` prefixes) of `files` from `base` to
/// `target`, after a one-line message.
pub fn unified_diff(base: &Path, target: &Path, files: &[String], message: &str) -> String {
    let mut out = format!("{message}\n\n");
    for f in files {
        let old = base.join(f);
        // A file only in `target` is created: `--- /dev/null`, as `git diff` writes it.
        let (old_arg, old_label) = if old.is_file() {
            (old, format!("a/{f}"))
        } else {
            (Path::new("/dev/null").to_owned(), "/dev/null".to_owned())
        };
        let output = Command::new("diff")
            .args(["-u", "--label", &old_label, "--label", &format!("b/{f}")])
            .arg(&old_arg)
            .arg(target.join(f))
            .output()
            .expect("diff runs");
        let text = String::from_utf8_lossy(&output.stdout);
        out.push_str(&format!("diff --git a/{f} b/{f}\n"));
        out.push_str(&text);
    }
    out
}

/// The modules a patch changes, from its functions as `kstack commit --json` names
/// them (`object:name[,sympos]`, docs/json.md): the objects but `vmlinux`, sorted.
pub fn patched_modules<'a>(functions: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    functions
        .into_iter()
        .filter_map(|f| f.split_once(':').map(|(object, _)| object))
        .filter(|object| *object != "vmlinux")
        .map(str::to_owned)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// What kstack made of one fix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Built, loaded in the VM, the workload and checks passed, reverted.
    Passed,
    /// Refused, with the class of the refusal.
    Refused(String),
    /// Built, but failed in the VM: why.
    FailedInVm(String),
    /// Built, proven and synced in the VM, the rest of the workload passed, but the
    /// patched module cannot load there (no such device: a driver for hardware the
    /// VM lacks), so its new code never ran: which modules.
    NotExercised(String),
    /// kstack itself failed (an internal error, a crash, an unexpected status).
    ToolError(String),
    /// The diff does not apply to the kernel's source (a class case written for
    /// another line): nothing was built.
    DoesNotApply,
    /// The configuration does not build the fix's files: not part of the corpus.
    NotBuilt,
}

impl Outcome {
    /// The column of the coverage table.
    pub fn column(&self) -> &'static str {
        match self {
            Outcome::Passed => "built and passed",
            Outcome::Refused(_) => "refused",
            Outcome::FailedInVm(_) => "built, failed in the VM",
            Outcome::NotExercised(_) => "built, its module needs hardware the VM lacks",
            Outcome::ToolError(_) => "tool error",
            Outcome::DoesNotApply => "does not apply to the line's source",
            Outcome::NotBuilt => "not built for the configuration",
        }
    }
}

/// The refusal classes, as the builder's messages name them: (what the message
/// says, the class).
const REFUSALS: [(&str, &str); 13] = [
    ("compiles to the same code", "identical code (class 9)"),
    ("its layout changes", "type layout changed (class 7)"),
    ("which at least", "header reaches too many units (class 7)"),
    // Before "data object changed", which its message contains too.
    ("__initdata", "__init data changed"),
    ("data object changed", "existing data changed (class 2)"),
    ("__init function", "__init code changed"),
    (
        "has no call to __fentry__",
        "untraceable function (class 6)",
    ),
    ("short jump", "short jump out of a shared section (class 8)"),
    (
        "which the kernel frees after boot",
        "reference to __init code or data",
    ),
    (
        "does not resolve",
        "symbol the kernel does not resolve (class 4)",
    ),
    ("cannot tell which object is meant", "ambiguous reference"),
    ("does not know how to carry them", "unknown special section"),
    (
        "is a module: those are applied after",
        "module's own static key or call in a special section (class 11)",
    ),
];

/// What `kstack commit` says when the diff does not fit the kernel's source
/// (`TreeError::Apply`, `TreeError::NotInSource`).
const NOT_APPLYING: [&str; 2] = [
    "does not apply to the kernel source",
    "which the source of kernel",
];

/// Classifies `kstack commit`'s exit status and standard error.
pub fn classify_commit(code: Option<i32>, stderr: &str) -> Option<Outcome> {
    if code != Some(0) && NOT_APPLYING.iter().any(|n| stderr.contains(n)) {
        return Some(Outcome::DoesNotApply);
    }
    match code {
        Some(0) => None,
        Some(3) => Some(Outcome::Refused("identical code (class 9)".into())),
        Some(65) => {
            if stderr.contains("is not built for kernel")
                || stderr.contains("no translation unit built for this kernel includes")
                || stderr.contains("touches no file the kernel builds")
            {
                return Some(Outcome::NotBuilt);
            }
            let class = REFUSALS
                .iter()
                .find(|(needle, _)| stderr.contains(needle))
                .map_or_else(
                    || format!("other: {}", first_error_line(stderr)),
                    |(_, class)| (*class).to_owned(),
                );
            Some(Outcome::Refused(class))
        }
        _ => Some(Outcome::ToolError(format!(
            "exit {}: {}",
            code.map_or_else(|| "by signal".into(), |c| c.to_string()),
            first_error_line(stderr)
        ))),
    }
}

/// The first line that starts with `error:`, else the last line.
pub fn first_error_line(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_files_and_their_changed_headers_are_one_fix() {
        let files: Vec<String> = ["a.c", "b.c", "c.c", "inc/x.h", "inc/y.h", "d.c"]
            .map(String::from)
            .to_vec();
        let includes = |f: &str| -> Vec<String> {
            match f {
                "a.c" => vec!["inc/x.h".into(), "inc/unchanged.h".into()],
                "c.c" => vec!["inc/y.h".into()],
                "inc/y.h" => vec!["inc/x.h".into()],
                _ => vec![],
            }
        };
        assert_eq!(
            group(&files, includes),
            [
                vec!["a.c", "c.c", "inc/x.h", "inc/y.h"],
                vec!["b.c"],
                vec!["d.c"],
            ]
        );
    }

    #[test]
    fn includes_are_followed_through_unchanged_local_headers_only() {
        let files: Vec<String> = [
            "drivers/s/a.c",
            "include/scsi/s.h",
            "drivers/t/b.c",
            "include/linux/mm.h",
        ]
        .map(String::from)
        .to_vec();
        let includes = |f: &str| -> Vec<String> {
            match f {
                "drivers/s/a.c" => vec!["drivers/s/internal.h".into()],
                "drivers/s/internal.h" => vec!["include/scsi/s.h".into()],
                "drivers/t/b.c" => vec!["include/linux/kernel.h".into()],
                // Reached only through a kernel-wide header: not the same fix.
                "include/linux/kernel.h" => vec!["include/linux/mm.h".into()],
                _ => vec![],
            }
        };
        assert_eq!(
            group(&files, includes),
            [
                vec!["drivers/s/a.c", "include/scsi/s.h"],
                vec!["drivers/t/b.c"],
                vec!["include/linux/mm.h"],
            ]
        );
    }

    #[test]
    fn a_file_only_in_the_target_is_diffed_as_created() {
        let (base, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(base.path().join("old.c"), "int a;\n").unwrap();
        std::fs::write(target.path().join("old.c"), "int b;\n").unwrap();
        std::fs::write(target.path().join("new.h"), "int c;\n").unwrap();
        let files = ["new.h".to_owned(), "old.c".to_owned()];
        let diff = unified_diff(base.path(), target.path(), &files, "m");
        assert!(diff.contains("--- /dev/null\n+++ b/new.h\n"), "{diff}");
        assert!(diff.contains("--- a/old.c\n+++ b/old.c\n"), "{diff}");
    }

    #[test]
    fn the_modules_a_patch_changes_are_read_from_its_function_names() {
        let functions = [
            "acpi_tad:time_show",
            "vmlinux:cmdline_proc_show",
            "acpi_tad:time_store",
            "xfs:xfs_stats_format,2",
        ];
        assert_eq!(patched_modules(functions), ["acpi_tad", "xfs"]);
        assert!(patched_modules(["vmlinux:version_proc_show"]).is_empty());
    }

    #[test]
    fn the_draw_is_fixed_by_the_seed() {
        let items: Vec<u32> = (0..10).collect();
        let a = shuffled(&items, 20261127);
        assert_eq!(a, shuffled(&items, 20261127));
        assert_ne!(a, shuffled(&items, 1));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, items);
        // The sequence itself is part of the corpus's definition.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn commit_results_are_classified_by_their_messages() {
        assert_eq!(classify_commit(Some(0), ""), None);
        assert_eq!(
            classify_commit(Some(3), "error: the change compiles to the same code"),
            Some(Outcome::Refused("identical code (class 9)".into()))
        );
        assert_eq!(
            classify_commit(
                Some(65),
                "error: the patch cannot be live-applied:\n  fs/x.o: tbl: data object changed (size)"
            ),
            Some(Outcome::Refused("existing data changed (class 2)".into()))
        );
        assert_eq!(
            classify_commit(Some(65), "error: drivers/x.o is not built for kernel 6.1"),
            Some(Outcome::NotBuilt)
        );
        assert_eq!(
            classify_commit(Some(65), "error: something new"),
            Some(Outcome::Refused("other: error: something new".into()))
        );
        assert_eq!(
            classify_commit(
                Some(65),
                "error: the diff does not apply to the kernel source:\n1 out of 1 hunk FAILED"
            ),
            Some(Outcome::DoesNotApply)
        );
        assert_eq!(
            classify_commit(
                Some(65),
                "error: the diff changes fs/x.c, which the source of kernel 6.12.117 does not have"
            ),
            Some(Outcome::DoesNotApply)
        );
        assert!(matches!(
            classify_commit(Some(70), "error: internal"),
            Some(Outcome::ToolError(_))
        ));
    }
}
