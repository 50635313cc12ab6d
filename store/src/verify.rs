//! Verification of a stack commit, from the bytes up: the SHA-256 of every artifact
//! against its manifest, of every manifest against `stack.toml`, the signature over
//! the SHA-256 of `stack.toml`, the chain of `parent` digests, and that every module
//! fits the kernel the stack is pinned to. Nothing in the tree escapes a digest.
//!
//! Git's SHA-1 plays no part in the result: a commit whose objects were swapped for
//! others with the same Git ids would still fail here.

use std::collections::{BTreeMap, BTreeSet};

use crate::digest::Sha256Digest;
use crate::ident;
use crate::keys::{PublicKey, Shortfall, StackSignatures, TrustPolicy};
use crate::model::{
    CUMULATIVE_DIR, CUMULATIVE_NAME, MANIFEST_FILE, MODULE_FILE, Manifest, ModelError, PATCHES_DIR,
    PatchEntry, PatchSource, SIGNATURE_FILE, STACK_FILE, StackFile,
};
use crate::store::{ItemKind, ObjectId, StackId, Store, StoreError, TreeItem};

/// A stack commit that failed verification; each names the commit and the path.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "commit {commit}: {path}: SHA-256 mismatch: {recorded_in} says {expected}, content is {actual}"
    )]
    DigestMismatch {
        commit: String,
        path: String,
        recorded_in: RecordedIn,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("commit {commit}: {path} is missing")]
    Missing { commit: String, path: String },
    #[error("commit {commit}: {path}: not covered by any digest (not part of a stack)")]
    Unexpected { commit: String, path: String },
    #[error("commit {commit}: {path}: {message}")]
    Invalid {
        commit: String,
        path: String,
        message: String,
    },
    #[error("commit {commit}: not signed ({SIGNATURE_FILE} is missing)")]
    Unsigned { commit: String },
    #[error(
        "commit {commit}: {SIGNATURE_FILE}: the signature by {key} does not match {STACK_FILE}"
    )]
    BadSignature { commit: String, key: PublicKey },
    #[error("commit {commit}: signed by {key}, which is not a trusted key")]
    Untrusted { commit: String, key: PublicKey },
    #[error("commit {commit}: signed by {key}, which is revoked ([trust] revoked)")]
    Revoked { commit: String, key: PublicKey },
    #[error(
        "commit {commit}: signed by {found} trusted key(s), [trust] threshold requires {threshold} ({signers})"
    )]
    BelowThreshold {
        commit: String,
        found: usize,
        threshold: usize,
        /// Each signer and how the policy sees it.
        signers: String,
    },
    #[error("commit {commit}: {source}")]
    Model {
        commit: String,
        #[source]
        source: ModelError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which file records a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordedIn {
    /// `stack.toml` records the digests of manifests and of the parent's `stack.toml`.
    StackToml,
    /// A patch's manifest records the digests of its artifacts.
    Manifest,
}

impl std::fmt::Display for RecordedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecordedIn::StackToml => STACK_FILE,
            RecordedIn::Manifest => "manifest",
        })
    }
}

/// A stack commit that verified.
#[derive(Debug, Clone)]
pub struct VerifiedStack {
    pub commit: ObjectId,
    pub stack: StackFile,
    pub stack_sha256: Sha256Digest,
    /// The first signer (the committer).
    pub signer: PublicKey,
    /// Every key with a valid signature, once each, in signing order.
    pub signers: Vec<PublicKey>,
    pub patches: Vec<VerifiedPatch>,
    /// The stack's cumulative module (`cumulative/`), when it has one, verified like
    /// a patch; its entry's name is [`CUMULATIVE_NAME`].
    pub cumulative: Option<VerifiedPatch>,
    /// Whether the patches' artifacts were read and checked. Only
    /// [`Store::verify_for_replace`] leaves them out (each patch then has its manifest,
    /// checked, but no module bytes and no files).
    pub patch_artifacts: bool,
    /// The `patches/` tree's entries, by directory name (reused by new commits).
    pub(crate) patch_trees: BTreeMap<String, ObjectId>,
    /// The `cumulative/` tree (reused by a promotion).
    pub(crate) cumulative_tree: Option<ObjectId>,
}

impl VerifiedStack {
    /// The stack this commit says it belongs to.
    pub fn stack_id(&self) -> StackId {
        StackId {
            build_id: self.stack.build_id.clone(),
            name: self.stack.name.clone(),
        }
    }
}

/// One verified patch.
#[derive(Debug, Clone)]
pub struct VerifiedPatch {
    pub entry: PatchEntry,
    pub manifest: Manifest,
    /// The Git id of the `module.ko` blob.
    pub module_blob: ObjectId,
    /// The module's bytes: exactly those whose SHA-256 was checked, so a caller that
    /// loads them into the kernel needs no second read (which would trust Git's
    /// SHA-1 to return the same bytes).
    pub module: Vec<u8>,
    /// The patch's other files (`patch.diff`, `hooks.c`, `before.toml`), as checked.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// The signed part of a commit, read without its patches.
#[derive(Debug, Clone)]
pub struct SignedHeader {
    pub commit: ObjectId,
    pub parent: Option<ObjectId>,
    pub stack: StackFile,
    pub stack_sha256: Sha256Digest,
    /// The first signer (the committer).
    pub signer: PublicKey,
    /// Every key with a valid signature, once each, in signing order.
    pub signers: Vec<PublicKey>,
}

pub(crate) fn short(id: &ObjectId) -> String {
    id.to_hex_with_len(12).to_string()
}

impl Store {
    /// Verifies a stack commit completely and requires signers that `policy` trusts:
    /// valid signatures from `threshold` distinct trusted keys, revoked keys not
    /// counted. With `stack`, also requires that the commit belongs to that stack (a
    /// ref must not carry another stack's or another kernel's commit).
    pub fn verify(
        &self,
        id: ObjectId,
        stack: Option<&StackId>,
        policy: &TrustPolicy,
    ) -> Result<VerifiedStack, VerifyError> {
        let verified = self.check(id, stack)?;
        judge(policy, &id, &verified.signers)?;
        Ok(verified)
    }

    /// What a replace-mode sync loads, verified: the signature, every manifest (each
    /// bound to the signed `stack.toml` by its digest) and the cumulative module with
    /// its artifacts, but not the patches' own artifacts, which a replace never loads
    /// (their [`VerifiedPatch`] have no bytes; [`VerifiedStack::patch_artifacts`] is
    /// false). A commit without a cumulative module is verified completely.
    pub fn verify_for_replace(
        &self,
        id: ObjectId,
        stack: Option<&StackId>,
        policy: &TrustPolicy,
    ) -> Result<VerifiedStack, VerifyError> {
        let verified = self.check_with(id, stack, true)?;
        judge(policy, &id, &verified.signers)?;
        Ok(verified)
    }

    /// Verifies a stack commit completely, signature included, without a trust
    /// decision: the caller looks at [`VerifiedStack::signer`].
    pub fn check(
        &self,
        id: ObjectId,
        stack: Option<&StackId>,
    ) -> Result<VerifiedStack, VerifyError> {
        self.check_with(id, stack, false)
    }

    /// [`Store::check`]; with `for_replace`, the patches' artifacts are left out when
    /// the commit has a cumulative module.
    fn check_with(
        &self,
        id: ObjectId,
        stack: Option<&StackId>,
        for_replace: bool,
    ) -> Result<VerifiedStack, VerifyError> {
        let commit = short(&id);
        let (header, root) = self.read_signed_header(id)?;
        let patch_artifacts = !for_replace || header.stack.cumulative.is_none();
        let invalid = |path: &str, message: String| VerifyError::Invalid {
            commit: commit.clone(),
            path: path.to_owned(),
            message,
        };
        if let Some(expected) = stack
            && (header.stack.build_id != expected.build_id || header.stack.name != expected.name)
        {
            {
                return Err(invalid(
                    STACK_FILE,
                    format!(
                        "belongs to stack {}/{}, not {expected}",
                        header.stack.build_id, header.stack.name
                    ),
                ));
            }
        }

        // patches/: exactly the directories stack.toml lists.
        let patch_trees: BTreeMap<String, ObjectId> = match root.get(PATCHES_DIR) {
            Some(item) if item.kind == ItemKind::Tree => {
                let what = format!("commit {commit}: {PATCHES_DIR}");
                let mut map = BTreeMap::new();
                for item in self.tree_items(item.id, &what)? {
                    let path = format!("{PATCHES_DIR}/{}", item.name);
                    if item.kind != ItemKind::Tree
                        || !header.stack.patches.iter().any(|p| p.dir == item.name)
                    {
                        return Err(VerifyError::Unexpected {
                            commit: commit.clone(),
                            path,
                        });
                    }
                    map.insert(item.name, item.id);
                }
                map
            }
            Some(_) => return Err(invalid(PATCHES_DIR, "is not a directory".to_owned())),
            None => BTreeMap::new(),
        };

        let mut patches = Vec::with_capacity(header.stack.patches.len());
        for entry in &header.stack.patches {
            let dir_path = format!("{PATCHES_DIR}/{}", entry.dir);
            let tree = *patch_trees
                .get(&entry.dir)
                .ok_or_else(|| VerifyError::Missing {
                    commit: commit.clone(),
                    path: dir_path.clone(),
                })?;
            let patch = self.check_patch(
                &commit,
                &header.stack,
                entry,
                &dir_path,
                tree,
                patch_artifacts,
            )?;
            if patch.manifest.source == PatchSource::Cumulative {
                return Err(invalid(
                    &format!("{dir_path}/{MANIFEST_FILE}"),
                    "a patch's manifest says it is a cumulative module".to_owned(),
                ));
            }
            patches.push(patch);
        }

        // cumulative/: there exactly when stack.toml lists it.
        let (cumulative, cumulative_tree) =
            match (&header.stack.cumulative, root.get(CUMULATIVE_DIR)) {
                (None, None) => (None, None),
                (None, Some(_)) => {
                    return Err(VerifyError::Unexpected {
                        commit: commit.clone(),
                        path: CUMULATIVE_DIR.to_owned(),
                    });
                }
                (Some(_), None) => {
                    return Err(VerifyError::Missing {
                        commit: commit.clone(),
                        path: CUMULATIVE_DIR.to_owned(),
                    });
                }
                (Some(_), Some(item)) if item.kind != ItemKind::Tree => {
                    return Err(invalid(CUMULATIVE_DIR, "is not a directory".to_owned()));
                }
                (Some(listed), Some(item)) => {
                    let entry = PatchEntry {
                        name: CUMULATIVE_NAME.to_owned(),
                        dir: CUMULATIVE_DIR.to_owned(),
                        manifest_sha256: listed.manifest_sha256,
                    };
                    let verified = self.check_patch(
                        &commit,
                        &header.stack,
                        &entry,
                        CUMULATIVE_DIR,
                        item.id,
                        true,
                    )?;
                    if verified.manifest.source != PatchSource::Cumulative {
                        return Err(invalid(
                            &format!("{CUMULATIVE_DIR}/{MANIFEST_FILE}"),
                            "does not describe a cumulative module".to_owned(),
                        ));
                    }
                    (Some(verified), Some(item.id))
                }
            };
        Ok(VerifiedStack {
            commit: id,
            stack: header.stack,
            stack_sha256: header.stack_sha256,
            signer: header.signer,
            signers: header.signers,
            patches,
            cumulative,
            patch_artifacts,
            patch_trees,
            cumulative_tree,
        })
    }

    fn check_patch(
        &self,
        commit: &str,
        stack: &StackFile,
        entry: &PatchEntry,
        dir_path: &str,
        tree: ObjectId,
        artifacts: bool,
    ) -> Result<VerifiedPatch, VerifyError> {
        let invalid = |path: &str, message: String| VerifyError::Invalid {
            commit: commit.to_owned(),
            path: path.to_owned(),
            message,
        };
        let files = self.read_tree_recursive(commit, dir_path, tree)?;
        let manifest_path = format!("{dir_path}/{MANIFEST_FILE}");
        let manifest_id = *files
            .get(MANIFEST_FILE)
            .ok_or_else(|| VerifyError::Missing {
                commit: commit.to_owned(),
                path: manifest_path.clone(),
            })?;
        let manifest_bytes =
            self.blob(manifest_id, &format!("commit {commit}: {manifest_path}"))?;
        let actual = Sha256Digest::of(&manifest_bytes);
        if actual != entry.manifest_sha256 {
            return Err(VerifyError::DigestMismatch {
                commit: commit.to_owned(),
                path: manifest_path,
                recorded_in: RecordedIn::StackToml,
                expected: entry.manifest_sha256,
                actual,
            });
        }
        let manifest = Manifest::parse(&manifest_bytes, &manifest_path).map_err(|source| {
            VerifyError::Model {
                commit: commit.to_owned(),
                source,
            }
        })?;
        if manifest.name != entry.name {
            return Err(invalid(
                &manifest_path,
                format!(
                    "names patch {:?}, stack.toml says {:?}",
                    manifest.name, entry.name
                ),
            ));
        }
        if manifest.build_id != stack.build_id || manifest.kernel_release != stack.kernel_release {
            return Err(invalid(
                &manifest_path,
                format!(
                    "is for kernel {} ({}), the stack is pinned to {} ({})",
                    manifest.build_id,
                    manifest.kernel_release,
                    stack.build_id,
                    stack.kernel_release
                ),
            ));
        }
        // Every file is an artifact with a matching digest, and every artifact is there.
        let listed: BTreeSet<&str> = manifest.artifacts.iter().map(|a| a.path.as_str()).collect();
        for name in files.keys() {
            if name != MANIFEST_FILE && !listed.contains(name.as_str()) {
                return Err(VerifyError::Unexpected {
                    commit: commit.to_owned(),
                    path: format!("{dir_path}/{name}"),
                });
            }
        }
        if !artifacts {
            let module_blob = *files.get(MODULE_FILE).ok_or_else(|| VerifyError::Missing {
                commit: commit.to_owned(),
                path: format!("{dir_path}/{MODULE_FILE}"),
            })?;
            return Ok(VerifiedPatch {
                entry: entry.clone(),
                manifest,
                module_blob,
                module: Vec::new(),
                files: BTreeMap::new(),
            });
        }
        let mut module_blob = None;
        let mut module = Vec::new();
        let mut other_files = BTreeMap::new();
        for artifact in &manifest.artifacts {
            let path = format!("{dir_path}/{}", artifact.path);
            let id = *files
                .get(&artifact.path)
                .ok_or_else(|| VerifyError::Missing {
                    commit: commit.to_owned(),
                    path: path.clone(),
                })?;
            let bytes = self.blob(id, &format!("commit {commit}: {path}"))?;
            let actual = Sha256Digest::of(&bytes);
            if actual != artifact.sha256 {
                return Err(VerifyError::DigestMismatch {
                    commit: commit.to_owned(),
                    path,
                    recorded_in: RecordedIn::Manifest,
                    expected: artifact.sha256,
                    actual,
                });
            }
            if bytes.len() as u64 != artifact.size {
                return Err(invalid(
                    &path,
                    format!("is {} bytes, manifest says {}", bytes.len(), artifact.size),
                ));
            }
            if artifact.path == MODULE_FILE {
                module_blob = Some(id);
                let info =
                    ident::modinfo(&bytes, &path).map_err(|e| invalid(&path, e.to_string()))?;
                check_module(&info, &manifest, stack).map_err(|m| invalid(&path, m))?;
                module = bytes;
            } else {
                other_files.insert(artifact.path.clone(), bytes);
            }
        }
        Ok(VerifiedPatch {
            entry: entry.clone(),
            manifest,
            module_blob: module_blob
                .expect("Manifest::check requires module.ko among the artifacts"),
            module,
            files: other_files,
        })
    }

    /// Flattens a patch directory: relative path → blob id.
    fn read_tree_recursive(
        &self,
        commit: &str,
        dir_path: &str,
        tree: ObjectId,
    ) -> Result<BTreeMap<String, ObjectId>, VerifyError> {
        let mut out = BTreeMap::new();
        let mut pending = vec![(String::new(), tree)];
        while let Some((prefix, tree)) = pending.pop() {
            let what = format!("commit {commit}: {dir_path}/{prefix}");
            for item in self.tree_items(tree, what.trim_end_matches('/'))? {
                let rel = format!("{prefix}{}", item.name);
                match item.kind {
                    ItemKind::Blob => {
                        out.insert(rel, item.id);
                    }
                    ItemKind::Tree => pending.push((format!("{rel}/"), item.id)),
                    ItemKind::Other => {
                        return Err(VerifyError::Unexpected {
                            commit: commit.to_owned(),
                            path: format!("{dir_path}/{rel}"),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Reads and checks the signed part of a commit: `stack.toml`, `stack.sig` (a
    /// valid signature, whoever made it), the signer trailer, and the `parent` digest
    /// against the Git parent's `stack.toml`. Does not read the patches.
    pub fn signed_header(&self, id: ObjectId) -> Result<SignedHeader, VerifyError> {
        self.read_signed_header(id).map(|(header, _)| header)
    }

    fn read_signed_header(
        &self,
        id: ObjectId,
    ) -> Result<(SignedHeader, BTreeMap<String, TreeItem>), VerifyError> {
        let commit = short(&id);
        let info = self.commit_info(id)?;
        let root = self.root_items(&commit, info.tree)?;
        let (stack_bytes, sig_bytes) = self.read_root_files(&commit, &root)?;
        let stack_sha256 = Sha256Digest::of(&stack_bytes);
        let sig = StackSignatures::parse(&sig_bytes).map_err(|e| VerifyError::Invalid {
            commit: commit.clone(),
            path: SIGNATURE_FILE.to_owned(),
            message: e.to_string(),
        })?;
        let signers = sig
            .check(&stack_sha256)
            .map_err(|key| VerifyError::BadSignature {
                commit: commit.clone(),
                key,
            })?;
        // The trailers `log` shows must name exactly the signatures' keys.
        let keys = sig.keys();
        let claimed = info.signers();
        if !claimed.is_empty() && claimed != keys {
            let list = |keys: &[PublicKey]| {
                keys.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(VerifyError::Invalid {
                commit,
                path: SIGNATURE_FILE.to_owned(),
                message: format!(
                    "signed by {}, but the commit message names {}",
                    list(&keys),
                    list(&claimed)
                ),
            });
        }
        let stack =
            StackFile::parse(&stack_bytes, STACK_FILE).map_err(|source| VerifyError::Model {
                commit: commit.clone(),
                source,
            })?;
        let claimed = crate::promote::promoted_from(&info.message);
        let recorded = stack
            .promoted_from
            .as_ref()
            .map(|p| (p.stack.clone(), p.commit.clone()));
        if claimed != recorded {
            return Err(VerifyError::Invalid {
                commit,
                path: STACK_FILE.to_owned(),
                message: format!(
                    "promoted_from says {}, the commit message's {} trailer says {}",
                    describe_promotion(recorded.as_ref()),
                    crate::promote::PROMOTED_FROM_TRAILER,
                    describe_promotion(claimed.as_ref())
                ),
            });
        }
        if info.parents.len() > 1 {
            return Err(VerifyError::Invalid {
                commit,
                path: STACK_FILE.to_owned(),
                message: "a stack commit has at most one parent (this is a merge)".to_owned(),
            });
        }
        let parent = info.parents.first().copied();
        match (parent, stack.parent) {
            (None, None) => {}
            (Some(parent), Some(digest)) => {
                let parent_commit = short(&parent);
                let parent_info = self.commit_info(parent)?;
                let parent_root = self.root_items(&parent_commit, parent_info.tree)?;
                let (parent_stack, _) = self.read_root_files(&parent_commit, &parent_root)?;
                let actual = Sha256Digest::of(&parent_stack);
                if actual != digest {
                    return Err(VerifyError::DigestMismatch {
                        commit: commit.clone(),
                        path: format!("parent {parent_commit}: {STACK_FILE}"),
                        recorded_in: RecordedIn::StackToml,
                        expected: digest,
                        actual,
                    });
                }
            }
            (None, Some(_)) => {
                return Err(VerifyError::Invalid {
                    commit,
                    path: STACK_FILE.to_owned(),
                    message: "names a parent, but the commit has none".to_owned(),
                });
            }
            (Some(parent), None) => {
                return Err(VerifyError::Invalid {
                    commit,
                    path: STACK_FILE.to_owned(),
                    message: format!(
                        "names no parent, but the commit has parent {}",
                        short(&parent)
                    ),
                });
            }
        }
        Ok((
            SignedHeader {
                commit: id,
                parent,
                stack,
                stack_sha256,
                signer: signers[0],
                signers,
            },
            root,
        ))
    }

    fn root_items(
        &self,
        commit: &str,
        tree: ObjectId,
    ) -> Result<BTreeMap<String, TreeItem>, VerifyError> {
        let mut root = BTreeMap::new();
        for item in self.tree_items(tree, &format!("commit {commit}: root tree"))? {
            if ![STACK_FILE, SIGNATURE_FILE, PATCHES_DIR, CUMULATIVE_DIR]
                .contains(&item.name.as_str())
            {
                return Err(VerifyError::Unexpected {
                    commit: commit.to_owned(),
                    path: item.name,
                });
            }
            root.insert(item.name.clone(), item);
        }
        Ok(root)
    }

    fn read_root_files(
        &self,
        commit: &str,
        root: &BTreeMap<String, TreeItem>,
    ) -> Result<(Vec<u8>, Vec<u8>), VerifyError> {
        let stack = root
            .get(STACK_FILE)
            .filter(|i| i.kind == ItemKind::Blob)
            .ok_or_else(|| VerifyError::Missing {
                commit: commit.to_owned(),
                path: STACK_FILE.to_owned(),
            })?;
        let sig = root
            .get(SIGNATURE_FILE)
            .filter(|i| i.kind == ItemKind::Blob)
            .ok_or_else(|| VerifyError::Unsigned {
                commit: commit.to_owned(),
            })?;
        Ok((
            self.blob(stack.id, &format!("commit {commit}: {STACK_FILE}"))?,
            self.blob(sig.id, &format!("commit {commit}: {SIGNATURE_FILE}"))?,
        ))
    }

    /// Checks the signatures and the `parent` chain of `head` and all its
    /// ancestors, down to (not including) `stop`; returns how many commits were
    /// checked. With a `policy`, every commit must satisfy it; without one, the
    /// signatures need only be valid (the head's trusted signatures cover its
    /// ancestors through the chain of `parent` digests, whoever signed them then).
    /// Only `stack.toml` and `stack.sig` are read; [`Store::verify`] checks a
    /// commit's patches.
    pub fn verify_history(
        &self,
        head: ObjectId,
        stop: Option<ObjectId>,
        policy: Option<&TrustPolicy>,
    ) -> Result<usize, VerifyError> {
        let headers = self.history_headers(head, stop)?;
        if let Some(policy) = policy {
            for header in &headers {
                judge(policy, &header.commit, &header.signers)?;
            }
        }
        Ok(headers.len())
    }

    /// The checked signed headers of `head` and its ancestors down to (not
    /// including) `stop`, newest first: every signature valid, every `parent`
    /// digest matching (no trust decision).
    pub fn history_headers(
        &self,
        head: ObjectId,
        stop: Option<ObjectId>,
    ) -> Result<Vec<SignedHeader>, VerifyError> {
        let mut out = Vec::new();
        let mut next = Some(head);
        while let Some(id) = next {
            if Some(id) == stop {
                break;
            }
            let header = self.signed_header(id)?;
            next = header.parent;
            out.push(header);
        }
        Ok(out)
    }
}

/// Whether `signers` (valid signatures of commit `id`) satisfy `policy`.
fn judge(policy: &TrustPolicy, id: &ObjectId, signers: &[PublicKey]) -> Result<(), VerifyError> {
    let commit = short(id);
    match policy.judge(signers) {
        Ok(_) => Ok(()),
        Err(Shortfall::Untrusted(key)) => Err(VerifyError::Untrusted { commit, key }),
        Err(Shortfall::Revoked(key)) => Err(VerifyError::Revoked { commit, key }),
        Err(Shortfall::BelowThreshold {
            found,
            threshold,
            signers,
        }) => Err(VerifyError::BelowThreshold {
            commit,
            found,
            threshold,
            signers: signers
                .iter()
                .map(|(key, standing)| format!("{key} {standing}"))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn describe_promotion(p: Option<&(String, String)>) -> String {
    p.map_or_else(|| "none".to_owned(), |(s, c)| format!("{s} {c}"))
}

/// Checks a module's `.modinfo` against its manifest and its stack.
pub(crate) fn check_module(
    info: &ident::ModInfo,
    manifest: &Manifest,
    stack: &StackFile,
) -> Result<(), String> {
    if !info.is_livepatch() {
        return Err("not a livepatch module (no livepatch=Y in .modinfo)".to_owned());
    }
    if info.vermagic() != Some(manifest.vermagic.as_str()) {
        return Err(format!(
            "vermagic {:?} differs from the manifest's {:?}",
            info.vermagic().unwrap_or(""),
            manifest.vermagic
        ));
    }
    if info.release() != Some(stack.kernel_release.as_str()) {
        return Err(format!(
            "built for {}, the stack is pinned to {}",
            info.release().unwrap_or("?"),
            stack.kernel_release
        ));
    }
    if info.name != manifest.module_name {
        return Err(format!(
            "module is named {:?}, manifest says {:?}",
            info.name, manifest.module_name
        ));
    }
    Ok(())
}
