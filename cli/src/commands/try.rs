//! `kstack try`: boot a kernel in a QEMU sandbox and run a command in it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use kstack_engine::builder::assets::Cache;
use kstack_engine::sandbox::{self, Accel, Sandbox, SandboxOptions};

use super::GlobalArgs;
use crate::context::Context;
use crate::error::{CliError, Kind, check_readable_file};
use crate::json::TryOutput;
use crate::ui::Ui;

/// Boot a kernel in a throw-away QEMU VM and run a command in it
///
/// The VM boots the kernel image with an initramfs holding a static kstack (as
/// /init and /bin/kstack), busybox, and the files given with --file. The command runs
/// with /bin/sh, its words joined by spaces as ssh does, so shell syntax works when
/// quoted: kstack try -- 'insmod /m.ko && cat /proc/cmdline'.
///
/// With --config FILE, the VM first runs the stack that FILE declares: the store
/// (--store, else the config's [store] path) and the config are copied into the guest,
/// `kstack sync` and `kstack status` run there (their output on stderr), and the
/// command runs only if the sync succeeded. This is how a stack is tried before it
/// reaches a real host.
///
/// The command's stdout and stderr are printed as they were in the guest, separate
/// from the kernel's messages (--console shows those), and kstack exits with the
/// command's exit status. Nothing on the host is changed. QEMU runs under software
/// emulation (TCG) unless --kvm is given.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    kstack try -- uname -r\n  \
    kstack try --file ./kstack_demo.ko:/root/demo.ko -- 'insmod /root/demo.ko; cat /proc/cmdline'\n  \
    kstack try --kernel /boot/vmlinuz-6.1.0-56-cloud-amd64 --append nokaslr -- cat /proc/kallsyms\n  \
    kstack try --config examples/kstack.toml -- cat /proc/cmdline")]
pub struct TryArgs {
    /// The kernel image (bzImage) to boot [default: the kernel that set-up fetched]
    #[arg(long, value_name = "IMAGE")]
    pub kernel: Option<PathBuf>,
    /// Copy a host file into the guest (repeatable)
    #[arg(long = "file", value_name = "SRC:DST", value_parser = parse_file_arg)]
    pub files: Vec<(PathBuf, String)>,
    /// Add an argument to the kernel command line (repeatable), e.g. nokaslr
    #[arg(long, value_name = "ARG")]
    pub append: Vec<String>,
    /// Kill the VM after this long
    #[arg(long, default_value = "180s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Guest memory in MiB
    #[arg(long, default_value_t = sandbox::DEFAULT_MEMORY_MIB, value_name = "MIB")]
    pub memory: u32,
    /// Use KVM instead of TCG (fails early in boot on some hosts)
    #[arg(long)]
    pub kvm: bool,
    /// Print the kernel's console output on stderr after the command's output
    #[arg(long)]
    pub console: bool,
    /// Do not give the guest the kernel's modules (by default its /lib/modules,
    /// with modprobe, when kstack fetched that kernel)
    #[arg(long)]
    pub no_modules: bool,
    /// The command to run in the guest [default with --config: none, only sync and status]
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn parse_file_arg(s: &str) -> Result<(PathBuf, String), String> {
    let (src, dst) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not SRC:DST"))?;
    if !dst.starts_with('/') {
        return Err(format!("guest path {dst:?} must be absolute"));
    }
    Ok((PathBuf::from(src), dst.to_owned()))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .or_else(|_| kstack_engine::parse_duration(s))
}

/// Where `--config` puts the store, the config and the state in the guest.
const GUEST_STORE: &str = "/var/lib/kstack/store";
const GUEST_STATE: &str = "/var/lib/kstack";
const GUEST_CONFIG: &str = "/etc/kstack/kstack.toml";

pub fn cmd_try(ui: &Ui, global: &GlobalArgs, args: TryArgs) -> Result<ExitCode, CliError> {
    for (src, _) in &args.files {
        check_readable_file(src, "--file")?;
    }
    let (kernel, modules) = match args.kernel {
        Some(k) => {
            // An image kstack fetched has its modules in the cache.
            let modules = kstack_store::ident::image_build_id(&k)
                .ok()
                .and_then(|id| Cache::from_env().kernel_with_build_id(&id))
                .map(|cached| cached.modules_dir());
            (k, modules)
        }
        None => {
            let cached = Cache::from_env().current().map_err(|e| {
                CliError::from(e).with_hint(
                    "run `cargo xtask setup` to fetch the Debian cloud kernel, or pass --kernel IMAGE",
                )
            })?;
            (cached.vmlinuz(), Some(cached.modules_dir()))
        }
    };
    let guest_binary = sandbox::find_guest_binary()?;
    let mut options = SandboxOptions::new(&kernel, guest_binary);
    options.timeout = args.timeout;
    options.memory_mib = args.memory;
    options.kernel_args = args.append;
    if args.kvm {
        options.accel = Accel::Kvm;
    }
    let mut vm = Sandbox::new(options)?;
    // The kernel's modules, for modprobe in the guest (and for patches of modules).
    if let Some(dir) = modules.filter(|d| d.join("modules.dep").is_file())
        && !args.no_modules
    {
        vm.add_modules(&dir, &sandbox::modules::ModuleSet::All)?;
    }
    for (src, dst) in &args.files {
        vm.add_host_file(dst, src)?;
    }
    let mut script = String::new();
    if let Some(config) = &global.config {
        let ctx = Context::load(global, true)?;
        let store = ctx.store_path();
        if !store.is_dir() {
            return Err(
                CliError::user(format!("the store {} does not exist", store.display()))
                    .with_hint("pass --store DIR, or set [store] path in the config"),
            );
        }
        vm.add_host_tree(GUEST_STORE, &store)?;
        vm.add_host_file(GUEST_CONFIG, config)?;
        // Sync and status report on stderr, so stdout stays the command's own.
        script.push_str(&format!(
            "export KSTACK_CONFIG={GUEST_CONFIG} KSTACK_STORE={GUEST_STORE} KSTACK_STATE_DIR={GUEST_STATE}\n\
             echo '$ kstack sync' >&2\nkstack sync >&2\nrc=$?\n\
             echo '$ kstack status' >&2\nkstack status >&2\n\
             [ $rc -eq 0 ] || exit $rc\n"
        ));
    } else if args.command.is_empty() {
        return Err(CliError::new(
            Kind::Usage,
            "nothing to run: give a command after --, or --config FILE",
        ));
    }
    script.push_str(&args.command.join(" "));
    script.push('\n');

    let spinner = ui.spinner(format!(
        "booting {} in QEMU ({})",
        kernel.display(),
        if args.kvm { "KVM" } else { "TCG" }
    ));
    let result = vm.run(&script);
    spinner.finish_and_clear();
    let run = result?;

    if ui.json() {
        ui.emit_json(&TryOutput {
            kernel: kernel.display().to_string(),
            exit_code: run.status.code(),
            signal: match run.status {
                sandbox::GuestStatus::Signaled(s) => Some(s),
                sandbox::GuestStatus::Exited(_) => None,
            },
            stdout: run.stdout.clone(),
            stderr: run.stderr.clone(),
            console: args.console.then(|| run.console.clone()),
            elapsed_ms: run.elapsed.as_millis() as u64,
        });
    } else {
        use std::io::Write;
        let _ = std::io::stdout().write_all(run.stdout.as_bytes());
        let _ = std::io::stderr().write_all(run.stderr.as_bytes());
        if args.console {
            eprintln!("--- kernel console ---\n{}", run.console);
        }
        ui.status(format!(
            "kstack try: guest command {} after {:.1}s",
            match run.status {
                sandbox::GuestStatus::Exited(c) => format!("exited with {c}"),
                sandbox::GuestStatus::Signaled(s) => format!("killed by signal {s}"),
            },
            run.elapsed.as_secs_f64()
        ));
    }
    Ok(ExitCode::from(run.status.code().clamp(0, 255) as u8))
}
