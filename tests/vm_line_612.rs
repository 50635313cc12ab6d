//! The key end-to-end scenarios on Debian's 6.12 cloud kernel (the newest release
//! of `linux-image-6.12-cloud-amd64`, which set-up fetches beside the default 6.1
//! kernel): the example patches (6.12's versions where the source differs), built,
//! proven by run-pre, synced, checked and reverted; and the hooks with a shadow
//! variable and a refusing hook. 6.12's configuration enables IBT (ENDBR before the
//! fentry call), call padding, call-depth tracking and runs objtool at link time
//! only: these are the tests that the builder and run-pre handle it.
//!
//! With call-depth tracking on (`retbleed=stuff` on an emulated Skylake), the example
//! patches again.
//!
//! Every other VM test runs on 6.12 too with `KSTACK_TEST_KERNEL=6.12-cloud-amd64`.

use kstack_tests::{LINE_612, scenarios, select_kernel};

#[test]
fn example_patches_on_6_12() {
    select_kernel(LINE_612);
    let line = kstack_tests::kernel().line().expect("a Debian release");
    assert_eq!(line.line, "6.12");
    scenarios::example_patches_build_apply_check_and_revert();
}

#[test]
fn hooks_on_6_12() {
    select_kernel(LINE_612);
    scenarios::hooks_shadow_variable_and_refusing_hook();
}

/// The example patches on 6.12 with call-depth tracking on: an Intel Skylake CPU
/// (which the kernel counts as affected by Retbleed) booted with
/// `spectre_v2=retpoline retbleed=stuff`, so that the kernel points every direct
/// call at an accounting thunk in its callee's padding and retpoline and return
/// sites at its counting thunks. Run-pre proves the replaced functions through
/// those rewrites, and the patches apply, hold and revert.
#[test]
fn example_patches_on_6_12_with_call_depth_tracking() {
    select_kernel(LINE_612);
    let s = scenarios::example_patches_in(
        |o| {
            o.cpu = Some("Skylake-Client".into());
            o.kernel_args
                .extend(["spectre_v2=retpoline".into(), "retbleed=stuff".into()]);
        },
        "cat /sys/devices/system/cpu/vulnerabilities/retbleed\n\
         dmesg | grep -i 'call depth' || true",
    );
    assert!(
        s["prelude"].contains("Mitigation: Stuffing")
            && s["prelude"].contains("Setting up call depth tracking"),
        "the kernel did not turn call-depth tracking on:\n{}",
        s["prelude"]
    );
}
