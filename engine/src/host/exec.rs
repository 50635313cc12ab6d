//! The executor: runs a plan on the kernel through a [`Livepatch`], step by step,
//! and undoes it on failure.
//!
//! Every step either completes or is reversed before the next begins: a load whose
//! transition stalls is reversed by disabling the patch (the kernel runs the
//! transition backwards) and the module unloaded; a disable that stalls is reversed by
//! enabling again. When a step fails, the completed steps are undone newest first, so
//! the host ends where it started. A disabled livepatch cannot be enabled again, so
//! undoing a revert means loading the module anew, from the verified bytes.
//!
//! A replace (a cumulative module) is one load and one transition: a stall is
//! reversed like any load's, and the kernel keeps running the replaced patches. Once
//! it completes, the replaced patches are disabled; their modules are unloaded, and
//! one that will not go is left for the next sync (an `Unload` step), not a failure:
//! the host runs its new generation either way. The planner makes a replace the
//! last step, so it is never undone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::kernel::{Goal, KernelError, Livepatch, poll_delay};
use super::plan::{Plan, Step};

/// The verified bytes of every module a plan (or its undo) may load, by module name.
#[derive(Debug, Default, Clone)]
pub struct Modules {
    by_name: HashMap<String, Vec<u8>>,
}

impl Modules {
    pub fn insert(&mut self, module: impl Into<String>, bytes: Vec<u8>) {
        self.by_name.insert(module.into(), bytes);
    }

    pub fn get(&self, module: &str) -> Option<&[u8]> {
        self.by_name.get(module).map(Vec::as_slice)
    }
}

/// Progress reports, for a progress bar.
pub trait Observer {
    fn step_started(&mut self, _index: usize, _total: usize, _step: &Step) {}
    fn step_finished(&mut self, _index: usize, _step: &Step, _elapsed: Duration) {}
    fn undoing(&mut self, _step: &Step) {}
}

/// An observer that reports nothing.
#[derive(Debug)]
pub struct Quiet;
impl Observer for Quiet {}

/// How long each step took in the kernel (load, transition, unload).
#[derive(Debug, Clone)]
pub struct StepTiming {
    pub step: Step,
    pub elapsed: Duration,
    /// Modules a replace disabled but could not unload, with why: the next sync
    /// unloads them.
    pub left_loaded: Vec<String>,
}

/// A plan that did not complete.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} failed: {cause}{}{}",
    describe(.step),
    residue_report(.residue),
    undo_report(.undone, .undo_failures)
)]
pub struct ExecError {
    pub step: Step,
    #[source]
    pub cause: KernelError,
    /// What the failed step itself could not take back (a module it loaded and
    /// could not unload, a patch it disabled and could not unload, a transition it
    /// could not reverse): the host is not where it started.
    pub residue: Option<String>,
    /// The completed steps that were undone, newest first.
    pub undone: Vec<Step>,
    /// Undo steps that failed too: the host is not where it started.
    pub undo_failures: Vec<(Step, String)>,
}

impl ExecError {
    /// Whether the host is back where it started.
    pub fn restored(&self) -> bool {
        self.residue.is_none() && self.undo_failures.is_empty()
    }
}

/// A step that failed: why, and what it left behind that it could not take back.
#[derive(Debug)]
pub struct StepFailure {
    pub cause: KernelError,
    pub residue: Option<String>,
}

impl StepFailure {
    fn clean(cause: KernelError) -> StepFailure {
        StepFailure {
            cause,
            residue: None,
        }
    }

    fn leaving(cause: KernelError, residue: String) -> StepFailure {
        StepFailure {
            cause,
            residue: Some(residue),
        }
    }
}

impl From<KernelError> for StepFailure {
    fn from(cause: KernelError) -> StepFailure {
        StepFailure::clean(cause)
    }
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.cause, residue_report(&self.residue))
    }
}

fn residue_report(residue: &Option<String>) -> String {
    residue
        .as_ref()
        .map_or_else(String::new, |r| format!("\nleft behind: {r}"))
}

fn describe(step: &Step) -> String {
    match step {
        Step::Revert { module } => format!("reverting {module}"),
        Step::Unload { module } => format!("unloading {module}"),
        Step::Apply { module, .. } => format!("applying {module}"),
        Step::Replace { module, .. } => format!("replacing the applied patches with {module}"),
    }
}

fn undo_report(undone: &[Step], failures: &[(Step, String)]) -> String {
    let mut text = String::new();
    if !undone.is_empty() {
        let names: Vec<String> = undone.iter().map(describe).collect();
        text.push_str(&format!("\nundone: {}", names.join(", ")));
    }
    for (step, why) in failures {
        text.push_str(&format!("\nundo failed: {}: {why}", describe(step)));
    }
    text
}

/// Runs `plan` on `kernel`. `modules` must hold the bytes of every module the plan
/// applies and of every module it reverts (to undo a revert).
pub fn execute(
    kernel: &dyn Livepatch,
    plan: &Plan,
    modules: &Modules,
    timeout: Duration,
    observer: &mut dyn Observer,
) -> Result<Vec<StepTiming>, Box<ExecError>> {
    let mut done: Vec<StepTiming> = Vec::new();
    let total = plan.steps.len();
    for (index, step) in plan.steps.iter().enumerate() {
        observer.step_started(index, total, step);
        let started = Instant::now();
        match run_step(kernel, step, modules, timeout) {
            Ok(left_loaded) => {
                let elapsed = started.elapsed();
                observer.step_finished(index, step, elapsed);
                done.push(StepTiming {
                    step: step.clone(),
                    elapsed,
                    left_loaded,
                });
            }
            Err(StepFailure { cause, residue }) => {
                let mut undone = Vec::new();
                let mut undo_failures = Vec::new();
                for completed in done.iter().rev() {
                    observer.undoing(&completed.step);
                    match undo_step(kernel, &completed.step, modules, timeout) {
                        Ok(()) => undone.push(completed.step.clone()),
                        Err(e) => undo_failures.push((completed.step.clone(), e.to_string())),
                    }
                }
                return Err(Box::new(ExecError {
                    step: step.clone(),
                    cause,
                    residue,
                    undone,
                    undo_failures,
                }));
            }
        }
    }
    Ok(done)
}

/// Runs one step; returns the modules a replace left loaded.
fn run_step(
    kernel: &dyn Livepatch,
    step: &Step,
    modules: &Modules,
    timeout: Duration,
) -> Result<Vec<String>, StepFailure> {
    match step {
        Step::Apply { module, .. } => {
            let bytes = modules.get(module).ok_or_else(|| missing(module))?;
            apply(kernel, module, bytes, timeout).map(|()| Vec::new())
        }
        Step::Revert { module } => revert(kernel, module, timeout).map(|()| Vec::new()),
        Step::Unload { module } => Ok(unload(kernel, module, timeout).map(|()| Vec::new())?),
        Step::Replace { module, replaces } => {
            let bytes = modules.get(module).ok_or_else(|| missing(module))?;
            replace(kernel, module, bytes, replaces, timeout)
        }
    }
}

/// Loads a cumulative module and waits for its one transition, which replaces
/// `replaces`; then unloads their modules (newest first). A load that does not go
/// through is taken back as [`apply`] does, and the kernel still runs `replaces`.
pub fn replace(
    kernel: &dyn Livepatch,
    module: &str,
    bytes: &[u8],
    replaces: &[String],
    timeout: Duration,
) -> Result<Vec<String>, StepFailure> {
    apply(kernel, module, bytes, timeout)?;
    let mut left = Vec::new();
    for old in replaces.iter().rev() {
        // The livepatch core frees replaced patches from a work item; until it has,
        // their modules are busy.
        if let Err(e) = unload(kernel, old, timeout) {
            left.push(format!("{old} ({e})"));
        }
    }
    Ok(left)
}

fn undo_step(
    kernel: &dyn Livepatch,
    step: &Step,
    modules: &Modules,
    timeout: Duration,
) -> Result<(), StepFailure> {
    match step {
        Step::Apply { module, .. } => revert(kernel, module, timeout),
        Step::Revert { module } => {
            let bytes = modules.get(module).ok_or_else(|| missing(module))?;
            apply(kernel, module, bytes, timeout)
        }
        // The module's patch was already disabled: nothing to give back.
        Step::Unload { .. } => Ok(()),
        // The planner makes a replace the last step: nothing after it can fail.
        Step::Replace { module, .. } => Err(StepFailure::clean(KernelError::Io {
            path: format!("<plan: replace with {module}>").into(),
            source: std::io::Error::other("a completed replace is not undone"),
        })),
    }
}

fn missing(module: &str) -> KernelError {
    KernelError::Io {
        path: format!("<store: module {module}>").into(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no verified copy of this module is at hand",
        ),
    }
}

/// Loads a module and waits for its patch to reach every task. A load that does not
/// go through is taken back (a stall reversed, the module unloaded); what cannot be
/// taken back is the failure's residue.
pub fn apply(
    kernel: &dyn Livepatch,
    module: &str,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), StepFailure> {
    kernel.load(module, bytes)?;
    match kernel.patch_state(module) {
        Ok(Some(_)) => {}
        Ok(None) => {
            let cause = KernelError::NotALivepatch {
                module: module.to_owned(),
            };
            return Err(match unload(kernel, module, timeout) {
                Ok(()) => StepFailure::clean(cause),
                Err(e) => StepFailure::leaving(
                    cause,
                    format!("module {module} stays loaded, it could not be unloaded: {e}"),
                ),
            });
        }
        // The patch's state cannot be read: take the load back as a stalled one.
        Err(cause) => return Err(take_back(kernel, module, cause, timeout)),
    }
    if let Err(stall) = kernel.wait_transition(module, Goal::Patched, timeout) {
        return Err(take_back(kernel, module, stall, timeout));
    }
    Ok(())
}

/// Reverses the enable transition of a patch just loaded (writing 0 during the
/// transition reverses it: tasks that switched switch back) and unloads its module.
fn take_back(
    kernel: &dyn Livepatch,
    module: &str,
    cause: KernelError,
    timeout: Duration,
) -> StepFailure {
    let undo = kernel
        .disable(module)
        .and_then(|()| kernel.wait_transition(module, Goal::Unpatched, timeout))
        .and_then(|()| unload(kernel, module, timeout));
    match undo {
        Ok(()) => StepFailure::clean(cause),
        Err(e) => StepFailure::leaving(
            cause,
            format!("patch {module} could not be taken back: {e}"),
        ),
    }
}

/// Disables a patch, waits for the transition, unloads the module. A stall is
/// reversed (the patch is enabled again) and reported. A patch whose disable has
/// finished cannot be enabled again: if its module then cannot be unloaded, the
/// patch stays off and that is the failure's residue.
pub fn revert(kernel: &dyn Livepatch, module: &str, timeout: Duration) -> Result<(), StepFailure> {
    kernel.disable(module)?;
    if let Err(stall) = kernel.wait_transition(module, Goal::Unpatched, timeout) {
        let undo = kernel
            .enable(module)
            .and_then(|()| kernel.wait_transition(module, Goal::Patched, timeout));
        return Err(match undo {
            Ok(()) => StepFailure::clean(stall),
            Err(e) => StepFailure::leaving(
                stall,
                format!("the disable of {module} could not be reversed: {e}"),
            ),
        });
    }
    unload(kernel, module, timeout).map_err(|e| {
        StepFailure::leaving(
            e,
            format!("patch {module} is disabled, but its module stays loaded"),
        )
    })
}

/// Unloads a module. The livepatch core drops its reference to a disabled patch's
/// module from a work item, so `delete_module` can briefly report it busy.
pub fn unload(kernel: &dyn Livepatch, module: &str, timeout: Duration) -> Result<(), KernelError> {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        match kernel.unload(module) {
            Ok(()) => return Ok(()),
            Err(KernelError::Unload { errno, .. })
                if matches!(errno, nix::Error::EBUSY | nix::Error::EAGAIN)
                    && started.elapsed() < timeout =>
            {
                std::thread::sleep(poll_delay(attempt));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
