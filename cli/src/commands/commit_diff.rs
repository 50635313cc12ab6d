//! `kstack commit PATCH.diff` and `kstack commit --git REPO REV`: check a source
//! change against the stack's kernel, then build its livepatch module. The work is
//! the engine's (`builder::source`, `builder::pipeline`); this module shows it.

use std::path::PathBuf;

use kstack_engine::builder::assets::{Cache, Kernel};
use kstack_engine::builder::pipeline::{self, BuildRequest, Phase};
use kstack_engine::builder::sign::ModuleSigner;
use kstack_engine::builder::source::{self, Base, Change};
use kstack_store::commit::NewPatch;
use kstack_store::store::{StackId, Store};

use crate::context::Context;
use crate::error::{CliError, Kind};
use crate::ui::Ui;

/// A change that passed every check that needs no build.
#[derive(Debug)]
pub struct Checked {
    kernel: Kernel,
    base: Base,
    change: Change,
    cache: Cache,
    guest_binary: PathBuf,
}

/// Finds the stack's kernel in the cache, reads the stack's earlier patches, checks
/// the change against that kernel's source and the build tools ([`pipeline::check`]),
/// and finds the static kstack that the build may boot.
pub fn check(store: &Store, stack: &StackId, change: Change) -> Result<Checked, CliError> {
    let cache = Cache::from_env();
    let kernel = cache.kernel_with_build_id(&stack.build_id).ok_or_else(|| {
        CliError::new(
            Kind::Unavailable,
            format!(
                "no kernel with build ID {} is in the cache {}",
                stack.build_id,
                cache.root().display()
            ),
        )
        .with_hint("fetch it with `kstack kernel add RELEASE` (see `kstack kernel list`)")
    })?;
    let base = source::base(store, stack)?;
    pipeline::check(&kernel, &base.earlier, &change.diff)?;
    // The first build for a kernel boots it to read its symbols.
    let guest_binary = kstack_engine::sandbox::find_guest_binary()?;
    Ok(Checked {
        kernel,
        base,
        change,
        cache,
        guest_binary,
    })
}

/// The signer of built modules, when the config's `[build]` names a key and a
/// certificate; both are checked before anything is built.
pub fn module_signer(ctx: &Context) -> Result<Option<ModuleSigner>, CliError> {
    let at = || {
        ctx.config_path
            .as_deref()
            .map_or_else(String::new, |p| format!(" in {}", p.display()))
    };
    let signing = ctx
        .config
        .build
        .module_signing()
        .map_err(|e| CliError::new(Kind::Data, format!("{e}{}", at())))?;
    signing
        .map(|(key, cert)| ModuleSigner::load(key, cert))
        .transpose()
        .map_err(|e| CliError::from(e).context(format!("[build]{}", at())))
}

/// Builds a checked change with a progress bar and returns the patch to commit.
pub fn build(
    ui: &Ui,
    checked: Checked,
    name: &str,
    signer: Option<ModuleSigner>,
    reuse: bool,
) -> Result<(NewPatch, Vec<String>), CliError> {
    let Checked {
        kernel,
        base,
        change,
        cache,
        guest_binary,
    } = checked;
    for patch in &base.without_diff {
        ui.status(format!(
            "note: earlier patch {patch} has no source diff (a prebuilt module); building without it"
        ));
    }
    let request = BuildRequest {
        kernel: &kernel,
        earlier: base.earlier,
        diff: change.diff.clone(),
        hooks: change.hooks.clone(),
        name: name.to_owned(),
        position: base.position,
        guest_binary,
        signer,
        reuse,
    };
    let work = cache.root().join("build");
    let bar = ui.steps(Phase::ALL.len() as u64, "building");
    let mut step = 0;
    let result = pipeline::build(&request, &work, &mut |phase| {
        bar.set_position(step);
        bar.set_message(phase.describe());
        step += 1;
    });
    bar.finish_and_clear();
    let built = result?;
    for (phase, took) in &built.timings {
        ui.status(format!(
            "  {:<48} {:>6.1}s",
            phase.describe(),
            took.as_secs_f64()
        ));
    }
    ui.status(format!("  {}", built.reused.describe()));
    for note in &built.notes {
        ui.status(format!("note: {note}"));
    }
    let notes = built.notes.clone();
    Ok((change.into_patch(name, built), notes))
}
