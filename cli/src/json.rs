//! The `--json` schema: one output type per command, in one place so it can be
//! reviewed, and made from the libraries' values here so that a change to an engine
//! type does not change the output unnoticed. docs/json.md documents every field;
//! cli/tests/json_output.rs snapshots what runs without a VM.
//!
//! Conventions: ids and digests are lowercase hex strings, times are RFC 3339 UTC,
//! durations are milliseconds (`*_ms`, `ms`), paths are strings (lossy UTF-8), absent
//! values are `null`.

use kstack_engine::host::Step;
use kstack_engine::host::exec::StepTiming;
use kstack_engine::host::prove::Proof;
use kstack_engine::host::reconcile::{AppliedPatch, ModuleSigning, Prepared, Status, Synced};
use kstack_engine::host::signatures::{ModuleCheck, SignatureReport, Trust, Verdict};
use kstack_engine::host::state::Generation;
use kstack_store::model::{Artifact, PatchSource};
use kstack_store::store::{CommitInfo, StackId, format_time};
use kstack_store::validity::{Freshness, Timestamp, Validity};
use serde::Serialize;

use crate::error::Kind;

/// Any command, when it fails (`kstack --json ...`, exit code not 0).
#[derive(Debug, Serialize)]
pub struct ErrorOutput {
    pub error: ErrorJson,
}

#[derive(Debug, Serialize)]
pub struct ErrorJson {
    /// `user`, `usage`, `data`, `unavailable`, `tempfail` or `internal`.
    pub kind: Kind,
    /// The whole message, `chain` joined with `: `.
    pub message: String,
    /// The error and its causes, outermost first.
    pub chain: Vec<String>,
    pub hint: Option<String>,
    /// The process's exit code.
    pub exit_code: u8,
}

/// A stack: a name under a kernel build ID.
#[derive(Debug, Serialize)]
pub struct StackJson {
    pub build_id: String,
    pub name: String,
}

impl From<&StackId> for StackJson {
    fn from(stack: &StackId) -> Self {
        StackJson {
            build_id: stack.build_id.to_hex(),
            name: stack.name.clone(),
        }
    }
}

/// `kstack init`.
#[derive(Debug, Serialize)]
pub struct InitOutput {
    pub store: String,
    /// False when the store existed already.
    pub created: bool,
}

/// `kstack key generate` and `kstack key show`.
#[derive(Debug, Serialize)]
pub struct KeyOutput {
    /// The key file.
    pub path: String,
    /// `ed25519:<64 hex>`, as `[trust] keys` lists it.
    pub public_key: String,
}

/// `kstack commit`.
#[derive(Debug, Serialize)]
pub struct CommitOutput {
    /// The new stack commit.
    pub commit: String,
    /// The stack's head before it, `null` for a new stack.
    pub parent: Option<String>,
    pub stack: StackJson,
    pub kernel_release: String,
    pub patch: CommittedPatch,
    /// The public key that signed the commit.
    pub signer: String,
    /// The signed validity window.
    pub validity: Option<ValidityJson>,
    /// What the build says the user should know, one sentence each (a module's
    /// debug sites or tracepoint left off while patched, a fallback to kbuild);
    /// absent when there is none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The new commit's cumulative module.
    pub cumulative: CumulativeJson,
}

/// A stack commit's cumulative module: every patch in one livepatch module that
/// replaces whatever the kernel runs (docs/replace-mode.md).
#[derive(Debug, Serialize)]
pub struct CumulativeJson {
    /// Its module's name, `null` when the stack has none.
    pub module_name: Option<String>,
    /// The patches it holds, by name, in load order (empty when there is none).
    pub patches: Vec<String>,
    /// `object:function[,sympos]`.
    pub functions: Vec<String>,
    /// Why the stack has none, `null` when it has one (and for commits made before
    /// cumulative modules).
    pub none_reason: Option<String>,
}

impl From<&kstack_store::verify::VerifiedStack> for CumulativeJson {
    fn from(v: &kstack_store::verify::VerifiedStack) -> Self {
        match &v.cumulative {
            Some(c) => CumulativeJson {
                module_name: Some(c.manifest.module_name.clone()),
                patches: v.patches.iter().map(|p| p.entry.name.clone()).collect(),
                functions: c
                    .manifest
                    .functions
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                none_reason: None,
            },
            None => CumulativeJson {
                module_name: None,
                patches: Vec::new(),
                functions: Vec::new(),
                none_reason: v.stack.no_cumulative.clone(),
            },
        }
    }
}

/// A commit's signed validity window (`null` for a commit an older kstack made).
#[derive(Debug, Serialize)]
pub struct ValidityJson {
    pub signed_at: String,
    pub expires: String,
    /// Whether it had expired when the command ran.
    pub expired: bool,
}

impl From<&Validity> for ValidityJson {
    fn from(w: &Validity) -> Self {
        ValidityJson {
            signed_at: w.signed_at.to_string(),
            expires: w.expires.to_string(),
            expired: matches!(w.freshness(Timestamp::now()), Freshness::Expired { .. }),
        }
    }
}

/// One signer of a commit and how the config's trust policy sees the key.
#[derive(Debug, Serialize)]
pub struct SignerJson {
    pub key: String,
    /// `trusted`, `revoked` or `untrusted` (`untrusted` when there is no config).
    pub standing: &'static str,
}

#[derive(Debug, Serialize)]
pub struct CommittedPatch {
    pub name: String,
    /// Its directory in the stack commit, `NNNN-name`.
    pub dir: String,
    pub module_name: String,
    pub manifest_sha256: String,
    /// `object:function[,sympos]`.
    pub functions: Vec<String>,
}

/// `kstack log`.
#[derive(Debug, Serialize)]
pub struct LogOutput {
    /// The stack the revision named, `null` for a bare commit id.
    pub stack: Option<StackJson>,
    /// Newest first.
    pub commits: Vec<CommitJson>,
}

#[derive(Debug, Serialize)]
pub struct CommitJson {
    pub id: String,
    pub parents: Vec<String>,
    pub author: String,
    pub email: String,
    pub time: String,
    pub message: String,
    /// The key the commit names as its signer (not checked by `log`).
    pub signer: Option<String>,
    /// Every key the commit names as a signer, the committer first, then
    /// approvals (not checked by `log`).
    pub signers: Vec<SignerJson>,
    /// Whether those signers satisfy the config's trust policy (`[trust] keys`,
    /// `threshold`, `revoked`).
    pub trusted: bool,
    /// The commit this one promoted (`kstack promote`), as its message says.
    pub promoted_from: Option<PromotedFromJson>,
}

impl CommitJson {
    pub fn new(c: &CommitInfo, signers: Vec<SignerJson>, trusted: bool) -> Self {
        CommitJson {
            id: c.id.to_string(),
            parents: c.parents.iter().map(ToString::to_string).collect(),
            author: c.author.clone(),
            email: c.email.clone(),
            time: format_time(c.time),
            message: kstack_store::promote::without_trailer(&c.message).to_owned(),
            signer: c.signer.map(|k| k.to_string()),
            signers,
            trusted,
            promoted_from: kstack_store::promote::promoted_from(&c.message)
                .map(|(stack, commit)| PromotedFromJson { stack, commit }),
        }
    }
}

/// `kstack show`.
#[derive(Debug, Serialize)]
pub struct ShowOutput {
    pub commit: String,
    pub parents: Vec<String>,
    pub stack: ShowStack,
    /// The SHA-256 of `stack.toml`, which the signature covers.
    pub stack_sha256: String,
    pub author: String,
    pub email: String,
    pub time: String,
    pub message: String,
    /// The first signer (the committer).
    pub signer: String,
    /// Every signer with a valid signature, the committer first, then approvals.
    pub signers: Vec<SignerJson>,
    /// Whether the signatures satisfy the config's trust policy (`[trust] keys`,
    /// `threshold`, `revoked`).
    pub trusted: bool,
    /// The signed validity window, `null` for a commit an older kstack made.
    pub validity: Option<ValidityJson>,
    /// Always true: a commit that fails verification is an error, not output.
    pub verified: bool,
    /// The commit this one promoted, from the signed `stack.toml`.
    pub promoted_from: Option<PromotedFromJson>,
    /// In load order.
    pub patches: Vec<PatchJson>,
    /// The stack's cumulative module.
    pub cumulative: CumulativeJson,
}

#[derive(Debug, Serialize)]
pub struct ShowStack {
    pub build_id: String,
    pub name: String,
    pub kernel_release: String,
}

#[derive(Debug, Serialize)]
pub struct PatchJson {
    pub name: String,
    pub dir: String,
    pub manifest_sha256: String,
    /// `diff` (built by kstack) or `prebuilt` (imported with --module).
    pub source: PatchSource,
    pub module_file: String,
    pub module_name: String,
    pub vermagic: String,
    pub created_by: String,
    pub created_at: String,
    pub functions: Vec<String>,
    pub artifacts: Vec<ArtifactJson>,
}

#[derive(Debug, Serialize)]
pub struct ArtifactJson {
    /// Relative to the patch's directory.
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

impl From<&Artifact> for ArtifactJson {
    fn from(a: &Artifact) -> Self {
        ArtifactJson {
            path: a.path.clone(),
            sha256: a.sha256.to_hex(),
            size: a.size,
        }
    }
}

/// `kstack verify`.
#[derive(Debug, Serialize)]
pub struct VerifyOutput {
    pub results: Vec<VerifyResult>,
    /// How many results have `ok: false` (exit code 65 when not 0).
    pub failed: usize,
}

/// One verified revision: `ok: true` with what was checked, or `ok: false` with the
/// error.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum VerifyResult {
    Ok {
        rev: String,
        commit: String,
        ok: bool,
        patches: usize,
        /// Commits of history checked (signatures, parent digests).
        history: usize,
        /// Of those below the head, how many today's trust policy would not accept
        /// on their own (signed by keys since removed or revoked, or below the
        /// threshold): history the head's trusted signatures vouch for.
        history_vouched: usize,
        signer: String,
        /// Every signer of the head.
        signers: Vec<String>,
        validity: Option<ValidityJson>,
        /// With --running or --image, else `null`.
        run_pre: Option<RunPreJson>,
    },
    Failed {
        rev: String,
        commit: String,
        ok: bool,
        error: String,
    },
}

#[derive(Debug, Serialize)]
pub struct RunPreJson {
    /// What the code was compared with: `running` (the running kernel) or `image`
    /// (a kernel image file, whose build ID matched the stack's).
    pub against: &'static str,
    /// Functions whose code as built matches the kernel's.
    pub matched: usize,
    /// Patches without before images (prebuilt modules): not proven.
    pub unproven: Vec<String>,
    /// One line per function: `patch: function: verdict`.
    pub functions: Vec<String>,
}

impl RunPreJson {
    pub fn new(p: &Proof, against: &'static str) -> Self {
        RunPreJson {
            against,
            matched: p.matched,
            unproven: p.unproven.clone(),
            functions: p.lines.clone(),
        }
    }
}

/// `kstack stacks`.
#[derive(Debug, Serialize)]
pub struct StacksOutput {
    pub stacks: Vec<StackEntry>,
}

#[derive(Debug, Serialize)]
pub struct StackEntry {
    pub build_id: String,
    pub name: String,
    pub head: String,
    /// The head's time.
    pub time: String,
    /// The head's summary line.
    pub summary: String,
    pub signer: Option<String>,
    pub trusted: bool,
    /// Whether the stack is pinned to the kernel this host runs.
    pub running_kernel: bool,
}

/// `kstack revert`.
#[derive(Debug, Serialize)]
pub struct RevertOutput {
    pub commit: String,
    pub parent: Option<String>,
    pub stack: StackJson,
    /// The reverted patch's name.
    pub reverted: String,
    /// The names of the patches left, in load order.
    pub patches: Vec<String>,
    /// The new commit's cumulative module.
    pub cumulative: CumulativeJson,
}

/// `kstack approve`.
#[derive(Debug, Serialize)]
pub struct ApproveOutput {
    /// The approved commit, which replaced `replaces` as the stack's head.
    pub commit: String,
    /// The head before: the same `stack.toml`, one signature fewer.
    pub replaces: String,
    pub stack: StackJson,
    /// The SHA-256 of `stack.toml`, unchanged by the approval.
    pub stack_sha256: String,
    /// Every signer now, the committer first.
    pub signers: Vec<SignerJson>,
    /// Whether the signatures now satisfy the config's trust policy.
    pub trusted: bool,
}

/// `kstack renew`.
#[derive(Debug, Serialize)]
pub struct RenewOutput {
    /// The new head: the same patches, a new window.
    pub commit: String,
    pub parent: String,
    pub stack: StackJson,
    pub validity: Option<ValidityJson>,
    pub signer: String,
}

/// `kstack promote`.
#[derive(Debug, Serialize)]
pub struct PromoteOutput {
    /// The destination stack's head after the command: the new commit, or the head
    /// that already had these patches.
    pub commit: Option<String>,
    /// The head the new commit was made on, `null` for a new stack or no change.
    pub parent: Option<String>,
    /// The destination stack.
    pub stack: StackJson,
    pub promoted_from: PromotedFromJson,
    /// False when the destination already had exactly these patches.
    pub changed: bool,
    /// The new commit's signed validity window; `null` when nothing was committed.
    pub validity: Option<ValidityJson>,
    /// The patches' names, in load order.
    pub patches: Vec<String>,
}

/// The commit a promotion took its patches from.
#[derive(Debug, Serialize)]
pub struct PromotedFromJson {
    pub stack: String,
    pub commit: String,
}

/// `kstack pull`.
#[derive(Debug, Serialize)]
pub struct PullOutput {
    pub url: String,
    pub stacks: Vec<PulledJson>,
}

#[derive(Debug, Serialize)]
pub struct PulledJson {
    pub build_id: String,
    pub name: String,
    /// The local head before the pull, `null` if the stack is new here.
    pub old: Option<String>,
    /// The fetched head.
    pub new: String,
    /// `updated`, `up-to-date` or `local-ahead`.
    pub outcome: &'static str,
}

/// `kstack generations`.
#[derive(Debug, Serialize)]
pub struct GenerationsOutput {
    /// The number of the generation the host is on.
    pub current: Option<u64>,
    pub generations: Vec<GenerationJson>,
}

#[derive(Debug, Serialize)]
pub struct GenerationJson {
    pub number: u64,
    /// The stack commit, `""` for "no kstack patches".
    pub commit: String,
    pub stack: String,
    pub build_id: String,
    pub created_at: String,
    /// The modules applied, bottom first.
    pub modules: Vec<String>,
}

impl From<&Generation> for GenerationJson {
    fn from(g: &Generation) -> Self {
        GenerationJson {
            number: g.number,
            commit: g.commit.clone(),
            stack: g.stack.clone(),
            build_id: g.build_id.clone(),
            created_at: g.created_at.clone(),
            modules: g.modules.clone(),
        }
    }
}

/// `kstack status`.
#[derive(Debug, Serialize)]
pub struct StatusOutput {
    pub release: String,
    pub build_id: String,
    /// Whether the kernel supports livepatch (`/sys/kernel/livepatch`).
    pub livepatch: bool,
    /// The config's `[sync] mode`: `replace` or `stack`.
    pub mode: &'static str,
    pub generation: Option<GenerationJson>,
    /// kstack's livepatch modules, in load order.
    pub applied: Vec<AppliedJson>,
    /// Livepatches kstack did not load.
    pub foreign: Vec<String>,
    /// Differences between the state file and the kernel.
    pub drift: Vec<String>,
    /// `/proc/sys/kernel/tainted`, and its flags as letters.
    pub taint: u64,
    pub taint_flags: String,
    /// The current generation's commit's signed validity window, `null` when it has
    /// none (no generation, an older kstack's commit, or not in the store).
    pub validity: Option<ValidityJson>,
    /// Who signed the current generation's commit.
    pub signers: Vec<String>,
    pub module_signing: ModuleSigningJson,
    /// How the last sync or rollback ended; `null` before the first.
    pub last_sync: Option<LastSyncJson>,
}

/// The last sync or rollback that held the lock.
#[derive(Debug, Serialize)]
pub struct LastSyncJson {
    /// `sync` or `rollback`.
    pub operation: String,
    pub finished_at: String,
    pub ok: bool,
    /// The generation the host was on after it.
    pub generation: Option<u64>,
    /// Why it failed, `null` when it did not.
    pub error: Option<String>,
}

/// The kernel's module signature enforcement (`status`).
#[derive(Debug, Serialize)]
pub struct ModuleSigningJson {
    /// Whether the kernel refuses modules without a valid signature by a trusted key.
    pub enforced: bool,
    /// `module.sig_enforce`, `null` when unknown.
    pub sig_enforce: Option<bool>,
    /// `none`, `integrity` or `confidentiality`; `null` when unknown.
    pub lockdown: Option<String>,
    pub secure_boot: Option<bool>,
    /// The keys module signatures are checked against, `null` when they cannot be
    /// listed.
    pub trusted_keys: Option<Vec<TrustedKeyJson>>,
    /// Why they cannot be listed.
    pub trusted_keys_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TrustedKeyJson {
    pub keyring: String,
    pub description: String,
}

impl From<&ModuleSigning> for ModuleSigningJson {
    fn from(m: &ModuleSigning) -> Self {
        ModuleSigningJson {
            enforced: m.enforced,
            sig_enforce: m.enforcement.sig_enforce,
            lockdown: m.enforcement.lockdown.clone(),
            secure_boot: m.enforcement.secure_boot,
            trusted_keys: m.trusted_keys.as_ref().map(|keys| {
                keys.iter()
                    .map(|k| TrustedKeyJson {
                        keyring: k.keyring.clone(),
                        description: k.description.clone(),
                    })
                    .collect()
            }),
            trusted_keys_error: m.trusted_keys_error.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AppliedJson {
    pub module: String,
    pub enabled: bool,
    /// Whether its livepatch transition is still running.
    pub transition: bool,
    /// The patch's name, when the current generation's stack has the module
    /// (`cumulative` for its cumulative module).
    pub patch: Option<String>,
    pub functions: Vec<String>,
    /// For the cumulative module: the patches it holds, in load order.
    pub holds: Vec<String>,
    /// The objects the patch changes (`vmlinux`, module names), each with whether
    /// it is patched now (`false`: a module that is not loaded; the kernel patches
    /// it when it loads).
    pub objects: Vec<ObjectJson>,
}

#[derive(Debug, Serialize)]
pub struct ObjectJson {
    pub name: String,
    pub patched: bool,
}

impl From<&AppliedPatch> for AppliedJson {
    fn from(p: &AppliedPatch) -> Self {
        AppliedJson {
            module: p.module.clone(),
            enabled: p.enabled,
            transition: p.transition,
            patch: p.patch.clone(),
            functions: p.functions.clone(),
            holds: p.holds.clone(),
            objects: p
                .objects
                .iter()
                .map(|o| ObjectJson {
                    name: o.name.clone(),
                    patched: o.patched,
                })
                .collect(),
        }
    }
}

impl From<&Status> for StatusOutput {
    fn from(s: &Status) -> Self {
        StatusOutput {
            release: s.release.clone(),
            build_id: s.build_id.clone(),
            livepatch: s.livepatch,
            mode: s.mode.as_str(),
            generation: s.generation.as_ref().map(GenerationJson::from),
            applied: s.applied.iter().map(AppliedJson::from).collect(),
            foreign: s.foreign.clone(),
            drift: s.drift.clone(),
            taint: s.taint,
            taint_flags: s.taint_flags.clone(),
            validity: s.validity.as_ref().map(ValidityJson::from),
            signers: s.signers.iter().map(ToString::to_string).collect(),
            module_signing: ModuleSigningJson::from(&s.module_signing),
            last_sync: s.last_sync.as_ref().map(|l| LastSyncJson {
                operation: l.operation.clone(),
                finished_at: l.finished_at.clone(),
                ok: l.ok,
                generation: l.generation,
                error: l.error.clone(),
            }),
        }
    }
}

/// `kstack plan` and `kstack sync --dry-run`.
#[derive(Debug, Serialize)]
pub struct PlanOutput {
    pub kernel: KernelJson,
    /// The declared stack's name, `null` when none is declared.
    pub stack: Option<String>,
    /// The declared stack commit.
    pub commit: Option<String>,
    /// Applied modules that stay, bottom first.
    pub keep: Vec<String>,
    /// In order: reverts (newest first), then applies; in replace mode, unloads of
    /// leftovers, then the cumulative module's apply.
    pub steps: Vec<StepJson>,
    /// `replace` or `stack`: how the steps reach the declared stack.
    pub mode: &'static str,
    /// Why replace mode (the config's) is done the stack way, `null` otherwise.
    pub fallback: Option<String>,
    /// The declared stack's cumulative module, `null` when it has none.
    pub cumulative: Option<PlanCumulative>,
    pub foreign: Vec<String>,
    /// Whether `steps` is not empty (exit code 2 for `plan`).
    pub changes: bool,
    pub run_pre: PlanRunPre,
    /// The declared commit's signed validity window.
    pub validity: Option<ValidityJson>,
    /// What was accepted with a warning: an expired window (`[trust] expired =
    /// "warn"`, a pin, a rollback), a downgrade allowed by `--allow-downgrade`, a
    /// commit without a window.
    pub warnings: Vec<String>,
    pub signatures: PlanSignatures,
}

/// The signatures of the modules a plan applies, as the kernel will judge them.
#[derive(Debug, Serialize)]
pub struct PlanSignatures {
    /// Whether the kernel enforces module signatures.
    pub enforced: bool,
    /// Why (`module.sig_enforce=1`, `lockdown=integrity`), empty when it does not.
    pub reasons: Vec<String>,
    /// One per module to apply.
    pub modules: Vec<ModuleSignatureJson>,
}

#[derive(Debug, Serialize)]
pub struct ModuleSignatureJson {
    pub module: String,
    pub patch: String,
    /// `unsigned`, `malformed` or `signed`.
    pub signature: &'static str,
    /// The key the signature names (`key id <hex>` or `issuer "...", serial <hex>`).
    pub signer: Option<String>,
    /// `trusted`, `untrusted` or `unknown`; `null` when not signed.
    pub trust: Option<&'static str>,
    /// The verdict in words.
    pub detail: String,
}

impl From<&ModuleCheck> for ModuleSignatureJson {
    fn from(m: &ModuleCheck) -> Self {
        let (signature, signer, trust) = match &m.verdict {
            Verdict::Unsigned => ("unsigned", None, None),
            Verdict::Malformed(_) => ("malformed", None, None),
            Verdict::Signed { signer, trust } => (
                "signed",
                Some(signer.to_string()),
                Some(match trust {
                    Trust::Trusted { .. } => "trusted",
                    Trust::NotTrusted => "untrusted",
                    Trust::Unknown(_) => "unknown",
                }),
            ),
        };
        ModuleSignatureJson {
            module: m.module.clone(),
            patch: m.patch.clone(),
            signature,
            signer,
            trust,
            detail: m.describe(),
        }
    }
}

impl From<&SignatureReport> for PlanSignatures {
    fn from(r: &SignatureReport) -> Self {
        PlanSignatures {
            enforced: r.enforcement.enforced(),
            reasons: r.enforcement.reasons(),
            modules: r.modules.iter().map(ModuleSignatureJson::from).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct KernelJson {
    pub release: String,
    pub build_id: String,
}

#[derive(Debug, Serialize)]
pub struct PlanRunPre {
    pub matched: usize,
    pub unproven: Vec<String>,
    pub functions: Vec<String>,
    pub ms: f64,
}

/// The declared stack's cumulative module, in a plan.
#[derive(Debug, Serialize)]
pub struct PlanCumulative {
    pub module: String,
    /// The patches it holds, by name, in load order.
    pub patches: Vec<String>,
}

/// One step of a plan.
#[derive(Debug, Serialize)]
pub struct StepJson {
    /// `apply`, `revert` or `unload` (a module whose patch is already disabled).
    pub action: &'static str,
    pub module: String,
    /// For `apply`: the patch's position in the stack, from 0 (0 for a cumulative
    /// module, the generation's only one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Whether the module is a stack's cumulative module (`apply` in replace mode):
    /// its one transition replaces the modules in `replaces`, which are then unloaded.
    pub cumulative: bool,
    /// The modules a cumulative module replaces, bottom first; empty otherwise.
    pub replaces: Vec<String>,
}

impl From<&Step> for StepJson {
    fn from(step: &Step) -> Self {
        let (action, index, cumulative, replaces) = match step {
            Step::Apply { index, .. } => ("apply", Some(*index), false, Vec::new()),
            Step::Revert { .. } => ("revert", None, false, Vec::new()),
            Step::Unload { .. } => ("unload", None, false, Vec::new()),
            Step::Replace { replaces, .. } => ("apply", Some(0), true, replaces.clone()),
        };
        StepJson {
            action,
            module: step.module().to_owned(),
            index,
            cumulative,
            replaces,
        }
    }
}

impl From<&Prepared> for PlanOutput {
    fn from(p: &Prepared) -> Self {
        PlanOutput {
            kernel: KernelJson {
                release: p.identity.release.clone(),
                build_id: p.identity.build_id.to_hex(),
            },
            stack: p.desired.stack.as_ref().map(|s| s.stack.name.clone()),
            commit: p.desired.commit().map(|c| c.to_string()),
            keep: p.plan.keep.clone(),
            steps: p.plan.steps.iter().map(StepJson::from).collect(),
            mode: p.plan.mode.as_str(),
            fallback: p.plan.fallback.clone(),
            cumulative: p.desired.stack.as_ref().and_then(|s| {
                s.cumulative.as_ref().map(|c| PlanCumulative {
                    module: c.manifest.module_name.clone(),
                    patches: s.patches.iter().map(|p| p.entry.name.clone()).collect(),
                })
            }),
            foreign: p.foreign.clone(),
            changes: !p.plan.is_empty(),
            run_pre: PlanRunPre {
                matched: p.proof.matched,
                unproven: p.proof.unproven.clone(),
                functions: p.proof.lines.clone(),
                ms: p.proof.elapsed.as_secs_f64() * 1e3,
            },
            validity: p
                .desired
                .stack
                .as_ref()
                .and_then(|s| s.stack.validity.as_ref())
                .map(ValidityJson::from),
            warnings: p.desired.warnings.clone(),
            signatures: PlanSignatures::from(&p.signatures),
        }
    }
}

/// `kstack sync` and `kstack rollback`: the plan, and what was done.
#[derive(Debug, Serialize)]
pub struct SyncOutput {
    #[serde(flatten)]
    pub plan: PlanOutput,
    /// The generation recorded, `null` when nothing changed.
    pub generation: Option<u64>,
    pub timings: Vec<TimingJson>,
    /// Time spent in the kernel's transitions, and in kstack's own work.
    pub kernel_ms: f64,
    pub kstack_ms: f64,
    /// How `kstack_ms` divides: `{phase, ms}` in order.
    pub kstack_phases: Vec<PhaseJson>,
}

#[derive(Debug, Serialize)]
pub struct PhaseJson {
    pub phase: &'static str,
    pub ms: f64,
}

#[derive(Debug, Serialize)]
pub struct TimingJson {
    pub step: StepJson,
    pub ms: f64,
    /// For a cumulative module's apply: replaced modules that could not be unloaded
    /// (the next sync unloads them), with why; empty otherwise.
    pub left_loaded: Vec<String>,
}

impl From<&StepTiming> for TimingJson {
    fn from(t: &StepTiming) -> Self {
        TimingJson {
            step: StepJson::from(&t.step),
            ms: t.elapsed.as_secs_f64() * 1e3,
            left_loaded: t.left_loaded.clone(),
        }
    }
}

impl From<&Synced> for SyncOutput {
    fn from(s: &Synced) -> Self {
        let kernel: std::time::Duration = s.timings.iter().map(|t| t.elapsed).sum();
        SyncOutput {
            plan: PlanOutput::from(&s.prepared),
            generation: s.generation,
            timings: s.timings.iter().map(TimingJson::from).collect(),
            kernel_ms: kernel.as_secs_f64() * 1e3,
            kstack_ms: s.overhead.as_secs_f64() * 1e3,
            kstack_phases: s
                .phases
                .iter()
                .map(|(phase, d)| PhaseJson {
                    phase,
                    ms: d.as_secs_f64() * 1e3,
                })
                .collect(),
        }
    }
}

/// `kstack try`.
#[derive(Debug, Serialize)]
pub struct TryOutput {
    /// The kernel image booted.
    pub kernel: String,
    /// The guest command's exit status (128 + N when killed by signal N).
    pub exit_code: i32,
    /// The signal that killed the guest command, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The kernel's console, with --console, else `null`.
    pub console: Option<String>,
    pub elapsed_ms: u64,
}

/// `kstack kernel add`.
#[derive(Debug, Serialize)]
pub struct KernelAddOutput {
    pub release: String,
    /// The Debian kernel line (`6.1`, `6.12`).
    pub line: Option<String>,
    /// The flavour (`cloud-amd64`, `amd64`).
    pub flavour: Option<String>,
    /// The Debian package version, `null` for a kernel built from a tree.
    pub version: Option<String>,
    pub build_id: String,
    pub image: String,
    /// The prepared source tree, `null` with --no-source.
    pub source: Option<String>,
    /// The kernel's symbols (its `/proc/kallsyms`: read in one boot in the sandbox,
    /// or derived from a tree's `System.map`) kept in the cache, `null` when they
    /// could not be read (the note says why).
    pub kallsyms: Option<String>,
    /// The tree a kernel its owner built was registered from (--tree), `null` for
    /// a Debian kernel.
    pub tree: Option<String>,
}

/// `kstack kernel list`: an array of these.
#[derive(Debug, Serialize)]
pub struct KernelEntry {
    pub release: String,
    /// The Debian kernel line (`6.1`, `6.12`), `null` for a release that names none.
    pub line: Option<String>,
    /// The flavour (`cloud-amd64`, `amd64`), `null` likewise.
    pub flavour: Option<String>,
    pub version: Option<String>,
    /// The image's build ID, or `? (why)` when it cannot be read.
    pub build_id: String,
    /// The kernel `kstack try` boots by default.
    pub default: bool,
    /// Whether its headers are installed.
    pub headers: bool,
    pub source: Option<String>,
    /// The tree a kernel its owner built was registered from, `null` for a Debian
    /// kernel (which has a `line`).
    pub tree: Option<String>,
}
