//! One host's reconciliation: from the config, the store and the running kernel to a
//! plan, its execution, and the generation it leaves behind. `kstack sync`, `plan`,
//! `rollback` and `status` are thin renderings of these functions.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kstack_store::digest::Sha256Digest;
use kstack_store::ident::BuildId;
use kstack_store::keys::TrustPolicy;
use kstack_store::model::{FunctionRef, MODULE_PREFIX};
use kstack_store::rev::RevError;
use kstack_store::store::{ObjectId, StackId, Store, StoreError};
use kstack_store::validity::{Freshness, Timestamp, Validity, rough};
use kstack_store::verify::{VerifiedStack, VerifyError};

use super::config::{Config, ExpiredPolicy};
use super::exec::{self, ExecError, Modules, Observer};
use super::kernel::{self, KernelError, KernelIdentity, Livepatch};
use super::plan::{self, Applied, Plan};
use super::state::{Generation, State, StateDir, StateError, now_rfc3339};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Revision(#[from] RevError),
    #[error("refused before anything was loaded: {0}")]
    Verify(#[from] VerifyError),
    #[error(
        "the store has no stack {name:?} for this kernel (build ID {build_id}){}",
        others_suffix(.others)
    )]
    NoStack {
        name: String,
        build_id: BuildId,
        others: Vec<String>,
    },
    #[error(
        "refused before anything was loaded: stack commit {commit} is pinned to kernel build ID {stack}, \
         but the running kernel's is {running}"
    )]
    WrongKernel {
        commit: String,
        stack: BuildId,
        running: BuildId,
    },
    #[error(
        "refused before anything was loaded: patch {patch} was built for kernel {module_release}, \
         the running kernel is {running}"
    )]
    WrongRelease {
        patch: String,
        module_release: String,
        running: String,
    },
    #[error("refused before anything was loaded: {0}")]
    RunPre(#[from] super::prove::ProveError),
    #[error(
        "refused before anything was loaded: the kernel {}; {}",
        enforcement_words(.enforcement),
        .refused.join("; ")
    )]
    ModuleSignature {
        enforcement: super::kernel::signing::Enforcement,
        /// `module (patch NAME): verdict`, one per refused module.
        refused: Vec<String>,
    },
    #[error("livepatch {0} is in a transition; wait for it to finish (see `kstack status`)")]
    TransitionInProgress(String),
    #[error("{0}")]
    Failed(#[from] Box<ExecError>),
    #[error("there is no generation to roll back to{0}")]
    NoRollbackTarget(String),
    #[error(
        "refused before anything was loaded: stack {stack} resolves to commit {declared}, which does not \
         descend from commit {base} ({why}): syncing it would go back in the stack's history and could \
         re-apply withdrawn patches{detail}"
    )]
    Downgrade {
        stack: String,
        declared: String,
        base: String,
        /// Which generation ran `base`.
        why: String,
        detail: String,
    },
    #[error(
        "refused before anything was loaded: stack {stack}'s head {commit} expired at {expires} ({ago} ago): \
         its publisher has not renewed it, or the store or its mirror stopped receiving newer commits"
    )]
    Expired {
        stack: String,
        commit: String,
        expires: Timestamp,
        ago: String,
    },
    #[error(
        "refused before anything was loaded: commit {commit} belongs to stack {found}, but the config declares {declared}"
    )]
    WrongStack {
        commit: String,
        found: String,
        declared: String,
    },
}

fn enforcement_words(e: &super::kernel::signing::Enforcement) -> String {
    let reasons = e.reasons();
    if reasons.is_empty() {
        "rejects malformed module signatures".to_owned()
    } else {
        format!("enforces module signatures ({})", reasons.join(", "))
    }
}

fn others_suffix(others: &[String]) -> String {
    if others.is_empty() {
        String::new()
    } else {
        format!("; it exists for other kernels: {}", others.join(", "))
    }
}

/// What the config asks this host to run, verified.
#[derive(Debug, Clone)]
pub struct Desired {
    /// `None`: no kstack patches at all.
    pub stack: Option<VerifiedStack>,
    /// Module names in stack order.
    pub modules: Vec<String>,
    /// The stack's cumulative module, when it has one.
    pub cumulative: Option<String>,
    /// Their verified bytes (the cumulative module's too).
    pub bytes: Modules,
    /// What the operator should know about the commit's trust although it was
    /// accepted: an expired window let through by `[trust] expired = "warn"`, a pin
    /// or a rollback, a downgrade allowed by the flag, no window at all.
    pub warnings: Vec<String>,
}

impl Desired {
    fn empty() -> Desired {
        Desired {
            stack: None,
            modules: Vec::new(),
            cumulative: None,
            bytes: Modules::default(),
            warnings: Vec::new(),
        }
    }

    /// What the planner needs to know of it.
    pub fn planned(&self) -> plan::DesiredModules {
        plan::DesiredModules {
            modules: self.modules.clone(),
            cumulative: self.cumulative.clone(),
            no_cumulative: self
                .stack
                .as_ref()
                .and_then(|s| s.stack.no_cumulative.clone()),
        }
    }

    pub fn commit(&self) -> Option<ObjectId> {
        self.stack.as_ref().map(|s| s.commit)
    }
}

/// Everything `sync` knows before it acts.
#[derive(Debug)]
pub struct Prepared {
    pub identity: KernelIdentity,
    pub desired: Desired,
    pub plan: Plan,
    /// Livepatches that kstack did not load: reported, never touched.
    pub foreign: Vec<String>,
    pub state: State,
    /// Run-pre matching of the patches the plan applies.
    pub proof: super::prove::Proof,
    /// What the kernel will make of the signatures of the modules the plan applies.
    pub signatures: super::signatures::SignatureReport,
    /// Time spent by kstack itself: identification, verification, planning.
    pub overhead: Duration,
    /// How that time divides, phase by phase.
    pub phases: Vec<(&'static str, Duration)>,
}

/// The result of a sync.
#[derive(Debug)]
pub struct Synced {
    pub prepared: Prepared,
    pub timings: Vec<exec::StepTiming>,
    /// The generation recorded, if the sync changed anything.
    pub generation: Option<u64>,
    /// kstack's own time (verification, planning, state), as opposed to the kernel's.
    pub overhead: Duration,
    /// How that time divides, phase by phase.
    pub phases: Vec<(&'static str, Duration)>,
}

/// A host: its config, store and state directory, and its kernel's livepatch
/// machinery (on a real host, [`kernel::Sysfs::default`]).
#[derive(Debug)]
pub struct Host<'a> {
    pub config: &'a Config,
    pub store: &'a Store,
    pub state: StateDir,
    pub trust: TrustPolicy,
    pub livepatch: Box<dyn Livepatch>,
    /// Accept a declared head that does not descend from what the host ran
    /// (`sync --allow-downgrade`): going back on purpose.
    pub allow_downgrade: bool,
}

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
    fn load_for_sync(
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

    fn load_verified(
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

    /// Reads the kernel and plans the way to `desired`.
    pub fn prepare(
        &self,
        mut desired: Desired,
        identity: KernelIdentity,
        started: Instant,
    ) -> Result<Prepared, SyncError> {
        let mut phases = vec![("identify and verify", started.elapsed())];
        let mut lap = Instant::now();
        let mut phase = |name: &'static str, phases: &mut Vec<(&'static str, Duration)>| {
            phases.push((name, lap.elapsed()));
            lap = Instant::now();
        };
        let state = self.state.load()?;
        let loaded = self.livepatch.loaded_patches()?;
        if let Some(busy) = loaded.iter().find(|p| p.transition) {
            return Err(SyncError::TransitionInProgress(busy.module.clone()));
        }
        let ours = ours(&state, &desired);
        let mut applied = Vec::new();
        let mut foreign = Vec::new();
        let mut foreign_enabled = Vec::new();
        for patch in &loaded {
            if is_ours(&ours, &patch.module) {
                applied.push(Applied {
                    module: patch.module.clone(),
                    enabled: patch.enabled,
                });
            } else {
                foreign.push(patch.module.clone());
                if patch.enabled {
                    foreign_enabled.push(patch.module.clone());
                }
            }
        }
        // Livepatch modules of ours that are loaded but no longer registered (their
        // patch was disabled, the module never unloaded).
        for module in self.livepatch.modules_without_patch()? {
            if is_ours(&ours, &module) {
                applied.push(Applied {
                    module,
                    enabled: false,
                });
            }
        }
        phase("read the kernel and the state", &mut phases);
        let mut plan = plan::plan_sync(
            &applied,
            &desired.planned(),
            self.config.sync.mode,
            &foreign_enabled,
        );
        // A plan that loads the patches' own modules (stack mode after all) needs them
        // read and checked.
        let applies_patches = plan
            .steps
            .iter()
            .any(|s| matches!(s, plan::Step::Apply { .. }));
        if applies_patches
            && let Some(stack) = &desired.stack
            && !stack.patch_artifacts
        {
            let warnings = std::mem::take(&mut desired.warnings);
            desired = self.load_commit(stack.commit, &identity)?;
            desired.warnings = warnings;
            plan = plan::plan_sync(
                &applied,
                &desired.planned(),
                self.config.sync.mode,
                &foreign_enabled,
            );
        }
        phase("plan", &mut phases);
        // Prove, before anything is loaded, that each patch to apply was built for the
        // code the kernel runs: the patches, or the cumulative module that holds them
        // (built on the kernel's own code, whatever generation runs).
        let replaces = plan
            .steps
            .iter()
            .any(|s| matches!(s, plan::Step::Replace { .. }));
        let stack: Vec<&kstack_store::verify::VerifiedPatch> = desired
            .stack
            .iter()
            .flat_map(|s| {
                if replaces {
                    s.cumulative.iter().collect::<Vec<_>>()
                } else {
                    s.patches.iter().collect()
                }
            })
            .collect();
        let applies = |p: &kstack_store::verify::VerifiedPatch| {
            plan.steps.iter().any(|step| match step {
                plan::Step::Apply { module, .. } | plan::Step::Replace { module, .. } => {
                    *module == p.manifest.module_name
                }
                _ => false,
            })
        };
        // Before run-pre and before loading: a module the kernel will refuse for its
        // signature is refused here, with the reason.
        let to_apply: Vec<(&str, &str, &[u8])> = stack
            .iter()
            .filter(|p| applies(p))
            .map(|p| {
                (
                    p.manifest.module_name.as_str(),
                    p.manifest.name.as_str(),
                    p.module.as_slice(),
                )
            })
            .collect();
        let signatures = if to_apply.is_empty() {
            super::signatures::SignatureReport::default()
        } else {
            super::signatures::check(
                &kernel::signing::Enforcement::read(),
                &kernel::signing::TrustedKeys::read(),
                &to_apply,
            )
        };
        phase("check module signatures", &mut phases);
        let refused = signatures.refused();
        if !refused.is_empty() {
            return Err(SyncError::ModuleSignature {
                enforcement: signatures.enforcement.clone(),
                refused: refused
                    .iter()
                    .map(|m| {
                        format!(
                            "module {} (patch {}) is {}",
                            m.module,
                            m.patch,
                            m.describe()
                        )
                    })
                    .collect(),
            });
        }
        let proof = super::prove::prove_running(&stack, &applies)?;
        phase("run-pre", &mut phases);
        Ok(Prepared {
            identity,
            desired,
            plan,
            foreign,
            state,
            proof,
            signatures,
            overhead: started.elapsed(),
            phases,
        })
    }

    /// Identifies the kernel, verifies the desired stack, plans.
    pub fn plan(&self) -> Result<Prepared, SyncError> {
        let started = Instant::now();
        if !self.livepatch.supported() {
            return Err(KernelError::NoLivepatch.into());
        }
        let identity = kernel::identify()?;
        let desired = self.desired(&identity)?;
        self.prepare(desired, identity, started)
    }

    /// `kstack sync`: plan under the lock, execute, record the generation.
    pub fn sync(
        &self,
        timeout: Duration,
        observer: &mut dyn Observer,
    ) -> Result<Synced, SyncError> {
        let _lock = self.state.lock()?;
        let result = self
            .plan()
            .and_then(|prepared| self.execute(prepared, timeout, observer, Record::NewGeneration));
        self.record_last_sync("sync", &result);
        result
    }

    /// Writes how a sync or rollback that held the lock ended (see
    /// [`super::state::LastSync`]); a failure to write it is not the sync's.
    fn record_last_sync(&self, operation: &str, result: &Result<Synced, SyncError>) {
        let now = std::time::SystemTime::now();
        let generation = match result {
            Ok(s) => s.generation.or(s.prepared.state.current),
            Err(_) => self.state.load().ok().and_then(|s| s.current),
        };
        let _ = self.state.save_last_sync(&super::state::LastSync {
            operation: operation.to_owned(),
            finished_at: humantime::format_rfc3339_seconds(now).to_string(),
            unix_time: now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            ok: result.is_ok(),
            generation,
            error: result.as_ref().err().map(|e| kstack_store::error_chain(e)),
        });
    }

    /// `kstack rollback`: make generation `to` (default: the one before the current)
    /// current again, re-verifying its stack against today's trust policy.
    pub fn rollback(
        &self,
        to: Option<u64>,
        timeout: Duration,
        observer: &mut dyn Observer,
    ) -> Result<Synced, SyncError> {
        let _lock = self.state.lock()?;
        let started = Instant::now();
        let state = self.state.load()?;
        let target = match to {
            Some(n) => state
                .generation(n)
                .ok_or(StateError::NoSuchGeneration(n))?
                .clone(),
            None => {
                let current = state.current.ok_or_else(|| {
                    SyncError::NoRollbackTarget(" (no sync has recorded one yet)".into())
                })?;
                state
                    .generations
                    .iter()
                    .filter(|g| g.number < current)
                    .max_by_key(|g| g.number)
                    .ok_or_else(|| {
                        SyncError::NoRollbackTarget(format!(" (generation {current} is the first)"))
                    })?
                    .clone()
            }
        };
        let identity = kernel::identify()?;
        let desired = if target.commit.is_empty() {
            Desired::empty()
        } else {
            let id =
                ObjectId::from_hex(target.commit.as_bytes()).map_err(|e| StateError::Corrupt {
                    path: self.state.path().join("state.toml"),
                    message: format!(
                        "generation {}: commit {:?}: {e}",
                        target.number, target.commit
                    ),
                })?;
            let mut desired = self.load_for_sync(id, &identity)?;
            // Going back is explicit here: an old window is no reason to refuse.
            let stack = desired
                .stack
                .as_ref()
                .expect("load_commit returns the stack");
            if let Some((window, Freshness::Expired { ago })) =
                freshness(stack.stack.validity.as_ref())
            {
                desired.warnings.push(format!(
                    "generation {}'s commit {} expired at {} ({} ago)",
                    target.number,
                    short(&id),
                    window.expires,
                    rough(ago)
                ));
            }
            desired
        };
        let result = self
            .prepare(desired, identity, started)
            .and_then(|prepared| {
                self.execute(prepared, timeout, observer, Record::Switch(target.number))
            });
        self.record_last_sync("rollback", &result);
        result
    }

    fn execute(
        &self,
        prepared: Prepared,
        timeout: Duration,
        observer: &mut dyn Observer,
        record: Record,
    ) -> Result<Synced, SyncError> {
        let mut overhead = prepared.overhead;
        // To undo a revert the executor loads the module again: give it the current
        // generation's modules too (best effort: if that stack is gone from the store,
        // an undo that needs it reports so).
        let mut modules = prepared.desired.bytes.clone();
        let reverts_something = prepared
            .plan
            .steps
            .iter()
            .any(|s| matches!(s, plan::Step::Revert { .. }));
        if reverts_something
            && let Some(current) = prepared.state.current()
            && let Ok(id) = ObjectId::from_hex(current.commit.as_bytes())
            && let Ok(previous) = self.load_commit(id, &prepared.identity)
        {
            for module in previous.modules.iter().chain(&previous.cumulative) {
                if let Some(bytes) = previous.bytes.get(module) {
                    modules.insert(module.clone(), bytes.to_vec());
                }
            }
        }
        let timings = exec::execute(
            self.livepatch.as_ref(),
            &prepared.plan,
            &modules,
            timeout,
            observer,
        )?;

        let bookkeeping = Instant::now();
        let mut state = prepared.state.clone();
        let commit = prepared
            .desired
            .commit()
            .map(|c| c.to_string())
            .unwrap_or_default();
        let generation = match record {
            Record::Switch(n) => {
                state.current = Some(n);
                self.state.save(&state)?;
                Some(n)
            }
            Record::NewGeneration => {
                let changed = !prepared.plan.is_empty()
                    || match state.current() {
                        Some(g) => g.commit != commit,
                        // No generation yet: an empty desired stack changes nothing.
                        None => !commit.is_empty(),
                    };
                if changed {
                    let stack = prepared.desired.stack.as_ref();
                    let n = state.push(Generation {
                        number: 0,
                        commit,
                        stack: stack.map(|s| s.stack.name.clone()).unwrap_or_default(),
                        build_id: prepared.identity.build_id.to_hex(),
                        created_at: now_rfc3339(),
                        modules: prepared.desired.planned().end_state(&prepared.plan),
                        stack_sha256: stack.map(|s| s.stack_sha256.to_hex()),
                    });
                    self.state.save(&state)?;
                    Some(n)
                } else {
                    None
                }
            }
        };
        overhead += bookkeeping.elapsed();
        let mut phases = prepared.phases.clone();
        phases.push(("record the generation", bookkeeping.elapsed()));
        Ok(Synced {
            prepared,
            timings,
            generation,
            overhead,
            phases,
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Record {
    NewGeneration,
    Switch(u64),
}

fn short(id: &ObjectId) -> String {
    id.to_hex_with_len(12).to_string()
}

/// A commit's window and where now falls in it; `None` for a commit without one.
fn freshness(validity: Option<&Validity>) -> Option<(Validity, Freshness)> {
    validity.map(|w| (*w, w.freshness(Timestamp::now())))
}

/// Module names that are kstack's: every module of any generation, the desired ones,
/// and anything named with kstack's prefix.
fn ours(state: &State, desired: &Desired) -> BTreeSet<String> {
    state
        .generations
        .iter()
        .flat_map(|g| g.modules.iter().cloned())
        .chain(desired.modules.iter().cloned())
        .chain(desired.cumulative.iter().cloned())
        .collect()
}

fn is_ours(ours: &BTreeSet<String>, module: &str) -> bool {
    ours.contains(module) || module.starts_with(MODULE_PREFIX)
}

/// One applied patch as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppliedPatch {
    pub module: String,
    pub enabled: bool,
    pub transition: bool,
    /// The patch's name and functions, when the current generation's stack has it
    /// (`cumulative` for the stack's cumulative module).
    pub patch: Option<String>,
    pub functions: Vec<String>,
    /// For a cumulative module, the patches it holds, in load order.
    pub holds: Vec<String>,
    /// The objects it changes and whether each is patched: a module's object waits
    /// until that module loads.
    pub objects: Vec<super::kernel::PatchedObject>,
}

/// What `kstack status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub release: String,
    pub build_id: String,
    pub livepatch: bool,
    /// The configured `[sync] mode`.
    pub mode: plan::Mode,
    pub generation: Option<Generation>,
    pub applied: Vec<AppliedPatch>,
    pub foreign: Vec<String>,
    /// Differences between the state file and the kernel.
    pub drift: Vec<String>,
    pub taint: u64,
    pub taint_flags: String,
    /// The validity window of the current generation's commit (when the store has
    /// the commit and the commit has a window).
    #[serde(skip)]
    pub validity: Option<Validity>,
    /// Who signed the current generation's commit.
    #[serde(skip)]
    pub signers: Vec<kstack_store::keys::PublicKey>,
    /// What the kernel enforces for module signatures, and the keys it trusts.
    pub module_signing: ModuleSigning,
    /// How the last sync or rollback ended.
    pub last_sync: Option<super::state::LastSync>,
}

/// The kernel's module signature enforcement, as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModuleSigning {
    pub enforcement: super::kernel::signing::Enforcement,
    pub enforced: bool,
    /// The keys module signatures are checked against; `None` when they cannot be
    /// listed (`trusted_keys_error` says why).
    pub trusted_keys: Option<Vec<super::kernel::signing::TrustedKey>>,
    pub trusted_keys_error: Option<String>,
}

impl ModuleSigning {
    /// The running kernel's.
    pub fn read() -> ModuleSigning {
        let enforcement = kernel::signing::Enforcement::read();
        let (trusted_keys, trusted_keys_error) = match kernel::signing::TrustedKeys::read() {
            kernel::signing::TrustedKeys::Known(keys) => (Some(keys), None),
            kernel::signing::TrustedKeys::Unknown(why) => (None, Some(why)),
        };
        ModuleSigning {
            enforced: enforcement.enforced(),
            enforcement,
            trusted_keys,
            trusted_keys_error,
        }
    }
}

impl Host<'_> {
    /// Reads the kernel and the state; verifies the current generation's stack to
    /// name the patches' functions (without it, modules are listed by name only).
    pub fn status(&self) -> Result<Status, SyncError> {
        let identity = kernel::identify()?;
        let state = self.state.load()?;
        let (taint, taint_flags) = kernel::taint()?;
        let livepatch = self.livepatch.supported();
        let loaded = if livepatch {
            self.livepatch.loaded_patches()?
        } else {
            Vec::new()
        };
        let current = state.current().cloned();
        let verified = current
            .as_ref()
            .and_then(|g| ObjectId::from_hex(g.commit.as_bytes()).ok())
            .and_then(|id| self.store.check(id, None).ok());
        let validity = verified.as_ref().and_then(|v| v.stack.validity);
        let signers = verified
            .as_ref()
            .map(|v| v.signers.clone())
            .unwrap_or_default();
        let functions_by_module: Vec<(String, String, Vec<FunctionRef>, Vec<String>)> = verified
            .map(|v| {
                let names: Vec<String> = v.patches.iter().map(|p| p.entry.name.clone()).collect();
                v.patches
                    .iter()
                    .map(|p| (p, Vec::new()))
                    .chain(v.cumulative.iter().map(|c| (c, names.clone())))
                    .map(|(p, holds)| {
                        (
                            p.manifest.module_name.clone(),
                            p.manifest.name.clone(),
                            p.manifest.functions.clone(),
                            holds,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ours: BTreeSet<String> = state
            .generations
            .iter()
            .flat_map(|g| g.modules.iter().cloned())
            .collect();
        let mut applied = Vec::new();
        let mut foreign = Vec::new();
        for p in loaded {
            if !is_ours(&ours, &p.module) {
                foreign.push(p.module);
                continue;
            }
            let known = functions_by_module
                .iter()
                .find(|(m, _, _, _)| *m == p.module);
            applied.push(AppliedPatch {
                objects: self.livepatch.objects(&p.module).unwrap_or_default(),
                patch: known.map(|(_, name, _, _)| name.clone()),
                functions: known
                    .map(|(_, _, f, _)| f.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
                holds: known.map(|(_, _, _, h)| h.clone()).unwrap_or_default(),
                module: p.module,
                enabled: p.enabled,
                transition: p.transition,
            });
        }
        let mut drift = Vec::new();
        let expected: Vec<&String> = current.iter().flat_map(|g| g.modules.iter()).collect();
        let actual: Vec<&String> = applied
            .iter()
            .filter(|a| a.enabled)
            .map(|a| &a.module)
            .collect();
        if expected != actual {
            drift.push(format!(
                "the state file says generation {} runs [{}], the kernel runs [{}]",
                current
                    .as_ref()
                    .map_or("none".into(), |g| g.number.to_string()),
                expected
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                actual
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        if let Some(g) = &current
            && g.build_id != identity.build_id.to_hex()
        {
            drift.push(format!(
                "generation {} was made for kernel {}, the running kernel is {} (rebooted into another kernel?)",
                g.number,
                g.build_id,
                identity.build_id.to_hex()
            ));
        }
        Ok(Status {
            release: identity.release,
            build_id: identity.build_id.to_hex(),
            livepatch,
            mode: self.config.sync.mode,
            generation: current,
            applied,
            foreign,
            drift,
            taint,
            taint_flags,
            validity,
            signers,
            module_signing: ModuleSigning::read(),
            last_sync: self.state.last_sync(),
        })
    }
}

#[cfg(test)]
mod tests;
