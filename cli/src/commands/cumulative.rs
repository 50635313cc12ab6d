//! The stack's cumulative module, which `kstack commit` and `kstack revert` give every
//! stack commit they make: every patch of the stack in one livepatch module with
//! `replace = true` (docs/replace-mode.md), built from the patches' diffs, or the
//! reason the stack cannot have one. The build is the engine's
//! (`pipeline::build_cumulative`); this module decides when and shows it.

use std::collections::BTreeMap;
use std::time::Duration;

use kstack_engine::builder::assets::Cache;
use kstack_engine::builder::pipeline::{self, CumulativeRequest, Phase, StackPatch};
use kstack_engine::builder::sign::ModuleSigner;
use kstack_store::commit::{CommitError, Cumulative, NewCumulative, Prepared};
use kstack_store::keys::SecretKey;
use kstack_store::model::{BEFORE_FILE, DIFF_FILE, HOOKS_FILE, PatchSource};
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

/// The cumulative module of a verified (prepared) stack commit, or why it has none.
/// A build that fails does not fail the commit: its patches stand on their own, and
/// a host syncs the stack patch by patch.
fn build(ui: &Ui, stack: &VerifiedStack, how: HowToBuild<'_>) -> Cumulative {
    match patches_of(stack) {
        Err(reason) => Cumulative::Impossible(reason),
        Ok(patches) => match build_patches(ui, stack, patches, how) {
            Ok(c) => c,
            Err(reason) => {
                ui.status(format!(
                    "warning: no cumulative module for this commit: {reason}"
                ));
                Cumulative::Impossible(reason)
            }
        },
    }
}

/// What the cumulative module is built from: every patch's diff and hooks. A patch
/// without a diff (a prebuilt module) has no source to build it from.
fn patches_of(stack: &VerifiedStack) -> Result<Vec<StackPatch>, String> {
    let mut patches = Vec::new();
    for patch in &stack.patches {
        let diff = match (patch.manifest.source, patch.files.get(DIFF_FILE)) {
            (PatchSource::Diff, Some(diff)) => diff.clone(),
            _ => {
                return Err(format!(
                    "patch {} is a prebuilt module (commit --module), which kstack cannot \
                     build into a cumulative module",
                    patch.entry.name
                ));
            }
        };
        patches.push(StackPatch {
            name: patch.entry.name.clone(),
            module_name: patch.manifest.module_name.clone(),
            diff,
            hooks: patch.files.get(HOOKS_FILE).cloned(),
        });
    }
    if patches.is_empty() {
        return Err("the stack has no patches".to_owned());
    }
    if let Some(reason) = pipeline::cumulative_obstacle(&patches) {
        return Err(reason);
    }
    Ok(patches)
}

fn build_patches(
    ui: &Ui,
    stack: &VerifiedStack,
    patches: Vec<StackPatch>,
    how: HowToBuild<'_>,
) -> Result<Cumulative, String> {
    let cache = Cache::from_env();
    let kernel = cache
        .kernel_with_build_id(&stack.stack.build_id)
        .ok_or_else(|| {
            format!(
                "kernel {} ({}) is not in the build cache {} (kstack kernel add)",
                stack.stack.kernel_release,
                stack.stack.build_id,
                cache.root().display()
            )
        })?;
    let guest_binary = kstack_engine::sandbox::find_guest_binary().map_err(|e| e.to_string())?;
    let ids: Vec<String> = patches.iter().map(|p| p.module_name.clone()).collect();
    let request = CumulativeRequest {
        kernel: &kernel,
        patches,
        guest_binary,
        signer: how.signer.cloned(),
        reuse: how.reuse,
    };
    let bar = ui.steps(Phase::ALL.len() as u64, "building the cumulative module");
    let mut step = 0;
    let result = pipeline::build_cumulative(&request, &cache.root().join("build"), &mut |phase| {
        bar.set_position(step);
        bar.set_message(format!("cumulative module: {}", phase.describe()));
        step += 1;
    });
    bar.finish_and_clear();
    let built =
        result.map_err(|e| format!("building it failed: {}", kstack_store::error_chain(&e)))?;
    let took: Duration = built.timings.iter().map(|(_, d)| *d).sum();
    ui.status(format!(
        "  cumulative module {} of {} patch(es) built in {:.1}s",
        built.module_name,
        ids.len(),
        took.as_secs_f64()
    ));
    Ok(Cumulative::Module(NewCumulative {
        patches: ids,
        module: built.module,
        functions: built.functions,
        build: built.build_info,
        extra: BTreeMap::from([(BEFORE_FILE.to_owned(), built.before.to_toml().into_bytes())]),
    }))
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
