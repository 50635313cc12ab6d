//! `kstack verify`: check stack commits against the trust policy, every digest
//! recomputed from the bytes.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;
use super::log::resolve;
use crate::context::Context;
use crate::error::{CliError, Kind, check_readable_file};
use crate::json::{RunPreJson, ValidityJson, VerifyOutput, VerifyResult};
use crate::ui::Ui;
use kstack_engine::host::prove::Against;

/// Verify stacks: digests, signatures, trust and history; and run-pre matching
///
/// Recomputes the SHA-256 of every module, diff, manifest and stack.toml, checks the
/// signature and that the config's [trust] keys list the signer, and checks the
/// signatures and parent digests of the history. Without REV, every stack in the
/// store is verified. Exits 65 if a stack fails verification (or the worst kind of
/// what failed: 69 when a module a patch targets is missing, 70 for a store kstack
/// cannot read, 1 when the running kernel's code cannot be read).
///
/// With --running (root), also proves that every replaced function's code as the
/// patch was built matches what the running kernel executes (/proc/kcore at the
/// /proc/kallsyms address), as `kstack sync` does before loading. With --image, the
/// same offline against a kernel image file, so a build host can check a patch before
/// it ships: the vmlinux inside the image, and the symbols of --kallsyms (default:
/// the kallsyms kstack captured for that kernel when building for it). The image's
/// build ID must be the one the stack is pinned to (as sync requires of the running
/// kernel); an image check says nothing about a running kernel.
///
/// Trust: the head must satisfy [trust] keys, threshold and revoked. Its history is
/// checked as history: every signature valid and every parent digest matching,
/// whoever signed then (keys since removed or revoked included), because the
/// trusted head's signatures cover its ancestors through the chain of parent
/// digests.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The commit: a stack name, BUILD-ID/NAME, a commit id, or REV~N [default: every
    /// stack]
    pub rev: Option<String>,
    /// Pick among same-named stacks of several kernels: a build ID or a kernel image
    /// [default: the running kernel]
    #[arg(long, value_name = "BUILD-ID|IMAGE")]
    pub kernel: Option<String>,
    /// Also match the patches' before images against the running kernel
    #[arg(long, conflicts_with = "image")]
    pub running: bool,
    /// Also match them against a kernel image (bzImage or vmlinux)
    #[arg(long, value_name = "VMLINUZ")]
    pub image: Option<std::path::PathBuf>,
    /// The image's symbols: a /proc/kallsyms captured from it booted with nokaslr
    #[arg(long, value_name = "FILE", requires = "image")]
    pub kallsyms: Option<std::path::PathBuf>,
}

pub fn cmd_verify(ui: &Ui, global: &GlobalArgs, args: VerifyArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    // Files named on the command line are checked before anything is read (64).
    if let Some(image) = &args.image {
        check_readable_file(image, "--image")?;
    }
    if let Some(kallsyms) = &args.kallsyms {
        check_readable_file(kallsyms, "--kallsyms")?;
    }
    if ctx.config_path.is_none() {
        return Err(CliError::user("no trust policy: there is no config file")
            .with_hint("pass --config FILE whose [trust] keys lists the keys to trust"));
    }
    let store = ctx.open_store()?;
    let policy = ctx.trust()?;
    let targets: Vec<(String, _, _)> = match args.rev.as_deref() {
        Some(rev) => {
            let r = resolve(&ctx, &store, Some(rev), args.kernel.as_deref())?;
            vec![(rev.to_owned(), r.commit, r.stack)]
        }
        None => store
            .stacks()?
            .into_iter()
            .map(|(stack, head)| (stack.to_string(), head, Some(stack)))
            .collect(),
    };
    // An image is for one kernel build: its code proves nothing for a stack pinned to
    // another, however alike their functions are (sync would refuse that stack on
    // that kernel). Its identity is read first; its text and symbols only when a
    // stack is for it.
    let image_identity = match &args.image {
        Some(path) => Some(kstack_store::ident::image_identity(path)?),
        None => None,
    };
    let mut matcher: Option<Matcher> = None;
    let mut results = Vec::new();
    let mut failed = 0;
    // The kind of the worst failure, which gives the exit code.
    let mut worst: Option<Kind> = None;
    for (name, commit, stack) in &targets {
        let checked = store
            .verify(*commit, stack.as_ref(), &policy)
            .map_err(CliError::from)
            .and_then(|v| {
                let headers = store.history_headers(*commit, None)?;
                Ok((v, headers))
            })
            .and_then(|(v, headers)| match (&image_identity, &args.image) {
                (Some(image), Some(path)) if image.build_id != v.stack.build_id => {
                    Err(CliError::new(
                        Kind::Data,
                        format!(
                            "image check: {} is kernel build ID {} ({}), but the stack is pinned to {} ({}): \
                             its code says nothing about the kernel the stack is for, where sync would refuse it",
                            path.display(),
                            image.build_id,
                            image.release.as_deref().unwrap_or("release unknown"),
                            v.stack.build_id,
                            v.stack.kernel_release
                        ),
                    ))
                }
                _ => Ok((v, headers)),
            });
        let outcome = match checked {
            Ok((v, headers)) => {
                let matcher = match &matcher {
                    Some(m) => m,
                    None => matcher.insert(Matcher::new(&args, image_identity.as_ref())?),
                };
                matcher.prove(&v).map(|proof| (v, headers, proof))
            }
            Err(e) => Err(e),
        };
        let against = matcher.as_ref().map_or(Against::Running, Matcher::against);
        match outcome {
            Ok((v, headers, proof)) => {
                let history = headers.len();
                // Commits below the head that today's policy would not accept on
                // their own: the head's signatures vouch for them through the chain
                // of parent digests (keys rotated out or revoked since they signed).
                let vouched = headers
                    .iter()
                    .skip(1)
                    .filter(|h| policy.judge(&h.signers).is_err())
                    .count();
                for line in proof.iter().flat_map(|p| &p.lines) {
                    ui.line(format!("      {} {line}", against.key()));
                }
                let signers: Vec<String> = v.signers.iter().map(ToString::to_string).collect();
                let window = v.stack.validity.as_ref().map_or_else(
                    || "no validity window".to_owned(),
                    super::plan::describe_window,
                );
                let vouched_note = if vouched > 0 {
                    format!(
                        " ({vouched} signed by keys not trusted today, vouched for by the head)"
                    )
                } else {
                    String::new()
                };
                ui.line(format!(
                    "ok    {name} {}: {} patch(es), {history} commit(s) of history{vouched_note}, signed by {}; {window}",
                    commit.to_hex_with_len(12),
                    v.patches.len(),
                    signers.join(", ")
                ));
                if let Some(p) = &proof
                    && against == Against::Image
                {
                    ui.line(format!(
                        "      image check only: {} function(s) match the image's code; the running kernel was not read",
                        p.matched
                    ));
                }
                results.push(VerifyResult::Ok {
                    rev: name.clone(),
                    commit: commit.to_string(),
                    ok: true,
                    patches: v.patches.len(),
                    history,
                    history_vouched: vouched,
                    signer: v.signer.to_string(),
                    signers,
                    validity: v.stack.validity.as_ref().map(ValidityJson::from),
                    run_pre: proof.as_ref().map(|p| RunPreJson::new(p, against.key())),
                });
            }
            Err(err) => {
                failed += 1;
                worst = Some(worse(worst, err.kind()));
                let message = err.message();
                ui.line(format!("FAIL  {name}: {message}"));
                results.push(VerifyResult::Failed {
                    rev: name.clone(),
                    commit: commit.to_string(),
                    ok: false,
                    error: message,
                });
            }
        }
    }
    if ui.json() {
        ui.emit_json(&VerifyOutput { results, failed });
    }
    if targets.is_empty() {
        ui.status("the store has no stacks");
    }
    if let Some(kind) = worst {
        if ui.json() {
            return Ok(ExitCode::from(kind.exit_code()));
        }
        return Err(CliError::new(
            kind,
            format!("{failed} of {} failed verification", targets.len()),
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// The kind that gives the exit code when several stacks fail for different
/// reasons: a fault of kstack or of the machine outranks something missing, which
/// outranks bad data (what `verify` is for), which outranks a plain failure; so a
/// script that sees 65 knows every failure was the data's.
fn worse(seen: Option<Kind>, next: Kind) -> Kind {
    let rank = |kind: Kind| match kind {
        Kind::Internal => 5,
        Kind::Unavailable => 4,
        Kind::Data => 3,
        Kind::Usage => 2,
        Kind::TempFail => 1,
        Kind::User | Kind::NoChange => 0,
    };
    match seen {
        Some(seen) if rank(seen) >= rank(next) => seen,
        _ => next,
    }
}

/// Where run-pre matching reads the kernel from, if anywhere.
#[allow(clippy::large_enum_variant)] // one value for the whole command
enum Matcher {
    None,
    Running,
    Image {
        text: kstack_engine::runpre::ImageText,
        symbols: kstack_engine::runpre::KallsymsIndex,
        /// The image's modules (the image package's, from the cache), for patches
        /// of modules.
        modules: Option<kstack_engine::runpre::ModulesDir>,
    },
}

impl Matcher {
    fn new(
        args: &VerifyArgs,
        identity: Option<&kstack_store::ident::KernelIdentity>,
    ) -> Result<Matcher, CliError> {
        if args.running {
            return Ok(Matcher::Running);
        }
        let Some(image) = &args.image else {
            return Ok(Matcher::None);
        };
        let text = kstack_engine::runpre::ImageText::open(image)?;
        let build_id = match identity {
            Some(identity) => identity.build_id.clone(),
            None => kstack_store::ident::image_build_id(image)?,
        };
        let cached =
            kstack_engine::builder::assets::Cache::from_env().kernel_with_build_id(&build_id);
        let modules = cached
            .as_ref()
            .map(|k| kstack_engine::runpre::ModulesDir::new(k.modules_dir()));
        const KALLSYMS_HINT: &str =
            "pass --kallsyms FILE (a /proc/kallsyms of that kernel booted with nokaslr)";
        // --kallsyms was checked to be readable: what cannot be read here is the
        // cache's copy, which is missing until kstack has built for the kernel.
        let (kallsyms, kind) = match &args.kallsyms {
            Some(path) => (path.clone(), Kind::Usage),
            None => {
                let kernel = cached.ok_or_else(|| {
                    CliError::new(
                        Kind::Unavailable,
                        format!("no symbols for kernel {build_id}: kstack has not built for it"),
                    )
                    .with_hint(KALLSYMS_HINT)
                })?;
                (kernel.dir().join("kallsyms"), Kind::Unavailable)
            }
        };
        let text_symbols = std::fs::read_to_string(&kallsyms).map_err(|e| {
            CliError::with_source(kind, format!("cannot read {}", kallsyms.display()), e)
                .with_hint(KALLSYMS_HINT)
        })?;
        let symbols = kstack_engine::runpre::KallsymsIndex::parse(&text_symbols)?;
        Ok(Matcher::Image {
            text,
            symbols,
            modules,
        })
    }

    /// What the patches are compared with.
    fn against(&self) -> Against {
        match self {
            Matcher::Image { .. } => Against::Image,
            Matcher::None | Matcher::Running => Against::Running,
        }
    }

    fn prove(
        &self,
        stack: &kstack_store::verify::VerifiedStack,
    ) -> Result<Option<kstack_engine::host::prove::Proof>, CliError> {
        use kstack_engine::host::prove;
        let patches: Vec<_> = stack.patches.iter().collect();
        let proof = match self {
            Matcher::None => return Ok(None),
            Matcher::Running => prove::prove_running(&patches, &|_| true),
            Matcher::Image {
                text,
                symbols,
                modules,
            } => prove::prove(
                &patches,
                &|_| true,
                text,
                symbols,
                modules.as_ref(),
                Against::Image,
            ),
        };
        let what = match self.against() {
            Against::Image => "image check",
            Against::Running => "run-pre",
        };
        proof.map(Some).map_err(|e| CliError::from(e).context(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kstack_engine::host::prove::ProveError;
    use kstack_engine::runpre::RunPreError;

    /// What `verify` reports for a stack keeps its kind: a patch whose module is
    /// missing is 69, a /proc/kcore that cannot be read 1, code that differs 65.
    #[test]
    fn a_failed_proof_keeps_its_kind() {
        let kind = |e: ProveError| CliError::from(e).context("run-pre").kind();
        let missing = ProveError::NoModule {
            patch: "p".into(),
            module: "xfs".into(),
            dir: "/lib/modules/x".into(),
        };
        assert_eq!(kind(missing), Kind::Unavailable);
        let kcore = ProveError::Kernel(RunPreError::Io {
            path: "/proc/kcore".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
        assert_eq!(kind(kcore), Kind::User);
        let differs = ProveError::Mismatch {
            patch: "p".into(),
            reports: vec!["f: does not match".into()],
        };
        assert_eq!(kind(differs), Kind::Data);
    }

    /// The exit code is the worst failure's, whatever the order of the stacks.
    #[test]
    fn the_worst_kind_wins() {
        let fold = |kinds: &[Kind]| kinds.iter().fold(None, |w, &k| Some(worse(w, k)));
        assert_eq!(fold(&[Kind::Data, Kind::User]), Some(Kind::Data));
        assert_eq!(fold(&[Kind::User, Kind::Data]), Some(Kind::Data));
        assert_eq!(
            fold(&[Kind::Data, Kind::Unavailable, Kind::Data]),
            Some(Kind::Unavailable)
        );
        assert_eq!(
            fold(&[Kind::Unavailable, Kind::Internal]),
            Some(Kind::Internal)
        );
        assert_eq!(fold(&[]), None);
    }
}
