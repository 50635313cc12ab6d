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

/// Turn a source fix into a live patch on top of a stack, signed
///
/// With PATCH.diff (a unified diff against the kernel source, as `git diff` or
/// `diff -u` writes it) or --git REPO REV (a commit of a kernel Git tree), kstack
/// builds the patch for the stack's kernel: it compiles the translation units the
/// change touches before and after it, with the kernel's own flags, on the Debian
/// source of exactly that kernel with the stack's earlier patches applied; compares
/// the objects function by function; and links the changed and new functions into a
/// livepatch module, with livepatch relocations for what the module loader cannot
/// resolve. Changes that cannot be live-applied (changed data, __init code, functions
/// ftrace cannot redirect) are refused with the reason. A hook file
/// (<PATCH>.hooks.c beside the diff, or --hooks) is compiled into the module; see
/// kmod/include/kstack/hooks.h.
///
/// With --module, a prebuilt livepatch module built for the stack's kernel release is
/// imported as it is; the functions it replaces are read from its klp_func tables
/// (--function adds more).
///
/// A stack is a name under one kernel build ID; a new one is pinned to --kernel (a
/// build ID, or a kernel image), else to the default kernel of the cache (diffs) or
/// the running kernel (modules). A commit that loses a race with another kstack is
/// rebuilt on the new head and retried.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    kstack commit examples/patches/0001-proc-version-banner.diff --stack prod\n  \
    kstack commit --git ~/src/linux v6.1.193~3 --stack prod\n  \
    kstack commit --module kstack_cmdline.ko --name fix-cmdline -m 'Fix /proc/cmdline'")]
pub struct CommitArgs {
    /// The source change: a unified diff against the kernel source
    #[arg(value_name = "PATCH.diff", conflicts_with_all = ["module", "git"])]
    pub patch: Option<PathBuf>,
    /// A commit of a kernel Git tree to build instead of a diff file
    #[arg(long, num_args = 2, value_names = ["REPO", "REV"], conflicts_with = "module")]
    pub git: Option<Vec<String>>,
    /// A hook file to build into the module [default: <PATCH>.hooks.c beside the diff]
    #[arg(long, value_name = "FILE.c", conflicts_with = "module")]
    pub hooks: Option<PathBuf>,
    /// A prebuilt livepatch module to import
    #[arg(long, value_name = "FILE.ko", required_unless_present_any = ["patch", "git"])]
    pub module: Option<PathBuf>,
    /// The patch's name in the stack [default for diffs: from the file name or the
    /// commit's summary]
    #[arg(long, value_name = "NAME", required_unless_present_any = ["patch", "git"])]
    pub name: Option<String>,
    /// Why the patch is added (signed with the stack) [default for diffs: the diff's
    /// or the commit's first line]
    #[arg(long, short = 'm', value_name = "MESSAGE")]
    pub message: Option<String>,
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
    let change = match (&args.patch, &args.git) {
        (Some(path), _) => Some(super::commit_diff::from_file(path, args.hooks.as_deref())?),
        (None, Some(git)) => Some(super::commit_diff::from_git(
            Path::new(&git[0]),
            &git[1],
            args.hooks.as_deref(),
        )?),
        (None, None) => None,
    };
    let (stack, release) = match (&change, &args.kernel) {
        // A new stack for a source change is pinned to the cache's default kernel:
        // the build host's own kernel is rarely the target.
        (Some(_), None) if !stack_exists(&ctx, &store, args.stack.as_deref())? => {
            let kernel = kstack_engine::builder::assets::Cache::from_env()
                .current()
                .map_err(|e| CliError::new(Kind::Unavailable, crate::error::chain(&e)))?;
            let build_id = kernel
                .build_id()
                .map_err(|e| CliError::new(Kind::Data, crate::error::chain(&e)))?;
            let name = stack_name(&ctx, args.stack.as_deref())?;
            ui.status(format!(
                "new stack {name}: pinned to kernel {} ({build_id})",
                kernel.release
            ));
            (StackId::new(build_id, &name)?, Some(kernel.release))
        }
        _ => target_stack(
            ui,
            &ctx,
            &store,
            args.stack.as_deref(),
            args.kernel.as_deref(),
        )?,
    };
    let (patch, message) = match (&change, &args.module) {
        (Some(change), _) => {
            let name = args
                .name
                .clone()
                .unwrap_or_else(|| change.default_name.clone());
            let message = args
                .message
                .clone()
                .or_else(|| change.default_message.clone())
                .ok_or_else(|| {
                    CliError::new(Kind::Usage, "the diff has no message line: pass -m MESSAGE")
                })?;
            let mut patch = super::commit_diff::build(ui, &store, &stack, &name, change)?;
            patch.functions.extend(args.functions.iter().cloned());
            (patch, message)
        }
        (None, Some(module_path)) => {
            let module = read_input(module_path)?;
            let diff = args.diff.as_deref().map(read_input).transpose()?;
            let module_file = module_path.file_name().map_or_else(
                || module_path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let message = args.message.clone().ok_or_else(|| {
                CliError::new(Kind::Usage, "pass -m MESSAGE: why the patch is added")
            })?;
            let patch = NewPatch {
                name: args.name.clone().unwrap_or_default(),
                module,
                module_file,
                diff,
                functions: args.functions.clone(),
                build: Default::default(),
                source: PatchSource::Prebuilt,
                extra: Default::default(),
            };
            (patch, message)
        }
        (None, None) => {
            return Err(CliError::new(
                Kind::Usage,
                "nothing to commit: give PATCH.diff, --git REPO REV or --module FILE.ko",
            ));
        }
    };
    let author = author();
    let prepared = with_retry(ui, &stack, || {
        store.add_patch(
            &stack,
            release.as_deref(),
            patch.clone(),
            &message,
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

/// Whether the stack a write goes to exists already (for any kernel).
fn stack_exists(ctx: &Context, store: &Store, flag: Option<&str>) -> Result<bool, CliError> {
    let name = stack_name(ctx, flag)?;
    let running = ident::running_kernel_build_id().ok();
    Ok(store.find_stack(&name, running.as_ref())?.is_some())
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
