//! Promotion: a signed commit on one stack that carries exactly the patches of a
//! commit of another stack of the same kernel, for canary-then-production rollouts.
//!
//! The promoted commit reuses the source's patch trees, so every module, manifest and
//! digest is the source's, byte for byte (and the modules keep their names: a host
//! that moves from the canary stack to the production one has nothing to load). Its
//! `stack.toml` records where the patches came from (`promoted_from`: the source
//! stack, commit and `stack.toml` digest), under the promoter's signature; the Git
//! message repeats it as a trailer for `log`, and verification checks that the two
//! agree.

use crate::commit::{CommitError, Prepared};
use crate::keys::SecretKey;
use crate::model::Promotion;
use crate::store::{Author, StackId, Store};
use crate::verify::VerifiedStack;

/// The commit-message trailer naming the promoted commit: `<stack> <commit>`.
pub const PROMOTED_FROM_TRAILER: &str = "Kstack-Promoted-From";

/// The trailer line for a promotion of `commit` of `stack`.
pub fn trailer(stack: &str, commit: &str) -> String {
    format!("{PROMOTED_FROM_TRAILER}: {stack} {commit}")
}

/// The stack and commit that a commit message's trailer names, if it has one (the
/// message as [`crate::store::CommitInfo`] holds it, without the signer trailer).
pub fn promoted_from(message: &str) -> Option<(String, String)> {
    let last = message.trim_end().lines().last()?;
    let rest = last.strip_prefix(&format!("{PROMOTED_FROM_TRAILER}: "))?;
    let (stack, commit) = rest.split_once(' ')?;
    Some((stack.to_owned(), commit.to_owned()))
}

/// A commit message without its promotion trailer (as `log` shows the message).
pub fn without_trailer(message: &str) -> &str {
    match promoted_from(message) {
        Some(_) => message
            .trim_end()
            .rsplit_once('\n')
            .map_or("", |(body, _)| body.trim_end()),
        None => message,
    }
}

/// A promotion that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("cannot promote stack {stack} onto itself")]
    SameStack { stack: String },
    #[error(transparent)]
    Commit(#[from] CommitError),
}

impl Store {
    /// Writes a commit on `dst` (same kernel as `source`) whose patches are exactly
    /// `source`'s, with `dst`'s head as parent. `Ok(None)` when `dst`'s head already
    /// has exactly those patches: nothing to promote. The caller verifies `source`
    /// against its trust policy first: promoting re-signs its patches.
    pub fn prepare_promote(
        &self,
        source: &VerifiedStack,
        dst: &str,
        message: &str,
        author: &Author,
        key: &SecretKey,
    ) -> Result<Option<Prepared>, PromoteError> {
        if dst == source.stack.name {
            return Err(PromoteError::SameStack {
                stack: dst.to_owned(),
            });
        }
        let stack = StackId::new(source.stack.build_id.clone(), dst).map_err(CommitError::from)?;
        let current = self.verified_head(&stack)?;
        if let Some(head) = &current
            && head.stack.patches == source.stack.patches
        {
            return Ok(None);
        }
        let trees = source
            .stack
            .patches
            .iter()
            .map(|p| (p.dir.clone(), source.patch_trees[&p.dir]))
            .collect();
        let prepared = self.write_stack_commit(
            &stack,
            current.as_ref(),
            source.stack.kernel_release.clone(),
            source.stack.patches.clone(),
            trees,
            message,
            Some(Promotion {
                stack: source.stack.name.clone(),
                commit: source.commit.to_string(),
                stack_sha256: source.stack_sha256,
            }),
            crate::commit::carried_cumulative(source),
            author,
            key,
        )?;
        Ok(Some(prepared))
    }

    /// [`Store::prepare_promote`], then [`Store::publish`].
    pub fn promote(
        &self,
        source: &VerifiedStack,
        dst: &str,
        message: &str,
        author: &Author,
        key: &SecretKey,
    ) -> Result<Option<Prepared>, PromoteError> {
        let prepared = self.prepare_promote(source, dst, message, author, key)?;
        if let Some(p) = &prepared {
            self.publish(p)?;
        }
        Ok(prepared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trailer_round_trips() {
        let line = trailer("canary", "4579399eeb9650bdc9514dcbbd577ed089abe0fc");
        assert_eq!(
            promoted_from(&format!("Promote canary\n\n{line}")),
            Some((
                "canary".to_owned(),
                "4579399eeb9650bdc9514dcbbd577ed089abe0fc".to_owned()
            ))
        );
        assert_eq!(promoted_from("add foo"), None);
        assert_eq!(
            without_trailer(&format!("Promote canary\n\n{line}")),
            "Promote canary"
        );
        assert_eq!(without_trailer("add foo"), "add foo");
    }
}
