//! [`Livepatch`] on the real kernel: sysfs, procfs and the module syscalls.
//!
//! Modules are loaded with `finit_module(2)` from a sealed memfd and unloaded with
//! `delete_module(2)`; patches are enabled and disabled through their `enabled` file;
//! transitions are polled ([`poll_delay`]: 1 ms at first, then every 10 ms) with a bound, and a stalled one
//! is reported with the tasks that block it. `force` is never written.
//!
//! The layout is the kernel's ABI: `Documentation/ABI/testing/sysfs-kernel-livepatch`
//! and `Documentation/livepatch/livepatch.rst`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kstack_kfacts::livepatch::{
    PROC_MODULES, SYSFS_ENABLED, SYSFS_PATCHED, SYSFS_ROOT, SYSFS_TRANSITION,
    TAINT_LIVEPATCH_LETTER, TASK_PATCH_STATE, VMLINUX,
};

use super::{
    BlockingTask, Goal, KernelError, Livepatch, LoadedPatch, PatchedObject, io_err, poll_delay,
};

/// The environment variable that points [`Sysfs::default`] at another livepatch sysfs
/// directory than [`SYSFS_ROOT`]: tests use it to stand for a kernel with or without
/// livepatch support, whatever the host's own kernel has.
pub const ROOT_ENV: &str = "KSTACK_LIVEPATCH_SYSFS";

/// The kernel's livepatch machinery through sysfs and procfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysfs {
    /// One directory per registered patch (`/sys/kernel/livepatch`).
    root: PathBuf,
    /// The loaded modules, newest first (`/proc/modules`).
    proc_modules: PathBuf,
}

impl Default for Sysfs {
    /// The running kernel's files: [`SYSFS_ROOT`] (or `$KSTACK_LIVEPATCH_SYSFS`) and
    /// [`PROC_MODULES`].
    fn default() -> Sysfs {
        let root = std::env::var_os(ROOT_ENV)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(SYSFS_ROOT), PathBuf::from);
        Sysfs::new(root, PROC_MODULES)
    }
}

impl Sysfs {
    /// The livepatch machinery whose patch directories are in `root` and whose
    /// module list is `proc_modules`.
    pub fn new(root: impl Into<PathBuf>, proc_modules: impl Into<PathBuf>) -> Sysfs {
        Sysfs {
            root: root.into(),
            proc_modules: proc_modules.into(),
        }
    }

    /// The livepatch sysfs directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn patch_dir(&self, module: &str) -> PathBuf {
        self.root.join(module)
    }

    fn read_proc_modules(&self) -> Result<String, KernelError> {
        std::fs::read_to_string(&self.proc_modules).map_err(io_err(&self.proc_modules))
    }
}

impl Livepatch for Sysfs {
    fn supported(&self) -> bool {
        self.root.is_dir()
    }

    fn loaded_patches(&self) -> Result<Vec<LoadedPatch>, KernelError> {
        if !self.supported() {
            return Err(KernelError::NoLivepatch);
        }
        let sysfs = self.root.as_path();
        let mut names = Vec::new();
        for entry in std::fs::read_dir(sysfs).map_err(io_err(sysfs))? {
            let entry = entry.map_err(io_err(sysfs))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        let order = load_order(&self.read_proc_modules()?);
        names.sort_by_key(|n| order.iter().position(|m| m == n).unwrap_or(usize::MAX));
        names
            .into_iter()
            .map(|module| {
                let dir = self.patch_dir(&module);
                Ok(LoadedPatch {
                    enabled: read_flag(&dir.join(SYSFS_ENABLED))?,
                    transition: read_flag(&dir.join(SYSFS_TRANSITION))?,
                    module,
                })
            })
            .collect()
    }

    fn modules_without_patch(&self) -> Result<Vec<String>, KernelError> {
        Ok(livepatch_modules(&self.read_proc_modules()?)
            .into_iter()
            .filter(|m| !self.patch_dir(m).exists())
            .collect())
    }

    fn patch_state(&self, module: &str) -> Result<Option<LoadedPatch>, KernelError> {
        let dir = self.patch_dir(module);
        if !dir.is_dir() {
            return Ok(None);
        }
        Ok(Some(LoadedPatch {
            module: module.to_owned(),
            enabled: read_flag(&dir.join(SYSFS_ENABLED))?,
            transition: read_flag(&dir.join(SYSFS_TRANSITION))?,
        }))
    }

    fn objects(&self, module: &str) -> Result<Vec<PatchedObject>, KernelError> {
        let dir = self.patch_dir(module);
        let mut objects = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let patched = entry.path().join(SYSFS_PATCHED);
            // An object is a directory with a `patched` file; the patch's own
            // attributes (`enabled`, `transition`, ...) are files.
            if patched.is_file() {
                objects.push(PatchedObject {
                    name: entry.file_name().to_string_lossy().into_owned(),
                    patched: read_flag(&patched)?,
                });
            }
        }
        objects.sort_by(|a, b| (a.name != VMLINUX, &a.name).cmp(&(b.name != VMLINUX, &b.name)));
        Ok(objects)
    }

    /// The bytes go into a sealed memfd, so what the kernel loads is exactly what was
    /// verified, with no file on disk in between.
    fn load(&self, module: &str, bytes: &[u8]) -> Result<(), KernelError> {
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

    fn disable(&self, module: &str) -> Result<(), KernelError> {
        write_sysfs(&self.patch_dir(module).join(SYSFS_ENABLED), "0")
    }

    fn enable(&self, module: &str) -> Result<(), KernelError> {
        write_sysfs(&self.patch_dir(module).join(SYSFS_ENABLED), "1")
    }

    /// Polls `transition` ([`poll_delay`]); a patch whose directory is gone
    /// or going (a disabled patch's is removed) has finished.
    fn wait_transition(
        &self,
        module: &str,
        goal: Goal,
        timeout: Duration,
    ) -> Result<(), KernelError> {
        let start = Instant::now();
        let path = self.patch_dir(module).join(SYSFS_TRANSITION);
        let mut attempt = 0;
        loop {
            match std::fs::read_to_string(&path) {
                Ok(text) if text.trim() == "0" => return Ok(()),
                Ok(_) => {}
                // A patch being freed: its directory goes (ENOENT), or its
                // attributes stop answering while the kobject is torn down (ENODEV,
                // seen after a reversed enable on the test kernel).
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(nix::Error::ENODEV as i32) =>
                {
                    return Ok(());
                }
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
            std::thread::sleep(poll_delay(attempt));
            attempt += 1;
        }
    }

    /// `delete_module(2)`, non-blocking as `rmmod` does.
    fn unload(&self, module: &str) -> Result<(), KernelError> {
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

/// Modules whose `/proc/modules` taint flags include `K` (TAINT_LIVEPATCH, set for
/// modules with `livepatch=Y` in their modinfo), oldest first.
pub fn livepatch_modules(proc_modules: &str) -> Vec<String> {
    let mut names: Vec<String> = proc_modules
        .lines()
        .filter(|l| {
            l.rsplit_once('(').is_some_and(|(_, flags)| {
                flags.trim_end_matches(')').contains(TAINT_LIVEPATCH_LETTER)
            })
        })
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    names.reverse();
    names
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
            if let Ok(text) = std::fs::read_to_string(task.path().join(TASK_PATCH_STATE))
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

    /// A livepatch sysfs directory and `/proc/modules` written by hand: the roots
    /// are values, so the reading side can be checked without a kernel.
    #[test]
    fn reads_patches_in_load_order_from_injected_roots() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path().join("livepatch");
        for (module, enabled, transition) in [("kstack_b", "1", "0"), ("kstack_a", "1", "1")] {
            let patch = root.join(module);
            std::fs::create_dir_all(&patch).expect("mkdir");
            std::fs::write(patch.join(SYSFS_ENABLED), format!("{enabled}\n")).expect("write");
            std::fs::write(patch.join(SYSFS_TRANSITION), format!("{transition}\n")).expect("write");
        }
        let modules = dir.path().join("modules");
        std::fs::write(
            &modules,
            "kstack_c 16384 0 - Live 0x0 (OEK)\n\
             kstack_b 16384 0 - Live 0x0 (OEK)\n\
             kstack_a 16384 0 - Live 0x0 (OEK)\n\
             ext4 16384 0 - Live 0x0\n",
        )
        .expect("write");
        let lp = Sysfs::new(&root, &modules);
        assert!(lp.supported());
        let loaded = lp.loaded_patches().expect("readable");
        let names: Vec<&str> = loaded.iter().map(|p| p.module.as_str()).collect();
        assert_eq!(names, ["kstack_a", "kstack_b"]);
        assert!(loaded[0].transition && !loaded[1].transition);
        assert_eq!(lp.modules_without_patch().expect("readable"), ["kstack_c"]);
        assert_eq!(lp.patch_state("kstack_c").expect("readable"), None);
        // A transition that has finished, and one whose patch went away.
        lp.wait_transition("kstack_b", Goal::Patched, Duration::ZERO)
            .expect("finished");
        lp.wait_transition("kstack_c", Goal::Unpatched, Duration::ZERO)
            .expect("gone");
        assert!(matches!(
            lp.wait_transition("kstack_a", Goal::Patched, Duration::ZERO),
            Err(KernelError::Stalled { .. })
        ));

        let missing = Sysfs::new(dir.path().join("none"), &modules);
        assert!(!missing.supported());
        assert!(matches!(
            missing.loaded_patches(),
            Err(KernelError::NoLivepatch)
        ));
    }
}
