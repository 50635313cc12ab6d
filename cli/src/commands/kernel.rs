//! `kstack kernel add` / `kstack kernel list`: the kernels kstack can build for and
//! boot in the sandbox.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use kstack_engine::builder::assets::{self, Cache, FetchOptions, KernelLine};
use kstack_engine::builder::symbols::KernelSymbols;

use super::GlobalArgs;
use crate::error::{CliError, Kind};
use crate::json::{KernelAddOutput, KernelEntry};
use crate::ui::Ui;

/// Manage the kernels in the cache (images, headers, prepared source trees)
#[derive(Debug, Args)]
pub struct KernelArgs {
    #[command(subcommand)]
    pub command: KernelCommand,
}

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    Add(KernelAddArgs),
    List(KernelListArgs),
}

/// Fetch a Debian kernel release into the cache
///
/// Takes Debian 12's 6.1 line (6.1.0-56-cloud-amd64, 6.1.0-56-amd64) and its 6.12 line
/// (6.12.117+deb12-cloud-amd64, 6.12.117+deb12-amd64), cloud and generic flavours.
/// Downloads the release's unsigned image (unpacked, not installed, its modules
/// decompressed), installs its headers with apt, and unpacks and prepares the line's
/// source (linux-source-6.1 or linux-source-6.12) of exactly the image's Debian
/// version, which `kstack commit PATCH.diff` builds against; then boots the image once
/// in the sandbox to keep its symbols (/proc/kallsyms), which builds resolve against. Any release still in the
/// Debian archive can be added, not only the newest: fleets run older kernels.
/// Needs root (apt). The cache is $KSTACK_CACHE, default ~/.cache/kstack.
#[derive(Debug, Args)]
// `--version` is the Debian package version here, not kstack's (clap's debug
// assertions refuse the two on one command).
#[command(disable_version_flag = true)]
pub struct KernelAddArgs {
    /// The kernel release, as `uname -r` prints it (6.1.0-56-cloud-amd64,
    /// 6.12.117+deb12-cloud-amd64); a line and flavour (6.12-cloud-amd64, 6.1-amd64)
    /// for its newest release; or `current` for the one linux-image-cloud-amd64
    /// depends on now
    pub release: String,
    /// The Debian package version [default: the archive's candidate for that release]
    #[arg(long)]
    pub version: Option<String>,
    /// Only the image and headers, no source tree (enough for `kstack try`)
    #[arg(long)]
    pub no_source: bool,
    /// Make it the kernel `kstack try` boots by default
    #[arg(long)]
    pub default: bool,
}

/// List the kernels in the cache, with their build IDs
#[derive(Debug, Args)]
pub struct KernelListArgs {}

pub fn cmd_kernel(ui: &Ui, _global: &GlobalArgs, args: KernelArgs) -> Result<ExitCode, CliError> {
    let cache = Cache::from_env();
    match args.command {
        KernelCommand::Add(args) => {
            let (release, version) = if args.release == "current" {
                assets::resolve_current_release()?
            } else if let Some(line) = KernelLine::of_line_name(&args.release) {
                line.check_supported()
                    .map_err(|reason| assets::AssetError::Unsupported {
                        release: args.release.clone(),
                        reason,
                    })?;
                assets::resolve_newest_release(&line)?
            } else {
                assets::check_release(&args.release)?;
                let version = match args.version {
                    Some(v) => v,
                    None => {
                        assets::package_version(&format!("linux-image-{}-unsigned", args.release))?
                    }
                };
                (args.release, version)
            };
            let spinner = ui.spinner(format!("fetching kernel {release} ({version})"));
            let result = assets::fetch_kernel(
                &cache,
                &release,
                &version,
                FetchOptions {
                    headers: true,
                    source: !args.no_source,
                    make_current: args.default,
                    symbols: !args.no_source,
                },
                &mut |line| spinner.set_message(line.to_owned()),
            );
            spinner.finish_and_clear();
            let kernel = result?;
            // Its symbols, which every build and `verify --image` resolve against,
            // are read now (one boot of the image in the sandbox) rather than by the
            // first build. Not fatal: a build reads them itself, and reports why it
            // could not.
            let kallsyms = capture_symbols(ui, &kernel);
            // The image was just fetched: one without a build ID is bad data.
            let build_id = kstack_store::ident::image_build_id(&kernel.vmlinuz())
                .map_err(|e| CliError::from(e).with_kind(Kind::Data))?;
            let line = kernel.line();
            if ui.json() {
                ui.emit_json(&KernelAddOutput {
                    line: line.as_ref().map(|l| l.line.clone()),
                    flavour: line.map(|l| l.flavour),
                    build_id: build_id.to_hex(),
                    image: kernel.vmlinuz().display().to_string(),
                    source: kernel.source().map(|s| s.display().to_string()),
                    kallsyms: kallsyms.map(|k| k.display().to_string()),
                    release,
                    version,
                });
            } else {
                ui.line(format!("{release} ({version}) build ID {build_id}"));
            }
            Ok(ExitCode::SUCCESS)
        }
        KernelCommand::List(_) => {
            let current = cache.current().ok().map(|k| k.release);
            let rows: Vec<KernelEntry> = cache
                .kernels()
                .into_iter()
                .map(|kernel| KernelEntry {
                    line: kernel.line().map(|l| l.line),
                    flavour: kernel.line().map(|l| l.flavour),
                    build_id: kstack_store::ident::image_build_id(&kernel.vmlinuz())
                        .map(|b| b.to_hex())
                        .unwrap_or_else(|e| format!("? ({e})")),
                    version: kernel.version(),
                    default: current.as_deref() == Some(kernel.release.as_str()),
                    headers: kernel.headers().join(".config").is_file(),
                    source: kernel.source().map(|s| s.display().to_string()),
                    release: kernel.release,
                })
                .collect();
            if ui.json() {
                ui.emit_json(&rows);
                return Ok(ExitCode::SUCCESS);
            }
            if rows.is_empty() {
                ui.line(format!(
                    "no kernels in {} (kstack kernel add current)",
                    cache.root().display()
                ));
            }
            for r in rows {
                ui.line(format!(
                    "{} {:<28} {:<5} {:<12} {:<20} {}  headers:{} source:{}",
                    if r.default { "*" } else { " " },
                    r.release,
                    r.line.as_deref().unwrap_or("?"),
                    r.flavour.as_deref().unwrap_or("?"),
                    r.version.as_deref().unwrap_or("?"),
                    r.build_id,
                    if r.headers { "yes" } else { "no" },
                    if r.source.is_some() { "prepared" } else { "no" },
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Boots `kernel` once in the sandbox to keep its kallsyms in the cache (what
/// `kstack commit` and `verify --image` read), unless they are kept already; the
/// file, or `None` after saying why it could not.
fn capture_symbols(ui: &Ui, kernel: &assets::Kernel) -> Option<std::path::PathBuf> {
    let file = kernel.dir().join("kallsyms");
    if file.is_file() {
        return Some(file);
    }
    let spinner = ui.spinner(format!(
        "reading the symbols of {} (one boot in the sandbox)",
        kernel.release
    ));
    let captured = kstack_engine::sandbox::find_guest_binary()
        .map_err(|e| e.to_string())
        .and_then(|guest| {
            KernelSymbols::kallsyms_for(&kernel.vmlinuz(), &file, &guest).map_err(|e| e.to_string())
        });
    spinner.finish_and_clear();
    match captured {
        Ok(_) => Some(file),
        Err(why) => {
            ui.status(format!(
                "note: the symbols of {} were not read now ({why}); the first build reads them",
                kernel.release
            ));
            None
        }
    }
}
