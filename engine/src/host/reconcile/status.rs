//! What `kstack status` reports: the generation, the applied patches, the
//! kernel's livepatches and module signature enforcement.

use std::collections::BTreeSet;

use kstack_store::model::FunctionRef;
use kstack_store::store::ObjectId;
use kstack_store::validity::Validity;

use super::{Host, SyncError, is_ours};
use crate::host::kernel;
use crate::host::plan;
use crate::host::state::Generation;

/// One applied patch as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppliedPatch {
    pub module: String,
    pub enabled: bool,
    pub transition: bool,
    /// The patch's name and functions, when the current generation's stack has it
    /// (`cumulative` for the stack's cumulative module).
    pub patch: Option<String>,
    pub functions: Vec<String>,
    /// For a cumulative module, the patches it holds, in load order.
    pub holds: Vec<String>,
    /// The objects it changes and whether each is patched: a module's object waits
    /// until that module loads.
    pub objects: Vec<crate::host::kernel::PatchedObject>,
}

/// What `kstack status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub release: String,
    pub build_id: String,
    pub livepatch: bool,
    /// The configured `[sync] mode`.
    pub mode: plan::Mode,
    pub generation: Option<Generation>,
    pub applied: Vec<AppliedPatch>,
    pub foreign: Vec<String>,
    /// Differences between the state file and the kernel.
    pub drift: Vec<String>,
    pub taint: u64,
    pub taint_flags: String,
    /// The validity window of the current generation's commit (when the store has
    /// the commit and the commit has a window).
    #[serde(skip)]
    pub validity: Option<Validity>,
    /// Who signed the current generation's commit.
    #[serde(skip)]
    pub signers: Vec<kstack_store::keys::PublicKey>,
    /// What the kernel enforces for module signatures, and the keys it trusts.
    pub module_signing: ModuleSigning,
    /// How the last sync or rollback ended.
    pub last_sync: Option<crate::host::state::LastSync>,
}

/// The kernel's module signature enforcement, as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModuleSigning {
    pub enforcement: crate::host::kernel::signing::Enforcement,
    pub enforced: bool,
    /// The keys module signatures are checked against; `None` when they cannot be
    /// listed (`trusted_keys_error` says why).
    pub trusted_keys: Option<Vec<crate::host::kernel::signing::TrustedKey>>,
    pub trusted_keys_error: Option<String>,
}

impl ModuleSigning {
    /// The running kernel's.
    pub fn read() -> ModuleSigning {
        let enforcement = kernel::signing::Enforcement::read();
        let (trusted_keys, trusted_keys_error) = match kernel::signing::TrustedKeys::read() {
            kernel::signing::TrustedKeys::Known(keys) => (Some(keys), None),
            kernel::signing::TrustedKeys::Unknown(why) => (None, Some(why)),
        };
        ModuleSigning {
            enforced: enforcement.enforced(),
            enforcement,
            trusted_keys,
            trusted_keys_error,
        }
    }
}

impl Host<'_> {
    /// Reads the kernel and the state; verifies the current generation's stack to
    /// name the patches' functions (without it, modules are listed by name only).
    pub fn status(&self) -> Result<Status, SyncError> {
        let identity = kernel::identify()?;
        let state = self.state.load()?;
        let (taint, taint_flags) = kernel::taint()?;
        let livepatch = self.livepatch.supported();
        let loaded = if livepatch {
            self.livepatch.loaded_patches()?
        } else {
            Vec::new()
        };
        let current = state.current().cloned();
        let verified = current
            .as_ref()
            .and_then(|g| ObjectId::from_hex(g.commit.as_bytes()).ok())
            .and_then(|id| self.store.check(id, None).ok());
        let validity = verified.as_ref().and_then(|v| v.stack.validity);
        let signers = verified
            .as_ref()
            .map(|v| v.signers.clone())
            .unwrap_or_default();
        let functions_by_module: Vec<(String, String, Vec<FunctionRef>, Vec<String>)> = verified
            .map(|v| {
                let names: Vec<String> = v.patches.iter().map(|p| p.entry.name.clone()).collect();
                v.patches
                    .iter()
                    .map(|p| (p, Vec::new()))
                    .chain(v.cumulative.iter().map(|c| (c, names.clone())))
                    .map(|(p, holds)| {
                        (
                            p.manifest.module_name.clone(),
                            p.manifest.name.clone(),
                            p.manifest.functions.clone(),
                            holds,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ours: BTreeSet<String> = state
            .generations
            .iter()
            .flat_map(|g| g.modules.iter().cloned())
            .collect();
        let mut applied = Vec::new();
        let mut foreign = Vec::new();
        for p in loaded {
            if !is_ours(&ours, &p.module) {
                foreign.push(p.module);
                continue;
            }
            let known = functions_by_module
                .iter()
                .find(|(m, _, _, _)| *m == p.module);
            applied.push(AppliedPatch {
                objects: self.livepatch.objects(&p.module).unwrap_or_default(),
                patch: known.map(|(_, name, _, _)| name.clone()),
                functions: known
                    .map(|(_, _, f, _)| f.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
                holds: known.map(|(_, _, _, h)| h.clone()).unwrap_or_default(),
                module: p.module,
                enabled: p.enabled,
                transition: p.transition,
            });
        }
        let mut drift = Vec::new();
        let expected: Vec<&String> = current.iter().flat_map(|g| g.modules.iter()).collect();
        let actual: Vec<&String> = applied
            .iter()
            .filter(|a| a.enabled)
            .map(|a| &a.module)
            .collect();
        if expected != actual {
            drift.push(format!(
                "the state file says generation {} runs [{}], the kernel runs [{}]",
                current
                    .as_ref()
                    .map_or("none".into(), |g| g.number.to_string()),
                expected
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                actual
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        if let Some(g) = &current
            && g.build_id != identity.build_id.to_hex()
        {
            drift.push(format!(
                "generation {} was made for kernel {}, the running kernel is {} (rebooted into another kernel?)",
                g.number,
                g.build_id,
                identity.build_id.to_hex()
            ));
        }
        Ok(Status {
            release: identity.release,
            build_id: identity.build_id.to_hex(),
            livepatch,
            mode: self.config.sync.mode,
            generation: current,
            applied,
            foreign,
            drift,
            taint,
            taint_flags,
            validity,
            signers,
            module_signing: ModuleSigning::read(),
            last_sync: self.state.last_sync(),
        })
    }
}
