//! The executor: runs a plan on the kernel through a [`Livepatch`], step by step,
//! and undoes it on failure.
//!
//! Every step either completes or is reversed before the next begins: a load whose
//! transition stalls is reversed by disabling the patch (the kernel runs the
//! transition backwards) and the module unloaded; a disable that stalls is reversed by
//! enabling again. When a step fails, the completed steps are undone newest first, so
//! the host ends where it started. A disabled livepatch cannot be enabled again, so
//! undoing a revert means loading the module anew, from the verified bytes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::kernel::{Goal, KernelError, Livepatch, TRANSITION_POLL};
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
}

/// A plan that did not complete.
#[derive(Debug, thiserror::Error)]
#[error("{} failed: {cause}{}", describe(.step), undo_report(.undone, .undo_failures))]
pub struct ExecError {
    pub step: Step,
    #[source]
    pub cause: KernelError,
    /// The completed steps that were undone, newest first.
    pub undone: Vec<Step>,
    /// Undo steps that failed too: the host is not where it started.
    pub undo_failures: Vec<(Step, String)>,
}

impl ExecError {
    /// Whether the host is back where it started.
    pub fn restored(&self) -> bool {
        self.undo_failures.is_empty()
    }
}

fn describe(step: &Step) -> String {
    match step {
        Step::Revert { module } => format!("reverting {module}"),
        Step::Unload { module } => format!("unloading {module}"),
        Step::Apply { module, .. } => format!("applying {module}"),
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
            Ok(()) => {
                let elapsed = started.elapsed();
                observer.step_finished(index, step, elapsed);
                done.push(StepTiming {
                    step: step.clone(),
                    elapsed,
                });
            }
            Err(cause) => {
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
                    undone,
                    undo_failures,
                }));
            }
        }
    }
    Ok(done)
}

fn run_step(
    kernel: &dyn Livepatch,
    step: &Step,
    modules: &Modules,
    timeout: Duration,
) -> Result<(), KernelError> {
    match step {
        Step::Apply { module, .. } => {
            let bytes = modules.get(module).ok_or_else(|| missing(module))?;
            apply(kernel, module, bytes, timeout)
        }
        Step::Revert { module } => revert(kernel, module, timeout),
        Step::Unload { module } => unload(kernel, module, timeout),
    }
}

fn undo_step(
    kernel: &dyn Livepatch,
    step: &Step,
    modules: &Modules,
    timeout: Duration,
) -> Result<(), KernelError> {
    match step {
        Step::Apply { module, .. } => revert(kernel, module, timeout),
        Step::Revert { module } => {
            let bytes = modules.get(module).ok_or_else(|| missing(module))?;
            apply(kernel, module, bytes, timeout)
        }
        // The module's patch was already disabled: nothing to give back.
        Step::Unload { .. } => Ok(()),
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

/// Loads a module and waits for its patch to reach every task; a stall is reversed.
pub fn apply(
    kernel: &dyn Livepatch,
    module: &str,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), KernelError> {
    kernel.load(module, bytes)?;
    if kernel.patch_state(module)?.is_none() {
        let _ = unload(kernel, module, timeout);
        return Err(KernelError::NotALivepatch {
            module: module.to_owned(),
        });
    }
    if let Err(stall) = kernel.wait_transition(module, Goal::Patched, timeout) {
        // Writing 0 during the transition reverses it; tasks that switched switch back.
        kernel.disable(module)?;
        kernel.wait_transition(module, Goal::Unpatched, timeout)?;
        unload(kernel, module, timeout)?;
        return Err(stall);
    }
    Ok(())
}

/// Disables a patch, waits for the transition, unloads the module; a stall is
/// reversed (the patch is enabled again) and reported.
pub fn revert(kernel: &dyn Livepatch, module: &str, timeout: Duration) -> Result<(), KernelError> {
    kernel.disable(module)?;
    if let Err(stall) = kernel.wait_transition(module, Goal::Unpatched, timeout) {
        kernel.enable(module)?;
        kernel.wait_transition(module, Goal::Patched, timeout)?;
        return Err(stall);
    }
    unload(kernel, module, timeout)
}

/// Unloads a module. The livepatch core drops its reference to a disabled patch's
/// module from a work item, so `delete_module` can briefly report it busy.
pub fn unload(kernel: &dyn Livepatch, module: &str, timeout: Duration) -> Result<(), KernelError> {
    let started = Instant::now();
    loop {
        match kernel.unload(module) {
            Ok(()) => return Ok(()),
            Err(KernelError::Unload { errno, .. })
                if matches!(errno, nix::Error::EBUSY | nix::Error::EAGAIN)
                    && started.elapsed() < timeout =>
            {
                std::thread::sleep(TRANSITION_POLL);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
