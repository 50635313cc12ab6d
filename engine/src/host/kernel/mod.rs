//! How the host side talks to the running kernel.
//!
//! [`Livepatch`] is everything the executor and the reconciler ask of the kernel's
//! livepatch machinery: load a module from its bytes, disable or re-enable a patch,
//! wait for a transition, unload a module, and read which patches are loaded and in
//! which order. [`Sysfs`] is its one real implementation (sysfs, procfs and the
//! module syscalls); tests drive the executor through a fake.
//!
//! Neither ever writes `force`: forcing a transition can leave a task running old
//! code against new data, which is exactly what the consistency model exists to
//! prevent.
//!
//! Besides, this module identifies the running kernel, reads its taint, and reads
//! what it requires of module signatures ([`signing`]).

pub mod signing;
mod sysfs;

#[cfg(test)]
pub(crate) mod fake;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kstack_kfacts::livepatch::{PROC_TAINTED, SYSFS_ROOT, TAINT_LIVEPATCH_LETTER};
use kstack_store::ident::{self, BuildId};

pub use sysfs::{ROOT_ENV, Sysfs, blocking_tasks, livepatch_modules, load_order};

/// How often a transition is checked. The kernel itself retries unfinished
/// transitions about once a second (`klp_transition_work`); the first check comes
/// straight after the write, since an idle system finishes at once (LAB.md).
pub const TRANSITION_POLL: Duration = Duration::from_millis(10);

/// The wait before the `attempt`-th check after the first (0-based): 1, 2, 4, 8 ms,
/// then every [`TRANSITION_POLL`]. A transition of a quiet system, and the work item
/// that frees a replaced patch, finish within a few milliseconds: a fixed 10 ms step
/// made each of them cost up to 10 ms more than it took.
pub fn poll_delay(attempt: u32) -> Duration {
    Duration::from_millis(1u64 << attempt.min(4)).min(TRANSITION_POLL)
}

/// The kernel's livepatch machinery, as the executor and the reconciler use it.
///
/// Module names are the kernel's (`kstack_<12 hex>` for kstack's own patches). A
/// livepatch module registers its patch in its init, so loading one starts its
/// transition to the patched state.
pub trait Livepatch: std::fmt::Debug {
    /// Whether this kernel has livepatch support at all.
    fn supported(&self) -> bool;

    /// The loaded livepatches in load order (oldest first), which is also their
    /// order on the kernel's patch stack. [`KernelError::NoLivepatch`] without
    /// livepatch support.
    fn loaded_patches(&self) -> Result<Vec<LoadedPatch>, KernelError>;

    /// Loaded modules that carry the livepatch taint but have no patch registered:
    /// their patch was disabled and the module never unloaded. Oldest first.
    fn modules_without_patch(&self) -> Result<Vec<String>, KernelError>;

    /// The state of one patch; `None` when no patch of that name is registered.
    fn patch_state(&self, module: &str) -> Result<Option<LoadedPatch>, KernelError>;

    /// Loads a module from exactly these bytes. For a livepatch module this starts
    /// the transition to the patched state.
    fn load(&self, module: &str, bytes: &[u8]) -> Result<(), KernelError>;

    /// Starts disabling a patch, or reverses its enable transition in flight.
    fn disable(&self, module: &str) -> Result<(), KernelError>;

    /// Reverses a disable transition in flight: the patch becomes fully enabled
    /// again. A patch whose disable transition has finished cannot be enabled again
    /// (the kernel refuses): it has to be unloaded and loaded anew.
    fn enable(&self, module: &str) -> Result<(), KernelError>;

    /// Waits until `module`'s transition has finished (or its patch is gone), for at
    /// most `timeout`. On a stall, [`KernelError::Stalled`] names the tasks that
    /// have not reached `goal`.
    fn wait_transition(
        &self,
        module: &str,
        goal: Goal,
        timeout: Duration,
    ) -> Result<(), KernelError>;

    /// Asks the kernel once to unload a module, without waiting for its references
    /// to go ([`KernelError::Unload`] with `EBUSY` or `EAGAIN` while they last).
    fn unload(&self, module: &str) -> Result<(), KernelError>;

    /// The objects a registered patch changes (`vmlinux`, module names) and whether
    /// each is patched now: a module's object is patched only while that module is
    /// loaded (`/sys/kernel/livepatch/<patch>/<object>/patched`).
    fn objects(&self, module: &str) -> Result<Vec<PatchedObject>, KernelError>;
}

/// One object of a registered patch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PatchedObject {
    /// `vmlinux`, or a module's name.
    pub name: String,
    /// The object is loaded and its functions are patched; `false` for a module
    /// that is not loaded (the kernel patches it when it loads).
    pub patched: bool,
}

/// A failed interaction with the kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "this kernel has no livepatch support ({SYSFS_ROOT} is missing); \
         try the stack in a VM with `kstack try --config FILE`"
    )]
    NoLivepatch,
    #[error("cannot identify the running kernel: {0}")]
    Identify(#[from] ident::IdentError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading module {module}: {errno}{}", kernel_log_suffix(.kernel_log))]
    Load {
        module: String,
        errno: nix::Error,
        kernel_log: Vec<String>,
    },
    #[error("module {module} loaded but registered no livepatch in {SYSFS_ROOT}")]
    NotALivepatch { module: String },
    #[error("unloading module {module}: {errno}")]
    Unload { module: String, errno: nix::Error },
    #[error("livepatch {module}: {what} did not finish within {timeout:?}; {}", describe_blockers(.blockers))]
    Stalled {
        module: String,
        what: &'static str,
        timeout: Duration,
        blockers: Vec<BlockingTask>,
    },
}

fn kernel_log_suffix(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; the kernel said:\n  {}", lines.join("\n  "))
    }
}

fn describe_blockers(blockers: &[BlockingTask]) -> String {
    if blockers.is_empty() {
        return "no task was found in the old state".into();
    }
    let mut text = format!("{} task(s) block it:", blockers.len());
    for task in blockers.iter().take(8) {
        text.push_str(&format!("\n  {} (pid {})", task.comm, task.tid));
        for frame in task.stack.iter().take(6) {
            text.push_str(&format!("\n      {frame}"));
        }
    }
    text
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What identifies a kernel build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelIdentity {
    pub build_id: BuildId,
    pub release: String,
}

/// Reads the running kernel's build ID and release.
pub fn identify() -> Result<KernelIdentity, KernelError> {
    Ok(KernelIdentity {
        build_id: ident::running_kernel_build_id()?,
        release: ident::running_kernel_release()?,
    })
}

/// One loaded livepatch, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedPatch {
    pub module: String,
    pub enabled: bool,
    pub transition: bool,
}

/// Where a transition is going: every task ends up running the patched functions
/// (an enable, or a reversed disable) or the original ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    Patched,
    Unpatched,
}

impl Goal {
    /// The `patch_state` value of a task that has arrived.
    fn state(self) -> i32 {
        match self {
            Goal::Patched => 1,
            Goal::Unpatched => 0,
        }
    }

    /// What a stall error says did not finish.
    pub fn describe(self) -> &'static str {
        match self {
            Goal::Patched => "the transition to the patched state",
            Goal::Unpatched => "the transition to the unpatched state",
        }
    }
}

/// A task that has not switched to the transition's target state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockingTask {
    pub tid: u32,
    pub comm: String,
    /// Its kernel stack (`/proc/<pid>/task/<tid>/stack`), innermost frame first.
    pub stack: Vec<String>,
}

/// Kernel taint flags and their letters (include/linux/panic.h, kernel/panic.c).
const TAINT_LETTERS: &[(u32, char, &str)] = &[
    (0, 'P', "proprietary module"),
    (1, 'F', "forced module load"),
    (2, 'S', "unsafe SMP / out of spec"),
    (3, 'R', "forced module unload"),
    (4, 'M', "machine check"),
    (5, 'B', "bad page"),
    (6, 'U', "user request"),
    (7, 'D', "kernel died (oops)"),
    (8, 'A', "ACPI table overridden"),
    (9, 'W', "warning"),
    (10, 'C', "staging driver"),
    (11, 'I', "firmware workaround"),
    (12, 'O', "out-of-tree module"),
    (13, 'E', "unsigned module"),
    (14, 'L', "soft lockup"),
    (15, TAINT_LIVEPATCH_LETTER, "live patched"),
    (16, 'X', "auxiliary"),
    (17, 'T', "randstruct"),
];

/// The kernel's taint mask and its letters, e.g. `(0x9000, "OEK")`.
pub fn taint() -> Result<(u64, String), KernelError> {
    let path = Path::new(PROC_TAINTED);
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mask: u64 = text.trim().parse().unwrap_or(0);
    Ok((mask, taint_letters(mask)))
}

/// The letters of a taint mask, in the kernel's order.
pub fn taint_letters(mask: u64) -> String {
    TAINT_LETTERS
        .iter()
        .filter(|(bit, _, _)| mask & (1 << bit) != 0)
        .map(|(_, letter, _)| *letter)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_start_fast_and_settle_at_the_poll_interval() {
        let delays: Vec<u128> = (0..8).map(|a| poll_delay(a).as_millis()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10, 10, 10]);
        assert_eq!(poll_delay(u32::MAX), TRANSITION_POLL);
    }

    #[test]
    fn taint_letters_follow_the_kernel() {
        assert_eq!(taint_letters(0), "");
        assert_eq!(taint_letters((1 << 12) | (1 << 13) | (1 << 15)), "OEK");
    }

    #[test]
    fn stall_message_names_tasks_and_frames() {
        let err = KernelError::Stalled {
            module: "kstack_x".into(),
            what: Goal::Patched.describe(),
            timeout: Duration::from_secs(3),
            blockers: vec![BlockingTask {
                tid: 42,
                comm: "kstack-parked".into(),
                stack: vec!["[<0>] kstack_parker_wait+0x30/0x60 [kstack_parker]".into()],
            }],
        };
        let text = err.to_string();
        assert!(text.contains("kstack-parked (pid 42)"), "{text}");
        assert!(text.contains("kstack_parker_wait"), "{text}");
    }
}
