//! `kstack log`: a stack's history, newest first, like `git log` of its ref. Also
//! home to what the reading commands share: resolving a revision and saying whether
//! a signer is trusted.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Args;
use kstack_store::keys::{KeyStanding, PublicKey, TrustPolicy};
use kstack_store::rev::Resolved;
use kstack_store::store::{CommitInfo, ObjectId, Store, format_time};

use super::GlobalArgs;
use crate::context::Context;
use crate::error::CliError;
use crate::json::{CommitJson, LogOutput, SignerJson, StackJson};
use crate::ui::Ui;

/// Show the history of a stack, newest first
///
/// Reads commit headers only, so it is fast on long histories; the signers shown are
/// the keys the commit names (the committer, then approvals), each marked trusted,
/// revoked or untrusted by the config's [trust] keys and revoked. `kstack show` and
/// `kstack verify` check the signatures and every digest.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  kstack log\n  kstack log prod~3 -n 5\n  kstack log --oneline 3b43fad50348/prod"
)]
pub struct LogArgs {
    /// Where to start: a stack name, BUILD-ID/NAME, a commit id, or REV~N [default:
    /// the config's stack]
    pub rev: Option<String>,
    /// Pick among same-named stacks of several kernels: a build ID or a kernel image
    /// [default: the running kernel]
    #[arg(long, value_name = "BUILD-ID|IMAGE")]
    pub kernel: Option<String>,
    /// Show at most N commits
    #[arg(long = "max-count", short = 'n', value_name = "N")]
    pub max_count: Option<usize>,
    /// One line per commit: short id and summary
    #[arg(long)]
    pub oneline: bool,
}

pub fn cmd_log(ui: &Ui, global: &GlobalArgs, args: LogArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    let store = ctx.open_store()?;
    let trust = Trust::load(&ctx)?;
    let resolved = resolve(&ctx, &store, args.rev.as_deref(), args.kernel.as_deref())?;
    let log = store.log(resolved.commit, args.max_count)?;
    if ui.json() {
        ui.emit_json(&LogOutput {
            stack: resolved.stack.as_ref().map(StackJson::from),
            commits: log
                .iter()
                .map(|c| {
                    let signers = c.signers();
                    CommitJson::new(c, trust.signers_json(&signers), trust.accepts(&signers))
                })
                .collect(),
        });
        return Ok(ExitCode::SUCCESS);
    }
    // Like git's decoration: the stack's name beside its head.
    let head = match &resolved.stack {
        Some(stack) => store.stack_head(stack)?.map(|h| (h, stack.name.clone())),
        None => None,
    };
    let text = render(&log, head.as_ref(), args.oneline, &trust)
        .expect("formatting into a String cannot fail");
    ui.line(text.trim_end());
    Ok(ExitCode::SUCCESS)
}

/// The log as text: with `write!` into one `String`, not a `format!` per line, as a
/// long history is many lines.
fn render(
    log: &[CommitInfo],
    head: Option<&(ObjectId, String)>,
    oneline: bool,
    trust: &Trust,
) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    for (i, c) in log.iter().enumerate() {
        let decoration = match head {
            Some((h, name)) if *h == c.id => format!(" ({name})"),
            _ => String::new(),
        };
        if oneline {
            let short = c.id.to_hex_with_len(12);
            let promoted = kstack_store::promote::promoted_from(&c.message)
                .map(|(stack, commit)| {
                    format!(" [from {stack} {}]", &commit[..commit.len().min(12)])
                })
                .unwrap_or_default();
            writeln!(out, "{short}{decoration} {}{promoted}", c.summary())?;
            continue;
        }
        if i > 0 {
            out.push('\n');
        }
        writeln!(out, "commit {}{decoration}", c.id)?;
        writeln!(out, "Author: {} <{}>", c.author, c.email)?;
        writeln!(out, "Date:   {}", format_time(c.time))?;
        match &c.signer {
            Some(key) => writeln!(out, "Signer: {key} ({})", trust.label(Some(key)))?,
            None => writeln!(out, "Signer: none ({})", trust.label(None))?,
        }
        for key in &c.approvals {
            writeln!(out, "Approved-by: {key} ({})", trust.label(Some(key)))?;
        }
        if let Some((stack, commit)) = kstack_store::promote::promoted_from(&c.message) {
            writeln!(out, "Promoted-From: {stack} {commit}")?;
        }
        out.push('\n');
        for line in kstack_store::promote::without_trailer(&c.message).lines() {
            writeln!(out, "    {line}")?;
        }
    }
    Ok(out)
}

/// The trust policy, and whether there was a config to take it from.
#[derive(Debug)]
pub(crate) struct Trust {
    pub policy: TrustPolicy,
    pub has_config: bool,
}

impl Trust {
    pub fn load(ctx: &Context) -> Result<Trust, CliError> {
        Ok(Trust {
            policy: ctx.trust()?,
            has_config: ctx.config_path.is_some(),
        })
    }

    /// Whether `signers` satisfy the policy: threshold, revocations.
    pub fn accepts(&self, signers: &[PublicKey]) -> bool {
        self.has_config && self.policy.judge(signers).is_ok()
    }

    /// "trusted", "revoked", "untrusted", "untrusted (no config)" or "unsigned".
    pub fn label(&self, key: Option<&PublicKey>) -> &'static str {
        match key {
            None => "unsigned",
            Some(_) if !self.has_config => "untrusted (no config)",
            Some(k) => match self.policy.standing(k) {
                KeyStanding::Trusted => "trusted",
                KeyStanding::Revoked => "revoked",
                KeyStanding::Untrusted => "untrusted",
            },
        }
    }

    /// The signers for `--json`, each with its standing.
    pub fn signers_json(&self, signers: &[PublicKey]) -> Vec<SignerJson> {
        signers
            .iter()
            .map(|k| SignerJson {
                key: k.to_string(),
                standing: match self.policy.standing(k) {
                    KeyStanding::Trusted if self.has_config => "trusted",
                    KeyStanding::Revoked => "revoked",
                    _ => "untrusted",
                },
            })
            .collect()
    }
}

/// Resolves a revision, defaulting to the config's stack, else the store's only
/// stack. `kernel` (or the running kernel) picks among same-named stacks.
pub(crate) fn resolve(
    ctx: &Context,
    store: &Store,
    rev: Option<&str>,
    kernel: Option<&str>,
) -> Result<Resolved, CliError> {
    let hint = super::commit::kernel_hint(kernel)?;
    let rev = match rev {
        Some(rev) => rev.to_owned(),
        None => {
            match &ctx.config.stack {
                Some(stack) => stack.name.clone(),
                None => {
                    let stacks = store.stacks()?;
                    match stacks.as_slice() {
                        [(only, _)] => only.to_string(),
                        [] => return Err(CliError::user("the store has no stacks yet").with_hint(
                            "add a patch with `kstack commit`, or fetch stacks with `kstack pull`",
                        )),
                        _ => {
                            return Err(CliError::user("which stack? the store has several")
                            .with_hint("name one (see `kstack stacks`), or set [stack] name in the config"));
                        }
                    }
                }
            }
        }
    };
    Ok(store.resolve(&rev, hint.as_ref())?)
}
