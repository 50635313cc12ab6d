//! A QEMU virtual machine that boots a given kernel and runs one script in it.
//!
//! The VM's root file system is an initramfs written by [`initramfs`]: a static
//! `kstack` as `/init` (see [`guest`]), busybox for the shell and tools, and the
//! files the caller adds. The kernel console, the script's stdout, its stderr and its
//! exit status travel on four separate serial ports, so they never mix.
//!
//! QEMU runs under TCG by default: KVM fails on the machines this was built on (the
//! guest dies with an emulation failure early in boot, LAB.md). Every run has a hard
//! timeout; the QEMU process is killed when its [`RunningVm`] is dropped (also while a
//! panic unwinds) and, through `PR_SET_PDEATHSIG`, when the thread that started it
//! dies, so no VM outlives its caller.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod guest;
pub mod initramfs;
pub mod modules;

use initramfs::{Initramfs, InitramfsError};
use modules::{ModuleSet, ModulesError};

/// The Debian `busybox-static` binary, which runs in an initramfs on its own.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";
/// A booted Debian cloud kernel with a small initramfs needs well under this.
pub const DEFAULT_MEMORY_MIB: u32 = 512;
/// Boot takes about 5 s under TCG; leave room for a loaded machine.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);
/// How often the host checks whether QEMU has exited.
const POLL: Duration = Duration::from_millis(20);

/// How QEMU executes the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// Software emulation: slow, works everywhere.
    #[default]
    Tcg,
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// A bzImage (`vmlinuz`).
    pub kernel: PathBuf,
    /// A statically linked `kstack`, which becomes the guest's `/init`.
    pub guest_binary: PathBuf,
    pub busybox: PathBuf,
    pub qemu: PathBuf,
    pub memory_mib: u32,
    pub accel: Accel,
    pub timeout: Duration,
    /// Added to the kernel command line (`nokaslr`, `loglevel=7`, ...).
    pub kernel_args: Vec<String>,
    /// The CPU model QEMU emulates (`-cpu`); QEMU's default when `None`.
    pub cpu: Option<String>,
    /// Boot through UEFI firmware instead of QEMU's direct Linux boot.
    pub firmware: Option<Firmware>,
}

/// UEFI firmware for the VM: OVMF's code and a variable store (Debian's `ovmf`
/// package: `/usr/share/OVMF/OVMF_CODE_4M.fd` and `OVMF_VARS_4M.fd`). The kernel is
/// still given with `-kernel`; the firmware starts it through its EFI stub, so the
/// kernel sees EFI runtime services and the variables (`db`, `SecureBoot`, the MOK
/// lists). Each run gets a copy of `vars`, which is never written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub code: PathBuf,
    pub vars: PathBuf,
    /// The code is a Secure Boot build, which needs SMM: the VM is then a q35
    /// machine with SMM on and the flash writable from SMM only, as OVMF's
    /// Secure Boot build requires (OvmfPkg/README).
    pub secure_boot: bool,
}

impl Firmware {
    /// Debian's OVMF without Secure Boot keys enrolled, with `vars` as variables.
    pub fn ovmf(vars: impl Into<PathBuf>) -> Firmware {
        Firmware {
            code: OVMF_CODE.into(),
            vars: vars.into(),
            secure_boot: false,
        }
    }

    /// Debian's OVMF built with Secure Boot and SMM, with `vars` as variables
    /// (PK, KEK and db enrolled and Secure Boot on, e.g. by `virt-fw-vars --sb`).
    pub fn ovmf_secure_boot(vars: impl Into<PathBuf>) -> Firmware {
        Firmware {
            code: OVMF_CODE_SECBOOT.into(),
            vars: vars.into(),
            secure_boot: true,
        }
    }
}

/// Debian's OVMF build for 4 MiB flash, without SMM (`ovmf` package).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// Debian's OVMF build for 4 MiB flash with Secure Boot and SMM (`ovmf` package).
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// Its empty variable store.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

impl SandboxOptions {
    pub fn new(kernel: impl Into<PathBuf>, guest_binary: impl Into<PathBuf>) -> Self {
        SandboxOptions {
            kernel: kernel.into(),
            guest_binary: guest_binary.into(),
            busybox: DEFAULT_BUSYBOX.into(),
            qemu: DEFAULT_QEMU.into(),
            memory_mib: DEFAULT_MEMORY_MIB,
            accel: Accel::default(),
            timeout: DEFAULT_TIMEOUT,
            kernel_args: Vec::new(),
            cpu: None,
            firmware: None,
        }
    }
}

/// Why a sandbox run did not produce an exit status.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what} not found at {path}")]
    MissingAsset { what: &'static str, path: PathBuf },
    #[error("cannot start {qemu}: {source}")]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the VM did not finish within {timeout:?} and was killed; console ends with:\n{console_tail}"
    )]
    Timeout {
        timeout: Duration,
        console_tail: String,
    },
    #[error("the VM stopped ({qemu_status}) without reporting the script's exit status; {detail}")]
    NoExitStatus { qemu_status: String, detail: String },
    #[error("cannot build the initramfs: {0}")]
    Initramfs(#[from] InitramfsError),
    #[error("the kernel's modules for the guest: {0}")]
    Modules(#[from] ModulesError),
    #[error("sandbox I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How the guest's script ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStatus {
    Exited(i32),
    Signaled(i32),
}

impl GuestStatus {
    pub fn success(self) -> bool {
        self == GuestStatus::Exited(0)
    }

    /// An exit code for the host process, as a shell would give it.
    pub fn code(self) -> i32 {
        match self {
            GuestStatus::Exited(code) => code,
            GuestStatus::Signaled(sig) => 128 + sig,
        }
    }
}

/// The outcome of a script that ran to its end in the guest.
#[derive(Debug, Clone)]
pub struct GuestRun {
    pub status: GuestStatus,
    pub stdout: String,
    pub stderr: String,
    /// Everything the kernel printed on its console (`ttyS0`).
    pub console: String,
    /// From QEMU's start to its exit.
    pub elapsed: Duration,
}

impl GuestRun {
    /// The script's stdout split into sections, each started by a line `== NAME`:
    /// a simple way for a script to label what it prints, for a caller to check.
    pub fn sections(&self) -> std::collections::BTreeMap<String, String> {
        sections(&self.stdout)
    }
}

/// Splits text into sections that start with a line `== NAME` (see
/// [`GuestRun::sections`]); text before the first such line is dropped.
pub fn sections(text: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            if let Some((n, body)) = current.take() {
                out.insert(n, body);
            }
            current = Some((name.trim().to_owned(), String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    if let Some((n, body)) = current {
        out.insert(n, body);
    }
    out
}

/// A VM definition: options plus the files to put in the guest.
#[derive(Debug, Clone)]
pub struct Sandbox {
    options: SandboxOptions,
    root: Initramfs,
}

impl Sandbox {
    /// Checks that the kernel, the guest binary and busybox exist.
    pub fn new(options: SandboxOptions) -> Result<Sandbox, SandboxError> {
        let firmware = options.firmware.iter().flat_map(|f| {
            [
                ("UEFI firmware code (Debian package ovmf)", &f.code),
                ("UEFI variable store", &f.vars),
            ]
        });
        for (what, path) in [
            ("kernel image", &options.kernel),
            ("static kstack binary for the guest", &options.guest_binary),
            ("busybox (Debian package busybox-static)", &options.busybox),
        ]
        .into_iter()
        .chain(firmware)
        {
            if !path.is_file() {
                return Err(SandboxError::MissingAsset {
                    what,
                    path: path.clone(),
                });
            }
        }
        let mut root = Initramfs::new();
        for dir in [
            "/proc",
            "/sys",
            "/dev",
            "/tmp",
            "/root",
            "/sbin",
            "/usr/bin",
            "/usr/sbin",
        ] {
            root.dir(dir, 0o755)?;
        }
        // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
        root.char_dev("/dev/console", 0o600, 5, 1)?;
        root.host_file("/bin/kstack", &options.guest_binary)?;
        root.host_file("/bin/busybox", &options.busybox)?;
        root.symlink("/init", "/bin/kstack")?;
        Ok(Sandbox { options, root })
    }

    pub fn options(&self) -> &SandboxOptions {
        &self.options
    }

    /// Copies a host file into the guest when the VM starts.
    pub fn add_host_file(&mut self, guest_path: &str, host: &Path) -> Result<(), SandboxError> {
        self.root.host_file(guest_path, host)?;
        Ok(())
    }

    /// Copies a host directory tree into the guest when the VM starts.
    pub fn add_host_tree(&mut self, guest_path: &str, host: &Path) -> Result<(), SandboxError> {
        self.root.host_tree(guest_path, host)?;
        Ok(())
    }

    /// Gives the guest the kernel's loadable modules (`dir` is the image's
    /// `lib/modules/<release>`, indexed by depmod): all of them, or the named ones
    /// and what they depend on, for the guest's `modprobe`.
    pub fn add_modules(&mut self, dir: &Path, set: &ModuleSet) -> Result<(), SandboxError> {
        modules::add(&mut self.root, dir, set)
    }

    /// Puts bytes into the guest as a file.
    pub fn add_file(
        &mut self,
        guest_path: &str,
        mode: u32,
        data: impl Into<Vec<u8>>,
    ) -> Result<(), SandboxError> {
        self.root.file(guest_path, mode, data)?;
        Ok(())
    }

    /// Boots the VM, runs `script` with `/bin/sh`, and waits for it.
    pub fn run(&self, script: &str) -> Result<GuestRun, SandboxError> {
        self.start(script)?.wait()
    }

    /// Boots the VM and returns at once; [`RunningVm::wait`] collects the result.
    pub fn start(&self, script: &str) -> Result<RunningVm, SandboxError> {
        let dir = tempfile::Builder::new()
            .prefix("kstack-sandbox-")
            .tempdir()
            .map_err(|source| SandboxError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let mut root = self.root.clone();
        root.file(guest::SCRIPT_PATH, 0o755, script.as_bytes().to_vec())?;
        let initrd = dir.path().join("initrd.cpio");
        root.write_file(&initrd)?;

        let opts = &self.options;
        let mut append = vec!["console=ttyS0", "panic=-1", "quiet"];
        append.extend(opts.kernel_args.iter().map(String::as_str));
        let mut cmd = Command::new(&opts.qemu);
        match opts.accel {
            Accel::Tcg => cmd.args(["-accel", "tcg"]),
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        };
        if let Some(cpu) = &opts.cpu {
            cmd.args(["-cpu", cpu]);
        }
        cmd.args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-smp", "1", "-m", &opts.memory_mib.to_string()])
        .arg("-kernel")
        .arg(&opts.kernel)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(append.join(" "));
        if let Some(firmware) = &opts.firmware {
            let vars = dir.path().join("vars.fd");
            std::fs::copy(&firmware.vars, &vars).map_err(|source| SandboxError::Io {
                path: firmware.vars.clone(),
                source,
            })?;
            if firmware.secure_boot {
                cmd.args(["-machine", "q35,smm=on"])
                    .args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            }
            cmd.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                firmware.code.display()
            ));
            cmd.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
        }
        for log in LOGS {
            cmd.arg("-serial")
                .arg(format!("file:{}", dir.path().join(log).display()));
        }
        let qemu_log = dir.path().join("qemu.log");
        let qemu_log_file = File::create(&qemu_log).map_err(|source| SandboxError::Io {
            path: qemu_log.clone(),
            source,
        })?;
        let qemu_log_err = qemu_log_file
            .try_clone()
            .map_err(|source| SandboxError::Io {
                path: qemu_log.clone(),
                source,
            })?;
        cmd.stdin(Stdio::null())
            .stdout(qemu_log_file)
            .stderr(qemu_log_err);
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe, and
        // touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let started = Instant::now();
        let child = cmd.spawn().map_err(|source| SandboxError::Spawn {
            qemu: opts.qemu.clone(),
            source,
        })?;
        Ok(RunningVm {
            child,
            dir,
            started,
            timeout: opts.timeout,
        })
    }
}

/// The host files the four serial ports write to, in `-serial` order.
const LOGS: [&str; 4] = ["console.log", "stdout.log", "stderr.log", "status.log"];

/// A VM that is running. Dropping it kills QEMU.
#[derive(Debug)]
pub struct RunningVm {
    child: Child,
    dir: tempfile::TempDir,
    started: Instant,
    timeout: Duration,
}

impl RunningVm {
    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the guest to power off, up to the timeout.
    pub fn wait(mut self) -> Result<GuestRun, SandboxError> {
        let deadline = self.started + self.timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    self.kill();
                    return Err(SandboxError::Timeout {
                        timeout: self.timeout,
                        console_tail: tail(&self.read_log("console.log"), 30),
                    });
                }
                Ok(None) => std::thread::sleep(POLL),
                Err(source) => {
                    self.kill();
                    return Err(SandboxError::Io {
                        path: "qemu (wait)".into(),
                        source,
                    });
                }
            }
        };
        let elapsed = self.started.elapsed();
        self.collect(status, elapsed)
    }

    fn collect(&self, qemu: ExitStatus, elapsed: Duration) -> Result<GuestRun, SandboxError> {
        let console = self.read_log("console.log");
        let status_line = self.read_log("status.log");
        let status = parse_status(&status_line).ok_or_else(|| {
            let qemu_log = self.read_log("qemu.log");
            let mut detail = String::new();
            if !qemu_log.trim().is_empty() {
                detail.push_str(&format!("QEMU said:\n{}\n", tail(&qemu_log, 10)));
            }
            detail.push_str(&format!("console ends with:\n{}", tail(&console, 30)));
            SandboxError::NoExitStatus {
                qemu_status: qemu.to_string(),
                detail,
            }
        })?;
        Ok(GuestRun {
            status,
            stdout: self.read_log("stdout.log"),
            stderr: self.read_log("stderr.log"),
            console,
            elapsed,
        })
    }

    fn read_log(&self, name: &str) -> String {
        std::fs::read(self.dir.path().join(name))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

fn parse_status(text: &str) -> Option<GuestStatus> {
    let line = text.lines().find(|l| !l.trim().is_empty())?.trim();
    if let Some(code) = line.strip_prefix(guest::EXIT_PREFIX) {
        return code.trim().parse().ok().map(GuestStatus::Exited);
    }
    line.strip_prefix(guest::SIGNAL_PREFIX)?
        .trim()
        .parse()
        .ok()
        .map(GuestStatus::Signaled)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Finds a static `kstack` for the guest: `$KSTACK_GUEST_BINARY`; this very program
/// if it is statically linked; or the static build beside a development build
/// (`target/x86_64-unknown-linux-gnu/release/kstack`, made by `cargo xtask setup`).
pub fn find_guest_binary() -> Result<PathBuf, SandboxError> {
    if let Some(path) = std::env::var_os("KSTACK_GUEST_BINARY") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|source| SandboxError::Io {
        path: "/proc/self/exe".into(),
        source,
    })?;
    if is_static_elf(&exe) && exe.file_name().is_some_and(|n| n == "kstack") {
        return Ok(exe);
    }
    // target/<profile>/kstack or target/<profile>/deps/<test> -> target/
    for target in exe.ancestors().skip(1).take(3) {
        let candidate = target.join(STATIC_TARGET).join("release/kstack");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(SandboxError::MissingAsset {
        what: "static kstack binary for the guest (set KSTACK_GUEST_BINARY)",
        path: PathBuf::from("target")
            .join(STATIC_TARGET)
            .join("release/kstack"),
    })
}

/// The target triple of the static guest build.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Whether an ELF file has no program interpreter (it is statically linked).
pub fn is_static_elf(path: &Path) -> bool {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    let Ok(elf) = ElfFile64::<object::Endianness>::parse(&*data) else {
        return false;
    };
    let endian = elf.endian();
    !elf.elf_program_headers()
        .iter()
        .any(|ph| ph.p_type(endian) == object::elf::PT_INTERP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(
            parse_status("kstack-exit 0\n"),
            Some(GuestStatus::Exited(0))
        );
        assert_eq!(
            parse_status("kstack-exit 42"),
            Some(GuestStatus::Exited(42))
        );
        assert_eq!(
            parse_status("kstack-signal 9\n"),
            Some(GuestStatus::Signaled(9))
        );
        assert_eq!(parse_status(""), None);
        assert_eq!(parse_status("garbage"), None);
        assert_eq!(GuestStatus::Signaled(9).code(), 137);
    }

    #[test]
    fn missing_assets_are_named() {
        let err = Sandbox::new(SandboxOptions::new("/nonexistent/vmlinuz", "/bin/sh")).unwrap_err();
        assert!(
            matches!(
                err,
                SandboxError::MissingAsset {
                    what: "kernel image",
                    ..
                }
            ),
            "{err}"
        );
    }
}
