//! `kstack init`: create the store (a bare Git repository); idempotent.

use std::process::ExitCode;

use clap::Args;
use kstack_store::store::Store;

use super::GlobalArgs;
use crate::context::Context;
use crate::error::CliError;
use crate::json::InitOutput;
use crate::ui::Ui;

/// Create the store, a bare Git repository (nothing happens if it exists)
///
/// The store's path is --store, else KSTACK_STORE, else the config's [store] path,
/// else /var/lib/kstack/store for root ($XDG_DATA_HOME/kstack/store for others).
#[derive(Debug, Args)]
pub struct InitArgs {}

pub fn cmd_init(ui: &Ui, global: &GlobalArgs, _args: InitArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    let path = ctx.store_path();
    let existed = Store::open(&path).is_ok();
    let store = Store::init(&path)?;
    if ui.json() {
        ui.emit_json(&InitOutput {
            store: store.path().display().to_string(),
            created: !existed,
        });
    } else if existed {
        ui.line(format!(
            "Store already exists at {}",
            store.path().display()
        ));
    } else {
        ui.line(format!(
            "Initialized empty kstack store in {}",
            store.path().display()
        ));
    }
    Ok(ExitCode::SUCCESS)
}
