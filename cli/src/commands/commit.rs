//! `kstack commit`: a new signed patch on top of a stack, built from a source change
//! (see `commit_diff`) or imported as a prebuilt livepatch module. Also home to what
//! the store-writing commands share: the signing key, the author, and which stack and
//! kernel a command means.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use kstack_engine::builder::source::Change;
use kstack_engine::builder::tree;
use kstack_store::commit::{CommitError, NewPatch, Prepared};
use kstack_store::ident::{self, BuildId, KernelIdentity};
use kstack_store::keys::SecretKey;
use kstack_store::model::{FunctionRef, PatchSource, check_name};
use kstack_store::store::{Author, StackId, Store, StoreError};

use super::GlobalArgs;
use crate::context::Context;
use crate::error::{CliError, Kind, check_readable_file};
use crate::json::{CommitOutput, CommittedPatch, CumulativeJson, StackJson};
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
/// ftrace cannot redirect) are refused with the reason (exit 65). The diff is checked
/// before anything is built: that it is a unified diff and that the files it changes
/// are in the kernel's source. A hook file
/// (<PATCH>.hooks.c beside the diff, or --hooks) is compiled into the module; see
/// kmod/include/kstack/hooks.h. With [build] module_signing_key and
/// module_signing_cert in the config, the module is signed with the kernel's
/// sign-file, for hosts that enforce module signatures.
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
    /// How long the new commit stays valid as the stack's head [default: the
    /// config's [trust] validity, else 30d]
    #[arg(long, env = "KSTACK_VALID_FOR", value_parser = kstack_engine::parse_duration, value_name = "DURATION")]
    pub valid_for: Option<Duration>,
    /// Compile every unit with kbuild in a full copy of the source tree, as the first
    /// build for a kernel does, instead of reusing what earlier builds for the kernel
    /// recorded (objects before the change, compile commands)
    #[arg(long, conflicts_with = "module")]
    pub no_cache: bool,
}

pub fn cmd_commit(ui: &Ui, global: &GlobalArgs, args: CommitArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    // Everything the command line says is checked before anything slow (a build takes
    // seconds): bad arguments exit 64, input that cannot be a patch 65.
    let (patch, message) = patch_input(&args)?;
    let stack_name = stack_name(&ctx, args.stack.as_deref())?;
    let store = ctx.open_store()?;
    let key = signing_key(&ctx, args.key.as_deref())?;
    let module_signer = match &patch {
        Input::Change { .. } => super::commit_diff::module_signer(&ctx)?,
        Input::Module(_) => None,
    };
    let (stack, release, new_stack) = match (&patch, &args.kernel) {
        // A new stack for a source change is pinned to the cache's default kernel:
        // the build host's own kernel is rarely the target.
        (Input::Change { .. }, None) if !stack_exists(&store, &stack_name)? => {
            let kernel = kstack_engine::builder::assets::Cache::from_env().current()?;
            // The cache's own image: one without a build ID is bad data.
            let build_id = kernel
                .build_id()
                .map_err(|e| CliError::from(e).with_kind(Kind::Data))?;
            let note = format!(
                "new stack {stack_name}: pinned to kernel {} ({build_id})",
                kernel.release
            );
            (
                StackId::new(build_id, &stack_name)?,
                Some(kernel.release),
                Some(note),
            )
        }
        _ => target_stack(&store, &stack_name, args.kernel.as_deref())?,
    };
    let prebuilt = matches!(patch, Input::Module(_));
    // What the build says the user should know (a site left off, a fallback).
    let mut notes = Vec::new();
    let patch = match patch {
        Input::Change { change, name } => {
            let checked = super::commit_diff::check(&store, &stack, change)?;
            if let Some(note) = &new_stack {
                ui.status(note);
            }
            let (mut patch, built_notes) =
                super::commit_diff::build(ui, checked, &name, module_signer, !args.no_cache)?;
            patch.functions.extend(args.functions.iter().cloned());
            notes = built_notes;
            patch
        }
        Input::Module(patch) => patch,
    };
    let author = author(valid_for(&ctx, args.valid_for));
    // A prebuilt module's stack has no cumulative module; for a built one the signer
    // is read again (it was moved into the build).
    let cumulative_signer = if prebuilt {
        None
    } else {
        super::commit_diff::module_signer(&ctx)?
    };
    let prepared = super::cumulative::publish_with_cumulative(
        ui,
        &store,
        &stack,
        super::cumulative::HowToBuild {
            signer: cumulative_signer.as_ref(),
            reuse: !args.no_cache,
        },
        &author,
        &key,
        || {
            store.prepare_add_patch(
                &stack,
                release.as_deref(),
                patch.clone(),
                &message,
                &author,
                &key,
            )
        },
    )?;
    if let (Some(note), true) = (&new_stack, prebuilt) {
        ui.status(note);
    }
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
        ui.emit_json(&CommitOutput {
            commit: prepared.commit.to_string(),
            parent: prepared.parent.map(|p| p.to_string()),
            stack: StackJson::from(&stack),
            kernel_release: verified.stack.kernel_release.clone(),
            patch: CommittedPatch {
                name: added.entry.name.clone(),
                dir: added.entry.dir.clone(),
                module_name: added.manifest.module_name.clone(),
                manifest_sha256: added.entry.manifest_sha256.to_hex(),
                functions,
            },
            signer: key.public().to_string(),
            notes,
            cumulative: CumulativeJson::from(&verified),
            validity: verified
                .stack
                .validity
                .as_ref()
                .map(crate::json::ValidityJson::from),
        });
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
        ui.line(super::cumulative::describe(&verified));
    }
    Ok(ExitCode::SUCCESS)
}

/// What a commit adds: a source change to build, or a prebuilt module.
enum Input {
    Change { change: Change, name: String },
    Module(NewPatch),
}

/// The patch that the arguments describe, and its message, each checked.
fn patch_input(args: &CommitArgs) -> Result<(Input, String), CliError> {
    if let Some(module_path) = &args.module {
        let name = args.name.clone().unwrap_or_default();
        check_patch_name(&name)?;
        let message = args
            .message
            .clone()
            .ok_or_else(|| CliError::usage("pass -m MESSAGE: why the patch is added"))?;
        let module = read_input(module_path, "--module")?;
        let diff = args
            .diff
            .as_deref()
            .map(|p| read_input(p, "--diff"))
            .transpose()?;
        let module_file = module_path.file_name().map_or_else(
            || module_path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let patch = NewPatch {
            name,
            module,
            module_file,
            diff,
            functions: args.functions.clone(),
            build: Default::default(),
            source: PatchSource::Prebuilt,
            extra: Default::default(),
        };
        return Ok((Input::Module(patch), message));
    }
    let (change, origin) = match (&args.patch, &args.git) {
        (Some(path), _) => (
            Change::from_file(path, args.hooks.as_deref())?,
            path.display().to_string(),
        ),
        (None, Some(git)) => (
            Change::from_git(Path::new(&git[0]), &git[1], args.hooks.as_deref())?,
            format!("{} {}", git[0], git[1]),
        ),
        (None, None) => {
            return Err(CliError::usage(
                "nothing to commit: give PATCH.diff, --git REPO REV or --module FILE.ko",
            ));
        }
    };
    tree::parse_diff(&change.diff).map_err(|e| CliError::from(e).context(origin))?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| change.default_name.clone());
    check_patch_name(&name)?;
    let message = args
        .message
        .clone()
        .or_else(|| change.default_message.clone())
        .ok_or_else(|| CliError::usage("the diff has no message line: pass -m MESSAGE"))?;
    Ok((Input::Change { change, name }, message))
}

/// A patch name from the command line (or made from a file name) that the store
/// will take.
fn check_patch_name(name: &str) -> Result<(), CliError> {
    check_name("patch", name).map_err(|e| CliError::from(e).with_hint("pass --name NAME"))
}

fn read_input(path: &Path, what: &str) -> Result<Vec<u8>, CliError> {
    check_readable_file(path, what)?;
    std::fs::read(path).map_err(|e| {
        CliError::with_source(
            Kind::Usage,
            format!("cannot read {} ({what})", path.display()),
            e,
        )
    })
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
    let (path, from_config) = match (flag, ctx.config.trust.signing_key.as_deref()) {
        (Some(path), _) => (path.to_owned(), false),
        (None, Some(path)) => (path.to_owned(), true),
        (None, None) => {
            let default = super::key::default_key_path(ctx);
            if !default.exists() {
                return Err(CliError::user("no signing key").with_hint(
                    "run `kstack key generate`, then set [trust] signing_key in the config or pass --key FILE",
                ));
            }
            (default, false)
        }
    };
    SecretKey::read(&path).map_err(|e| {
        let e = CliError::from(e);
        // A key the config names that cannot be read is a fault of the config (65),
        // not of the command line (64).
        match (from_config, &ctx.config_path) {
            (true, Some(config)) => e
                .context(format!("[trust] signing_key in {}", config.display()))
                .with_kind(Kind::Data),
            _ => e,
        }
    })
}

/// How long the commits a command signs stay valid: `--valid-for` (or
/// `KSTACK_VALID_FOR`), else the config's `[trust] validity`, else 30 days.
pub(crate) fn valid_for(ctx: &Context, flag: Option<Duration>) -> Duration {
    flag.or(ctx.config.trust.validity)
        .unwrap_or(kstack_store::validity::DEFAULT_VALIDITY)
}

/// Who makes a commit: `$KSTACK_AUTHOR` (`Name <email>`), else `$USER` (else root)
/// at this host; now, or at `$KSTACK_TIMESTAMP` (seconds since the epoch), so that
/// commits can be reproduced; its validity window lasts `valid_for` from then.
pub(crate) fn author(valid_for: Duration) -> Author {
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
            valid_for,
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
        valid_for,
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

/// Whether a stack of that name exists already: the running kernel's, or the only
/// one of that name.
fn stack_exists(store: &Store, name: &str) -> Result<bool, CliError> {
    let running = ident::running_kernel_build_id().ok();
    Ok(store.find_stack(name, running.as_ref())?.is_some())
}

/// The stack name a command means: the flag, else the config's `[stack] name`,
/// checked as the store will check it.
pub(crate) fn stack_name(ctx: &Context, flag: Option<&str>) -> Result<String, CliError> {
    let (name, from_config) = match (flag, &ctx.config.stack) {
        (Some(name), _) => (name.to_owned(), false),
        (None, Some(stack)) => (stack.name.clone(), true),
        (None, None) => {
            return Err(CliError::user("which stack? none was given")
                .with_hint("pass --stack NAME or set [stack] name in the config"));
        }
    };
    check_name("stack", &name).map_err(|e| {
        let e = CliError::from(e);
        match (from_config, &ctx.config_path) {
            (true, Some(path)) => e
                .context(format!("[stack] name in {}", path.display()))
                .with_kind(Kind::Data),
            _ => e.with_hint("pass --stack NAME"),
        }
    })?;
    Ok(name)
}

/// The stack a write goes to, the kernel release when it is known, and a note to
/// show when the stack is new. An existing stack of that name is found by
/// `--kernel` or, among several, by the running kernel; a new stack is pinned to
/// `--kernel` or the running kernel.
pub(crate) fn target_stack(
    store: &Store,
    name: &str,
    kernel_flag: Option<&str>,
) -> Result<(StackId, Option<String>, Option<String>), CliError> {
    if let Some(arg) = kernel_flag {
        let kernel = parse_kernel(arg)?;
        let id = StackId::new(kernel.build_id, name)?;
        return Ok((id, kernel.release, None));
    }
    let running = ident::running_kernel().ok();
    if let Some(found) = store.find_stack(name, running.as_ref().map(|k| &k.build_id))? {
        return Ok((found, None, None));
    }
    let running = running.ok_or_else(|| {
        CliError::new(
            Kind::User,
            format!("stack {name} does not exist and the running kernel's build ID cannot be read"),
        )
        .with_hint("pass --kernel BUILD-ID or --kernel /boot/vmlinuz-... to pin the new stack")
    })?;
    let note = format!(
        "new stack {name}: pinned to the running kernel {} ({})",
        running.build_id,
        running.release.as_deref().unwrap_or("release unknown")
    );
    Ok((
        StackId::new(running.build_id, name)?,
        running.release,
        Some(note),
    ))
}
