//! A [`Livepatch`] for tests: a model of the kernel's patch stack that records every
//! call and can be told to fail or stall at given calls.
//!
//! It follows the kernel's rules where the executor depends on them
//! (kernel/livepatch/core.c, `enabled_store`; kernel/livepatch/transition.c): a
//! loaded livepatch module starts its enable transition; only one transition runs at a
//! time (a load or a disable during one fails with `EBUSY`); writing to `enabled`
//! during a transition reverses it; a patch whose disable has finished is gone and
//! cannot be enabled again; a module whose patch is still registered cannot be
//! unloaded (`EBUSY`); a patch with `replace` set disables every other patch when its
//! enable transition completes (`klp_unpatch_replaced_patches`), not when reversed.

#![allow(clippy::unwrap_used)] // test support: a poisoned lock is a failed test

use std::sync::Mutex;
use std::time::Duration;

use super::{BlockingTask, Goal, KernelError, Livepatch, LoadedPatch};

/// One call the executor made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    PatchState(String),
    Load(String),
    Disable(String),
    Enable(String),
    Wait(String, Goal),
    Unload(String),
}

/// What an injected rule makes a call do instead of what the model would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call fails with this errno and changes nothing.
    Fail(nix::Error),
    /// A wait whose transition does not finish: the stall error, the transition left
    /// where it is.
    Stall,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Module {
    name: String,
    /// `None` once a disable transition has finished: the module stays loaded with no
    /// patch registered.
    patch: Option<Patch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Patch {
    enabled: bool,
    transition: bool,
    replace: bool,
}

#[derive(Debug, Default)]
struct Inner {
    /// Loaded modules, oldest first.
    modules: Vec<Module>,
    calls: Vec<Call>,
    /// The bytes of every load, in order.
    loaded_bytes: Vec<(String, Vec<u8>)>,
    /// Each rule applies once, to the first call equal to it.
    rules: Vec<(Call, Outcome)>,
    /// Modules whose patch has `replace` set (cumulative modules).
    replacing: Vec<String>,
}

/// The fake kernel.
#[derive(Debug, Default)]
pub struct FakeLivepatch {
    inner: Mutex<Inner>,
}

/// The task a fake stall names.
pub const PARKED: &str = "fake-parked";

impl FakeLivepatch {
    /// A kernel running these patches, enabled, loaded in this order.
    pub fn with_patches(modules: &[&str]) -> FakeLivepatch {
        let fake = FakeLivepatch::default();
        fake.inner.lock().unwrap().modules = modules
            .iter()
            .map(|m| Module {
                name: (*m).to_owned(),
                patch: Some(Patch {
                    enabled: true,
                    transition: false,
                    replace: false,
                }),
            })
            .collect();
        fake
    }

    /// Makes `module`, when loaded, a patch with `replace` set.
    pub fn replacing(self, module: &str) -> FakeLivepatch {
        self.inner.lock().unwrap().replacing.push(module.to_owned());
        self
    }

    /// Adds a loaded module whose patch was disabled (a leftover).
    pub fn with_leftover(self, module: &str) -> FakeLivepatch {
        self.inner.lock().unwrap().modules.push(Module {
            name: module.to_owned(),
            patch: None,
        });
        self
    }

    /// Makes the first call equal to `call` (after any earlier rule for the same call
    /// was used) have `outcome`.
    pub fn at(&self, call: Call, outcome: Outcome) -> &FakeLivepatch {
        self.inner.lock().unwrap().rules.push((call, outcome));
        self
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// The bytes of every load so far, in order.
    pub fn loaded_bytes(&self) -> Vec<(String, Vec<u8>)> {
        self.inner.lock().unwrap().loaded_bytes.clone()
    }

    /// The enabled patches (bottom first) and the loaded modules whose patch is
    /// gone (leftovers), or what is in between: a transition under way, a patch
    /// disabled but still registered. A host may only be left settled.
    pub fn settled(&self) -> Result<(Vec<String>, Vec<String>), String> {
        let inner = self.inner.lock().unwrap();
        let mut stack = Vec::new();
        let mut leftovers = Vec::new();
        for m in &inner.modules {
            match m.patch {
                Some(Patch {
                    enabled: true,
                    transition: false,
                    ..
                }) => stack.push(m.name.clone()),
                None => leftovers.push(m.name.clone()),
                Some(other) => return Err(format!("{} is left as {other:?}", m.name)),
            }
        }
        Ok((stack, leftovers))
    }

    /// The enabled patches, bottom first, when the kernel is settled with no
    /// leftovers.
    pub fn stack(&self) -> Vec<String> {
        match self.settled() {
            Ok((stack, leftovers)) if leftovers.is_empty() => stack,
            Ok((_, leftovers)) => panic!("leftover modules: {leftovers:?}"),
            Err(e) => panic!("{e}"),
        }
    }

    /// Records `call` and returns the outcome a rule gives it, if any.
    fn enter(&self, call: Call) -> Option<Outcome> {
        let mut inner = self.inner.lock().unwrap();
        inner.calls.push(call.clone());
        let index = inner.rules.iter().position(|(c, _)| *c == call)?;
        Some(inner.rules.remove(index).1)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap())
    }
}

fn sysfs_error(module: &str, errno: nix::Error) -> KernelError {
    KernelError::Io {
        path: format!("/sys/kernel/livepatch/{module}/enabled").into(),
        source: errno.into(),
    }
}

impl Inner {
    fn module(&mut self, name: &str) -> Option<&mut Module> {
        self.modules.iter_mut().find(|m| m.name == name)
    }

    fn in_transition(&self) -> bool {
        self.modules
            .iter()
            .any(|m| m.patch.is_some_and(|p| p.transition))
    }
}

impl Livepatch for FakeLivepatch {
    fn supported(&self) -> bool {
        true
    }

    fn loaded_patches(&self) -> Result<Vec<LoadedPatch>, KernelError> {
        Ok(self.with(|inner| {
            inner
                .modules
                .iter()
                .filter_map(|m| {
                    m.patch.map(|p| LoadedPatch {
                        module: m.name.clone(),
                        enabled: p.enabled,
                        transition: p.transition,
                    })
                })
                .collect()
        }))
    }

    fn modules_without_patch(&self) -> Result<Vec<String>, KernelError> {
        Ok(self.with(|inner| {
            inner
                .modules
                .iter()
                .filter(|m| m.patch.is_none())
                .map(|m| m.name.clone())
                .collect()
        }))
    }

    fn patch_state(&self, module: &str) -> Result<Option<LoadedPatch>, KernelError> {
        if let Some(Outcome::Fail(errno)) = self.enter(Call::PatchState(module.into())) {
            return Err(sysfs_error(module, errno));
        }
        Ok(self.with(|inner| {
            let m = inner.module(module)?;
            m.patch.map(|p| LoadedPatch {
                module: module.to_owned(),
                enabled: p.enabled,
                transition: p.transition,
            })
        }))
    }

    fn load(&self, module: &str, bytes: &[u8]) -> Result<(), KernelError> {
        let outcome = self.enter(Call::Load(module.into()));
        let load_error = |errno| KernelError::Load {
            module: module.to_owned(),
            errno,
            kernel_log: vec![format!("{module}: the fake kernel refused it")],
        };
        if let Some(Outcome::Fail(errno)) = outcome {
            return Err(load_error(errno));
        }
        self.with(|inner| {
            if inner.module(module).is_some() {
                return Err(load_error(nix::Error::EEXIST));
            }
            // klp_enable_patch(): one transition at a time.
            if inner.in_transition() {
                return Err(load_error(nix::Error::EBUSY));
            }
            inner.loaded_bytes.push((module.to_owned(), bytes.to_vec()));
            let replace = inner.replacing.iter().any(|r| r == module);
            inner.modules.push(Module {
                name: module.to_owned(),
                patch: Some(Patch {
                    enabled: true,
                    transition: true,
                    replace,
                }),
            });
            Ok(())
        })
    }

    fn disable(&self, module: &str) -> Result<(), KernelError> {
        if let Some(Outcome::Fail(errno)) = self.enter(Call::Disable(module.into())) {
            return Err(sysfs_error(module, errno));
        }
        self.with(|inner| {
            let busy = inner.in_transition();
            let Some(patch) = inner.module(module).and_then(|m| m.patch.as_mut()) else {
                return Err(sysfs_error(module, nix::Error::ENOENT));
            };
            if !patch.enabled {
                return Err(sysfs_error(module, nix::Error::EINVAL));
            }
            if !patch.transition && busy {
                return Err(sysfs_error(module, nix::Error::EBUSY));
            }
            // Starts the disable transition, or reverses the enable one.
            patch.enabled = false;
            patch.transition = true;
            Ok(())
        })
    }

    fn enable(&self, module: &str) -> Result<(), KernelError> {
        if let Some(Outcome::Fail(errno)) = self.enter(Call::Enable(module.into())) {
            return Err(sysfs_error(module, errno));
        }
        self.with(|inner| {
            let Some(patch) = inner.module(module).and_then(|m| m.patch.as_mut()) else {
                return Err(sysfs_error(module, nix::Error::ENOENT));
            };
            // Only a transition in flight can be turned back to enabled.
            if patch.enabled || !patch.transition {
                return Err(sysfs_error(module, nix::Error::EINVAL));
            }
            patch.enabled = true;
            Ok(())
        })
    }

    fn wait_transition(
        &self,
        module: &str,
        goal: Goal,
        timeout: Duration,
    ) -> Result<(), KernelError> {
        match self.enter(Call::Wait(module.into(), goal)) {
            Some(Outcome::Fail(errno)) => return Err(sysfs_error(module, errno)),
            Some(Outcome::Stall) => {
                let in_transition = self.with(|inner| {
                    inner
                        .module(module)
                        .and_then(|m| m.patch)
                        .is_some_and(|p| p.transition)
                });
                assert!(
                    in_transition,
                    "a stall injected where {module} has no transition"
                );
                return Err(KernelError::Stalled {
                    module: module.to_owned(),
                    what: goal.describe(),
                    timeout,
                    blockers: vec![BlockingTask {
                        tid: 42,
                        comm: PARKED.into(),
                        stack: vec!["[<0>] fake_wait+0x0/0x10".into()],
                    }],
                });
            }
            None => {}
        }
        self.with(|inner| {
            let mut replaced = false;
            if let Some(m) = inner.module(module)
                && let Some(patch) = m.patch.as_mut()
                && patch.transition
            {
                patch.transition = false;
                if !patch.enabled {
                    // A finished disable frees the patch: its sysfs directory goes.
                    m.patch = None;
                } else {
                    replaced = patch.replace;
                }
            }
            if replaced {
                // The replaced patches are disabled and freed, without a transition.
                for m in inner.modules.iter_mut().filter(|m| m.name != module) {
                    m.patch = None;
                }
            }
        });
        Ok(())
    }

    fn objects(&self, module: &str) -> Result<Vec<super::PatchedObject>, KernelError> {
        // The fake patches vmlinux only.
        Ok(self.with(|inner| {
            inner
                .module(module)
                .and_then(|m| m.patch)
                .map(|_| {
                    vec![super::PatchedObject {
                        name: "vmlinux".into(),
                        patched: true,
                    }]
                })
                .unwrap_or_default()
        }))
    }

    fn unload(&self, module: &str) -> Result<(), KernelError> {
        let unload_error = |errno| KernelError::Unload {
            module: module.to_owned(),
            errno,
        };
        if let Some(Outcome::Fail(errno)) = self.enter(Call::Unload(module.into())) {
            return Err(unload_error(errno));
        }
        self.with(|inner| {
            let Some(index) = inner.modules.iter().position(|m| m.name == module) else {
                return Err(unload_error(nix::Error::ENOENT));
            };
            if inner.modules[index].patch.is_some() {
                return Err(unload_error(nix::Error::EBUSY));
            }
            inner.modules.remove(index);
            Ok(())
        })
    }
}
