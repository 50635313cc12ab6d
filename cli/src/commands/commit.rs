//! `kstack commit --module`: import a prebuilt livepatch module as a new signed patch
//! on top of a stack. Also home to what the store-writing commands share: the
//! signing key, the author, and which stack and kernel a command means.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use kstack_store::commit::{CommitError, NewPatch, Prepared};
use kstack_store::ident::{self, BuildId, KernelIdentity};
use kstack_store::keys::SecretKey;
use kstack_store::model::{FunctionRef, PatchSource};
use kstack_store::store::{Author, StackId, Store, StoreError};

use super::GlobalArgs;
use crate::context::Context;
use crate::error::{CliError, Kind};
use crate::ui::Ui;

/// Add a prebuilt livepatch module to a stack as a new signed patch
///
/// The module must be a livepatch module (livepatch=Y in its .modinfo) built for the
/// stack's kernel release. A stack is a name under one kernel build ID; a new one is
/// pinned to --kernel (a build ID, or a kernel image to read it from), else to the
/// running kernel. The functions the module replaces are read from its klp_func
/// tables; --function adds more. A commit that loses a race with another kstack is
/// rebuilt on the new head and retried.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    kstack commit --module kstack_cmdline.ko --name fix-cmdline -m 'Fix /proc/cmdline'\n  \
    kstack commit --module fix.ko --name fix --stack prod --kernel /boot/vmlinuz-6.1.0-56-cloud-amd64 -m 'Fix' \\\n      --function cmdline_proc_show --diff fix.diff")]
pub struct CommitArgs {
    /// The livepatch module to import
    #[arg(long, value_name = "FILE.ko")]
    pub module: PathBuf,
    /// The patch's name in the stack
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Why the patch is added (signed with the stack)
    #[arg(long, short = 'm', value_name = "MESSAGE")]
    pub message: String,
    /// The stack [default: the config's [stack] name]
    #[arg(long, value_name = "NAME")]
    pub stack: Option<String>,
    /// The kernel the stack is pinned to: a build ID or a kernel image [default: the
    /// stack's, or the running kernel for a new stack]
    #[arg(long, value_name = "BUILD-ID|IMAGE")]
    pub kernel: Option<String>,
    /// A function the patch replaces, in vmlinux or a module (repeatable)
    #[arg(long = "function", value_name = "[OBJECT:]NAME[,SYMPOS]")]
    pub functions: Vec<FunctionRef>,
    /// The source change the module was built from, kept with the patch
    #[arg(long, value_name = "FILE")]
    pub diff: Option<PathBuf>,
    /// The private key to sign with [default: the config's [trust] signing_key]
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

pub fn cmd_commit(ui: &Ui, global: &GlobalArgs, args: CommitArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    let store = ctx.open_store()?;
    let key = signing_key(&ctx, args.key.as_deref())?;
    let module = read_input(&args.module)?;
    let diff = args.diff.as_deref().map(read_input).transpose()?;
    let (stack, release) = target_stack(
        ui,
        &ctx,
        &store,
        args.stack.as_deref(),
        args.kernel.as_deref(),
    )?;
    let module_file = args.module.file_name().map_or_else(
        || args.module.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let patch = NewPatch {
        name: args.name.clone(),
        module,
        module_file,
        diff,
        functions: args.functions.clone(),
        build: Default::default(),
        source: PatchSource::Prebuilt,
        extra: Default::default(),
    };
    let author = author();
    let prepared = with_retry(ui, &stack, || {
        store.add_patch(
            &stack,
            release.as_deref(),
            patch.clone(),
            &args.message,
            &author,
            &key,
        )
    })?;
    let verified = store.check(prepared.commit, Some(&stack))?;
    let added = verified
        .patches
        .last()
        .expect("the commit just made holds the added patch");
    let functions: Vec<String> = added
        .manifest
        .functions
        .iter()
        .map(ToString::to_string)
        .collect();
    if ui.json() {
        ui.emit_json(&serde_json::json!({
            "commit": prepared.commit.to_string(),
            "parent": prepared.parent.map(|p| p.to_string()),
            "stack": { "build_id": stack.build_id.to_hex(), "name": stack.name },
            "kernel_release": verified.stack.kernel_release,
            "patch": {
                "name": added.entry.name,
                "dir": added.entry.dir,
                "module_name": added.manifest.module_name,
                "manifest_sha256": added.entry.manifest_sha256.to_hex(),
                "functions": functions,
            },
            "signer": key.public().to_string(),
        }));
    } else {
        ui.line(format!(
            "Committed {} to stack {} ({}) as patch {}",
            added.entry.name,
            stack.name,
            stack.build_id.short(),
            added.entry.dir
        ));
        ui.line(format!("  commit   {}", prepared.commit));
        ui.line(format!(
            "  module   {} for {}",
            added.manifest.module_name, verified.stack.kernel_release
        ));
        if functions.is_empty() {
            ui.line("  replaces (unknown: pass --function to record them)");
        } else {
            ui.line(format!("  replaces {}", functions.join(", ")));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_input(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::user(format!("cannot read {}: {e}", path.display())))
}

/// Runs a store write, and again (up to three times in all) when another kstack moved
/// the stack first: the write is rebuilt on the new head each time.
pub(crate) fn with_retry(
    ui: &Ui,
    stack: &StackId,
    mut write: impl FnMut() -> Result<Prepared, CommitError>,
) -> Result<Prepared, CliError> {
    const ATTEMPTS: u32 = 3;
    let mut attempt = 1;
    loop {
        match write() {
            Err(CommitError::Store(
                e @ (StoreError::StackMoved { .. } | StoreError::Locked { .. }),
            )) if attempt < ATTEMPTS => {
                let why = match e {
                    StoreError::Locked { .. } => "is being updated by another kstack",
                    _ => "was moved by another kstack",
                };
                ui.status(format!(
                    "stack {} {why}; retrying on its new head",
                    stack.name
                ));
                std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
                attempt += 1;
            }
            other => return other.map_err(CliError::from),
        }
    }
}

/// The key that signs new commits: `--key`, else the config's `[trust] signing_key`.
pub(crate) fn signing_key(ctx: &Context, flag: Option<&Path>) -> Result<SecretKey, CliError> {
    let path = match flag.or(ctx.config.trust.signing_key.as_deref()) {
        Some(path) => path.to_owned(),
        None => {
            let default = super::key::default_key_path(ctx);
            if !default.exists() {
                return Err(CliError::user("no signing key").with_hint(
                    "run `kstack key generate`, then set [trust] signing_key in the config or pass --key FILE",
                ));
            }
            default
        }
    };
    Ok(SecretKey::read(&path)?)
}

/// Who makes a commit: `$KSTACK_AUTHOR` (`Name <email>`), else `$USER` (else root)
/// at this host; now, or at `$KSTACK_TIMESTAMP` (seconds since the epoch), so that
/// commits can be reproduced.
pub(crate) fn author() -> Author {
    let time = std::env::var("KSTACK_TIMESTAMP")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
    if let Ok(text) = std::env::var("KSTACK_AUTHOR")
        && let Some((name, rest)) = text.split_once('<')
        && let Some(email) = rest.strip_suffix('>')
    {
        return Author {
            name: name.trim().to_owned(),
            email: email.trim().to_owned(),
            time,
        };
    }
    let name = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".to_owned());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    Author {
        email: format!("{name}@{host}"),
        name,
        time,
    }
}

/// A `--kernel` value: a build ID in hex, or a kernel image to read one from.
pub(crate) fn parse_kernel(arg: &str) -> Result<KernelIdentity, CliError> {
    let path = Path::new(arg);
    if !path.exists()
        && let Ok(build_id) = arg.parse::<BuildId>()
    {
        return Ok(KernelIdentity {
            build_id,
            release: None,
        });
    }
    Ok(ident::image_identity(path)?)
}

/// The build ID that picks among same-named stacks: `--kernel`, else the running
/// kernel's (if it can be read).
pub(crate) fn kernel_hint(arg: Option<&str>) -> Result<Option<BuildId>, CliError> {
    match arg {
        Some(arg) => Ok(Some(parse_kernel(arg)?.build_id)),
        None => Ok(ident::running_kernel_build_id().ok()),
    }
}

/// The stack name a command means: the flag, else the config's `[stack] name`.
pub(crate) fn stack_name(ctx: &Context, flag: Option<&str>) -> Result<String, CliError> {
    flag.map(str::to_owned)
        .or_else(|| ctx.config.stack.as_ref().map(|s| s.name.clone()))
        .ok_or_else(|| {
            CliError::user("which stack? none was given")
                .with_hint("pass --stack NAME or set [stack] name in the config")
        })
}

/// The stack a write goes to, and the kernel release when it is known. An existing
/// stack of that name is found by `--kernel` or, among several, by the running
/// kernel; a new stack is pinned to `--kernel` or the running kernel.
pub(crate) fn target_stack(
    ui: &Ui,
    ctx: &Context,
    store: &Store,
    stack_flag: Option<&str>,
    kernel_flag: Option<&str>,
) -> Result<(StackId, Option<String>), CliError> {
    let name = stack_name(ctx, stack_flag)?;
    if let Some(arg) = kernel_flag {
        let kernel = parse_kernel(arg)?;
        let id = StackId::new(kernel.build_id, &name)?;
        return Ok((id, kernel.release));
    }
    let running = ident::running_kernel().ok();
    if let Some(found) = store.find_stack(&name, running.as_ref().map(|k| &k.build_id))? {
        return Ok((found, None));
    }
    let running = running.ok_or_else(|| {
        CliError::new(
            Kind::User,
            format!("stack {name} does not exist and the running kernel's build ID cannot be read"),
        )
        .with_hint("pass --kernel BUILD-ID or --kernel /boot/vmlinuz-... to pin the new stack")
    })?;
    ui.status(format!(
        "new stack {name}: pinned to the running kernel {} ({})",
        running.build_id,
        running.release.as_deref().unwrap_or("release unknown")
    ));
    Ok((StackId::new(running.build_id, &name)?, running.release))
}
