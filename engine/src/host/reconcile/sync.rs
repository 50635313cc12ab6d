//! Plan, execute and record: `kstack plan`, `sync` and `rollback`.

use std::time::{Duration, Instant};

use kstack_store::store::ObjectId;
use kstack_store::validity::{Freshness, rough};

use super::{Desired, Host, Prepared, Record, SyncError, Synced, freshness, is_ours, ours, short};
use crate::host::exec::{self, Observer};
use crate::host::kernel::{self, KernelError, KernelIdentity};
use crate::host::plan::{self, Applied};
use crate::host::state::{Generation, StateError, now_rfc3339};

impl Host<'_> {
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
            crate::host::signatures::SignatureReport::default()
        } else {
            crate::host::signatures::check(
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
        let proof = crate::host::prove::prove_running(&stack, &applies)?;
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
    /// [`crate::host::state::LastSync`]); a failure to write it is not the sync's.
    fn record_last_sync(&self, operation: &str, result: &Result<Synced, SyncError>) {
        let now = std::time::SystemTime::now();
        let generation = match result {
            Ok(s) => s.generation.or(s.prepared.state.current),
            Err(_) => self.state.load().ok().and_then(|s| s.current),
        };
        let _ = self.state.save_last_sync(&crate::host::state::LastSync {
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
