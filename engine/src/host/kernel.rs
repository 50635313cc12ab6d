//! The one module that talks to the running kernel's livepatch machinery.
//!
//! It identifies the kernel, reads which livepatches are loaded and in which order,
//! loads modules with `finit_module(2)` and unloads them with `delete_module(2)`,
//! enables and disables patches through sysfs, and waits for transitions with fine
//! polling and a bound, naming the tasks that block a stalled one. It never writes
//! `force`: forcing a transition can leave a task running old code against new data,
//! which is exactly what the consistency model exists to prevent.
//!
//! The sysfs and procfs layout is the kernel's ABI:
//! `Documentation/ABI/testing/sysfs-kernel-livepatch` and
//! `Documentation/livepatch/livepatch.rst`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kstack_store::ident::{self, BuildId};

/// One directory per loaded livepatch module, named after the module
/// (kernel/livepatch/core.c, `klp_init_patch`).
pub const LIVEPATCH_SYSFS: &str = "/sys/kernel/livepatch";
/// Loaded modules, most recently loaded first (kernel/module/procfs.c: new modules
/// are added at the head of the `modules` list).
pub const PROC_MODULES: &str = "/proc/modules";
/// The taint bit mask (kernel/panic.c).
pub const PROC_TAINTED: &str = "/proc/sys/kernel/tainted";
/// Per-task livepatch state: -1 no transition, 0 unpatched, 1 patched
/// (fs/proc/base.c, `proc_pid_patch_state`).
const PATCH_STATE: &str = "patch_state";

/// How often a transition is checked. The kernel itself retries unfinished
/// transitions about once a second (`klp_transition_work`); the first check comes
/// straight after the write, since an idle system finishes at once (LAB.md).
pub const TRANSITION_POLL: Duration = Duration::from_millis(10);

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
    (15, 'K', "live patched"),
    (16, 'X', "auxiliary"),
    (17, 'T', "randstruct"),
];

/// A failed interaction with the kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "this kernel has no livepatch support ({LIVEPATCH_SYSFS} is missing); \
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
    #[error("module {module} loaded but registered no livepatch in {LIVEPATCH_SYSFS}")]
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

/// Whether this kernel has livepatch support.
pub fn livepatch_supported() -> bool {
    Path::new(LIVEPATCH_SYSFS).is_dir()
}

/// The loaded livepatches in load order (oldest first), which is also their order on
/// the kernel's patch stack.
pub fn loaded_patches() -> Result<Vec<LoadedPatch>, KernelError> {
    if !livepatch_supported() {
        return Err(KernelError::NoLivepatch);
    }
    let sysfs = Path::new(LIVEPATCH_SYSFS);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(sysfs).map_err(io_err(sysfs))? {
        let entry = entry.map_err(io_err(sysfs))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    let modules_path = Path::new(PROC_MODULES);
    let modules = std::fs::read_to_string(modules_path).map_err(io_err(modules_path))?;
    let order = load_order(&modules);
    names.sort_by_key(|n| order.iter().position(|m| m == n).unwrap_or(usize::MAX));
    names
        .into_iter()
        .map(|module| {
            Ok(LoadedPatch {
                enabled: read_flag(&sysfs.join(&module).join("enabled"))?,
                transition: read_flag(&sysfs.join(&module).join("transition"))?,
                module,
            })
        })
        .collect()
}

/// Module names from `/proc/modules` text, oldest first.
pub fn load_order(proc_modules: &str) -> Vec<String> {
    let mut names: Vec<String> = proc_modules
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    names.reverse();
    names
}

/// Whether a module of that name is loaded (in any state).
pub fn module_loaded(module: &str) -> Result<bool, KernelError> {
    let path = Path::new(PROC_MODULES);
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    Ok(load_order(&text).iter().any(|m| m == module))
}

fn read_flag(path: &Path) -> Result<bool, KernelError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    Ok(text.trim() == "1")
}

fn write_sysfs(path: &Path, value: &str) -> Result<(), KernelError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(value.as_bytes()).map_err(io_err(path))
}

/// Loads a module from its bytes: the bytes go into a sealed memfd, so what the
/// kernel loads is exactly what was verified, with no file on disk in between.
/// Loading a livepatch module starts its transition (`klp_enable_patch` in its init).
pub fn load_module(module: &str, bytes: &[u8]) -> Result<(), KernelError> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(module, MFdFlags::MFD_CLOEXEC).map_err(|e| KernelError::Io {
        path: PathBuf::from("memfd"),
        source: e.into(),
    })?;
    let mut file = File::from(fd);
    file.write_all(bytes).map_err(|source| KernelError::Io {
        path: PathBuf::from("memfd"),
        source,
    })?;
    let kmsg = KmsgCursor::open();
    nix::kmod::finit_module(file.as_fd(), c"", nix::kmod::ModuleInitFlags::empty()).map_err(
        |errno| KernelError::Load {
            module: module.to_owned(),
            errno,
            kernel_log: kmsg.map(|k| k.lines_mentioning(module)).unwrap_or_default(),
        },
    )
}

/// Unloads a module (`delete_module(2)`, non-blocking as `rmmod` does).
pub fn unload_module(module: &str) -> Result<(), KernelError> {
    let name = std::ffi::CString::new(module).map_err(|_| KernelError::Unload {
        module: module.to_owned(),
        errno: nix::Error::EINVAL,
    })?;
    nix::kmod::delete_module(&name, nix::kmod::DeleteModuleFlags::O_NONBLOCK).map_err(|errno| {
        KernelError::Unload {
            module: module.to_owned(),
            errno,
        }
    })
}

fn patch_dir(module: &str) -> PathBuf {
    Path::new(LIVEPATCH_SYSFS).join(module)
}

/// Starts disabling a livepatch (or reverses its enable transition in flight).
pub fn disable(module: &str) -> Result<(), KernelError> {
    write_sysfs(&patch_dir(module).join("enabled"), "0")
}

/// Reverses a disable transition in flight (the patch becomes fully enabled again).
/// A patch whose disable transition has finished cannot be enabled again: it has to
/// be unloaded and loaded anew.
pub fn reenable(module: &str) -> Result<(), KernelError> {
    write_sysfs(&patch_dir(module).join("enabled"), "1")
}

/// The state of one patch.
pub fn patch_state(module: &str) -> Result<Option<LoadedPatch>, KernelError> {
    let dir = patch_dir(module);
    if !dir.is_dir() {
        return Ok(None);
    }
    Ok(Some(LoadedPatch {
        module: module.to_owned(),
        enabled: read_flag(&dir.join("enabled"))?,
        transition: read_flag(&dir.join("transition"))?,
    }))
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

    fn describe(self) -> &'static str {
        match self {
            Goal::Patched => "the transition to the patched state",
            Goal::Unpatched => "the transition to the unpatched state",
        }
    }
}

/// Waits until `module`'s transition has finished (or its sysfs directory is gone),
/// polling every [`TRANSITION_POLL`], for at most `timeout`. On a stall the error
/// names the tasks that have not reached `goal`.
pub fn wait_transition(module: &str, goal: Goal, timeout: Duration) -> Result<(), KernelError> {
    let start = Instant::now();
    let path = patch_dir(module).join("transition");
    loop {
        match std::fs::read_to_string(&path) {
            Ok(text) if text.trim() == "0" => return Ok(()),
            Ok(_) => {}
            // The patch went away (a disabled patch's sysfs entry is removed).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path)(e)),
        }
        if start.elapsed() >= timeout {
            return Err(KernelError::Stalled {
                module: module.to_owned(),
                what: goal.describe(),
                timeout,
                blockers: blocking_tasks(goal),
            });
        }
        std::thread::sleep(TRANSITION_POLL);
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

/// The tasks that have not reached `goal` in the transition under way (their
/// `patch_state` is the other of 0 and 1; -1 means no transition).
pub fn blocking_tasks(goal: Goal) -> Vec<BlockingTask> {
    let mut states: Vec<(u32, u32, i32)> = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for proc_entry in procs.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(tasks) = std::fs::read_dir(proc_entry.path().join("task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(text) = std::fs::read_to_string(task.path().join(PATCH_STATE))
                && let Ok(state) = text.trim().parse::<i32>()
            {
                states.push((pid, tid, state));
            }
        }
    }
    let behind = 1 - goal.state();
    states
        .into_iter()
        .filter(|s| s.2 == behind)
        .map(|(pid, tid, _)| {
            let dir = PathBuf::from(format!("/proc/{pid}/task/{tid}"));
            BlockingTask {
                tid,
                comm: std::fs::read_to_string(dir.join("comm"))
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_default(),
                stack: std::fs::read_to_string(dir.join("stack"))
                    .map(|s| s.lines().map(|l| l.trim().to_owned()).collect())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

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

/// A position in the kernel log, to collect what the kernel says about one step.
struct KmsgCursor {
    file: File,
}

impl KmsgCursor {
    /// Opens `/dev/kmsg` positioned at its end; `None` where it cannot be read.
    fn open() -> Option<KmsgCursor> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()?;
        nix::unistd::lseek(file.as_fd(), 0, nix::unistd::Whence::SeekEnd).ok()?;
        Some(KmsgCursor { file })
    }

    /// The messages logged since [`KmsgCursor::open`] that mention `word` (or any
    /// livepatch message), text only.
    fn lines_mentioning(mut self, word: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        // One record per read(2); EAGAIN at the end.
        while let Ok(n) = self.file.read(&mut buf) {
            if n == 0 {
                break;
            }
            let record = String::from_utf8_lossy(&buf[..n]);
            if let Some((_, text)) = record.split_once(';') {
                let text = text.lines().next().unwrap_or_default().trim();
                if text.contains(word) || text.starts_with("livepatch:") {
                    out.push(text.to_owned());
                }
            }
        }
        out
    }
}

/// Loaded modules that carry the livepatch taint (`K` in `/proc/modules`) but have no
/// patch registered in sysfs: their patch was disabled and the module never unloaded.
pub fn livepatch_modules_without_patch() -> Result<Vec<String>, KernelError> {
    let path = Path::new(PROC_MODULES);
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    Ok(livepatch_modules(&text)
        .into_iter()
        .filter(|m| !patch_dir(m).exists())
        .collect())
}

/// Modules whose `/proc/modules` taint flags include `K` (TAINT_LIVEPATCH, set for
/// modules with `livepatch=Y` in their modinfo), oldest first.
pub fn livepatch_modules(proc_modules: &str) -> Vec<String> {
    let mut names: Vec<String> = proc_modules
        .lines()
        .filter(|l| {
            l.rsplit_once('(')
                .is_some_and(|(_, flags)| flags.trim_end_matches(')').contains('K'))
        })
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    names.reverse();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_modules_order_is_reversed_to_load_order() {
        let text = "kstack_c 16384 0 - Live 0x0 (OEK)\n\
                    kstack_b 16384 0 - Live 0x0 (OEK)\n\
                    kstack_a 16384 0 - Live 0x0 (OEK)\n";
        assert_eq!(load_order(text), ["kstack_a", "kstack_b", "kstack_c"]);
    }

    #[test]
    fn livepatch_modules_are_those_tainted_k() {
        let text = "kstack_parker 16384 0 - Live 0x0 (OE)\n\
                    kstack_b 16384 0 - Live 0x0 (OEK)\n\
                    ext4 16384 0 - Live 0x0\n\
                    kstack_a 16384 0 - Live 0x0 (OEK)\n";
        assert_eq!(livepatch_modules(text), ["kstack_a", "kstack_b"]);
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
