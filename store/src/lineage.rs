//! Whether one stack commit descends from another, by the signed chain.
//!
//! Each `stack.toml` names the SHA-256 of its parent's `stack.toml`, and verifying a
//! commit's signed header checks that digest against the Git parent. Walking a head's
//! first parents through signed headers and comparing `stack.toml` digests therefore
//! answers "does this head contain that commit's history?" on SHA-256 and the
//! signatures, not on Git's SHA-1. It also sees through approvals: an approved
//! commit has another Git id but the same `stack.toml`, so it counts as the same.
//!
//! `sync` refuses a head that does not descend from the commit the host runs (a
//! rollback replayed by whoever can move refs), and `pull` one that does not descend
//! from the local head.

use crate::digest::Sha256Digest;
use crate::store::{ObjectId, Store};
use crate::verify::VerifyError;

/// How a head relates to a base commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lineage {
    /// The head has the base's `stack.toml`: the same commit, or the same one with
    /// other signatures (an approval).
    Same,
    /// The head is this many commits on top of the base.
    Descends(usize),
    /// The base is not on the head's chain: an older commit, another branch of
    /// history, or another stack.
    Unrelated,
}

impl Lineage {
    /// Whether the head is the base or a descendant of it.
    pub fn contains_base(self) -> bool {
        !matches!(self, Lineage::Unrelated)
    }
}

impl Store {
    /// The SHA-256 of a commit's `stack.toml`, from its checked signed header.
    pub fn stack_digest(&self, id: ObjectId) -> Result<Sha256Digest, VerifyError> {
        Ok(self.signed_header(id)?.stack_sha256)
    }

    /// How `head` relates to the commit whose `stack.toml` has the digest `base`.
    /// Every commit walked has its signatures and parent digest checked (not
    /// trusted: the caller verifies the head against its policy).
    pub fn lineage(&self, base: &Sha256Digest, head: ObjectId) -> Result<Lineage, VerifyError> {
        let mut next = Some(head);
        let mut depth = 0;
        while let Some(id) = next {
            let header = self.signed_header(id)?;
            if header.stack_sha256 == *base {
                return Ok(if depth == 0 {
                    Lineage::Same
                } else {
                    Lineage::Descends(depth)
                });
            }
            depth += 1;
            next = header.parent;
        }
        Ok(Lineage::Unrelated)
    }
}
