//! `kstack status`: what the kernel runs, and how it compares to kstack's record.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use kstack_engine::host::kernel::PatchedObject;
use kstack_engine::host::kernel::signing::Enforcement;

use super::GlobalArgs;
use crate::context::Context;
use crate::error::{CliError, Kind};
use crate::json::StatusOutput;
use crate::ui::Ui;

/// Show the running kernel, its generation, applied patches, drift and taint
///
/// Reads the kernel's own view (/sys/kernel/livepatch, /proc/modules,
/// /proc/sys/kernel/tainted) and compares it with the state file: a difference is
/// reported as drift. Livepatches that kstack did not load are listed as foreign. The
/// current generation's commit is shown with its signers and its signed validity
/// window (EXPIRED when it has run out: the stack was not renewed, or the store
/// stopped receiving newer commits). Also shows whether the kernel enforces module
/// signatures (module.sig_enforce, lockdown, UEFI Secure Boot) and the keys it trusts
/// for them, and how the last sync ended.
///
/// With --format prometheus, the same as metrics in Prometheus' text format; with
/// --textfile FILE, written to FILE atomically for node-exporter's textfile
/// collector (e.g. /var/lib/prometheus/node-exporter/kstack.prom).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    kstack status\n  \
    kstack status --format prometheus\n  \
    kstack status --format prometheus --textfile /var/lib/prometheus/node-exporter/kstack.prom")]
pub struct StatusArgs {
    /// Output format (--json is the same as --format json)
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the output to FILE (atomically: a temporary file, then a rename)
    /// instead of stdout
    #[arg(long, value_name = "FILE")]
    pub textfile: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Prometheus,
}

pub fn cmd_status(ui: &Ui, global: &GlobalArgs, args: StatusArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    let store = ctx.open_store()?;
    let host = ctx.host(&store)?;
    let status = host.status()?;
    let text = match args.format {
        Format::Prometheus => Some(crate::metrics::render(&status)),
        Format::Json if !ui.json() => Some(
            serde_json::to_string(&StatusOutput::from(&status))
                .expect("the output types hold strings, numbers, lists and maps only")
                + "\n",
        ),
        _ => None,
    };
    if let Some(text) = text {
        match &args.textfile {
            Some(path) => {
                write_atomically(path, text.as_bytes())?;
                ui.status(format!("status: wrote {}", path.display()));
            }
            None => print!("{text}"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.textfile.is_some() {
        return Err(CliError::usage(
            "--textfile needs --format prometheus or --format json",
        ));
    }
    if ui.json() {
        ui.emit_json(&StatusOutput::from(&status));
        return Ok(ExitCode::SUCCESS);
    }
    ui.line(format!("kernel:     {}", status.release));
    ui.line(format!("build ID:   {}", status.build_id));
    ui.line(format!(
        "livepatch:  {}",
        if status.livepatch {
            "supported"
        } else {
            "NOT supported by this kernel"
        }
    ));
    match &status.generation {
        Some(g) => ui.line(format!(
            "generation: {} ({} {}, {})",
            g.number,
            if g.stack.is_empty() {
                "no stack"
            } else {
                &g.stack
            },
            &g.commit[..g.commit.len().min(12)],
            g.created_at
        )),
        None => ui.line("generation: none"),
    }
    if let Some(window) = &status.validity {
        ui.line(format!(
            "validity:   {}",
            super::plan::describe_window(window)
        ));
    }
    if !status.signers.is_empty() {
        let signers: Vec<String> = status.signers.iter().map(ToString::to_string).collect();
        ui.line(format!("signed by:  {}", signers.join(", ")));
    }
    ui.line(format!("mode:       {}", status.mode.as_str()));
    ui.line(format!("applied:    {}", status.applied.len()));
    for p in &status.applied {
        let state = match (p.enabled, p.transition) {
            (true, false) => "enabled",
            (true, true) => "enabling (transition)",
            (false, true) => "disabling (transition)",
            (false, false) => "disabled",
        };
        if p.holds.is_empty() {
            let name = p.patch.as_deref().unwrap_or("?");
            ui.line(format!("  {} [{state}] patch {name}", p.module));
        } else {
            ui.line(format!(
                "  {} [{state}] cumulative: {}",
                p.module,
                p.holds.join(", ")
            ));
        }
        for line in object_lines(&p.objects) {
            ui.line(line);
        }
        for f in &p.functions {
            ui.line(format!("      {f}"));
        }
    }
    for f in &status.foreign {
        ui.line(format!("foreign:    {f} (not kstack's; never touched)"));
    }
    for d in &status.drift {
        ui.line(format!("drift:      {d}"));
    }
    let signing = &status.module_signing;
    ui.line(format!(
        "signatures: {}",
        enforcement_words(&signing.enforcement)
    ));
    match (&signing.trusted_keys, &signing.trusted_keys_error) {
        (Some(keys), _) if keys.is_empty() => ui.line("  trusted keys: none"),
        (Some(keys), _) => {
            for k in keys {
                ui.line(format!("  trusted:  {} ({})", k.description, k.keyring));
            }
        }
        (None, Some(why)) => ui.line(format!("  trusted keys unknown: {why}")),
        (None, None) => {}
    }
    ui.line(format!(
        "taint:      {} {}",
        status.taint,
        if status.taint_flags.is_empty() {
            "(none)".to_owned()
        } else {
            status.taint_flags.clone()
        }
    ));
    Ok(ExitCode::SUCCESS)
}

/// The kernel's own object in a livepatch (`kstack_kfacts::livepatch::VMLINUX`; the
/// CLI does not depend on kfacts for one name).
const VMLINUX: &str = "vmlinux";

/// The objects a patch changes, one line each: patched, or waiting for the module
/// to load (the kernel patches it then). A patch of vmlinux alone has the one
/// object `vmlinux`, always patched: no line for it.
fn object_lines(objects: &[PatchedObject]) -> Vec<String> {
    if objects.iter().all(|o| o.name == VMLINUX && o.patched) {
        return Vec::new();
    }
    objects
        .iter()
        .map(|o| {
            if o.patched {
                format!("      object {}: patched", o.name)
            } else {
                format!(
                    "      object {}: waiting for {} (patched when it loads)",
                    o.name, o.name
                )
            }
        })
        .collect()
}

/// Whether the kernel enforces module signatures, and why, in words: "unknown" when
/// a source that could enforce them cannot be read (sysfs or securityfs not
/// mounted), rather than a "not enforced" nothing showed.
fn enforcement_words(e: &Enforcement) -> String {
    let secure_boot = match e.secure_boot {
        Some(true) => ", UEFI Secure Boot on",
        Some(false) => ", UEFI Secure Boot off",
        None => "",
    };
    if e.enforced() {
        format!("enforced ({})", e.reasons().join(", "))
    } else if !e.known() {
        format!(
            "unknown (cannot read {}){secure_boot}",
            e.unreadable().join(", ")
        )
    } else {
        format!("not enforced (unsigned modules load and taint the kernel){secure_boot}")
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a
/// rename, so that a reader (node-exporter) never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let fail = |e: std::io::Error| {
        CliError::with_source(Kind::User, format!("cannot write {}", path.display()), e)
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".kstack-status")
        .tempfile_in(dir)
        .map_err(fail)?;
    tmp.write_all(bytes).map_err(fail)?;
    // node-exporter runs as another user: the file must be readable.
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(fail)?;
    }
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, patched: bool) -> PatchedObject {
        PatchedObject {
            name: name.into(),
            patched,
        }
    }

    #[test]
    fn each_object_of_a_module_patch_is_patched_or_waiting() {
        assert!(object_lines(&[object("vmlinux", true)]).is_empty());
        assert_eq!(
            object_lines(&[
                object("vmlinux", true),
                object("binfmt_misc", true),
                object("xfs", false),
            ]),
            [
                "      object vmlinux: patched",
                "      object binfmt_misc: patched",
                "      object xfs: waiting for xfs (patched when it loads)",
            ]
        );
    }

    #[test]
    fn enforcement_that_cannot_be_read_is_unknown() {
        let off = Enforcement {
            sig_enforce: Some(false),
            lockdown: Some("none".into()),
            secure_boot: Some(false),
        };
        assert_eq!(
            enforcement_words(&off),
            "not enforced (unsigned modules load and taint the kernel), UEFI Secure Boot off"
        );
        // Neither sysfs nor securityfs mounted: nothing is known.
        assert_eq!(
            enforcement_words(&Enforcement::default()),
            "unknown (cannot read /sys/module/module/parameters/sig_enforce, \
             /sys/kernel/security/lockdown)"
        );
        // sig_enforce off, but lockdown could still refuse unsigned modules.
        let no_securityfs = Enforcement {
            lockdown: None,
            ..off.clone()
        };
        assert_eq!(
            enforcement_words(&no_securityfs),
            "unknown (cannot read /sys/kernel/security/lockdown), UEFI Secure Boot off"
        );
        // One source that enforces is enough to know.
        let lockdown = Enforcement {
            sig_enforce: None,
            lockdown: Some("integrity".into()),
            secure_boot: Some(true),
        };
        assert_eq!(
            enforcement_words(&lockdown),
            "enforced (lockdown=integrity (UEFI Secure Boot))"
        );
    }
}
