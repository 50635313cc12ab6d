//! The key end-to-end scenarios on Debian's 6.12 cloud kernel (the newest release
//! of `linux-image-6.12-cloud-amd64`, which set-up fetches beside the default 6.1
//! kernel): the example patches (6.12's versions where the source differs), built,
//! proven by run-pre, synced, checked and reverted; and the hooks with a shadow
//! variable and a refusing hook. 6.12's configuration enables IBT (ENDBR before the
//! fentry call), call padding, call-depth tracking and runs objtool at link time
//! only: these are the tests that the builder and run-pre handle it.
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
