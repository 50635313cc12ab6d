//! The units' objects before and after the change: with the commands recorded by
//! earlier builds for the kernel, in a tree of links, or with kbuild in a full copy.

use std::collections::BTreeMap;
use std::path::Path;

use kstack_store::digest::Sha256Digest;

use super::{BuildError, Job, Phase, Reused, compiler_version, io};
use crate::builder::tree::{self, TreeError, WorkTree};
use crate::builder::units::{PreKey, UnitCommand, UnitRecords};

/// The work tree of a build and the objects of the units it changes, before and
/// after the change.
pub(super) struct Compiled {
    pub(super) tree: WorkTree,
    pub(super) units: Vec<String>,
    /// The recorded compiles used; `None` when kbuild compiled.
    pub(super) recorded: Option<Vec<UnitCommand>>,
    pub(super) pre_objects: BTreeMap<String, Vec<u8>>,
    pub(super) post_objects: BTreeMap<String, Vec<u8>>,
    pub(super) reused: Reused,
    /// Why kbuild compiled although records existed: a recorded compile failed.
    pub(super) fallback: Option<String>,
}

/// Compiles the units `changes` touch before and after `req`'s changes. A diff of
/// existing .c files whose units were compiled for this kernel before is compiled with
/// the recorded commands, in a tree of links; anything else (a header, a new file, a
/// unit never compiled) goes through kbuild, in a full copy. A recorded compile that
/// fails (a record this kstack cannot replay on this machine, or a patch that does
/// not compile) is not the end: kbuild compiles the units again in a full copy, and
/// the result says why; kbuild's error, if any, is the one reported.
pub(super) fn compile_units(
    req: &Job<'_>,
    work: &Path,
    source: &Path,
    changes: &[tree::FileChange],
    records: &UnitRecords,
    enter: &mut dyn FnMut(Phase),
) -> Result<Compiled, BuildError> {
    let recorded = if req.reuse {
        recorded_units(changes, records)
    } else {
        None
    };
    let mut fallback = None;
    if let Some(commands) = recorded {
        match compile_attempt(req, work, source, changes, records, Some(commands), enter) {
            Err(BuildError::Tree(TreeError::Compile { units, output })) => {
                fallback = Some(first_error_line(&units, &output));
            }
            done => return done,
        }
    }
    let compiled = compile_attempt(req, work, source, changes, records, None, enter)?;
    Ok(Compiled {
        fallback,
        ..compiled
    })
}

/// One way of compiling for [`compile_units`]: with the `recorded` commands, or with
/// kbuild when `None`.
fn compile_attempt(
    req: &Job<'_>,
    work: &Path,
    source: &Path,
    changes: &[tree::FileChange],
    records: &UnitRecords,
    recorded: Option<Vec<UnitCommand>>,
    enter: &mut dyn FnMut(Phase),
) -> Result<Compiled, BuildError> {
    let release = &req.kernel.release;
    enter(Phase::Tree);
    let tree = match &recorded {
        Some(_) => {
            let mut paths: Vec<String> = changes.iter().map(|c| c.path.clone()).collect();
            for (_, diff) in req.earlier {
                paths.extend(tree::parse_diff(diff)?.into_iter().map(|c| c.path));
            }
            WorkTree::sparse(source, &work.join("trees"), release, &paths)?
        }
        None => WorkTree::new(source, &work.join("trees"), release)?,
    };
    for (name, diff) in req.earlier {
        tree.apply(diff, &format!("earlier patch {name}"))?;
    }
    let units = match &recorded {
        Some(commands) => commands.iter().map(|c| c.unit.clone()).collect(),
        None => {
            let mut units = Vec::new();
            for (_, diff) in &req.changes {
                units.extend(tree.units_for(diff, source, &req.kernel.dir().join("deps"))?);
            }
            units.sort();
            units.dedup();
            units
        }
    };
    for unit in &units {
        tree::check_built(tree.path(), release, unit)?;
    }

    enter(Phase::Pre);
    let out = tree.path().join(".kstack");
    // A unit's pre object is the same for every patch that touches it at this
    // position of the stack: kept, and compiled only when it is not.
    let config = std::fs::read(source.join(".config")).map_err(io(&source.join(".config")))?;
    let kernel_id = kernel_identity(release, &req.kernel.version().unwrap_or_default(), &config);
    let compiler = compiler_version();
    let earlier: Vec<&[u8]> = req.earlier.iter().map(|(_, d)| d.as_slice()).collect();
    let mut keys = BTreeMap::new();
    let mut pre_objects = BTreeMap::new();
    let mut to_compile = Vec::new();
    for unit in &units {
        let key = unit_source(tree.path(), unit)
            .map(|text| PreKey::new(&kernel_id, &compiler, &earlier, unit, &text));
        match key
            .as_ref()
            .filter(|_| req.reuse)
            .and_then(|k| records.pre_object(k))
        {
            Some(object) => {
                pre_objects.insert(unit.clone(), object);
            }
            None => to_compile.push(unit.clone()),
        }
        if let Some(key) = key {
            keys.insert(unit.clone(), key);
        }
    }
    if !to_compile.is_empty() {
        let pre_paths = match &recorded {
            Some(commands) => {
                let needed: Vec<UnitCommand> = commands
                    .iter()
                    .filter(|c| to_compile.contains(&c.unit))
                    .cloned()
                    .collect();
                tree.compile_recorded(&needed, &out.join("pre"))?
            }
            None => tree.compile(&to_compile, &out.join("pre"))?,
        };
        for (unit, path) in to_compile.iter().zip(&pre_paths) {
            let object = std::fs::read(path).map_err(io(path))?;
            if let Some(key) = keys.get(unit) {
                // A record is an optimisation: a cache that cannot be written
                // costs the next build a compile, never this one its result.
                let _ = records.keep_pre_object(key, &object);
            }
            pre_objects.insert(unit.clone(), object);
        }
    }
    let mut reused = Reused {
        pre_objects: units.len() - to_compile.len(),
        units: units.len(),
        recorded_commands: recorded.is_some(),
        recorded_link: false,
        post_objects: 0,
    };
    for (what, diff) in &req.changes {
        tree.apply(diff, what)?;
    }
    enter(Phase::Post);
    // A post object is the pre object of a patch that would sit above this change:
    // kept under the same kind of key, with every diff up to this change. So a
    // stack's cumulative build takes the post objects its newest patch's build just
    // made (the same diffs on the same source), and compiles nothing again. Only with
    // recorded commands: kbuild's path reads its .cmd files of the units it compiles.
    let after: Vec<&[u8]> = earlier
        .iter()
        .copied()
        .chain(req.changes.iter().map(|(_, d)| d.as_slice()))
        .collect();
    let mut post_keys = BTreeMap::new();
    let mut post_bytes: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for unit in &units {
        let Some(key) = unit_source(tree.path(), unit)
            .map(|text| PreKey::new(&kernel_id, &compiler, &after, unit, &text))
        else {
            continue;
        };
        if req.reuse
            && recorded.is_some()
            && let Some(object) = records.pre_object(&key)
        {
            post_bytes.insert(unit.clone(), object);
        }
        post_keys.insert(unit.clone(), key);
    }
    reused.post_objects = post_bytes.len();
    let post_to_compile: Vec<String> = units
        .iter()
        .filter(|u| !post_bytes.contains_key(*u))
        .cloned()
        .collect();
    if !post_to_compile.is_empty() {
        let paths = match &recorded {
            Some(commands) => {
                let needed: Vec<UnitCommand> = commands
                    .iter()
                    .filter(|c| post_to_compile.contains(&c.unit))
                    .cloned()
                    .collect();
                tree.compile_recorded(&needed, &out.join("post"))?
            }
            None => tree.compile(&post_to_compile, &out.join("post"))?,
        };
        for (unit, path) in post_to_compile.iter().zip(&paths) {
            let object = std::fs::read(path).map_err(io(path))?;
            if let Some(key) = post_keys.get(unit) {
                let _ = records.keep_pre_object(key, &object);
            }
            post_bytes.insert(unit.clone(), object);
        }
    }
    Ok(Compiled {
        tree,
        units,
        recorded,
        pre_objects,
        post_objects: post_bytes,
        reused,
        fallback: None,
    })
}

/// `unit: <the first line of the compiler's output that says error>` (else its
/// first line), for a note.
fn first_error_line(unit: &str, output: &str) -> String {
    let line = output
        .lines()
        .find(|l| l.contains("error"))
        .or_else(|| output.lines().next())
        .unwrap_or("no output");
    format!("{unit}: {}", line.trim())
}

/// The recorded compiles of the units a diff changes, when it changes only
/// existing `.c` files and every one of their units has a record.
fn recorded_units(changes: &[tree::FileChange], records: &UnitRecords) -> Option<Vec<UnitCommand>> {
    changes
        .iter()
        .map(|c| {
            let stem = c.path.strip_suffix(".c")?;
            (c.kind == tree::ChangeKind::Modified)
                .then(|| records.command(&format!("{stem}.o")))
                .flatten()
        })
        .collect()
}

/// What names a prepared kernel source in the keys of kept objects: its release,
/// package version and configuration. The configuration is part of it: a tree
/// prepared again (e.g. once pahole is installed, which brings back options
/// olddefconfig had dropped) compiles the same source to other code, and must not
/// take objects kept before.
pub(super) fn kernel_identity(release: &str, version: &str, config: &[u8]) -> String {
    format!(
        "{release} {version} config {}",
        Sha256Digest::of(config).to_hex()
    )
}

/// The source a unit is compiled from (`dir/name.c` or `dir/name.S`), as it is now.
fn unit_source(tree: &Path, unit: &str) -> Option<Vec<u8>> {
    let stem = unit.strip_suffix(".o")?;
    ["c", "S"]
        .iter()
        .find_map(|ext| std::fs::read(tree.join(format!("{stem}.{ext}"))).ok())
}
