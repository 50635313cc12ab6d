//! `kstack show`: one stack commit with its patches, after checking every digest and
//! the signature.

use std::process::ExitCode;

use clap::Args;
use kstack_store::store::format_time;

use super::GlobalArgs;
use super::log::{Trust, resolve};
use crate::context::Context;
use crate::error::CliError;
use crate::json::{ArtifactJson, PatchJson, ShowOutput, ShowStack, ValidityJson};
use crate::ui::Ui;

/// Show a stack commit: its signer, its patches and what they replace
///
/// Every digest and signature is checked first; a commit that fails is reported as
/// such (exit 65) and not shown. Lists every signer (the committer, then approvals)
/// and the signed validity window.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The commit: a stack name, BUILD-ID/NAME, a commit id, or REV~N [default: the
    /// config's stack]
    pub rev: Option<String>,
    /// Pick among same-named stacks of several kernels: a build ID or a kernel image
    /// [default: the running kernel]
    #[arg(long, value_name = "BUILD-ID|IMAGE")]
    pub kernel: Option<String>,
}

pub fn cmd_show(ui: &Ui, global: &GlobalArgs, args: ShowArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    let store = ctx.open_store()?;
    let trust = Trust::load(&ctx)?;
    let resolved = resolve(&ctx, &store, args.rev.as_deref(), args.kernel.as_deref())?;
    let info = store.commit_info(resolved.commit)?;
    let v = store.check(resolved.commit, resolved.stack.as_ref())?;
    let label = trust.label(Some(&v.signer));
    let accepted = trust.accepts(&v.signers);
    if ui.json() {
        let patches = v
            .patches
            .iter()
            .map(|p| {
                let m = &p.manifest;
                PatchJson {
                    name: p.entry.name.clone(),
                    dir: p.entry.dir.clone(),
                    manifest_sha256: p.entry.manifest_sha256.to_hex(),
                    source: m.source,
                    module_file: m.module_file.clone(),
                    module_name: m.module_name.clone(),
                    vermagic: m.vermagic.clone(),
                    created_by: m.created_by.clone(),
                    created_at: m.created_at.clone(),
                    functions: m.functions.iter().map(ToString::to_string).collect(),
                    artifacts: m.artifacts.iter().map(ArtifactJson::from).collect(),
                }
            })
            .collect();
        ui.emit_json(&ShowOutput {
            commit: v.commit.to_string(),
            parents: info.parents.iter().map(ToString::to_string).collect(),
            stack: ShowStack {
                build_id: v.stack.build_id.to_hex(),
                name: v.stack.name.clone(),
                kernel_release: v.stack.kernel_release.clone(),
            },
            stack_sha256: v.stack_sha256.to_hex(),
            author: info.author.clone(),
            email: info.email.clone(),
            time: format_time(info.time),
            message: v.stack.message.clone(),
            signer: v.signer.to_string(),
            signers: trust.signers_json(&v.signers),
            trusted: accepted,
            validity: v.stack.validity.as_ref().map(ValidityJson::from),
            verified: true,
            promoted_from: v
                .stack
                .promoted_from
                .as_ref()
                .map(|p| crate::json::PromotedFromJson {
                    stack: p.stack.clone(),
                    commit: p.commit.clone(),
                }),
            patches,
            cumulative: crate::json::CumulativeJson::from(&v),
        });
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!("commit {}\n", v.commit);
    out.push_str(&format!(
        "Stack:  {} for kernel {} ({})\n",
        v.stack.name, v.stack.build_id, v.stack.kernel_release
    ));
    out.push_str(&format!("Author: {} <{}>\n", info.author, info.email));
    out.push_str(&format!("Date:   {}\n", format_time(info.time)));
    out.push_str(&format!(
        "Signer: {} ({label}; signature and digests verified)\n",
        v.signer
    ));
    for key in v.signers.iter().skip(1) {
        out.push_str(&format!(
            "Approved-by: {key} ({}; signature verified)\n",
            trust.label(Some(key))
        ));
    }
    if trust.has_config && !accepted {
        out.push_str(&format!(
            "Trust:  NOT accepted by the config's [trust] (threshold {})\n",
            trust.policy.threshold
        ));
    }
    match &v.stack.validity {
        Some(window) => out.push_str(&format!(
            "Valid:  {}\n",
            super::plan::describe_window(window)
        )),
        None => out.push_str("Valid:  no window (made by an older kstack)\n"),
    }
    if let Some(p) = &v.stack.promoted_from {
        out.push_str(&format!(
            "Promoted from: stack {} commit {} (stack.toml sha256:{})\n",
            p.stack, p.commit, p.stack_sha256
        ));
    }
    out.push('\n');
    for line in v.stack.message.lines() {
        out.push_str(&format!("    {line}\n"));
    }
    out.push('\n');
    if v.patches.is_empty() {
        out.push_str("No patches.\n");
    } else {
        out.push_str(&format!("Patches ({}, in load order):\n", v.patches.len()));
    }
    for p in &v.patches {
        let m = &p.manifest;
        out.push_str(&format!("  {}  module {}\n", p.entry.dir, m.module_name));
        let functions: Vec<String> = m.functions.iter().map(ToString::to_string).collect();
        out.push_str(&format!(
            "      replaces {}\n",
            if functions.is_empty() {
                "(not recorded)".to_owned()
            } else {
                functions.join(", ")
            }
        ));
        for a in &m.artifacts {
            out.push_str(&format!(
                "      {:<12} {} bytes  sha256:{}\n",
                a.path, a.size, a.sha256
            ));
        }
    }
    match (&v.cumulative, &v.stack.no_cumulative) {
        (Some(c), _) => {
            let m = &c.manifest;
            out.push_str(&format!(
                "Cumulative module (every patch, replace = true):\n  {}  module {}\n",
                c.entry.dir, m.module_name
            ));
            let functions: Vec<String> = m.functions.iter().map(ToString::to_string).collect();
            out.push_str(&format!("      replaces {}\n", functions.join(", ")));
            for a in &m.artifacts {
                out.push_str(&format!(
                    "      {:<12} {} bytes  sha256:{}\n",
                    a.path, a.size, a.sha256
                ));
            }
        }
        (None, Some(reason)) => {
            out.push_str(&format!("No cumulative module: {reason}\n"));
        }
        (None, None) => {}
    }
    ui.line(out.trim_end());
    Ok(ExitCode::SUCCESS)
}
