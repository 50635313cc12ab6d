//! Signing a stack's head again, without changing its patches: an approval adds a
//! signature to the head (two-person rule, `[trust] threshold`), a renewal makes a
//! new commit with the same patches and a new validity window.
//!
//! An approval signs the very `stack.toml` the head has, so its content digest is
//! unchanged; only `stack.sig` grows. Git names the result differently (its tree
//! changed), so the approved commit replaces the head: same parent, same author and
//! message, one more signer trailer. Hosts and pulls compare `stack.toml` digests,
//! not Git ids ([`crate::lineage`]), and see the same commit.

use crate::commit::{CommitError, Prepared};
use crate::keys::{KeySignature, PublicKey, SecretKey, StackSignatures};
use crate::model::SIGNATURE_FILE;
use crate::store::{Author, ItemKind, ObjectId, StackId, Store, StoreError, TreeItem};
use crate::verify::short;

impl Store {
    /// Writes the head of `stack` with `key`'s signature added; `committer` is who
    /// approves, and when. Refused if `key` has signed it already.
    pub fn prepare_approve(
        &self,
        stack: &StackId,
        key: &SecretKey,
        committer: &Author,
    ) -> Result<Prepared, CommitError> {
        let head = self
            .verified_head(stack)?
            .ok_or_else(|| CommitError::NoSuchStack {
                stack: stack.to_string(),
            })?;
        if head.signers.contains(&key.public()) {
            return Err(CommitError::AlreadySigned {
                commit: short(&head.commit),
                key: key.public(),
            });
        }
        let signature = key.sign_digest(&head.stack_sha256);
        let commit = self.with_signatures(head.commit, &[signature], committer)?;
        Ok(Prepared {
            stack: stack.clone(),
            parent: Some(head.commit),
            commit,
            stack_file: head.stack,
        })
    }

    /// [`Store::prepare_approve`], then [`Store::publish`].
    pub fn approve(
        &self,
        stack: &StackId,
        key: &SecretKey,
        committer: &Author,
    ) -> Result<Prepared, CommitError> {
        let prepared = self.prepare_approve(stack, key, committer)?;
        self.publish(&prepared)?;
        Ok(prepared)
    }

    /// Writes a commit on top of `stack`'s head with the same patches and a new
    /// validity window (from `author.time`, for `author.valid_for`), signed by `key`.
    pub fn prepare_renew(
        &self,
        stack: &StackId,
        message: &str,
        author: &Author,
        key: &SecretKey,
    ) -> Result<Prepared, CommitError> {
        let head = self
            .verified_head(stack)?
            .ok_or_else(|| CommitError::NoSuchStack {
                stack: stack.to_string(),
            })?;
        let entries = head.stack.patches.clone();
        let trees = entries
            .iter()
            .map(|p| (p.dir.clone(), head.patch_trees[&p.dir]))
            .collect();
        let release = head.stack.kernel_release.clone();
        self.write_stack_commit(
            stack,
            Some(&head),
            release,
            entries,
            trees,
            message,
            // A renewal promotes nothing, even on a promoted head: its patches are
            // the head's own.
            None,
            crate::commit::carried_cumulative(&head),
            author,
            key,
        )
    }

    /// [`Store::prepare_renew`], then [`Store::publish`].
    pub fn renew(
        &self,
        stack: &StackId,
        message: &str,
        author: &Author,
        key: &SecretKey,
    ) -> Result<Prepared, CommitError> {
        let prepared = self.prepare_renew(stack, message, author, key)?;
        self.publish(&prepared)?;
        Ok(prepared)
    }

    /// Writes `commit` again with `more` signatures appended to its `stack.sig`
    /// (those of keys that signed already are left out): the same parent, tree
    /// otherwise, author and message. The caller has checked that each new
    /// signature is over the commit's `stack.toml` digest; verification checks it
    /// again.
    pub(crate) fn with_signatures(
        &self,
        commit: ObjectId,
        more: &[KeySignature],
        committer: &Author,
    ) -> Result<ObjectId, CommitError> {
        let what = short(&commit);
        let info = self.commit_info(commit)?;
        let mut root = self.tree_items(info.tree, &format!("commit {what}: root tree"))?;
        let sig_item = root
            .iter_mut()
            .find(|i| i.name == SIGNATURE_FILE && i.kind == ItemKind::Blob)
            .ok_or_else(|| StoreError::Malformed {
                what: format!("commit {what}"),
                id: commit,
                message: format!("no {SIGNATURE_FILE}"),
            })?;
        let bytes = self.blob(sig_item.id, &format!("commit {what}: {SIGNATURE_FILE}"))?;
        let mut sigs = StackSignatures::parse(&bytes).map_err(|e| StoreError::Malformed {
            what: format!("commit {what}: {SIGNATURE_FILE}"),
            id: sig_item.id,
            message: e.to_string(),
        })?;
        for sig in more {
            if !sigs.signatures.iter().any(|s| s.key == sig.key) {
                sigs.signatures.push(sig.clone());
            }
        }
        sig_item.id = self.write_blob(sigs.to_toml().as_bytes(), SIGNATURE_FILE)?;
        let root: Vec<TreeItem> = root;
        let tree = self.write_tree(&root, "the root tree")?;
        let author = Author {
            name: info.author.clone(),
            email: info.email.clone(),
            time: info.time,
            valid_for: std::time::Duration::ZERO,
        };
        let signers: Vec<PublicKey> = sigs.keys();
        Ok(self.write_commit_as(
            tree,
            info.parents.first().copied(),
            &author,
            committer,
            &info.message,
            &signers,
        )?)
    }

    /// Combines the signatures of two commits with the same `stack.toml` (the same
    /// head approved in two places): `ours` with those of `theirs` it lacks.
    pub(crate) fn merge_signatures(
        &self,
        ours: ObjectId,
        theirs: ObjectId,
        committer: &Author,
    ) -> Result<ObjectId, CommitError> {
        let info = self.commit_info(theirs)?;
        let root = self.tree_items(info.tree, &format!("commit {}: root tree", short(&theirs)))?;
        let Some(item) = root.iter().find(|i| i.name == SIGNATURE_FILE) else {
            return Ok(ours);
        };
        let bytes = self.blob(item.id, SIGNATURE_FILE)?;
        let theirs = StackSignatures::parse(&bytes).map_err(|e| StoreError::Malformed {
            what: format!("commit {}: {SIGNATURE_FILE}", short(&theirs)),
            id: item.id,
            message: e.to_string(),
        })?;
        self.with_signatures(ours, &theirs.signatures, committer)
    }
}
