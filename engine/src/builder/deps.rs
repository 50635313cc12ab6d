//! Which translation units a header change reaches, exactly.
//!
//! A changed header is compiled into every unit that includes it, directly or
//! through other headers, as the kernel's configuration preprocesses them. kstack
//! finds those units in two steps, both cached per kernel in its cache directory
//! and computed only when a header change first needs them:
//!
//! 1. **Candidates**: an index of every `#include` line of the source (about 350,000
//!    in a 6.1 tree, read once), resolved as the compiler's search path would
//!    (quoted names beside the file first, then `include/`, `arch/x86/include/`, their
//!    `uapi/` and `generated/` directories), with a quoted name that does not resolve
//!    so taken for every header of that base name (kbuild adds `-I` directories per
//!    directory). Walked backwards from the header, it gives a superset of the
//!    includers: `#ifdef`s are not evaluated.
//! 2. **Exact**: each candidate is preprocessed with kbuild (`make dir/file.i`, the
//!    kernel's own flags and configuration), whose dependency list (`-MD`, as
//!    `fixdep` records it in `.file.i.cmd`) says whether the header is really
//!    included; the unit must also be one the configuration builds.
//!
//! A change that reaches more than [`MAX_HEADER_UNITS`] built units is refused:
//! every unit is compiled twice and compared, and a header that wide is rarely a
//! fix a live patch should carry. Candidates are confirmed in batches, so a broad
//! header is refused after about that many units, not after all of them.
//!
//! `#include` of a macro (`#include TRACE_INCLUDE(...)`) is not followed; the files
//! that use it include their headers by name as well.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use super::tree::{self, EXTRA_CFLAGS, TreeError};

/// How many translation units a header change may reach. Each is compiled before and
/// after the change; beyond this, a header change is refused.
pub const MAX_HEADER_UNITS: usize = 32;

/// The directories of a tree the index skips: nothing in them is kernel code built
/// for x86-64.
const SKIPPED: [&str; 7] = [
    "Documentation",
    "tools",
    "samples",
    "scripts",
    "usr",
    ".git",
    ".kstack",
];

/// Where `<name>` is searched for, in order (the kernel's `LINUXINCLUDE` for x86).
const SYSTEM_DIRS: [&str; 6] = [
    "arch/x86/include",
    "arch/x86/include/generated",
    "include",
    "arch/x86/include/uapi",
    "arch/x86/include/generated/uapi",
    "include/uapi",
];

/// The file name of the include index in the cache directory.
const INDEX_FILE: &str = "includes.txt";

/// Every source file's includes, resolved to tree paths (several when more than one
/// file could be meant).
#[derive(Debug, Default)]
pub struct IncludeIndex {
    includes: BTreeMap<String, Vec<String>>,
}

impl IncludeIndex {
    /// The index of `tree` from `cache`, or scanned from the tree and written there.
    pub fn load_or_scan(tree: &Path, cache: &Path) -> Result<IncludeIndex, TreeError> {
        let file = cache.join(INDEX_FILE);
        if let Ok(text) = std::fs::read_to_string(&file) {
            return Ok(IncludeIndex::parse(&text));
        }
        let index = IncludeIndex::scan(tree)?;
        std::fs::create_dir_all(cache).map_err(io(cache))?;
        write_atomically(&file, index.to_text().as_bytes())?;
        Ok(index)
    }

    /// Reads every `.c` and `.h` file of `tree` (but [`SKIPPED`] and other
    /// architectures) and resolves its `#include`s.
    pub fn scan(tree: &Path) -> Result<IncludeIndex, TreeError> {
        let mut files = Vec::new();
        collect_sources(tree, Path::new(""), &mut files)?;
        let known: BTreeSet<String> = files.iter().cloned().collect();
        let mut by_name: HashMap<&str, Vec<&str>> = HashMap::new();
        for f in &known {
            if f.ends_with(".h") {
                let name = f.rsplit('/').next().unwrap_or(f);
                by_name.entry(name).or_default().push(f);
            }
        }
        // Generated headers exist only in a prepared tree, and only under the
        // generated directories.
        let exists = |p: &str| known.contains(p) || tree.join(p).is_file();
        let mut includes = BTreeMap::new();
        for file in &files {
            let path = tree.join(file);
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            let dir = Path::new(file).parent().unwrap_or(Path::new(""));
            let mut resolved = BTreeSet::new();
            for (name, quoted) in include_lines(&text) {
                let mut found = false;
                if quoted
                    && let Some(p) = normalize(&dir.join(name))
                    && exists(&p)
                {
                    resolved.insert(p);
                    found = true;
                }
                if !found {
                    for sys in SYSTEM_DIRS {
                        if let Some(p) = normalize(&Path::new(sys).join(name))
                            && exists(&p)
                        {
                            resolved.insert(p);
                            found = true;
                        }
                    }
                }
                if !found && quoted {
                    let base = name.rsplit('/').next().unwrap_or(name);
                    for p in by_name.get(base).into_iter().flatten() {
                        resolved.insert((*p).to_owned());
                    }
                }
            }
            includes.insert(file.clone(), resolved.into_iter().collect());
        }
        Ok(IncludeIndex { includes })
    }

    fn parse(text: &str) -> IncludeIndex {
        let includes = text
            .lines()
            .filter_map(|l| {
                let (file, rest) = l.split_once('\t')?;
                Some((
                    file.to_owned(),
                    rest.split_whitespace().map(str::to_owned).collect(),
                ))
            })
            .collect();
        IncludeIndex { includes }
    }

    fn to_text(&self) -> String {
        let mut out = String::new();
        for (file, includes) in &self.includes {
            out.push_str(file);
            out.push('\t');
            out.push_str(&includes.join(" "));
            out.push('\n');
        }
        out
    }

    /// What `file` includes directly, resolved (nothing for a file not indexed).
    pub fn includes_of(&self, file: &str) -> &[String] {
        self.includes.get(file).map_or(&[], Vec::as_slice)
    }

    /// The `.c` files that may include `header`, directly or through other files.
    pub fn candidates(&self, header: &str) -> Vec<String> {
        let mut included_by: HashMap<&str, Vec<&str>> = HashMap::new();
        for (file, includes) in &self.includes {
            for i in includes {
                included_by
                    .entry(i.as_str())
                    .or_default()
                    .push(file.as_str());
            }
        }
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut todo = vec![header];
        let mut units = BTreeSet::new();
        while let Some(h) = todo.pop() {
            for &f in included_by.get(h).into_iter().flatten() {
                if seen.insert(f) {
                    if f.ends_with(".c") {
                        units.insert(f.to_owned());
                    }
                    // A .c file included by another (`#include "foo.c"`) passes the
                    // header on too.
                    todo.push(f);
                }
            }
        }
        units.into_iter().collect()
    }
}

/// A unit's dependencies as kbuild recorded them when preprocessing it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UnitDeps {
    Files(BTreeSet<String>),
    /// The configuration does not build it.
    NotBuilt,
}

/// The per-unit dependency cache: `<cache>/units/<unit, / as __>`, the dependency
/// list one per line, or a first line `not built`.
struct DepsCache {
    dir: PathBuf,
}

const NOT_BUILT: &str = "not built";

impl DepsCache {
    fn path(&self, unit: &str) -> PathBuf {
        self.dir.join("units").join(unit.replace('/', "__"))
    }

    fn get(&self, unit: &str) -> Option<UnitDeps> {
        let text = std::fs::read_to_string(self.path(unit)).ok()?;
        if text.lines().next() == Some(NOT_BUILT) {
            return Some(UnitDeps::NotBuilt);
        }
        Some(UnitDeps::Files(text.lines().map(str::to_owned).collect()))
    }

    fn put(&self, unit: &str, deps: &UnitDeps) -> Result<(), TreeError> {
        let path = self.path(unit);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let text = match deps {
            UnitDeps::NotBuilt => format!("{NOT_BUILT}\n"),
            UnitDeps::Files(files) => files.iter().map(|f| format!("{f}\n")).collect(),
        };
        write_atomically(&path, text.as_bytes())
    }
}

/// The built units of `work` (a prepared tree, possibly with a stack's earlier
/// patches applied) whose compile includes `header`, sorted; refused when none does
/// or more than [`MAX_HEADER_UNITS`] do. `source` is the cached prepared tree the
/// include index is made from; `cache` the kernel's directory for this module's
/// files.
pub fn units_including(
    work: &Path,
    source: &Path,
    release: &str,
    header: &str,
    cache: &Path,
) -> Result<Vec<String>, TreeError> {
    let index = IncludeIndex::load_or_scan(source, cache)?;
    let candidates = index.candidates(header);
    if candidates.is_empty() {
        return Err(TreeError::HeaderUnknown {
            header: header.to_owned(),
            why: "no source file includes it".into(),
        });
    }
    let deps = DepsCache {
        dir: cache.to_owned(),
    };
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut found = Vec::new();
    for batch in candidates.chunks((4 * jobs).max(8)) {
        let missing: Vec<&String> = batch.iter().filter(|u| deps.get(u).is_none()).collect();
        if !missing.is_empty() {
            for (unit, d) in preprocess(work, source, release, &missing)? {
                deps.put(&unit, &d)?;
            }
        }
        for source_file in batch {
            if let Some(UnitDeps::Files(files)) = deps.get(source_file)
                && files.contains(header)
            {
                found.push(unit_of(source_file));
            }
        }
        if found.len() > MAX_HEADER_UNITS {
            return Err(TreeError::HeaderTooBroad {
                header: header.to_owned(),
                units: found.len(),
                limit: MAX_HEADER_UNITS,
            });
        }
    }
    if found.is_empty() {
        return Err(TreeError::HeaderUnknown {
            header: header.to_owned(),
            why: format!(
                "none of the {} source files that name it in an #include is compiled with \
                 it for this configuration",
                candidates.len()
            ),
        });
    }
    found.sort();
    Ok(found)
}

/// `fs/proc/cmdline.c` → `fs/proc/cmdline.o`.
fn unit_of(source_file: &str) -> String {
    format!(
        "{}.o",
        source_file.strip_suffix(".c").unwrap_or(source_file)
    )
}

/// Preprocesses source files in `work` with kbuild, and reads what each depends on;
/// a file the configuration does not build is [`UnitDeps::NotBuilt`].
fn preprocess(
    work: &Path,
    source: &Path,
    release: &str,
    files: &[&String],
) -> Result<Vec<(String, UnitDeps)>, TreeError> {
    let mut out = Vec::new();
    let mut targets = Vec::new();
    for file in files {
        let unit = unit_of(file);
        match tree::check_built(source, release, &unit) {
            Ok(()) => targets.push(file.as_str()),
            Err(TreeError::NotBuilt { .. }) => out.push(((*file).clone(), UnitDeps::NotBuilt)),
            Err(e) => return Err(e),
        }
    }
    if targets.is_empty() {
        return Ok(out);
    }
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let goals: Vec<String> = targets
        .iter()
        .map(|f| format!("{}.i", f.strip_suffix(".c").unwrap_or(f)))
        .collect();
    let output = Command::new("make")
        .arg("-C")
        .arg(work)
        .args(["-s", "-k"])
        .arg(format!("-j{jobs}"))
        .arg(format!("KERNELRELEASE={release}"))
        .arg(format!("KCFLAGS={EXTRA_CFLAGS}"))
        .args(&goals)
        .output()
        .map_err(|e| TreeError::Command {
            command: "make".into(),
            output: e.to_string(),
        })?;
    for (file, goal) in targets.iter().zip(&goals) {
        let path = Path::new(goal.as_str());
        let cmd = work
            .join(path.parent().unwrap_or(Path::new("")))
            .join(format!(
                ".{}.cmd",
                path.file_name().and_then(|n| n.to_str()).unwrap_or(goal)
            ));
        let Ok(text) = std::fs::read_to_string(&cmd) else {
            return Err(TreeError::Compile {
                units: goal.clone(),
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        };
        out.push(((*file).to_owned(), UnitDeps::Files(parse_deps(&text))));
        // The preprocessed text is large and of no further use.
        let _ = std::fs::remove_file(work.join(goal));
    }
    Ok(out)
}

/// The files of a `fixdep` record (`deps_<target> := \` then one per line; the
/// `$(wildcard include/config/...)` lines are configuration, not files).
fn parse_deps(cmd: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut inside = false;
    for line in cmd.lines() {
        if line.starts_with("deps_") {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        let item = line.trim().trim_end_matches('\\').trim();
        if item.is_empty() {
            break;
        }
        if item.starts_with("$(") {
            continue;
        }
        out.insert(item.to_owned());
    }
    // The source file itself is listed with `source_`.
    if let Some(src) = cmd
        .lines()
        .find_map(|l| l.strip_prefix("source_"))
        .and_then(|l| l.split_once(":="))
    {
        out.insert(src.1.trim().to_owned());
    }
    out
}

/// The `#include` lines of a C file: (name, quoted). Macro includes are skipped.
fn include_lines(text: &str) -> Vec<(&str, bool)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix('#') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix("include") else {
            continue;
        };
        let rest = rest.trim_start();
        let (open, close, quoted) = match rest.chars().next() {
            Some('"') => ('"', '"', true),
            Some('<') => ('<', '>', false),
            _ => continue,
        };
        let inner = &rest[open.len_utf8()..];
        if let Some(end) = inner.find(close) {
            out.push((&inner[..end], quoted));
        }
    }
    out
}

/// A relative path with `.` and `..` resolved; `None` if it leaves the tree.
fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

/// Every `.c` and `.h` file under `dir` of `tree`, as tree paths.
fn collect_sources(tree: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), TreeError> {
    let abs = tree.join(dir);
    let entries = std::fs::read_dir(&abs).map_err(io(&abs))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let rel = dir.join(name);
        let rel_str = rel.to_string_lossy();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            let top = dir.as_os_str().is_empty();
            if top && SKIPPED.contains(&name) {
                continue;
            }
            // Of the architectures, only x86 is built.
            if dir == Path::new("arch") && name != "x86" {
                continue;
            }
            collect_sources(tree, &rel, out)?;
        } else if kind.is_file() && (name.ends_with(".c") || name.ends_with(".h")) {
            out.push(rel_str.into_owned());
        }
    }
    Ok(())
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<(), TreeError> {
    let tmp = path.with_extension("kstack-tmp");
    std::fs::write(&tmp, data).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_lines_are_read_as_the_preprocessor_sees_them() {
        let text = "#include <linux/fs.h>\n  #  include \"local.h\"\n#include TRACE_INCLUDE(x)\n\
                    // #include <not/a/line.h> is a comment, but the scan is textual\n\
                    #define X\n#include_next <y.h>\n";
        assert_eq!(
            include_lines(text),
            [("linux/fs.h", false), ("local.h", true)]
        );
    }

    #[test]
    fn fixdep_records_give_the_files_only() {
        let cmd = "savedcmd_fs/proc/cmdline.i := gcc ...\n\n\
                   source_fs/proc/cmdline.i := fs/proc/cmdline.c\n\n\
                   deps_fs/proc/cmdline.i := \\\n  include/linux/compiler-version.h \\\n    \
                   $(wildcard include/config/CC_VERSION_TEXT) \\\n  include/linux/fs.h \\\n\n\
                   fs/proc/cmdline.i: $(deps_fs/proc/cmdline.i)\n";
        assert_eq!(
            parse_deps(cmd).into_iter().collect::<Vec<_>>(),
            [
                "fs/proc/cmdline.c",
                "include/linux/compiler-version.h",
                "include/linux/fs.h"
            ]
        );
    }

    #[test]
    fn candidates_follow_includes_backwards_through_headers_and_included_c_files() {
        let index = IncludeIndex::parse(
            "a.c\tinclude/x.h\nb.c\tinclude/y.h\nc.c\tlib/part.c\nlib/part.c\tinclude/y.h\n\
             include/y.h\tinclude/x.h\nd.c\tinclude/z.h\n",
        );
        assert_eq!(
            index.candidates("include/x.h"),
            ["a.c", "b.c", "c.c", "lib/part.c"]
        );
        assert!(index.candidates("include/w.h").is_empty());
        assert_eq!(
            normalize(Path::new("fs/xfs/../ext4/a.h")).unwrap(),
            "fs/ext4/a.h"
        );
        assert_eq!(normalize(Path::new("../a.h")), None);
    }
}
