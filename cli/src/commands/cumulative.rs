//! The stack's cumulative module, which `kstack commit` and `kstack revert` give every
//! stack commit they make: every patch of the stack in one livepatch module with
//! `replace = true` (docs/replace-mode.md), built from the patches' diffs, or the
//! reason the stack cannot have one. What it is built from and the build are the
//! engine's (`source::cumulative`); this module decides when and shows it.

use std::time::Duration;

use kstack_engine::builder::assets::Cache;
use kstack_engine::builder::pipeline::Phase;
use kstack_engine::builder::sign::ModuleSigner;
use kstack_engine::builder::source::{self, CumulativeOutcome};
use kstack_store::commit::{CommitError, Cumulative, Prepared};
use kstack_store::keys::SecretKey;
use kstack_store::store::{Author, StackId, Store, StoreError};
use kstack_store::verify::VerifiedStack;

use crate::error::CliError;
use crate::ui::Ui;

/// How the cumulative module is built: the module signer (`[build]`), and whether to
/// reuse what earlier builds for the kernel recorded (not with `commit --no-cache`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HowToBuild<'a> {
    pub signer: Option<&'a ModuleSigner>,
    pub reuse: bool,
}

/// What the cumulative module of a commit was made of, to reuse when the commit
/// has to be prepared again on a moved head with the same patches.
struct Made {
    patches: Vec<String>,
    cumulative: Cumulative,
}

/// Prepares a stack commit with `prepare`, gives it the stack's cumulative module
/// (built for exactly its patches, or the reason there is none) and publishes it.
/// When another kstack moved the stack first, the commit is prepared again on the new
/// head (up to three times in all); the module is rebuilt only if the patches differ.
pub(crate) fn publish_with_cumulative(
    ui: &Ui,
    store: &Store,
    stack: &StackId,
    how: HowToBuild<'_>,
    author: &Author,
    key: &SecretKey,
    mut prepare: impl FnMut() -> Result<Prepared, CommitError>,
) -> Result<Prepared, CliError> {
    const ATTEMPTS: u32 = 3;
    let mut made: Option<Made> = None;
    let mut attempt = 1;
    loop {
        let prepared = prepare()?;
        let verified = store.check(prepared.commit, Some(stack))?;
        let patches: Vec<String> = verified
            .patches
            .iter()
            .map(|p| p.manifest.module_name.clone())
            .collect();
        let cumulative = match made.take() {
            Some(m) if m.patches == patches => m.cumulative,
            _ => build(ui, &verified, how),
        };
        let amended = store.prepare_cumulative(&prepared, cumulative.clone(), author, key)?;
        match store.publish(&amended) {
            Ok(()) => return Ok(amended),
            Err(CommitError::Store(StoreError::StackMoved { .. } | StoreError::Locked { .. }))
                if attempt < ATTEMPTS =>
            {
                ui.status(format!(
                    "stack {} was moved by another kstack; retrying on its new head",
                    stack.name
                ));
                std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
                made = Some(Made {
                    patches,
                    cumulative,
                });
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The cumulative module of a verified (prepared) stack commit, or why it has none
/// (the engine's `source::cumulative` decides and builds; this shows it). A build
/// that fails does not fail the commit: its patches stand on their own, and a host
/// syncs the stack patch by patch.
fn build(ui: &Ui, stack: &VerifiedStack, how: HowToBuild<'_>) -> Cumulative {
    let cache = Cache::from_env();
    // The bar appears with the build's first phase: a stack that cannot have a
    // cumulative module shows none.
    let mut bar = None;
    let mut step = 0;
    let outcome = source::cumulative(
        stack,
        &cache,
        how.signer.cloned(),
        how.reuse,
        &mut |phase: Phase| {
            let bar = bar.get_or_insert_with(|| {
                ui.steps(Phase::ALL.len() as u64, "building the cumulative module")
            });
            bar.set_position(step);
            bar.set_message(format!("cumulative module: {}", phase.describe()));
            step += 1;
        },
    );
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match &outcome {
        CumulativeOutcome::Built {
            module_name,
            cumulative,
            took,
        } => ui.status(format!(
            "  cumulative module {module_name} of {} patch(es) built in {:.1}s",
            cumulative.patches.len(),
            took.as_secs_f64()
        )),
        CumulativeOutcome::Failed(e) => ui.status(format!(
            "warning: no cumulative module for this commit: {}",
            kstack_store::error_chain(e)
        )),
        CumulativeOutcome::Impossible(_) => {}
    }
    outcome.into_cumulative()
}

/// One line for `commit` and `revert`: the commit's cumulative module, or why it has
/// none.
pub(crate) fn describe(stack: &VerifiedStack) -> String {
    match (&stack.cumulative, &stack.stack.no_cumulative) {
        (Some(c), _) => format!(
            "  cumulative {} holds all {} patch(es) (replace mode: one transition)",
            c.manifest.module_name,
            stack.patches.len()
        ),
        (None, Some(reason)) => format!("  cumulative none: {reason}"),
        (None, None) => "  cumulative none".to_owned(),
    }
}
