//! A change to build, from a diff file or a commit of a kernel Git tree, and what it
//! is built on: the diffs of the stack's earlier patches. Also the patch that a built
//! change becomes in the store, and a stack commit's cumulative module, built from
//! the patches the store holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kstack_store::commit::{Cumulative, NewCumulative, NewPatch};
use kstack_store::model::{BEFORE_FILE, DIFF_FILE, HOOKS_FILE, PatchSource};
use kstack_store::store::{StackId, Store, StoreError};
use kstack_store::verify::{VerifiedStack, VerifyError};

use super::assets::Cache;
use super::pipeline::{
    BuildError, Built, CumulativeRequest, Phase, StackPatch, build_cumulative, cumulative_obstacle,
};
use super::sign::ModuleSigner;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a change could not be read, or the stack it goes on could not be.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{repo}: not a Git repository")]
    NotARepository {
        repo: PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("{repo}: revision {rev}")]
    Revision {
        repo: PathBuf,
        rev: String,
        #[source]
        source: BoxError,
    },
    #[error("{repo}: {what}")]
    Git {
        repo: PathBuf,
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("{repo}: commit {rev} changes no file")]
    EmptyCommit { repo: PathBuf, rev: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

/// A source change to build.
#[derive(Debug, Clone)]
pub struct Change {
    pub diff: Vec<u8>,
    pub hooks: Option<Vec<u8>>,
    /// A patch name and message to use when the user gives none: from the file name
    /// and the diff's first line, or from the commit's summary.
    pub default_name: String,
    pub default_message: Option<String>,
}

impl Change {
    /// Reads `PATCH.diff` and its hook file: `hooks`, else `<PATCH>.hooks.c` beside
    /// it if there is one.
    pub fn from_file(path: &Path, hooks: Option<&Path>) -> Result<Change, SourceError> {
        let diff = read(path)?;
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
        let hooks = hooks_path.as_deref().map(read).transpose()?;
        Ok(Change {
            default_message: first_line(&diff),
            default_name: patch_name(&stem),
            diff,
            hooks,
        })
    }

    /// The change a commit of a kernel Git tree makes to its first parent, as a
    /// unified diff after the commit's message; `hooks` is read as for a file.
    pub fn from_git(repo: &Path, rev: &str, hooks: Option<&Path>) -> Result<Change, SourceError> {
        let git = |what: &str, e: &dyn std::fmt::Display| SourceError::Git {
            repo: repo.to_owned(),
            what: what.to_owned(),
            source: e.to_string().into(),
        };
        let handle = gix::open(repo).map_err(|e| SourceError::NotARepository {
            repo: repo.to_owned(),
            source: Box::new(e),
        })?;
        let commit = handle
            .rev_parse_single(rev)
            .map_err(|e| SourceError::Revision {
                repo: repo.to_owned(),
                rev: rev.to_owned(),
                source: Box::new(e),
            })?
            .object()
            .map_err(|e| git(rev, &e))?
            .try_into_commit()
            .map_err(|e| git(rev, &e))?;
        let message = commit.message_raw_sloppy().to_string();
        let tree = commit.tree().map_err(|e| git("tree", &e))?;
        let parent_tree = match commit.parent_ids().next() {
            Some(p) => p
                .object()
                .map_err(|e| git("parent", &e))?
                .try_into_commit()
                .map_err(|e| git("parent", &e))?
                .tree()
                .map_err(|e| git("parent tree", &e))?,
            None => handle.empty_tree(),
        };
        let changes = handle
            .diff_tree_to_tree(Some(&parent_tree), Some(&tree), None)
            .map_err(|e| git("diff", &e))?;
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
            let text = |id: Option<gix::ObjectId>| -> Result<String, SourceError> {
                match id {
                    None => Ok(String::new()),
                    Some(id) => Ok(String::from_utf8_lossy(
                        &handle.find_object(id).map_err(|e| git("blob", &e))?.data,
                    )
                    .into_owned()),
                }
            };
            let (before, after) = (text(old)?, text(new)?);
            if before == after {
                continue;
            }
            diff.push_str(&file_diff(
                &path.to_string(),
                old.is_some(),
                new.is_some(),
                &before,
                &after,
            ));
        }
        if diff.is_empty() {
            return Err(SourceError::EmptyCommit {
                repo: repo.to_owned(),
                rev: rev.to_owned(),
            });
        }
        let summary = message.lines().next().unwrap_or("").trim().to_owned();
        let hooks = hooks.map(read).transpose()?;
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

    /// The patch to commit for this change, once built.
    pub fn into_patch(self, name: &str, built: Built) -> NewPatch {
        let mut extra = BTreeMap::new();
        extra.insert(BEFORE_FILE.to_owned(), built.before.to_toml().into_bytes());
        if let Some(hooks) = self.hooks {
            extra.insert(HOOKS_FILE.to_owned(), hooks);
        }
        NewPatch {
            name: name.to_owned(),
            module_file: format!("{}.ko", built.module_name),
            module: built.module,
            diff: Some(self.diff),
            functions: built.functions,
            build: built.build_info,
            source: PatchSource::Diff,
            extra,
        }
    }
}

/// One file's part of a Git-style unified diff (`diff --git`, then `similar`'s
/// unified diff with three lines of context); `/dev/null` for an absent side.
fn file_diff(path: &str, has_old: bool, has_new: bool, before: &str, after: &str) -> String {
    let a = if has_old {
        format!("a/{path}")
    } else {
        "/dev/null".into()
    };
    let b = if has_new {
        format!("b/{path}")
    } else {
        "/dev/null".into()
    };
    let mut text = format!("diff --git a/{path} b/{path}\n");
    text.push_str(
        &similar::TextDiff::from_lines(before, after)
            .unified_diff()
            .context_radius(3)
            .header(&a, &b)
            .to_string(),
    );
    text
}

/// What a change to a stack is built on: the diffs of the patches below it.
#[derive(Debug, Clone, Default)]
pub struct Base {
    /// The earlier patches' names and diffs, bottom first.
    pub earlier: Vec<(String, Vec<u8>)>,
    /// Earlier patches without a diff (prebuilt modules): built without them.
    pub without_diff: Vec<String>,
    /// The stack's build ID and the manifest digests of the patches below: what
    /// makes a module name differ per position (`BuildRequest::position`).
    pub position: String,
}

/// The base of a change on top of `stack` as it is now: its head is verified (digests
/// only; who signed it is not the builder's question) and the diffs read from what
/// verification hashed.
pub fn base(store: &Store, stack: &StackId) -> Result<Base, SourceError> {
    let mut base = Base {
        position: stack.build_id.to_hex(),
        ..Base::default()
    };
    let Some(head) = store.stack_head(stack)? else {
        return Ok(base);
    };
    let verified = store.check(head, Some(stack))?;
    for patch in verified.patches {
        base.position
            .push_str(&format!(" {}", patch.entry.manifest_sha256));
        match patch.files.get(DIFF_FILE) {
            Some(diff) => base.earlier.push((patch.entry.name, diff.clone())),
            None => base.without_diff.push(patch.entry.name),
        }
    }
    Ok(base)
}

/// Why a stack's cumulative module, which its patches allow, could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CumulativeError {
    #[error("kernel {release} ({build_id}) is not in the build cache {cache} (kstack kernel add)")]
    NoKernel {
        release: String,
        build_id: kstack_store::ident::BuildId,
        cache: PathBuf,
    },
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("building it failed")]
    Build(#[source] BuildError),
}

/// A stack commit's cumulative module, or why it has none.
#[derive(Debug)]
pub enum CumulativeOutcome {
    /// Built: what the store commits, the module's name and how long it took.
    Built {
        cumulative: NewCumulative,
        module_name: String,
        took: Duration,
    },
    /// The stack cannot have one, known without building (a prebuilt patch, no
    /// patches, hook states in an order the kernel refuses).
    Impossible(String),
    /// A build was tried and failed.
    Failed(CumulativeError),
}

impl CumulativeOutcome {
    /// What the store records: the module, or the reason there is none.
    pub fn into_cumulative(self) -> Cumulative {
        match self {
            CumulativeOutcome::Built { cumulative, .. } => Cumulative::Module(cumulative),
            CumulativeOutcome::Impossible(reason) => Cumulative::Impossible(reason),
            CumulativeOutcome::Failed(e) => Cumulative::Impossible(kstack_store::error_chain(&e)),
        }
    }
}

/// The cumulative module of a verified (prepared) stack commit: every patch's diff
/// and hooks built as one module (`pipeline::build_cumulative`) for the stack's
/// kernel, found in `cache`, in `cache`'s work directory; `progress` hears each
/// phase of the build.
pub fn cumulative(
    stack: &VerifiedStack,
    cache: &Cache,
    signer: Option<ModuleSigner>,
    reuse: bool,
    progress: &mut dyn FnMut(Phase),
) -> CumulativeOutcome {
    let patches = match cumulative_patches(stack) {
        Ok(patches) => patches,
        Err(reason) => return CumulativeOutcome::Impossible(reason),
    };
    let Some(kernel) = cache.kernel_with_build_id(&stack.stack.build_id) else {
        return CumulativeOutcome::Failed(CumulativeError::NoKernel {
            release: stack.stack.kernel_release.clone(),
            build_id: stack.stack.build_id.clone(),
            cache: cache.root().to_owned(),
        });
    };
    let guest_binary = match crate::sandbox::find_guest_binary() {
        Ok(path) => path,
        Err(e) => return CumulativeOutcome::Failed(e.into()),
    };
    let ids: Vec<String> = patches.iter().map(|p| p.module_name.clone()).collect();
    let request = CumulativeRequest {
        kernel: &kernel,
        patches,
        guest_binary,
        signer,
        reuse,
    };
    let built = match build_cumulative(&request, &cache.root().join("build"), progress) {
        Ok(built) => built,
        Err(e) => return CumulativeOutcome::Failed(CumulativeError::Build(e)),
    };
    CumulativeOutcome::Built {
        took: built.timings.iter().map(|(_, d)| *d).sum(),
        module_name: built.module_name,
        cumulative: NewCumulative {
            patches: ids,
            module: built.module,
            functions: built.functions,
            build: built.build_info,
            extra: BTreeMap::from([(BEFORE_FILE.to_owned(), built.before.to_toml().into_bytes())]),
        },
    }
}

/// What the cumulative module is built from: every patch's diff and hooks, bottom
/// first. A patch without a diff (a prebuilt module) has no source to build it from.
fn cumulative_patches(stack: &VerifiedStack) -> Result<Vec<StackPatch>, String> {
    let mut patches = Vec::new();
    for patch in &stack.patches {
        let diff = match (patch.manifest.source, patch.files.get(DIFF_FILE)) {
            (PatchSource::Diff, Some(diff)) => diff.clone(),
            _ => {
                return Err(format!(
                    "patch {} is a prebuilt module (commit --module), which kstack cannot \
                     build into a cumulative module",
                    patch.entry.name
                ));
            }
        };
        patches.push(StackPatch {
            name: patch.entry.name.clone(),
            module_name: patch.manifest.module_name.clone(),
            diff,
            hooks: patch.files.get(HOOKS_FILE).cloned(),
        });
    }
    if patches.is_empty() {
        return Err("the stack has no patches".to_owned());
    }
    if let Some(reason) = cumulative_obstacle(&patches) {
        return Err(reason);
    }
    Ok(patches)
}

fn read(path: &Path) -> Result<Vec<u8>, SourceError> {
    std::fs::read(path).map_err(|source| SourceError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A patch name from a file stem or a commit summary: `[a-z0-9-]`, at most 48, without
/// a `git format-patch` number (`0001-`), since the stack numbers its patches itself.
pub fn patch_name(text: &str) -> String {
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

/// The first line of a diff file, when it is a message rather than a diff header.
fn first_line(diff: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(diff);
    let line = text.lines().next()?.trim();
    (!line.is_empty() && !line.starts_with("diff ") && !line.starts_with("--- "))
        .then(|| line.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_names_from_file_names_and_summaries() {
        assert_eq!(
            patch_name("0001-proc-version-banner"),
            "proc-version-banner"
        );
        assert_eq!(
            patch_name("loadavg: say where the fix came from"),
            "loadavg-say-where-the-fix-came-from"
        );
        assert_eq!(patch_name("---"), "patch");
        assert_eq!(patch_name(&"x".repeat(80)).len(), 48);
    }

    #[test]
    fn a_file_diff_reads_back_as_the_change() {
        let text = file_diff("fs/x.c", true, true, "a\nb\n", "a\nc\n");
        assert_eq!(
            text,
            "diff --git a/fs/x.c b/fs/x.c\n--- a/fs/x.c\n+++ b/fs/x.c\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n"
        );
        let changes = super::super::tree::parse_diff(text.as_bytes()).unwrap();
        assert_eq!(changes[0].path, "fs/x.c");
    }
}
