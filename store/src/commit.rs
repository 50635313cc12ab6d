//! Making stack commits: adding a patch (a prebuilt livepatch module, with its diff
//! when there is one) on top of a stack, and reverting a patch out of it.
//!
//! Each operation is two steps. [`Store::prepare_add_patch`] / [`Store::prepare_revert`]
//! check the request against the stack's verified head, write every object (blobs,
//! trees, `stack.toml`, `stack.sig`, the commit) and return a [`Prepared`] commit that
//! no ref points to yet; [`Store::publish`] then moves the stack's ref with a
//! compare-and-swap on the head the commit was built on. Stopping between the two
//! (a crash) leaves the store as it was, plus unreferenced objects.

use std::collections::BTreeMap;

use crate::digest::Sha256Digest;
use crate::ident::{self, IdentError};
use crate::keys::SecretKey;
use crate::klp::{self, KlpError};
use crate::model::{
    Artifact, CUMULATIVE_DIR, CUMULATIVE_NAME, CumulativeEntry, DIFF_FILE, FORMAT, FunctionRef,
    MANIFEST_FILE, MODULE_FILE, Manifest, ModelError, PATCHES_DIR, PatchEntry, PatchSource,
    SIGNATURE_FILE, STACK_FILE, STACK_FORMAT, StackFile, check_name, patch_dir,
};
use crate::store::{
    Author, ItemKind, ObjectId, RefUpdate, StackId, Store, StoreError, TreeItem, format_time,
};
use crate::validity::{Timestamp, Validity};
use crate::verify::{VerifiedStack, VerifyError};

/// A request that cannot be committed, or a store that cannot take it.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("{module}: not a livepatch module (no livepatch=Y in .modinfo)")]
    NotLivepatch { module: String },
    #[error(
        "{module} was built for kernel {module_release}, but stack {stack} is pinned to {stack_release}"
    )]
    WrongRelease {
        module: String,
        module_release: String,
        stack: String,
        stack_release: String,
    },
    #[error("patch file name {name:?} is not allowed (a plain file name, not one of kstack's own)")]
    BadExtraFile { name: String },
    #[error("stack {stack} already has a patch named {name:?}")]
    PatchExists { stack: String, name: String },
    #[error("stack {stack} has no patch named {name:?} (it has: {available})")]
    NoSuchPatch {
        stack: String,
        name: String,
        available: String,
    },
    #[error("stack {stack} does not exist")]
    NoSuchStack { stack: String },
    #[error("commit {commit} is already signed by {key}")]
    AlreadySigned {
        commit: String,
        key: crate::keys::PublicKey,
    },
    #[error(
        "cannot revert {patch}: patches above it replace the same functions ({conflicts}); rebuild them without it first"
    )]
    Overlap { patch: String, conflicts: String },
    #[error(
        "cannot revert {patch}: {unknown} records no replaced functions, so an overlap cannot be ruled out (commit it again with --function)"
    )]
    UnknownFunctions { patch: String, unknown: String },
    #[error(
        "the cumulative module was built from patches [{built}], but the commit holds [{holds}]"
    )]
    CumulativeMismatch { built: String, holds: String },
    #[error("stack {stack} does not verify; refusing to build on it")]
    DamagedParent {
        stack: String,
        #[source]
        source: Box<VerifyError>,
    },
    #[error(transparent)]
    Ident(#[from] IdentError),
    #[error(transparent)]
    Klp(#[from] KlpError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A patch to add.
#[derive(Debug, Clone)]
pub struct NewPatch {
    pub name: String,
    /// The module's bytes.
    pub module: Vec<u8>,
    /// The file name it had (recorded in the manifest).
    pub module_file: String,
    /// The source change, when there is one.
    pub diff: Option<Vec<u8>>,
    /// Functions it replaces, as the caller knows them; those found in the module's
    /// `klp_func` tables are added.
    pub functions: Vec<FunctionRef>,
    /// How it was built (compiler, flags), for kstack-built modules.
    pub build: BTreeMap<String, String>,
    pub source: PatchSource,
    /// More files of the patch, by file name (the hook source `hooks.c`, the run-pre
    /// images `before.toml`): stored beside the module, each with its digest in the
    /// manifest, so the signature covers them.
    pub extra: BTreeMap<String, Vec<u8>>,
}

/// A stack's cumulative module, built for a prepared commit's patches.
#[derive(Debug, Clone)]
pub struct NewCumulative {
    /// The module names of the patches it holds, in stack order: they must be the
    /// commit's patches.
    pub patches: Vec<String>,
    /// The module's bytes.
    pub module: Vec<u8>,
    /// The functions it replaces (every patch's, once).
    pub functions: Vec<FunctionRef>,
    /// How it was built.
    pub build: BTreeMap<String, String>,
    /// More files, by file name (its run-pre images `before.toml`).
    pub extra: BTreeMap<String, Vec<u8>>,
}

/// What a stack commit says about its cumulative module.
#[derive(Debug, Clone)]
pub enum Cumulative {
    /// The module, stored in `cumulative/`.
    Module(NewCumulative),
    /// The stack cannot have one, for this reason (recorded in `stack.toml`).
    Impossible(String),
}

/// The cumulative part of a commit being written: a tree already in the store and
/// its entry, or the reason there is none.
#[derive(Debug, Clone)]
pub(crate) enum CumulativeTree {
    Tree {
        entry: CumulativeEntry,
        id: ObjectId,
    },
    Impossible(String),
}

/// The cumulative part of a commit with exactly `source`'s patches (a promotion, a
/// renewal): `source`'s cumulative module as it is (it holds the same manifests, so
/// the same digests), or its reason for having none.
pub(crate) fn carried_cumulative(source: &crate::verify::VerifiedStack) -> Option<CumulativeTree> {
    match (&source.stack.cumulative, source.cumulative_tree) {
        (Some(entry), Some(id)) => Some(CumulativeTree::Tree {
            entry: entry.clone(),
            id,
        }),
        _ => source
            .stack
            .no_cumulative
            .clone()
            .map(CumulativeTree::Impossible),
    }
}

/// A commit whose objects are written but which no ref points to yet.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub stack: StackId,
    /// The head it was built on (what [`Store::publish`] expects to find).
    pub parent: Option<ObjectId>,
    pub commit: ObjectId,
    pub stack_file: StackFile,
}

impl Store {
    /// [`Store::current`], for the other operations of the crate.
    pub(crate) fn verified_head(
        &self,
        stack: &StackId,
    ) -> Result<Option<VerifiedStack>, CommitError> {
        self.current(stack)
    }

    /// Verifies (integrity and signature, not trust) the head of `stack` if it has
    /// one, so nothing is ever built on damaged data.
    fn current(&self, stack: &StackId) -> Result<Option<VerifiedStack>, CommitError> {
        let Some(head) = self.stack_head(stack)? else {
            return Ok(None);
        };
        self.check(head, Some(stack))
            .map(Some)
            .map_err(|source| CommitError::DamagedParent {
                stack: stack.to_string(),
                source: Box::new(source),
            })
    }

    /// Writes a commit that adds `patch` on top of `stack`, creating the stack when
    /// it has no commit yet. `release` is the kernel release when the caller knows
    /// it (from the kernel image or the running kernel); a new stack is pinned to
    /// it, or else to the release the module was built for. The module must be a
    /// livepatch module built for the stack's release.
    pub fn prepare_add_patch(
        &self,
        stack: &StackId,
        release: Option<&str>,
        patch: NewPatch,
        message: &str,
        author: &Author,
        key: &SecretKey,
    ) -> Result<Prepared, CommitError> {
        check_name("patch", &patch.name)?;
        let current = self.current(stack)?;
        let module_what = patch.module_file.clone();
        let info = ident::modinfo(&patch.module, &module_what)?;
        if !info.is_livepatch() {
            return Err(CommitError::NotLivepatch {
                module: module_what,
            });
        }
        let module_release = info
            .release()
            .expect("ident::modinfo requires a vermagic")
            .to_owned();
        let kernel_release = match (&current, release) {
            (Some(c), _) => c.stack.kernel_release.clone(),
            (None, Some(release)) => release.to_owned(),
            (None, None) => module_release.clone(),
        };
        if module_release != kernel_release {
            return Err(CommitError::WrongRelease {
                module: module_what,
                module_release,
                stack: stack.to_string(),
                stack_release: kernel_release,
            });
        }
        if let Some(c) = &current
            && c.stack.patch(&patch.name).is_some()
        {
            return Err(CommitError::PatchExists {
                stack: stack.to_string(),
                name: patch.name,
            });
        }

        let mut functions = patch.functions.clone();
        for f in klp::replaced_functions(&patch.module, &module_what)? {
            if !functions.contains(&f) {
                functions.push(f);
            }
        }
        let mut artifacts = vec![Artifact {
            path: MODULE_FILE.to_owned(),
            sha256: Sha256Digest::of(&patch.module),
            size: patch.module.len() as u64,
        }];
        if let Some(diff) = &patch.diff {
            artifacts.push(Artifact {
                path: DIFF_FILE.to_owned(),
                sha256: Sha256Digest::of(diff),
                size: diff.len() as u64,
            });
        }
        for (name, bytes) in &patch.extra {
            if name.is_empty()
                || name.contains('/')
                || [MODULE_FILE, DIFF_FILE, MANIFEST_FILE].contains(&name.as_str())
            {
                return Err(CommitError::BadExtraFile { name: name.clone() });
            }
            artifacts.push(Artifact {
                path: name.clone(),
                sha256: Sha256Digest::of(bytes),
                size: bytes.len() as u64,
            });
        }
        let manifest = Manifest {
            format: FORMAT,
            name: patch.name.clone(),
            source: patch.source,
            module_file: patch.module_file.clone(),
            module_name: info.name.clone(),
            vermagic: info
                .vermagic()
                .expect("ident::modinfo requires a vermagic")
                .to_owned(),
            kernel_release: kernel_release.clone(),
            build_id: stack.build_id.clone(),
            created_by: author.display(),
            created_at: format_time(author.time),
            build: patch.build.clone(),
            artifacts,
            functions,
        };
        manifest.check(MANIFEST_FILE)?;
        let manifest_text = manifest.to_toml();

        let mut entries: Vec<PatchEntry> = current
            .as_ref()
            .map(|c| c.stack.patches.clone())
            .unwrap_or_default();
        let dir = patch_dir(entries.len(), &patch.name);
        let dir_path = format!("{PATCHES_DIR}/{dir}");
        let mut files = vec![
            TreeItem {
                name: MODULE_FILE.to_owned(),
                id: self.write_blob(&patch.module, &format!("{dir_path}/{MODULE_FILE}"))?,
                kind: ItemKind::Blob,
            },
            TreeItem {
                name: MANIFEST_FILE.to_owned(),
                id: self.write_blob(
                    manifest_text.as_bytes(),
                    &format!("{dir_path}/{MANIFEST_FILE}"),
                )?,
                kind: ItemKind::Blob,
            },
        ];
        if let Some(diff) = &patch.diff {
            files.push(TreeItem {
                name: DIFF_FILE.to_owned(),
                id: self.write_blob(diff, &format!("{dir_path}/{DIFF_FILE}"))?,
                kind: ItemKind::Blob,
            });
        }
        for (name, bytes) in &patch.extra {
            files.push(TreeItem {
                name: name.clone(),
                id: self.write_blob(bytes, &format!("{dir_path}/{name}"))?,
                kind: ItemKind::Blob,
            });
        }
        // Git wants a tree's entries sorted by name.
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let patch_tree = self.write_tree(&files, &dir_path)?;
        entries.push(PatchEntry {
            name: patch.name.clone(),
            dir: dir.clone(),
            manifest_sha256: Sha256Digest::of(manifest_text.as_bytes()),
        });
        let mut trees: Vec<(String, ObjectId)> = current
            .as_ref()
            .map(|c| {
                c.stack
                    .patches
                    .iter()
                    .map(|p| (p.dir.clone(), c.patch_trees[&p.dir]))
                    .collect()
            })
            .unwrap_or_default();
        trees.push((dir, patch_tree));
        self.write_stack_commit(
            stack,
            current.as_ref(),
            kernel_release,
            entries,
            trees,
            message,
            None,
            None,
            author,
            key,
        )
    }

    /// Writes a commit that removes the patch `name` from `stack`. Patches above it
    /// keep their order when none of them replaces a function that it replaces;
    /// otherwise the revert is refused, naming the functions.
    pub fn prepare_revert(
        &self,
        stack: &StackId,
        name: &str,
        message: &str,
        author: &Author,
        key: &SecretKey,
    ) -> Result<Prepared, CommitError> {
        let current = self
            .current(stack)?
            .ok_or_else(|| CommitError::NoSuchStack {
                stack: stack.to_string(),
            })?;
        let Some((index, _)) = current.stack.patch(name) else {
            return Err(CommitError::NoSuchPatch {
                stack: stack.to_string(),
                name: name.to_owned(),
                available: current
                    .stack
                    .patches
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let reverted = &current.patches[index].manifest;
        let above = &current.patches[index + 1..];
        if !above.is_empty() {
            let unknown: Vec<&str> = std::iter::once(reverted)
                .chain(above.iter().map(|p| &p.manifest))
                .filter(|m| m.functions.is_empty())
                .map(|m| m.name.as_str())
                .collect();
            if !unknown.is_empty() {
                return Err(CommitError::UnknownFunctions {
                    patch: name.to_owned(),
                    unknown: unknown.join(", "),
                });
            }
            let conflicts: Vec<String> = above
                .iter()
                .filter_map(|p| {
                    let shared: Vec<String> = p
                        .manifest
                        .functions
                        .iter()
                        .filter(|f| reverted.functions.contains(f))
                        .map(ToString::to_string)
                        .collect();
                    (!shared.is_empty()).then(|| format!("{}: {}", p.entry.name, shared.join(", ")))
                })
                .collect();
            if !conflicts.is_empty() {
                return Err(CommitError::Overlap {
                    patch: name.to_owned(),
                    conflicts: conflicts.join("; "),
                });
            }
        }
        let mut entries = Vec::new();
        let mut trees = Vec::new();
        for (i, p) in current.stack.patches.iter().enumerate() {
            if i == index {
                continue;
            }
            let dir = patch_dir(entries.len(), &p.name);
            trees.push((dir.clone(), current.patch_trees[&p.dir]));
            entries.push(PatchEntry { dir, ..p.clone() });
        }
        let release = current.stack.kernel_release.clone();
        self.write_stack_commit(
            stack,
            Some(&current),
            release,
            entries,
            trees,
            message,
            None,
            None,
            author,
            key,
        )
    }

    /// Writes a commit like `prepared` (same parent, patches, message), which must
    /// not be published yet, that also carries the stack's cumulative module, or the
    /// reason it has none. The commit `prepared` stays unreferenced.
    pub fn prepare_cumulative(
        &self,
        prepared: &Prepared,
        cumulative: Cumulative,
        author: &Author,
        key: &SecretKey,
    ) -> Result<Prepared, CommitError> {
        let current = self.current(&prepared.stack)?;
        let head = current.as_ref().map(|c| c.commit);
        if head != prepared.parent {
            return Err(StoreError::StackMoved {
                stack: prepared.stack.to_string(),
                expected: prepared
                    .parent
                    .map_or_else(|| "absent".to_owned(), |id| crate::verify::short(&id)),
                found: head.map_or_else(|| "absent".to_owned(), |id| crate::verify::short(&id)),
            }
            .into());
        }
        let made = self
            .check(prepared.commit, Some(&prepared.stack))
            .map_err(|source| CommitError::DamagedParent {
                stack: prepared.stack.to_string(),
                source: Box::new(source),
            })?;
        let tree = match cumulative {
            Cumulative::Impossible(reason) => CumulativeTree::Impossible(reason),
            Cumulative::Module(module) => {
                let holds: Vec<&str> = made
                    .patches
                    .iter()
                    .map(|p| p.manifest.module_name.as_str())
                    .collect();
                if module.patches != holds {
                    return Err(CommitError::CumulativeMismatch {
                        built: module.patches.join(", "),
                        holds: holds.join(", "),
                    });
                }
                let (manifest_sha256, id) = self.write_cumulative(&made.stack, &module, author)?;
                CumulativeTree::Tree {
                    entry: CumulativeEntry {
                        manifest_sha256,
                        patches: made
                            .stack
                            .patches
                            .iter()
                            .map(|p| p.manifest_sha256)
                            .collect(),
                    },
                    id,
                }
            }
        };
        let trees = made
            .stack
            .patches
            .iter()
            .map(|p| (p.dir.clone(), made.patch_trees[&p.dir]))
            .collect();
        self.write_stack_commit(
            &prepared.stack,
            current.as_ref(),
            made.stack.kernel_release.clone(),
            made.stack.patches.clone(),
            trees,
            &made.stack.message,
            made.stack.promoted_from.clone(),
            Some(tree),
            author,
            key,
        )
    }

    /// Writes `cumulative/`: the module, its other files and its manifest; returns
    /// the manifest's SHA-256 and the tree.
    fn write_cumulative(
        &self,
        stack: &StackFile,
        module: &NewCumulative,
        author: &Author,
    ) -> Result<(Sha256Digest, ObjectId), CommitError> {
        let module_what = format!("{CUMULATIVE_DIR}/{MODULE_FILE}");
        let info = ident::modinfo(&module.module, &module_what)?;
        if !info.is_livepatch() {
            return Err(CommitError::NotLivepatch {
                module: module_what,
            });
        }
        let mut artifacts = vec![Artifact {
            path: MODULE_FILE.to_owned(),
            sha256: Sha256Digest::of(&module.module),
            size: module.module.len() as u64,
        }];
        let mut files = vec![TreeItem {
            name: MODULE_FILE.to_owned(),
            id: self.write_blob(&module.module, &module_what)?,
            kind: ItemKind::Blob,
        }];
        for (name, bytes) in &module.extra {
            if name.is_empty()
                || name.contains('/')
                || [MODULE_FILE, DIFF_FILE, MANIFEST_FILE].contains(&name.as_str())
            {
                return Err(CommitError::BadExtraFile { name: name.clone() });
            }
            artifacts.push(Artifact {
                path: name.clone(),
                sha256: Sha256Digest::of(bytes),
                size: bytes.len() as u64,
            });
            files.push(TreeItem {
                name: name.clone(),
                id: self.write_blob(bytes, &format!("{CUMULATIVE_DIR}/{name}"))?,
                kind: ItemKind::Blob,
            });
        }
        let manifest = Manifest {
            format: FORMAT,
            name: CUMULATIVE_NAME.to_owned(),
            source: PatchSource::Cumulative,
            module_file: format!("{}.ko", info.name),
            module_name: info.name.clone(),
            vermagic: info
                .vermagic()
                .expect("ident::modinfo requires a vermagic")
                .to_owned(),
            kernel_release: stack.kernel_release.clone(),
            build_id: stack.build_id.clone(),
            created_by: author.display(),
            created_at: format_time(author.time),
            build: module.build.clone(),
            artifacts,
            functions: module.functions.clone(),
        };
        manifest.check(MANIFEST_FILE)?;
        crate::verify::check_module(&info, &manifest, stack).map_err(|message| {
            ModelError::Invalid {
                path: module_what.clone(),
                message,
            }
        })?;
        let text = manifest.to_toml();
        files.push(TreeItem {
            name: MANIFEST_FILE.to_owned(),
            id: self.write_blob(
                text.as_bytes(),
                &format!("{CUMULATIVE_DIR}/{MANIFEST_FILE}"),
            )?,
            kind: ItemKind::Blob,
        });
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let tree = self.write_tree(&files, CUMULATIVE_DIR)?;
        Ok((Sha256Digest::of(text.as_bytes()), tree))
    }

    #[allow(clippy::too_many_arguments)] // one private call site per operation
    pub(crate) fn write_stack_commit(
        &self,
        stack: &StackId,
        parent: Option<&VerifiedStack>,
        kernel_release: String,
        patches: Vec<PatchEntry>,
        trees: Vec<(String, ObjectId)>,
        message: &str,
        promoted_from: Option<crate::model::Promotion>,
        cumulative: Option<CumulativeTree>,
        author: &Author,
        key: &SecretKey,
    ) -> Result<Prepared, CommitError> {
        // The Git message names the promotion in a trailer too, so that `log` shows
        // it from commit headers alone (verification checks it against stack.toml).
        let git_message = match &promoted_from {
            Some(p) => format!(
                "{}\n\n{}",
                message.trim_end(),
                crate::promote::trailer(&p.stack, &p.commit)
            ),
            None => message.to_owned(),
        };
        let (cumulative_entry, cumulative_tree, no_cumulative) = match cumulative {
            Some(CumulativeTree::Tree { entry, id }) => (Some(entry), Some(id), None),
            Some(CumulativeTree::Impossible(reason)) => (None, None, Some(reason)),
            None => (None, None, None),
        };
        let stack_file = StackFile {
            format: STACK_FORMAT,
            name: stack.name.clone(),
            build_id: stack.build_id.clone(),
            kernel_release,
            parent: parent.map(|p| p.stack_sha256),
            message: message.trim_end().to_owned(),
            no_cumulative,
            validity: Some(Validity::starting(
                Timestamp::from_secs(author.time),
                author.valid_for,
            )),
            promoted_from,
            cumulative: cumulative_entry,
            patches,
        };
        stack_file.check(STACK_FILE)?;
        let stack_text = stack_file.to_toml();
        let signature = key.sign_stack(stack_text.as_bytes());
        let mut root = vec![
            TreeItem {
                name: STACK_FILE.to_owned(),
                id: self.write_blob(stack_text.as_bytes(), STACK_FILE)?,
                kind: ItemKind::Blob,
            },
            TreeItem {
                name: SIGNATURE_FILE.to_owned(),
                id: self.write_blob(signature.to_toml().as_bytes(), SIGNATURE_FILE)?,
                kind: ItemKind::Blob,
            },
        ];
        if !trees.is_empty() {
            let items: Vec<TreeItem> = trees
                .into_iter()
                .map(|(name, id)| TreeItem {
                    name,
                    id,
                    kind: ItemKind::Tree,
                })
                .collect();
            root.push(TreeItem {
                name: PATCHES_DIR.to_owned(),
                id: self.write_tree(&items, PATCHES_DIR)?,
                kind: ItemKind::Tree,
            });
        }
        if let Some(id) = cumulative_tree {
            root.push(TreeItem {
                name: CUMULATIVE_DIR.to_owned(),
                id,
                kind: ItemKind::Tree,
            });
        }
        let tree = self.write_tree(&root, "the root tree")?;
        let parent_id = parent.map(|p| p.commit);
        let commit = self.write_commit(tree, parent_id, author, &git_message, &[key.public()])?;
        Ok(Prepared {
            stack: stack.clone(),
            parent: parent_id,
            commit,
            stack_file,
        })
    }

    /// Moves the stack's ref to the prepared commit, if the stack still has the head
    /// the commit was built on; otherwise [`StoreError::StackMoved`] (or
    /// [`StoreError::Locked`]) and nothing changes. Then packs loose objects if there
    /// are many ([`Store::maybe_pack`]; best effort: the commit stands either way).
    pub fn publish(&self, prepared: &Prepared) -> Result<(), CommitError> {
        let summary = prepared.stack_file.message.lines().next().unwrap_or("");
        self.update_refs(
            &[RefUpdate {
                name: prepared.stack.ref_name(),
                expected: prepared.parent,
                new: Some(prepared.commit),
            }],
            &format!("kstack: {summary}"),
        )?;
        let _ = self.maybe_pack();
        Ok(())
    }

    /// [`Store::prepare_add_patch`], then [`Store::publish`].
    pub fn add_patch(
        &self,
        stack: &StackId,
        release: Option<&str>,
        patch: NewPatch,
        message: &str,
        author: &Author,
        key: &SecretKey,
    ) -> Result<Prepared, CommitError> {
        let prepared = self.prepare_add_patch(stack, release, patch, message, author, key)?;
        self.publish(&prepared)?;
        Ok(prepared)
    }

    /// [`Store::prepare_revert`], then [`Store::publish`].
    pub fn revert_patch(
        &self,
        stack: &StackId,
        name: &str,
        message: &str,
        author: &Author,
        key: &SecretKey,
    ) -> Result<Prepared, CommitError> {
        let prepared = self.prepare_revert(stack, name, message, author, key)?;
        self.publish(&prepared)?;
        Ok(prepared)
    }
}
