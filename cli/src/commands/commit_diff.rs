//! `kstack commit PATCH.diff` and `kstack commit --git REPO REV`: build a livepatch
//! module from a source change for the stack's kernel.

use std::collections::BTreeMap;
use std::path::Path;

use kstack_engine::builder::assets::Cache;
use kstack_engine::builder::pipeline::{self, BuildRequest, Phase};
use kstack_store::commit::NewPatch;
use kstack_store::model::{DIFF_FILE, HOOKS_FILE, PatchSource};
use kstack_store::store::{StackId, Store};

use crate::error::{CliError, Kind, chain};
use crate::ui::Ui;

/// A source change to build.
#[derive(Debug)]
pub struct Change {
    pub diff: Vec<u8>,
    pub hooks: Option<Vec<u8>>,
    /// A default patch name and message, from the file or the commit.
    pub default_name: String,
    pub default_message: Option<String>,
}

/// Reads `PATCH.diff` and its hook file: `--hooks`, else `<PATCH>.hooks.c` beside it.
pub fn from_file(path: &Path, hooks: Option<&Path>) -> Result<Change, CliError> {
    let diff = std::fs::read(path)
        .map_err(|e| CliError::user(format!("cannot read {}: {e}", path.display())))?;
    let stem = path
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| {
            n.strip_suffix(".diff")
                .or(n.strip_suffix(".patch"))
                .unwrap_or(n)
        })
        .unwrap_or("patch")
        .to_owned();
    let beside = path.with_file_name(format!("{stem}.hooks.c"));
    let hooks_path = hooks
        .map(Path::to_path_buf)
        .or_else(|| beside.is_file().then_some(beside));
    let hooks = hooks_path
        .map(|p| {
            std::fs::read(&p)
                .map_err(|e| CliError::user(format!("cannot read {}: {e}", p.display())))
        })
        .transpose()?;
    Ok(Change {
        default_message: first_line(&diff),
        default_name: patch_name(&stem),
        diff,
        hooks,
    })
}

/// The diff of a commit in a kernel Git tree against its first parent, read with gix.
pub fn from_git(repo: &Path, rev: &str, hooks: Option<&Path>) -> Result<Change, CliError> {
    let git_err = |what: &str, e: &dyn std::fmt::Display| {
        CliError::user(format!("{}: {what}: {e}", repo.display()))
    };
    let repo_handle = gix::open(repo).map_err(|e| git_err("not a Git repository", &e))?;
    let commit = repo_handle
        .rev_parse_single(rev)
        .map_err(|e| git_err(&format!("revision {rev}"), &e))?
        .object()
        .map_err(|e| git_err(rev, &e))?
        .try_into_commit()
        .map_err(|e| git_err(rev, &e))?;
    let message = commit.message_raw_sloppy().to_string();
    let tree = commit.tree().map_err(|e| git_err("tree", &e))?;
    let parent_tree = match commit.parent_ids().next() {
        Some(p) => p
            .object()
            .map_err(|e| git_err("parent", &e))?
            .try_into_commit()
            .map_err(|e| git_err("parent", &e))?
            .tree()
            .map_err(|e| git_err("parent tree", &e))?,
        None => repo_handle.empty_tree(),
    };
    let changes = repo_handle
        .diff_tree_to_tree(Some(&parent_tree), Some(&tree), None)
        .map_err(|e| git_err("diff", &e))?;
    let mut diff = String::new();
    for change in changes {
        use gix::object::tree::diff::ChangeDetached as C;
        // Files only: the trees that contain them are listed as changes too.
        let (path, old, new) = match change {
            C::Addition {
                location,
                id,
                entry_mode,
                ..
            } if entry_mode.is_blob() => (location, None, Some(id)),
            C::Deletion {
                location,
                id,
                entry_mode,
                ..
            } if entry_mode.is_blob() => (location, Some(id), None),
            C::Modification {
                location,
                previous_id,
                id,
                entry_mode,
                ..
            } if entry_mode.is_blob() => (location, Some(previous_id), Some(id)),
            _ => continue,
        };
        let read = |id: Option<gix::ObjectId>| -> Result<String, CliError> {
            match id {
                None => Ok(String::new()),
                Some(id) => Ok(String::from_utf8_lossy(
                    &repo_handle
                        .find_object(id)
                        .map_err(|e| git_err("blob", &e))?
                        .data,
                )
                .into_owned()),
            }
        };
        let (before, after) = (read(old)?, read(new)?);
        if before == after {
            continue;
        }
        let path = path.to_string();
        let a = if old.is_some() {
            format!("a/{path}")
        } else {
            "/dev/null".into()
        };
        let b = if new.is_some() {
            format!("b/{path}")
        } else {
            "/dev/null".into()
        };
        diff.push_str(&format!("diff --git a/{path} b/{path}\n"));
        diff.push_str(
            &similar::TextDiff::from_lines(&before, &after)
                .unified_diff()
                .context_radius(3)
                .header(&a, &b)
                .to_string(),
        );
    }
    if diff.is_empty() {
        return Err(CliError::user(format!("commit {rev} changes no file")));
    }
    let summary = message.lines().next().unwrap_or("").trim().to_owned();
    let hooks = hooks
        .map(|p| {
            std::fs::read(p)
                .map_err(|e| CliError::user(format!("cannot read {}: {e}", p.display())))
        })
        .transpose()?;
    let mut text = message.trim_end().to_owned();
    text.push_str("\n\n");
    text.push_str(&diff);
    Ok(Change {
        diff: text.into_bytes(),
        hooks,
        default_name: patch_name(&summary),
        default_message: Some(summary),
    })
}

/// Builds the change for `stack` (whose current verified head, if any, provides the
/// earlier patches) and returns the patch to commit.
pub fn build(
    ui: &Ui,
    store: &Store,
    stack: &StackId,
    name: &str,
    change: &Change,
) -> Result<NewPatch, CliError> {
    let cache = Cache::from_env();
    let kernel = cache.kernel_with_build_id(&stack.build_id).ok_or_else(|| {
        CliError::new(
            Kind::Unavailable,
            format!(
                "no kernel with build ID {} is in the cache {}",
                stack.build_id,
                cache.root().display()
            ),
        )
        .with_hint("fetch it with `kstack kernel add RELEASE` (see `kstack kernel list`)")
    })?;
    let mut earlier = Vec::new();
    let mut position = stack.build_id.to_hex();
    if let Some(head) = store
        .stack_head(stack)
        .map_err(|e| CliError::new(Kind::Data, chain(&e)))?
    {
        let verified = store.check(head, Some(stack))?;
        for patch in &verified.patches {
            position.push_str(&format!(" {}", patch.entry.manifest_sha256));
            let diff = patch
                .manifest
                .artifacts
                .iter()
                .find(|a| a.path == DIFF_FILE)
                .map(|_| read_patch_file(store, head, &patch.entry.dir, DIFF_FILE))
                .transpose()?;
            match diff {
                Some(diff) => earlier.push((patch.entry.name.clone(), diff)),
                None => ui.status(format!(
                    "note: earlier patch {} has no source diff (a prebuilt module); building without it",
                    patch.entry.name
                )),
            }
        }
    }
    let guest_binary = kstack_engine::sandbox::find_guest_binary()?;
    let request = BuildRequest {
        kernel: &kernel,
        earlier,
        diff: change.diff.clone(),
        hooks: change.hooks.clone(),
        name: name.to_owned(),
        position,
        guest_binary,
    };
    let work = cache.root().join("build");
    let bar = ui.steps(Phase::ALL.len() as u64, "building");
    let mut step = 0;
    let result = pipeline::build(&request, &work, &mut |phase| {
        bar.set_position(step);
        bar.set_message(phase.describe());
        step += 1;
    });
    bar.finish_and_clear();
    let built = result.map_err(|e| CliError::new(Kind::User, chain(&e)))?;
    for (phase, took) in &built.timings {
        ui.status(format!(
            "  {:<48} {:>6.1}s",
            phase.describe(),
            took.as_secs_f64()
        ));
    }
    let mut extra = BTreeMap::new();
    extra.insert(
        kstack_store::model::BEFORE_FILE.to_owned(),
        built.before.to_toml().into_bytes(),
    );
    if let Some(hooks) = &change.hooks {
        extra.insert(HOOKS_FILE.to_owned(), hooks.clone());
    }
    Ok(NewPatch {
        name: name.to_owned(),
        module_file: format!("{}.ko", built.module_name),
        module: built.module,
        diff: Some(change.diff.clone()),
        functions: built.functions,
        build: built.build_info,
        source: PatchSource::Diff,
        extra,
    })
}

fn read_patch_file(
    store: &Store,
    commit: kstack_store::store::ObjectId,
    dir: &str,
    file: &str,
) -> Result<Vec<u8>, CliError> {
    let path = format!("patches/{dir}/{file}");
    let info = store.commit_info(commit)?;
    let mut tree = info.tree;
    for part in path.split('/') {
        let items = store.tree_items(tree, &path)?;
        let item = items.iter().find(|i| i.name == part).ok_or_else(|| {
            CliError::new(Kind::Data, format!("commit {commit}: {path} is missing"))
        })?;
        tree = item.id;
    }
    Ok(store.blob(tree, &path)?)
}

/// A patch name from a file stem or a commit summary: `[a-z0-9-]`, at most 48, without
/// a `git format-patch` number (`0001-`), since the stack numbers its patches itself.
fn patch_name(text: &str) -> String {
    let text = match text.split_once('-') {
        Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => text,
    };
    let mut name = String::new();
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            name.push(c);
        } else if !name.ends_with('-') && !name.is_empty() {
            name.push('-');
        }
        if name.len() >= 48 {
            break;
        }
    }
    let name = name.trim_matches('-').to_owned();
    if name.is_empty() {
        "patch".into()
    } else {
        name
    }
}

fn first_line(diff: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(diff);
    let line = text.lines().next()?.trim();
    (!line.is_empty() && !line.starts_with("diff ") && !line.starts_with("--- "))
        .then(|| line.to_owned())
}
