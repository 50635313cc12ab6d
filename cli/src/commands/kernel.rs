//! `kstack kernel add` / `kstack kernel list`: the kernels kstack can build for and
//! boot in the sandbox.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use kstack_engine::builder::assets::{self, Cache, FetchOptions, KernelLine, TreeInput};
use kstack_engine::builder::symbols::KernelSymbols;

use super::GlobalArgs;
use crate::error::{CliError, Kind, check_readable_file};
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

/// Fetch a Debian kernel release into the cache, or register one built from a tree
///
/// Takes Debian 12's 6.1 line (6.1.0-56-cloud-amd64, 6.1.0-56-amd64) and its 6.12 line
/// (6.12.117+deb12-cloud-amd64, 6.12.117+deb12-amd64), cloud and generic flavours.
/// Downloads the release's unsigned image (unpacked, not installed, its modules
/// decompressed), installs its headers with apt, and unpacks and prepares the line's
/// source (linux-source-6.1 or linux-source-6.12) of exactly the image's Debian
/// version, which `kstack commit PATCH.diff` builds against; then boots the image once
/// in the sandbox to keep its symbols (/proc/kallsyms), which builds resolve against.
/// Any release still in the Debian archive can be added, not only the newest: fleets
/// run older kernels.
/// Needs root (apt). The cache is $KSTACK_CACHE, default ~/.cache/kstack.
///
/// With --tree DIR --image FILE, registers a kernel its owner built from a source
/// tree instead: its release (include/config/kernel.release), .config, Module.symvers,
/// System.map (or --kallsyms) and vmlinux, whose build ID the image must have. The
/// tree's sources are copied into the cache and prepared (the tree itself is never
/// written to); the builder, run-pre and `kstack try` then take that kernel as they
/// take a Debian one. It names no Debian line or version.
#[derive(Debug, Args)]
// `--version` is the Debian package version here, not kstack's (clap's debug
// assertions refuse the two on one command).
#[command(disable_version_flag = true)]
pub struct KernelAddArgs {
    /// The kernel release, as `uname -r` prints it (6.1.0-56-cloud-amd64,
    /// 6.12.117+deb12-cloud-amd64); a line and flavour (6.12-cloud-amd64, 6.1-amd64)
    /// for its newest release; or `current` for the one linux-image-cloud-amd64
    /// depends on now
    #[arg(required_unless_present = "tree", conflicts_with = "tree")]
    pub release: Option<String>,
    /// The Debian package version [default: the archive's candidate for that release]
    #[arg(long, conflicts_with = "tree")]
    pub version: Option<String>,
    /// Only the image and headers, no source tree (enough for `kstack try`)
    #[arg(long, conflicts_with = "tree")]
    pub no_source: bool,
    /// A kernel source tree its owner configured and built (make), to register
    #[arg(long, value_name = "DIR", requires = "image")]
    pub tree: Option<PathBuf>,
    /// The bootable image of the tree's build (arch/x86/boot/bzImage)
    #[arg(long, value_name = "FILE", requires = "tree")]
    pub image: Option<PathBuf>,
    /// The kernel's /proc/kallsyms (booted with nokaslr), instead of the tree's
    /// System.map
    #[arg(long, value_name = "FILE", requires = "tree")]
    pub kallsyms: Option<PathBuf>,
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
        KernelCommand::Add(args) => match (args.tree.clone(), args.image.clone()) {
            (Some(tree), Some(image)) => add_tree(ui, &cache, tree, image, args),
            _ => add_debian(ui, &cache, args),
        },
        KernelCommand::List(_) => list(ui, &cache),
    }
}

/// `kernel add --tree DIR --image FILE`.
fn add_tree(
    ui: &Ui,
    cache: &Cache,
    tree: PathBuf,
    image: PathBuf,
    args: KernelAddArgs,
) -> Result<ExitCode, CliError> {
    check_readable_file(&image, "--image")?;
    if let Some(kallsyms) = &args.kallsyms {
        check_readable_file(kallsyms, "--kallsyms")?;
    }
    let spinner = ui.spinner(format!(
        "registering the kernel built in {}",
        tree.display()
    ));
    let result = assets::add_tree_kernel(
        cache,
        &TreeInput {
            tree,
            image,
            kallsyms: args.kallsyms,
            make_current: args.default,
        },
        &mut |line| spinner.set_message(line.to_owned()),
    );
    spinner.finish_and_clear();
    let kernel = result?;
    let build_id = kernel.build_id()?;
    if ui.json() {
        ui.emit_json(&KernelAddOutput {
            line: None,
            flavour: None,
            version: None,
            build_id: build_id.to_hex(),
            image: kernel.vmlinuz().display().to_string(),
            source: kernel.source().map(|s| s.display().to_string()),
            kallsyms: Some(kernel.dir().join("kallsyms"))
                .filter(|k| k.is_file())
                .map(|k| k.display().to_string()),
            tree: kernel.tree().map(|t| t.display().to_string()),
            release: kernel.release,
        });
    } else {
        ui.line(format!(
            "{} (built in {}) build ID {build_id}",
            kernel.release,
            kernel.tree().unwrap_or_default().display()
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// `kernel add RELEASE`: a Debian kernel from the archive.
fn add_debian(ui: &Ui, cache: &Cache, args: KernelAddArgs) -> Result<ExitCode, CliError> {
    let wanted = args
        .release
        .expect("clap requires a release without --tree");
    let (release, version) = if wanted == "current" {
        assets::resolve_current_release()?
    } else if let Some(line) = KernelLine::of_line_name(&wanted) {
        line.check_supported()
            .map_err(|reason| assets::AssetError::Unsupported {
                release: wanted.clone(),
                reason,
            })?;
        assets::resolve_newest_release(&line)?
    } else {
        assets::check_release(&wanted)?;
        let version = match args.version {
            Some(v) => v,
            None => assets::package_version(&format!("linux-image-{wanted}-unsigned"))?,
        };
        (wanted, version)
    };
    let spinner = ui.spinner(format!("fetching kernel {release} ({version})"));
    let result = assets::fetch_kernel(
        cache,
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
    // Its symbols, which every build and `verify --image` resolve against, are read
    // now (one boot of the image in the sandbox) rather than by the first build. Not
    // fatal: a build reads them itself, and reports why it could not.
    let kallsyms = capture_symbols(ui, &kernel);
    // The image was just fetched: one without a build ID is bad data (as the error
    // says of itself), but one kstack cannot read back is kstack's problem, not a
    // bad command line.
    let build_id = kstack_store::ident::image_build_id(&kernel.vmlinuz()).map_err(|e| {
        let unreadable = matches!(e, kstack_store::ident::IdentError::Read { .. });
        let e = CliError::from(e);
        if unreadable {
            e.with_kind(Kind::Internal)
        } else {
            e
        }
    })?;
    let line = kernel.line();
    if ui.json() {
        ui.emit_json(&KernelAddOutput {
            line: line.as_ref().map(|l| l.line.clone()),
            flavour: line.map(|l| l.flavour),
            build_id: build_id.to_hex(),
            image: kernel.vmlinuz().display().to_string(),
            source: kernel.source().map(|s| s.display().to_string()),
            kallsyms: kallsyms.map(|k| k.display().to_string()),
            tree: None,
            release,
            version: Some(version),
        });
    } else {
        ui.line(format!("{release} ({version}) build ID {build_id}"));
    }
    Ok(ExitCode::SUCCESS)
}

/// `kernel list`.
fn list(ui: &Ui, cache: &Cache) -> Result<ExitCode, CliError> {
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
            tree: kernel.tree().map(|t| t.display().to_string()),
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
        // A kernel built from a tree shows the tree where a Debian one shows its
        // line, flavour and version.
        let origin = match &r.tree {
            Some(tree) => format!("{:<39}", format!("tree {tree}")),
            None => format!(
                "{:<5} {:<12} {:<20}",
                r.line.as_deref().unwrap_or("?"),
                r.flavour.as_deref().unwrap_or("?"),
                r.version.as_deref().unwrap_or("?"),
            ),
        };
        ui.line(format!(
            "{} {:<28} {origin} {}  headers:{} source:{}",
            if r.default { "*" } else { " " },
            r.release,
            r.build_id,
            if r.headers { "yes" } else { "no" },
            if r.source.is_some() { "prepared" } else { "no" },
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Boots `kernel` once in the sandbox to keep its kallsyms in the cache (what
/// `kstack commit` and `verify --image` read), unless they are kept already; the
/// file, or `None` after saying why it could not.
fn capture_symbols(ui: &Ui, kernel: &assets::Kernel) -> Option<PathBuf> {
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
