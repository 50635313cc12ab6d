//! The sandbox itself, on the real kernel: output channels kept apart, exit statuses,
//! the hard timeout, two VMs at once, and no QEMU left behind when the caller panics.

use std::time::{Duration, Instant};

use kstack_engine::sandbox::{GuestStatus, SandboxError};
use kstack_tests::{sandbox, sandbox_with};

fn pid_alive(pid: u32) -> bool {
    // A zombie would still have /proc/<pid>; RunningVm reaps what it kills.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn stdout_stderr_status_and_console_are_separate() {
    let mut vm = sandbox();
    vm.add_file("/etc/greeting", 0o644, b"hello from the host\n".to_vec())
        .unwrap();
    let run = vm
        .run("cat /etc/greeting; echo to-stderr >&2; echo '<2>kmsg-line' > /dev/kmsg; uname -r; exit 7")
        .unwrap();
    assert_eq!(run.status, GuestStatus::Exited(7));
    let release = kstack_tests::kernel().release;
    assert_eq!(run.stdout, format!("hello from the host\n{release}\n"));
    assert_eq!(run.stderr, "to-stderr\n");
    assert!(!run.stdout.contains("kmsg-line"));
    // The kernel's console got what was written to the kernel log, not the script's.
    assert!(run.console.contains("kmsg-line"), "{}", run.console);
    assert!(!run.console.contains("to-stderr"));
}

#[test]
fn a_signal_is_reported_as_such() {
    let run = sandbox().run("kill -TERM $$").unwrap();
    assert_eq!(run.status, GuestStatus::Signaled(15));
}

#[test]
fn the_timeout_kills_the_vm() {
    let vm = sandbox_with(|o| o.timeout = Duration::from_secs(15));
    let started = Instant::now();
    let running = vm.start("sleep 1000").unwrap();
    let pid = running.pid();
    let err = running.wait().unwrap_err();
    assert!(matches!(err, SandboxError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(40));
    assert!(!pid_alive(pid), "QEMU {pid} survived the timeout");
}

#[test]
fn no_qemu_is_left_behind_when_the_caller_panics() {
    let vm = sandbox();
    let mut pid = 0;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let running = vm.start("sleep 1000").unwrap();
        pid = running.pid();
        assert!(pid_alive(pid));
        panic!("the caller fails while the VM runs");
    }));
    assert!(result.is_err());
    assert!(pid != 0);
    assert!(!pid_alive(pid), "QEMU {pid} outlived a panicking caller");
}

#[test]
fn two_sandboxes_run_at_once() {
    let handles: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                let run = sandbox().run(&format!("sleep 1; echo vm-{i}")).unwrap();
                (run.status, run.stdout)
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (status, stdout) = h.join().unwrap();
        assert_eq!(status, GuestStatus::Exited(0));
        assert_eq!(stdout, format!("vm-{i}\n"));
    }
}

#[test]
fn a_kernel_that_is_not_a_kernel_fails_with_the_console() {
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), b"not a bzImage").unwrap();
    let vm = sandbox_with(|o| o.kernel = junk.path().to_owned());
    let err = vm.run("true").unwrap_err();
    assert!(matches!(err, SandboxError::NoExitStatus { .. }), "{err}");
    assert!(err.to_string().contains("QEMU said"), "{err}");
}

/// The guest gets the kernel's modules with their index: `modprobe xfs` loads xfs and
/// what it needs (libcrc32c), and the module works (its statistics file appears).
/// With the named modules only, the others are not there; with all of them, they are.
#[test]
fn the_guest_loads_the_kernels_modules_with_modprobe() {
    use kstack_engine::sandbox::modules::ModuleSet;
    let modules = kstack_tests::kernel().modules_dir();
    let script = "modprobe xfs && echo loaded; grep -c '^xfs \\|^libcrc32c ' /proc/modules; \
                  head -c 9 /sys/fs/xfs/stats/stats; echo; \
                  modprobe binfmt_misc >/dev/null 2>&1 && echo binfmt_misc || echo no-binfmt_misc";

    let mut vm = sandbox();
    vm.add_modules(&modules, &ModuleSet::Named(vec!["xfs".into()]))
        .unwrap();
    let started = Instant::now();
    let run = vm.run(script).unwrap();
    let named = started.elapsed();
    assert!(run.status.success(), "{}\n{}", run.stderr, run.console);
    assert_eq!(
        run.stdout, "loaded\n2\nextent_al\nno-binfmt_misc\n",
        "{}",
        run.stderr
    );

    let mut vm = sandbox();
    vm.add_modules(&modules, &ModuleSet::All).unwrap();
    let started = Instant::now();
    let run = vm.run(script).unwrap();
    let all = started.elapsed();
    assert!(run.status.success(), "{}\n{}", run.stderr, run.console);
    // (binfmt_misc: a module on every line; 6.12 builds fuse in.)
    assert_eq!(
        run.stdout, "loaded\n2\nextent_al\nbinfmt_misc\n",
        "{}",
        run.stderr
    );
    eprintln!("boot and modprobe: named modules {named:?}, all modules {all:?}");
}
