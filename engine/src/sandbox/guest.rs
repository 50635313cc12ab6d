//! `kstack` as PID 1 of the sandbox VM: mount the pseudo file systems, run the
//! caller's script with its output on dedicated serial ports, report its exit status,
//! power off.
//!
//! The host ([`crate::sandbox`]) gives the VM four ISA serial ports, so the script's
//! output never mixes with the kernel's messages:
//!
//! | guest port | what | host file |
//! |---|---|---|
//! | `ttyS0` | kernel console (`console=ttyS0`) | `console.log` |
//! | `ttyS1` | the script's stdout | `stdout.log` |
//! | `ttyS2` | the script's stderr | `stderr.log` |
//! | `ttyS3` | one line: `kstack-exit <code>` or `kstack-signal <n>` | `status.log` |

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sys::termios;

/// Where the sandbox puts the script to run.
pub const SCRIPT_PATH: &str = "/kstack/script.sh";
/// The guest's `PATH`.
pub const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The serial devices, in the order the host attaches them (`-serial` 0..3).
pub const STDOUT_TTY: &str = "/dev/ttyS1";
pub const STDERR_TTY: &str = "/dev/ttyS2";
pub const STATUS_TTY: &str = "/dev/ttyS3";
/// The status line prefixes written to [`STATUS_TTY`].
pub const EXIT_PREFIX: &str = "kstack-exit ";
pub const SIGNAL_PREFIX: &str = "kstack-signal ";

/// An error that stops the guest before or while running the script.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("mount {target}: {source}")]
    Mount {
        target: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("open {path}: {source}")]
    Open {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("set {path} to raw mode: {source}")]
    Raw {
        path: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("run {what}: {source}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the guest's init sequence up to the script's end. The caller powers off
/// (with [`power_off`]) whatever this returns, after printing any error on the console.
pub fn run_script() -> Result<(), GuestError> {
    mount_pseudo_filesystems()?;
    // Busybox provides the shell and the usual tools; its applet links are made here,
    // in the guest, so the host does not need to know busybox's applet list.
    let status = Command::new("/bin/busybox")
        .args(["--install", "-s"])
        .status()
        .map_err(|source| GuestError::Spawn {
            what: "busybox --install",
            source,
        })?;
    if !status.success() {
        eprintln!("kstack-init: busybox --install failed: {status}");
    }

    let stdout = open_raw(STDOUT_TTY)?;
    let stderr = open_raw(STDERR_TTY)?;
    let mut status_port = open_raw(STATUS_TTY)?;

    let result = Command::new("/bin/sh")
        .arg(SCRIPT_PATH)
        .env_clear()
        .env("PATH", GUEST_PATH)
        .env("HOME", "/root")
        .env("TERM", "dumb")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().map_err(|source| GuestError::Open {
            path: STDOUT_TTY,
            source,
        })?)
        .stderr(stderr.try_clone().map_err(|source| GuestError::Open {
            path: STDERR_TTY,
            source,
        })?)
        .status();
    let line = match result {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("{EXIT_PREFIX}{code}\n"),
            (None, Some(sig)) => format!("{SIGNAL_PREFIX}{sig}\n"),
            (None, None) => format!("{EXIT_PREFIX}255\n"),
        },
        Err(e) => {
            eprintln!("kstack-init: cannot run {SCRIPT_PATH}: {e}");
            format!("{EXIT_PREFIX}127\n")
        }
    };
    use std::io::Write;
    let _ = status_port.write_all(line.as_bytes());
    for port in [&stdout, &stderr, &status_port] {
        // Everything must have left the UART before the machine stops.
        let _ = termios::tcdrain(port.as_fd());
    }
    Ok(())
}

/// Flushes file systems and powers the VM off; QEMU exits (`-no-reboot`).
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // reboot(2) does not return on success; if it failed, PID 1 exiting panics the
    // kernel, and `panic=-1` with `-no-reboot` still ends QEMU.
    std::process::exit(1)
}

fn mount_pseudo_filesystems() -> Result<(), GuestError> {
    let mounts: [(&str, &'static str, &str); 4] = [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
    ];
    for (source, target, fstype) in mounts {
        std::fs::create_dir_all(target).map_err(|e| GuestError::Open {
            path: target,
            source: e,
        })?;
        mount(
            Some(source),
            target,
            Some(fstype),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| GuestError::Mount { target, source })?;
    }
    // What a host's init mounts too, best effort: securityfs shows the lockdown
    // mode, efivarfs the UEFI variables (Secure Boot) when the VM boots through
    // firmware.
    for (source, target, fstype) in [
        ("securityfs", "/sys/kernel/security", "securityfs"),
        ("efivarfs", "/sys/firmware/efi/efivars", "efivarfs"),
    ] {
        if Path::new(target).is_dir() {
            let _ = mount(
                Some(source),
                target,
                Some(fstype),
                MsFlags::empty(),
                None::<&str>,
            );
        }
    }
    Ok(())
}

fn open_raw(path: &'static str) -> Result<File, GuestError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| GuestError::Open { path, source })?;
    let mut attrs =
        termios::tcgetattr(file.as_fd()).map_err(|source| GuestError::Raw { path, source })?;
    // No newline translation or echo: the host reads exactly the bytes written.
    termios::cfmakeraw(&mut attrs);
    termios::tcsetattr(file.as_fd(), termios::SetArg::TCSANOW, &attrs)
        .map_err(|source| GuestError::Raw { path, source })?;
    Ok(file)
}
