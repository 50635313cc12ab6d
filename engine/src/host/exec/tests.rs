//! The executor on a fake kernel: which calls it makes, in which order, and where it
//! leaves the kernel when a step or an undo step fails. The same paths run on the real
//! kernel in the VM tests (tests/vm_sync.rs); these pin the order of every call.

use proptest::prelude::*;

use super::*;
use crate::host::kernel::fake::{Call, FakeLivepatch, Outcome, PARKED};
use crate::host::plan::{self, Applied};

/// Long enough for the executor's own retry loop never to matter: the fake answers at
/// once.
const TIMEOUT: Duration = Duration::from_millis(50);

fn bytes_of(module: &str) -> Vec<u8> {
    format!("verified bytes of {module}").into_bytes()
}

fn verified(names: &[&str]) -> Modules {
    let mut modules = Modules::default();
    for name in names {
        modules.insert(*name, bytes_of(name));
    }
    modules
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// The planner's plan from `applied` (all enabled) to `desired`.
fn plan_between(applied: &[&str], desired: &[&str]) -> Plan {
    let applied: Vec<Applied> = applied
        .iter()
        .map(|m| Applied {
            module: (*m).to_owned(),
            enabled: true,
        })
        .collect();
    plan::plan(&applied, &names(desired))
}

fn apply_step(module: &str, index: usize) -> Step {
    Step::Apply {
        module: module.into(),
        index,
    }
}

fn revert_step(module: &str) -> Step {
    Step::Revert {
        module: module.into(),
    }
}

/// The calls of an apply that goes through.
fn applied(module: &str) -> Vec<Call> {
    vec![
        Call::Load(module.into()),
        Call::PatchState(module.into()),
        Call::Wait(module.into(), Goal::Patched),
    ]
}

/// The calls of a revert that goes through.
fn reverted(module: &str) -> Vec<Call> {
    vec![
        Call::Disable(module.into()),
        Call::Wait(module.into(), Goal::Unpatched),
        Call::Unload(module.into()),
    ]
}

/// Records what the executor tells a progress bar.
#[derive(Debug, Default)]
struct Recorder {
    finished: Vec<Step>,
    undoing: Vec<Step>,
}

impl Observer for Recorder {
    fn step_finished(&mut self, _index: usize, step: &Step, _elapsed: Duration) {
        self.finished.push(step.clone());
    }
    fn undoing(&mut self, step: &Step) {
        self.undoing.push(step.clone());
    }
}

fn run(
    kernel: &FakeLivepatch,
    plan: &Plan,
    modules: &Modules,
) -> (Result<Vec<StepTiming>, Box<ExecError>>, Recorder) {
    let mut recorder = Recorder::default();
    let result = execute(kernel, plan, modules, TIMEOUT, &mut recorder);
    (result, recorder)
}

fn load_failure() -> Outcome {
    // What a module whose init fails gives (kstack_test_fail in the VM tests).
    Outcome::Fail(nix::Error::ENODEV)
}

#[test]
fn a_plan_that_goes_through_makes_each_step_s_calls_in_order() {
    let kernel = FakeLivepatch::with_patches(&["a", "b", "c"]);
    let plan = plan_between(&["a", "b", "c"], &["a", "c"]);
    let (result, recorder) = run(&kernel, &plan, &verified(&["b", "c"]));
    let timings = result.expect("every step succeeds");
    assert_eq!(timings.len(), 3);
    assert_eq!(recorder.finished, plan.steps);
    assert!(recorder.undoing.is_empty());
    let expected: Vec<Call> = [reverted("c"), reverted("b"), applied("c")].concat();
    assert_eq!(kernel.calls(), expected);
    assert_eq!(kernel.stack(), ["a", "c"]);
    assert_eq!(kernel.loaded_bytes(), [("c".to_owned(), bytes_of("c"))]);
}

#[test]
fn completed_steps_are_undone_newest_first() {
    let kernel = FakeLivepatch::with_patches(&["a", "b", "c"]);
    let plan = plan_between(&["a", "b", "c"], &["a", "c", "d"]);
    assert_eq!(
        plan.steps,
        [
            revert_step("c"),
            revert_step("b"),
            apply_step("c", 1),
            apply_step("d", 2)
        ]
    );
    kernel.at(Call::Load("d".into()), load_failure());
    let (result, recorder) = run(&kernel, &plan, &verified(&["b", "c", "d"]));
    let err = result.expect_err("loading d fails");
    assert_eq!(err.step, apply_step("d", 2));
    assert!(
        matches!(
            err.cause,
            KernelError::Load {
                errno: nix::Error::ENODEV,
                ..
            }
        ),
        "{:?}",
        err.cause
    );
    let newest_first = [apply_step("c", 1), revert_step("b"), revert_step("c")];
    assert_eq!(err.undone, newest_first);
    assert_eq!(recorder.undoing, newest_first);
    assert!(err.restored(), "{err}");
    let expected: Vec<Call> = [
        reverted("c"),
        reverted("b"),
        applied("c"),
        vec![Call::Load("d".into())],
        // The undo: c comes off again, then b and c are loaded anew.
        reverted("c"),
        applied("b"),
        applied("c"),
    ]
    .concat();
    assert_eq!(kernel.calls(), expected);
    assert_eq!(kernel.stack(), ["a", "b", "c"]);
    let text = err.to_string();
    assert!(text.contains("applying d failed"), "{text}");
    assert!(
        text.contains("undone: applying c, reverting b, reverting c"),
        "{text}"
    );
}

#[test]
fn an_apply_whose_transition_stalls_is_reversed_by_disable_wait_unload() {
    let kernel = FakeLivepatch::with_patches(&["a"]);
    let plan = plan_between(&["a"], &["a", "b", "c"]);
    kernel.at(Call::Wait("c".into(), Goal::Patched), Outcome::Stall);
    let (result, _) = run(&kernel, &plan, &verified(&["b", "c"]));
    let err = result.expect_err("c stalls");
    assert_eq!(err.step, apply_step("c", 2));
    let KernelError::Stalled {
        module, blockers, ..
    } = &err.cause
    else {
        panic!("not a stall: {:?}", err.cause);
    };
    assert_eq!(module, "c");
    assert_eq!(blockers[0].comm, PARKED);
    assert_eq!(err.undone, [apply_step("b", 1)]);
    assert!(err.restored(), "{err}");
    let expected: Vec<Call> = [
        applied("b"),
        applied("c"),
        // The stalled transition reversed, the module unloaded.
        reverted("c"),
        // Then the completed step undone.
        reverted("b"),
    ]
    .concat();
    assert_eq!(kernel.calls(), expected);
    assert_eq!(kernel.stack(), ["a"]);
    assert!(err.to_string().contains(PARKED), "{err}");
}

#[test]
fn a_revert_whose_transition_stalls_is_reversed_by_reenabling() {
    let kernel = FakeLivepatch::with_patches(&["a", "b", "c"]);
    let plan = plan_between(&["a", "b", "c"], &["a"]);
    kernel.at(Call::Wait("b".into(), Goal::Unpatched), Outcome::Stall);
    let (result, _) = run(&kernel, &plan, &verified(&["b", "c"]));
    let err = result.expect_err("b stalls");
    assert_eq!(err.step, revert_step("b"));
    assert!(
        matches!(&err.cause, KernelError::Stalled { module, .. } if module == "b"),
        "{:?}",
        err.cause
    );
    assert_eq!(err.undone, [revert_step("c")]);
    assert!(err.restored(), "{err}");
    let expected: Vec<Call> = [
        reverted("c"),
        vec![
            Call::Disable("b".into()),
            Call::Wait("b".into(), Goal::Unpatched),
            // Re-enabled in flight, never unloaded.
            Call::Enable("b".into()),
            Call::Wait("b".into(), Goal::Patched),
        ],
        applied("c"),
    ]
    .concat();
    assert_eq!(kernel.calls(), expected);
    assert_eq!(kernel.stack(), ["a", "b", "c"]);
}

#[test]
fn undoing_a_revert_loads_the_module_again_from_the_verified_bytes() {
    let kernel = FakeLivepatch::with_patches(&["a", "b"]);
    let plan = plan_between(&["a", "b"], &["a", "c"]);
    kernel.at(Call::Load("c".into()), load_failure());
    let (result, _) = run(&kernel, &plan, &verified(&["b", "c"]));
    let err = result.expect_err("loading c fails");
    assert_eq!(err.undone, [revert_step("b")]);
    assert!(err.restored(), "{err}");
    // The only module that reached the kernel is b, with exactly its verified bytes.
    assert_eq!(kernel.loaded_bytes(), [("b".to_owned(), bytes_of("b"))]);
    assert_eq!(kernel.stack(), ["a", "b"]);
}

#[test]
fn undoing_a_revert_without_its_verified_bytes_is_an_undo_failure() {
    let kernel = FakeLivepatch::with_patches(&["a", "b"]);
    let plan = plan_between(&["a", "b"], &["a", "c"]);
    kernel.at(Call::Load("c".into()), load_failure());
    // The previous generation's stack is gone from the store: no copy of b.
    let (result, _) = run(&kernel, &plan, &verified(&["c"]));
    let err = result.expect_err("loading c fails");
    assert!(err.undone.is_empty());
    assert_eq!(err.undo_failures.len(), 1);
    assert_eq!(err.undo_failures[0].0, revert_step("b"));
    assert!(
        err.undo_failures[0].1.contains("no verified copy"),
        "{:?}",
        err.undo_failures
    );
    assert!(!err.restored());
    assert!(kernel.loaded_bytes().is_empty());
    assert_eq!(kernel.stack(), ["a"]);
}

#[test]
fn a_failed_undo_step_is_reported_and_the_rest_of_the_undo_still_runs() {
    let kernel = FakeLivepatch::default();
    let plan = plan_between(&[], &["a", "b", "c"]);
    kernel.at(Call::Load("c".into()), load_failure());
    kernel.at(Call::Disable("b".into()), Outcome::Fail(nix::Error::EPERM));
    let (result, recorder) = run(&kernel, &plan, &verified(&["a", "b", "c"]));
    let err = result.expect_err("loading c fails");
    assert_eq!(err.step, apply_step("c", 2));
    assert_eq!(recorder.undoing, [apply_step("b", 1), apply_step("a", 0)]);
    assert_eq!(err.undo_failures.len(), 1, "{err}");
    assert_eq!(err.undo_failures[0].0, apply_step("b", 1));
    assert!(
        err.undo_failures[0].1.contains("Operation not permitted"),
        "{:?}",
        err.undo_failures
    );
    // The undo went on past the failure: a came off.
    assert_eq!(err.undone, [apply_step("a", 0)]);
    assert!(!err.restored());
    let expected: Vec<Call> = [
        applied("a"),
        applied("b"),
        vec![Call::Load("c".into()), Call::Disable("b".into())],
        reverted("a"),
    ]
    .concat();
    assert_eq!(kernel.calls(), expected);
    // The host is not where it started, and the error says so.
    assert_eq!(kernel.stack(), ["b"]);
    let text = err.to_string();
    assert!(text.contains("undo failed: applying b"), "{text}");
    assert!(text.contains("undone: applying a"), "{text}");
}

/// A stack of distinct names from a small alphabet, so that applied and desired
/// often share prefixes.
fn stack() -> impl Strategy<Value = Vec<String>> {
    proptest::sample::subsequence(names(&["a", "b", "c", "d", "e"]), 0..5).prop_shuffle()
}

fn fake_kernel(applied: &[Applied]) -> FakeLivepatch {
    let enabled: Vec<&str> = applied
        .iter()
        .filter(|a| a.enabled)
        .map(|a| a.module.as_str())
        .collect();
    let mut kernel = FakeLivepatch::with_patches(&enabled);
    for a in applied.iter().filter(|a| !a.enabled) {
        kernel = kernel.with_leftover(&a.module);
    }
    kernel
}

proptest! {
    /// Every plan the planner makes runs to the desired stack; and a failure at any
    /// call that begins a step or waits for a transition leaves the kernel on the
    /// stack it started with. (A failed unload after a completed disable cannot be
    /// reversed; `restored_is_true_exactly_when_the_host_is_back` covers it.)
    #[test]
    fn a_failure_anywhere_leaves_the_starting_stack(
        applied in stack(),
        desired in stack(),
        leftovers in proptest::collection::vec(any::<bool>(), 5),
    ) {
        let applied: Vec<Applied> = applied
            .iter()
            .enumerate()
            .map(|(i, m)| Applied { module: m.clone(), enabled: !leftovers[i] })
            .collect();
        let start: Vec<String> = applied.iter().filter(|a| a.enabled).map(|a| a.module.clone()).collect();
        let leftover_names: Vec<String> = applied.iter().filter(|a| !a.enabled).map(|a| a.module.clone()).collect();
        let plan = plan::plan(&applied, &desired);
        let all: Vec<&str> = applied.iter().map(|a| a.module.as_str()).chain(desired.iter().map(String::as_str)).collect();
        let modules = verified(&all);

        let clean = fake_kernel(&applied);
        let (result, _) = run(&clean, &plan, &modules);
        prop_assert!(result.is_ok(), "{:?}", result.err());
        prop_assert_eq!(clean.settled(), Ok((desired.clone(), Vec::new())));

        for call in clean.calls() {
            let outcome = match &call {
                Call::Wait(..) => Outcome::Stall,
                Call::Load(_) | Call::Disable(_) => Outcome::Fail(nix::Error::EIO),
                Call::Unload(m) if leftover_names.contains(m) => Outcome::Fail(nix::Error::EIO),
                _ => continue,
            };
            let kernel = fake_kernel(&applied);
            kernel.at(call.clone(), outcome);
            let (result, _) = run(&kernel, &plan, &modules);
            let err = result.expect_err("the injected failure stops the plan");
            prop_assert!(err.restored(), "{:?}: {}", call, err);
            let (stack, left) = kernel.settled().map_err(TestCaseError::fail)?;
            prop_assert_eq!(&stack, &start, "after {:?}", call);
            prop_assert!(left.iter().all(|m| leftover_names.contains(m)), "after {:?}: {:?}", call, left);
        }
    }
}

#[test]
fn a_revert_whose_module_cannot_be_unloaded_is_not_called_restored() {
    let kernel = FakeLivepatch::with_patches(&["a", "b"]);
    let plan = plan_between(&["a", "b"], &["a"]);
    kernel.at(Call::Unload("b".into()), Outcome::Fail(nix::Error::EIO));
    let (result, _) = run(&kernel, &plan, &verified(&["b"]));
    let err = result.expect_err("b's module cannot be unloaded");
    assert_eq!(err.step, revert_step("b"));
    // The patch's disable finished: it cannot be enabled again, and its module is
    // still loaded. The host is not on its previous generation, and says so.
    assert!(!err.restored(), "{err}");
    let residue = err.residue.as_deref().unwrap_or_default();
    assert!(residue.contains("stays loaded"), "{residue}");
    assert_eq!(kernel.settled(), Ok((names(&["a"]), names(&["b"]))));
    assert!(
        err.to_string().contains("left behind: patch b is disabled"),
        "{err}"
    );
}

#[test]
fn a_patch_whose_state_cannot_be_read_after_loading_is_taken_back() {
    let kernel = FakeLivepatch::with_patches(&["a"]);
    let plan = plan_between(&["a"], &["a", "b"]);
    kernel.at(Call::PatchState("b".into()), Outcome::Fail(nix::Error::EIO));
    let (result, _) = run(&kernel, &plan, &verified(&["b"]));
    let err = result.expect_err("b's state cannot be read");
    assert!(err.restored(), "{err}");
    let expected: Vec<Call> = [
        vec![Call::Load("b".into()), Call::PatchState("b".into())],
        reverted("b"),
    ]
    .concat();
    assert_eq!(kernel.calls(), expected);
    assert_eq!(kernel.stack(), ["a"]);
}

#[test]
fn a_stall_whose_reversal_fails_keeps_the_stall_as_the_cause() {
    let kernel = FakeLivepatch::with_patches(&["a"]);
    let plan = plan_between(&["a"], &["a", "b"]);
    kernel.at(Call::Wait("b".into(), Goal::Patched), Outcome::Stall);
    kernel.at(Call::Disable("b".into()), Outcome::Fail(nix::Error::EIO));
    let (result, _) = run(&kernel, &plan, &verified(&["b"]));
    let err = result.expect_err("b stalls and cannot be reversed");
    // The blocking task is still named: it is why the host is stuck.
    assert!(
        matches!(&err.cause, KernelError::Stalled { blockers, .. } if blockers[0].comm == PARKED),
        "{:?}",
        err.cause
    );
    assert!(!err.restored(), "{err}");
    assert!(
        err.residue
            .as_deref()
            .is_some_and(|r| r.contains("could not be taken back")),
        "{err}"
    );
    assert!(kernel.settled().is_err(), "b is left in its transition");
}

proptest! {
    /// Whatever call fails (any call, stalls included), `restored()` tells the truth:
    /// it is true exactly when the kernel is settled on the stack it started with
    /// and holds no leftover module it did not hold before.
    #[test]
    fn restored_is_true_exactly_when_the_host_is_back(
        applied in stack(),
        desired in stack(),
    ) {
        let applied: Vec<Applied> = applied
            .iter()
            .map(|m| Applied { module: m.clone(), enabled: true })
            .collect();
        let start: Vec<String> = applied.iter().map(|a| a.module.clone()).collect();
        let plan = plan::plan(&applied, &desired);
        let all: Vec<&str> = start.iter().map(String::as_str).chain(desired.iter().map(String::as_str)).collect();
        let modules = verified(&all);
        let clean = fake_kernel(&applied);
        let (result, _) = run(&clean, &plan, &modules);
        prop_assert!(result.is_ok(), "{:?}", result.err());

        for call in clean.calls() {
            for outcome in [Outcome::Fail(nix::Error::EIO), Outcome::Stall] {
                if outcome == Outcome::Stall && !matches!(call, Call::Wait(..)) {
                    continue;
                }
                let kernel = fake_kernel(&applied);
                kernel.at(call.clone(), outcome);
                let (result, _) = run(&kernel, &plan, &modules);
                let Err(err) = result else { continue };
                let back = kernel.settled() == Ok((start.clone(), Vec::new()));
                prop_assert_eq!(err.restored(), back, "{:?} {:?}: {}", call, outcome, err);
            }
        }
    }
}

fn replace_plan(applied: &[&str], module: &str) -> Plan {
    let applied: Vec<Applied> = applied
        .iter()
        .map(|m| Applied {
            module: (*m).to_owned(),
            enabled: true,
        })
        .collect();
    let desired = plan::DesiredModules {
        modules: names(&["p1", "p2"]),
        cumulative: Some(module.to_owned()),
        no_cumulative: None,
    };
    plan::plan_sync(&applied, &desired, plan::Mode::Replace, &[])
}

#[test]
fn a_replace_is_one_load_and_one_transition_then_the_replaced_modules_go() {
    let kernel = FakeLivepatch::with_patches(&["a", "b", "old"]).replacing("cum");
    let plan = replace_plan(&["a", "b", "old"], "cum");
    let (result, _) = run(&kernel, &plan, &verified(&["cum"]));
    let timings = result.expect("the replace goes through");
    assert_eq!(timings.len(), 1);
    assert!(timings[0].left_loaded.is_empty());
    let expected: Vec<Call> = [
        applied("cum"),
        vec![
            Call::Unload("old".into()),
            Call::Unload("b".into()),
            Call::Unload("a".into()),
        ],
    ]
    .concat();
    assert_eq!(kernel.calls(), expected);
    assert_eq!(kernel.stack(), ["cum"]);
}

#[test]
fn a_stalled_replace_is_reversed_and_the_kernel_keeps_its_patches() {
    let kernel = FakeLivepatch::with_patches(&["a", "b"]).replacing("cum");
    kernel.at(Call::Wait("cum".into(), Goal::Patched), Outcome::Stall);
    let plan = replace_plan(&["a", "b"], "cum");
    let (result, _) = run(&kernel, &plan, &verified(&["cum"]));
    let err = result.expect_err("the transition stalls");
    assert!(err.restored(), "{err}");
    assert!(err.to_string().contains(PARKED), "{err}");
    assert_eq!(kernel.stack(), ["a", "b"]);
}

#[test]
fn a_replaced_module_that_stays_busy_is_left_for_the_next_sync() {
    let kernel = FakeLivepatch::with_patches(&["a"]).replacing("cum");
    kernel.at(Call::Unload("a".into()), Outcome::Fail(nix::Error::EPERM));
    let plan = replace_plan(&["a"], "cum");
    let (result, _) = run(&kernel, &plan, &verified(&["cum"]));
    let timings = result.expect("the host runs its new generation");
    assert_eq!(
        timings[0].left_loaded.len(),
        1,
        "{:?}",
        timings[0].left_loaded
    );
    let (stack, leftovers) = kernel.settled().unwrap();
    assert_eq!((stack, leftovers), (names(&["cum"]), names(&["a"])));
}
