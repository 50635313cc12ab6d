//! End to end on the real Debian cloud kernel in QEMU: build kstack's hand-written
//! livepatch module with kbuild, load it, see `/proc/cmdline` change, disable it
//! through sysfs, see the original back, unload it. Every step is asserted from what
//! the guest printed.

use kstack_tests::{build_demo_module, sandbox, sections};

const MARKER: &str = "kstack-demo: this /proc/cmdline comes from a live patch";

#[test]
fn demo_module_patches_and_unpatches_proc_cmdline() {
    let build = tempfile::tempdir().unwrap();
    let ko = build_demo_module(build.path());

    let mut vm = sandbox();
    vm.add_host_file("/root/kstack_demo.ko", &ko).unwrap();
    let lp = "/sys/kernel/livepatch/kstack_demo";
    let script = format!(
        r#"
wait_transition() {{ n=0; while [ -e {lp}/transition ] && [ "$(cat {lp}/transition)" = 1 ]; do
  n=$((n+1)); [ $n -gt 300 ] && {{ echo "transition stuck"; exit 9; }}; sleep 0.1; done; }}
echo "== before"; cat /proc/cmdline
echo "== insmod"; insmod /root/kstack_demo.ko; echo "rc=$?"
wait_transition
echo "== sysfs"; echo "enabled=$(cat {lp}/enabled) transition=$(cat {lp}/transition)"
echo "== patched"; cat /proc/cmdline
echo "== disable"; echo 0 > {lp}/enabled; echo "rc=$?"
wait_transition
echo "== unpatched"; cat /proc/cmdline
echo "== rmmod"; rmmod kstack_demo; echo "rc=$?"
echo "== after"; cat /proc/modules; ls /sys/kernel/livepatch
"#
    );
    let run = vm.run(&script).unwrap();
    assert!(
        run.status.success(),
        "guest failed: {:?}\nstdout:\n{}\nstderr:\n{}\nconsole:\n{}",
        run.status,
        run.stdout,
        run.stderr,
        run.console
    );
    let s = sections(&run.stdout);
    let ctx = || format!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);

    assert!(s["before"].contains("console=ttyS0"), "{}", ctx());
    assert!(!s["before"].contains(MARKER), "{}", ctx());
    assert_eq!(s["insmod"].trim(), "rc=0", "{}", ctx());
    assert_eq!(s["sysfs"].trim(), "enabled=1 transition=0", "{}", ctx());
    assert_eq!(s["patched"].trim(), MARKER, "{}", ctx());
    assert_eq!(s["disable"].trim(), "rc=0", "{}", ctx());
    assert!(s["unpatched"].contains("console=ttyS0"), "{}", ctx());
    assert!(!s["unpatched"].contains(MARKER), "{}", ctx());
    assert_eq!(s["rmmod"].trim(), "rc=0", "{}", ctx());
    assert!(!s["after"].contains("kstack_demo"), "{}", ctx());
    // The kernel's own record of the load: livepatch taints the kernel with K.
    assert!(
        run.console.is_empty() || !run.console.contains("Oops"),
        "kernel oops:\n{}",
        run.console
    );
}
