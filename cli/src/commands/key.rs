//! `kstack key generate` / `kstack key show`: the ed25519 key that signs stacks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use kstack_store::keys::{self, SecretKey};

use super::GlobalArgs;
use crate::context::Context;
use crate::error::{CliError, Kind};
use crate::json::KeyOutput;
use crate::ui::Ui;

/// Manage the signing key
#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    Generate(KeyGenerateArgs),
    Show(KeyShowArgs),
}

/// Generate a signing key and print its public key
///
/// The private key is written with mode 0600 and never over an existing file. Put
/// the printed public key in the config's [trust] keys on every host that should
/// accept stacks signed with it, and the private key's path in [trust] signing_key
/// where stacks are committed.
#[derive(Debug, Args)]
pub struct KeyGenerateArgs {
    /// Where to write the private key [default: the config's [trust] signing_key,
    /// else /etc/kstack/signing.key for root, ~/.config/kstack/signing.key for others]
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Print the public key of a key file, as one line for [trust] keys
#[derive(Debug, Args)]
pub struct KeyShowArgs {
    /// A private key file, or a file holding a public key line [default: as for
    /// `key generate`]
    pub file: Option<PathBuf>,
}

pub fn cmd_key(ui: &Ui, global: &GlobalArgs, args: KeyArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    match args.command {
        KeyCommand::Generate(args) => {
            let path = args.out.unwrap_or_else(|| default_key_path(&ctx));
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_private_dir(dir)?;
            }
            let key = SecretKey::generate()?;
            key.write_new(&path)?;
            let public = key.public();
            if ui.json() {
                ui.emit_json(&KeyOutput {
                    path: path.display().to_string(),
                    public_key: public.to_string(),
                });
            } else {
                ui.status(format!(
                    "Wrote a new private key to {} (mode 0600). Trust its public key with\n  [trust]\n  keys = [\"{public}\"]",
                    path.display()
                ));
                ui.line(public.to_string());
            }
        }
        KeyCommand::Show(args) => {
            let path = args.file.unwrap_or_else(|| default_key_path(&ctx));
            let public = keys::read_public_key(&path)?;
            if ui.json() {
                ui.emit_json(&KeyOutput {
                    path: path.display().to_string(),
                    public_key: public.to_string(),
                });
            } else {
                ui.line(public.to_string());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The config's signing key, else the per-user or system default.
pub(crate) fn default_key_path(ctx: &Context) -> PathBuf {
    if let Some(path) = &ctx.config.trust.signing_key {
        return path.clone();
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/etc/kstack/signing.key");
    }
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/".into())).join(".config")
        });
    config_home.join("kstack/signing.key")
}

/// Creates the key's directory, readable by its owner only when kstack makes it.
fn create_private_dir(dir: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            CliError::with_source(Kind::User, format!("cannot create {}", dir.display()), e)
        })
}
