//! What the config declares for the running kernel, resolved and verified: the
//! stack's head, its validity window, and that it descends from what the host ran.

use kstack_store::digest::Sha256Digest;
use kstack_store::store::{ObjectId, StackId};
use kstack_store::validity::{Freshness, rough};
use kstack_store::verify::VerifiedStack;

use super::{Desired, Host, SyncError, freshness, short};
use crate::host::config::ExpiredPolicy;
use crate::host::kernel::KernelIdentity;
use crate::host::plan;
use crate::host::state::Generation;

impl Host<'_> {
    /// Resolves and verifies the stack the config declares for the running kernel.
    ///
    /// Beyond [`Host::load_commit`]: the commit must be of the declared stack; the
    /// stack's head must be within its validity window (`[trust] expired`) and
    /// descend from what this host ran (see [`Host::check_descent`]). A `[stack]
    /// commit` pin is the operator going back (or staying) on purpose: neither
    /// check refuses it, an expired one is a warning.
    pub fn desired(&self, identity: &KernelIdentity) -> Result<Desired, SyncError> {
        let Some(wanted) = &self.config.stack else {
            return Ok(Desired::empty());
        };
        let stack_id = StackId {
            build_id: identity.build_id.clone(),
            name: wanted.name.clone(),
        };
        let pinned = wanted.commit.is_some();
        let commit = match &wanted.commit {
            Some(rev) => {
                self.store
                    .resolve(rev, Some(&identity.build_id))
                    .map_err(SyncError::from)?
                    .commit
            }
            None => match self.store.stack_head(&stack_id)? {
                Some(head) => head,
                None => {
                    let others = self
                        .store
                        .stacks()?
                        .into_iter()
                        .filter(|(id, _)| id.name == wanted.name)
                        .map(|(id, _)| id.build_id.to_hex())
                        .collect();
                    return Err(SyncError::NoStack {
                        name: wanted.name.clone(),
                        build_id: identity.build_id.clone(),
                        others,
                    });
                }
            },
        };
        let mut desired = self.load_for_sync(commit, identity)?;
        let verified = desired
            .stack
            .as_ref()
            .expect("load_commit returns the verified stack");
        if verified.stack.name != wanted.name {
            return Err(SyncError::WrongStack {
                commit: short(&commit),
                found: verified.stack.name.clone(),
                declared: wanted.name.clone(),
            });
        }
        let what = if pinned { "pinned commit" } else { "head" };
        match freshness(verified.stack.validity.as_ref()) {
            None => desired.warnings.push(format!(
                "stack {}'s {what} {} has no validity window (an older kstack made it): a frozen \
                 mirror cannot be told apart; renew it with `kstack renew`",
                wanted.name,
                short(&commit)
            )),
            Some((window, Freshness::Expired { ago })) => {
                if !pinned && self.config.trust.expired == ExpiredPolicy::Refuse {
                    return Err(SyncError::Expired {
                        stack: wanted.name.clone(),
                        commit: short(&commit),
                        expires: window.expires,
                        ago: rough(ago),
                    });
                }
                desired.warnings.push(format!(
                    "stack {}'s {what} {} expired at {} ({} ago)",
                    wanted.name,
                    short(&commit),
                    window.expires,
                    rough(ago)
                ));
            }
            Some((_, Freshness::Valid { .. })) => {}
        }
        if !pinned {
            let digest = verified.stack_sha256;
            match self.check_descent(identity, &wanted.name, commit, &digest) {
                Err(SyncError::Downgrade {
                    declared,
                    base,
                    why,
                    ..
                }) if self.allow_downgrade => {
                    desired.warnings.push(format!(
                        "--allow-downgrade: going back from commit {base} ({why}) to commit {declared}, which does not descend from it"
                    ));
                }
                other => other?,
            }
        }
        Ok(desired)
    }

    /// Refuses a declared head that is not the commit this host runs for the stack
    /// (its current generation) or a descendant of it, nor, after a rollback, of
    /// the newest commit a sync made current: whoever can write the store or its
    /// mirror could otherwise move the ref back to an older signed commit and
    /// bring withdrawn patches back. Descent is judged by the signed chain of
    /// `stack.toml` digests, so an approval of the same commit is no change.
    /// Generations of another stack name or another kernel do not count.
    pub fn check_descent(
        &self,
        identity: &KernelIdentity,
        stack: &str,
        declared: ObjectId,
        declared_digest: &Sha256Digest,
    ) -> Result<(), SyncError> {
        let state = self.state.load()?;
        let build_id = identity.build_id.to_hex();
        let same_stack =
            |g: &&Generation| !g.commit.is_empty() && g.stack == stack && g.build_id == build_id;
        let mut bases: Vec<(&Generation, &str)> = Vec::new();
        if let Some(current) = state.current().filter(same_stack) {
            bases.push((current, "the current generation"));
        }
        if let Some(newest) = state
            .generations
            .iter()
            .filter(same_stack)
            .max_by_key(|g| g.number)
            && bases.iter().all(|(g, _)| g.number != newest.number)
        {
            bases.push((newest, "the newest generation synced"));
        }
        for (generation, role) in bases {
            let refuse = |detail: String| SyncError::Downgrade {
                stack: stack.to_owned(),
                declared: short(&declared),
                base: generation.commit.chars().take(12).collect(),
                why: format!("{role}, {}", generation.number),
                detail,
            };
            let recorded = generation
                .stack_sha256
                .as_deref()
                .and_then(|hex| hex.parse::<Sha256Digest>().ok());
            let base = match recorded {
                Some(digest) => digest,
                None => {
                    let id = ObjectId::from_hex(generation.commit.as_bytes())
                        .map_err(|e| refuse(format!("; its commit id is unreadable: {e}")))?;
                    self.store.stack_digest(id).map_err(|e| {
                        refuse(format!(
                            "; the store cannot show that commit: {}",
                            kstack_store::error_chain(&e)
                        ))
                    })?
                }
            };
            if base == *declared_digest {
                continue;
            }
            let lineage = self.store.lineage(&base, declared)?;
            if !lineage.contains_base() {
                return Err(refuse(String::new()));
            }
        }
        Ok(())
    }

    /// Verifies the stack commit a sync or rollback goes to. In replace mode only
    /// what a replace loads is read ([`Store::verify_for_replace`]): the patches'
    /// own modules are read and checked when a plan needs them ([`Host::prepare`]).
    pub(super) fn load_for_sync(
        &self,
        commit: ObjectId,
        identity: &KernelIdentity,
    ) -> Result<Desired, SyncError> {
        match self.config.sync.mode {
            plan::Mode::Replace => self.load_verified(
                self.store.verify_for_replace(commit, None, &self.trust)?,
                identity,
            ),
            plan::Mode::Stack => self.load_commit(commit, identity),
        }
    }

    /// Verifies one stack commit for the running kernel and reads its modules.
    pub fn load_commit(
        &self,
        commit: ObjectId,
        identity: &KernelIdentity,
    ) -> Result<Desired, SyncError> {
        self.load_verified(self.store.verify(commit, None, &self.trust)?, identity)
    }

    pub(super) fn load_verified(
        &self,
        verified: VerifiedStack,
        identity: &KernelIdentity,
    ) -> Result<Desired, SyncError> {
        let commit = verified.commit;
        if verified.stack.build_id != identity.build_id {
            return Err(SyncError::WrongKernel {
                commit: commit.to_hex_with_len(12).to_string(),
                stack: verified.stack.build_id.clone(),
                running: identity.build_id.clone(),
            });
        }
        let mut desired = Desired::empty();
        for patch in &verified.patches {
            let manifest = &patch.manifest;
            if manifest.kernel_release != identity.release {
                return Err(SyncError::WrongRelease {
                    patch: manifest.name.clone(),
                    module_release: manifest.kernel_release.clone(),
                    running: identity.release.clone(),
                });
            }
            desired.modules.push(manifest.module_name.clone());
            // The very bytes whose SHA-256 verification checked (none when only the
            // cumulative module was read).
            if verified.patch_artifacts {
                desired
                    .bytes
                    .insert(manifest.module_name.clone(), patch.module.clone());
            }
        }
        if let Some(cumulative) = &verified.cumulative {
            let manifest = &cumulative.manifest;
            if manifest.kernel_release != identity.release {
                return Err(SyncError::WrongRelease {
                    patch: manifest.name.clone(),
                    module_release: manifest.kernel_release.clone(),
                    running: identity.release.clone(),
                });
            }
            desired.cumulative = Some(manifest.module_name.clone());
            desired
                .bytes
                .insert(manifest.module_name.clone(), cumulative.module.clone());
        }
        desired.stack = Some(verified);
        Ok(desired)
    }
}
