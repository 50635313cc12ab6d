//! One host's reconciliation: from the config, the store and the running kernel to a
//! plan, its execution, and the generation it leaves behind. `kstack sync`, `plan`,
//! `rollback` and `status` are thin renderings of these functions.
//!
//! This file holds the errors and the types; `desired` resolves and verifies what
//! the config declares, `sync` plans, executes and rolls back, `status` reports.

use std::collections::BTreeSet;
use std::time::Duration;

use kstack_store::ident::BuildId;
use kstack_store::keys::TrustPolicy;
use kstack_store::model::MODULE_PREFIX;
use kstack_store::rev::RevError;
use kstack_store::store::{ObjectId, Store, StoreError};
use kstack_store::validity::{Freshness, Timestamp, Validity};
use kstack_store::verify::{VerifiedStack, VerifyError};

use super::config::Config;
use super::exec::{self, ExecError, Modules};
use super::kernel::{KernelError, KernelIdentity, Livepatch};
use super::plan::{self, Plan};
use super::state::{State, StateDir, StateError};

mod desired;
mod status;
mod sync;

pub use status::{AppliedPatch, ModuleSigning, Status};

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

#[cfg(test)]
mod tests;
