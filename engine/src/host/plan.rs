//! The planner: how `kstack sync` decides what to do. One pure function, [`plan_sync`],
//! with the two ways a generation can reach the kernel ([`Mode`]).
//!
//! Replace mode (the default, docs/replace-mode.md): a generation is one module, the
//! stack's cumulative module, loaded with `replace = true`. From whatever kstack's
//! patches the kernel runs, one load and one transition reach it; the kernel disables
//! the replaced patches and kstack unloads their modules. A stack without a
//! cumulative module, or a kernel running livepatches kstack did not load (a
//! replace would disable them too), is synced in stack mode, and the plan says why.
//!
//! Stack mode ([`plan`]): the kernel keeps livepatches on a stack: a function patched
//! by several patches runs the newest one's version, and patches come off the top.
//! So the host can keep the longest common prefix of what is applied and what is
//! desired; everything applied above it is reverted, newest first; everything desired
//! above it is then applied, in order. Nothing shorter reaches the desired stack,
//! since a patch below the first difference can only be reached by reverting
//! everything above it.

use std::collections::BTreeSet;

/// A kstack livepatch the kernel reports, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub module: String,
    /// `false` for a module that is still loaded but whose patch is disabled (a
    /// disabled livepatch cannot be enabled again: it can only be unloaded).
    pub enabled: bool,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Step {
    /// Disable the patch, wait for its transition, unload the module.
    Revert { module: String },
    /// Unload a module whose patch is already disabled.
    Unload { module: String },
    /// Load the module (its init enables the patch) and wait for the transition.
    /// `index` is the patch's position in the desired stack.
    Apply { module: String, index: usize },
    /// Load a cumulative module (`replace = true`) and wait for its one transition,
    /// which replaces every patch in `replaces` (the whole applied stack); then unload
    /// their modules, which the kernel has disabled.
    Replace {
        module: String,
        replaces: Vec<String>,
    },
}

impl Step {
    pub fn module(&self) -> &str {
        match self {
            Step::Revert { module }
            | Step::Unload { module }
            | Step::Apply { module, .. }
            | Step::Replace { module, .. } => module,
        }
    }
}

/// How a generation reaches the kernel (`[sync] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One module per generation (the stack's cumulative module), one transition.
    #[default]
    Replace,
    /// One module per patch, stacked in the kernel.
    Stack,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Replace => "replace",
            Mode::Stack => "stack",
        }
    }
}

/// What sync will do.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Plan {
    /// Applied patches that stay, bottom first.
    pub keep: Vec<String>,
    pub steps: Vec<Step>,
    /// The way the plan reaches the desired stack: the configured mode, or stack
    /// mode when replace mode cannot be used (`fallback` says why).
    pub mode: Mode,
    /// Why a plan for replace mode is made the stack way.
    pub fallback: Option<String>,
}

/// The desired generation, as the planner needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredModules {
    /// The patches' own modules, in stack order.
    pub modules: Vec<String>,
    /// The stack's cumulative module, when it has one.
    pub cumulative: Option<String>,
    /// Why it has none (from the stack commit), for the plan to say.
    pub no_cumulative: Option<String>,
}

impl DesiredModules {
    /// The modules the kernel runs once `plan` is done.
    pub fn end_state(&self, plan: &Plan) -> Vec<String> {
        match (plan.mode, &self.cumulative) {
            (Mode::Replace, Some(c)) if !self.modules.is_empty() => vec![c.clone()],
            _ => self.modules.clone(),
        }
    }
}

/// Plans the way from `applied` (kstack's patches as loaded, oldest first) to
/// `desired` in `mode`. `foreign` names the enabled livepatches kstack did not load:
/// never touched, so they rule out a replace.
pub fn plan_sync(
    applied: &[Applied],
    desired: &DesiredModules,
    mode: Mode,
    foreign: &[String],
) -> Plan {
    let stack_way = |fallback: Option<String>| Plan {
        mode: if fallback.is_some() {
            Mode::Stack
        } else {
            mode
        },
        fallback,
        ..plan(applied, &desired.modules)
    };
    if mode == Mode::Stack || desired.modules.is_empty() {
        // To no patches at all, both modes revert what runs.
        return stack_way(None);
    }
    let Some(cumulative) = &desired.cumulative else {
        return stack_way(Some(format!(
            "the stack has no cumulative module: {}",
            desired
                .no_cumulative
                .as_deref()
                .unwrap_or("its commit was made before kstack built them")
        )));
    };
    if !foreign.is_empty() {
        return stack_way(Some(format!(
            "livepatches kstack did not load are enabled ({}); a replace would disable them",
            foreign.join(", ")
        )));
    }
    let enabled: Vec<&Applied> = applied.iter().filter(|a| a.enabled).collect();
    let unloads = applied.iter().filter(|a| !a.enabled).map(|a| Step::Unload {
        module: a.module.clone(),
    });
    if enabled.len() == 1 && enabled[0].module == *cumulative {
        return Plan {
            keep: vec![cumulative.clone()],
            steps: unloads.collect(),
            mode,
            fallback: None,
        };
    }
    let mut steps: Vec<Step> = unloads.collect();
    if enabled.iter().any(|a| a.module == *cumulative) {
        // The cumulative module runs with other patches (loaded by hand): it cannot be
        // loaded again while it is, so everything comes off first, newest first.
        steps.extend(enabled.iter().rev().map(|a| Step::Revert {
            module: a.module.clone(),
        }));
        steps.push(Step::Replace {
            module: cumulative.clone(),
            replaces: Vec::new(),
        });
        return Plan {
            keep: Vec::new(),
            steps,
            mode,
            fallback: None,
        };
    }
    steps.push(Step::Replace {
        module: cumulative.clone(),
        replaces: enabled.iter().map(|a| a.module.clone()).collect(),
    });
    Plan {
        keep: Vec::new(),
        steps,
        mode,
        fallback: None,
    }
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// Plans the way from `applied` (kstack's patches as loaded, oldest first; foreign
/// livepatches are not passed in and so never touched) to `desired` (module names in
/// stack order), patch by patch: stack mode.
pub fn plan(applied: &[Applied], desired: &[String]) -> Plan {
    // Disabled leftovers are not part of the kernel's patch stack.
    let enabled: Vec<&str> = applied
        .iter()
        .filter(|a| a.enabled)
        .map(|a| a.module.as_str())
        .collect();
    let common = enabled
        .iter()
        .zip(desired)
        .take_while(|(a, d)| **a == d.as_str())
        .count();
    let mut steps: Vec<Step> = enabled[common..]
        .iter()
        .rev()
        .map(|m| Step::Revert {
            module: (*m).to_owned(),
        })
        .collect();
    steps.extend(applied.iter().filter(|a| !a.enabled).map(|a| Step::Unload {
        module: a.module.clone(),
    }));
    steps.extend(
        desired
            .iter()
            .enumerate()
            .skip(common)
            .map(|(index, m)| Step::Apply {
                module: m.clone(),
                index,
            }),
    );
    Plan {
        keep: enabled[..common].iter().map(|m| (*m).to_owned()).collect(),
        steps,
        mode: Mode::Stack,
        fallback: None,
    }
}

/// Applies a plan to a model of the kernel's patch stack: what the executor does to
/// the real one when every step succeeds. Used to check plans; returns an error
/// naming a step the kernel would refuse.
pub fn simulate(
    applied: &[Applied],
    plan: &Plan,
    desired: &[String],
) -> Result<Vec<String>, String> {
    let mut stack: Vec<String> = applied
        .iter()
        .filter(|a| a.enabled)
        .map(|a| a.module.clone())
        .collect();
    let mut disabled: BTreeSet<String> = applied
        .iter()
        .filter(|a| !a.enabled)
        .map(|a| a.module.clone())
        .collect();
    for step in &plan.steps {
        match step {
            Step::Revert { module } => {
                if stack.last() != Some(module) {
                    return Err(format!(
                        "revert {module}: not the top of the stack {stack:?}"
                    ));
                }
                stack.pop();
            }
            Step::Unload { module } => {
                if !disabled.remove(module) {
                    return Err(format!("unload {module}: not a disabled module"));
                }
            }
            Step::Apply { module, index } => {
                if stack.contains(module) || disabled.contains(module) {
                    return Err(format!("apply {module}: a module of that name is loaded"));
                }
                if desired.get(*index) != Some(module) || stack.len() != *index {
                    return Err(format!("apply {module}: at position {index} of {stack:?}"));
                }
                stack.push(module.clone());
            }
            Step::Replace { module, replaces } => {
                if stack.contains(module) || disabled.contains(module) {
                    return Err(format!(
                        "replace with {module}: a module of that name is loaded"
                    ));
                }
                if *replaces != stack {
                    return Err(format!(
                        "replace with {module}: replaces {replaces:?}, the kernel runs {stack:?}"
                    ));
                }
                stack = vec![module.clone()];
            }
        }
    }
    if !disabled.is_empty() {
        return Err(format!("left loaded: {disabled:?}"));
    }
    Ok(stack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn on(names: &[&str]) -> Vec<Applied> {
        names
            .iter()
            .map(|m| Applied {
                module: (*m).into(),
                enabled: true,
            })
            .collect()
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn nothing_to_do() {
        let p = plan(&on(&["a", "b"]), &names(&["a", "b"]));
        assert!(p.is_empty());
        assert_eq!(p.keep, ["a", "b"]);
    }

    #[test]
    fn dropping_a_middle_patch_reverts_above_it_and_reapplies() {
        let p = plan(&on(&["a", "b", "c"]), &names(&["a", "c"]));
        assert_eq!(
            p.steps,
            [
                Step::Revert { module: "c".into() },
                Step::Revert { module: "b".into() },
                Step::Apply {
                    module: "c".into(),
                    index: 1
                },
            ]
        );
        assert_eq!(p.keep, ["a"]);
    }

    #[test]
    fn from_nothing_and_to_nothing() {
        let p = plan(&[], &names(&["a", "b"]));
        assert_eq!(p.steps.len(), 2);
        let p = plan(&on(&["a", "b"]), &[]);
        assert_eq!(
            p.steps,
            [
                Step::Revert { module: "b".into() },
                Step::Revert { module: "a".into() }
            ]
        );
    }

    #[test]
    fn a_disabled_leftover_is_unloaded_and_loaded_anew() {
        let mut applied = on(&["a"]);
        applied.push(Applied {
            module: "b".into(),
            enabled: false,
        });
        let p = plan(&applied, &names(&["a", "b"]));
        assert_eq!(
            p.steps,
            [
                Step::Unload { module: "b".into() },
                Step::Apply {
                    module: "b".into(),
                    index: 1
                }
            ]
        );
    }

    fn desired(modules: &[&str], cumulative: Option<&str>) -> DesiredModules {
        DesiredModules {
            modules: names(modules),
            cumulative: cumulative.map(str::to_owned),
            no_cumulative: None,
        }
    }

    #[test]
    fn replace_mode_is_one_step_from_any_applied_state() {
        let want = desired(&["a", "b", "c"], Some("cum"));
        // From nothing, from a stacked generation, from an older cumulative module.
        for applied in [vec![], on(&["a", "b"]), on(&["old"])] {
            let p = plan_sync(&applied, &want, Mode::Replace, &[]);
            assert_eq!(p.mode, Mode::Replace);
            assert_eq!(p.fallback, None);
            assert_eq!(
                p.steps,
                [Step::Replace {
                    module: "cum".into(),
                    replaces: applied.iter().map(|a| a.module.clone()).collect(),
                }]
            );
            let end = simulate(&applied, &p, &want.end_state(&p)).unwrap();
            assert_eq!(end, ["cum"]);
            let after = on(&["cum"]);
            let again = plan_sync(&after, &want, Mode::Replace, &[]);
            assert!(again.is_empty(), "{again:?}");
            assert_eq!(again.keep, ["cum"]);
        }
    }

    #[test]
    fn replace_mode_unloads_leftovers_first() {
        let mut applied = on(&["old"]);
        applied.push(Applied {
            module: "stale".into(),
            enabled: false,
        });
        let p = plan_sync(&applied, &desired(&["a"], Some("cum")), Mode::Replace, &[]);
        assert_eq!(
            p.steps,
            [
                Step::Unload {
                    module: "stale".into()
                },
                Step::Replace {
                    module: "cum".into(),
                    replaces: vec!["old".into()]
                }
            ]
        );
    }

    #[test]
    fn replace_mode_falls_back_to_stack_mode_and_says_why() {
        let mut none = desired(&["a", "b"], None);
        none.no_cumulative = Some("patch a is a prebuilt module".into());
        let p = plan_sync(&on(&["a"]), &none, Mode::Replace, &[]);
        assert_eq!(p.mode, Mode::Stack);
        assert!(p.fallback.as_deref().unwrap().contains("prebuilt"), "{p:?}");
        assert_eq!(p.steps, plan(&on(&["a"]), &names(&["a", "b"])).steps);

        let p = plan_sync(
            &[],
            &desired(&["a"], Some("cum")),
            Mode::Replace,
            &["vendor_fix".into()],
        );
        assert_eq!(p.mode, Mode::Stack);
        assert!(
            p.fallback.as_deref().unwrap().contains("vendor_fix"),
            "{p:?}"
        );

        // Stack mode is asked for: no fallback to explain.
        let p = plan_sync(
            &on(&["cum"]),
            &desired(&["a"], Some("cum")),
            Mode::Stack,
            &[],
        );
        assert_eq!((p.mode, p.fallback.as_deref()), (Mode::Stack, None));
        assert_eq!(
            p.steps,
            [
                Step::Revert {
                    module: "cum".into()
                },
                Step::Apply {
                    module: "a".into(),
                    index: 0
                }
            ]
        );
    }

    #[test]
    fn to_no_patches_both_modes_revert() {
        let p = plan_sync(&on(&["cum"]), &desired(&[], None), Mode::Replace, &[]);
        assert_eq!(p.mode, Mode::Replace);
        assert_eq!(
            p.steps,
            [Step::Revert {
                module: "cum".into()
            }]
        );
    }

    /// A stack of distinct module names drawn from an alphabet small enough for the
    /// brute-force oracle, so that applied and desired often share prefixes.
    fn stack() -> impl Strategy<Value = Vec<String>> {
        proptest::sample::subsequence((0..5).map(|i| format!("m{i}")).collect::<Vec<_>>(), 0..=5)
            .prop_shuffle()
    }

    /// The kernel as the oracle sees it: kstack's enabled patches bottom first, and
    /// the loaded modules whose patch is disabled.
    type State = (Vec<String>, BTreeSet<String>);

    /// The length of the shortest step sequence from `applied` to `desired`, found by
    /// breadth-first search over every state the kernel can be in, knowing only what
    /// each step does to it: revert the top patch, unload a disabled module, or load
    /// a desired module that is not loaded (on top of the stack).
    fn shortest_plan_len(applied: &[Applied], desired: &[String]) -> Option<usize> {
        use std::collections::{HashSet, VecDeque};
        let start: State = (
            applied
                .iter()
                .filter(|a| a.enabled)
                .map(|a| a.module.clone())
                .collect(),
            applied
                .iter()
                .filter(|a| !a.enabled)
                .map(|a| a.module.clone())
                .collect(),
        );
        let goal: State = (desired.to_vec(), BTreeSet::new());
        let mut seen: HashSet<State> = HashSet::from([start.clone()]);
        let mut queue = VecDeque::from([(start, 0)]);
        while let Some((state, distance)) = queue.pop_front() {
            if state == goal {
                return Some(distance);
            }
            let (stack, disabled) = &state;
            let mut next: Vec<State> = Vec::new();
            if let Some((_, below)) = stack.split_last() {
                next.push((below.to_vec(), disabled.clone()));
            }
            for module in disabled {
                let mut rest = disabled.clone();
                rest.remove(module);
                next.push((stack.clone(), rest));
            }
            for module in desired {
                if !stack.contains(module) && !disabled.contains(module) {
                    let mut above = stack.clone();
                    above.push(module.clone());
                    next.push((above, disabled.clone()));
                }
            }
            for state in next {
                if seen.insert(state.clone()) {
                    queue.push_back((state, distance + 1));
                }
            }
        }
        None
    }

    #[test]
    fn the_oracle_finds_known_shortest_plans() {
        let len = |applied: &[&str], desired: &[&str]| {
            shortest_plan_len(&on(applied), &names(desired)).expect("reachable")
        };
        assert_eq!(len(&["a", "b"], &["a", "b"]), 0);
        assert_eq!(len(&["a", "b", "c"], &["a", "c"]), 3);
        assert_eq!(len(&["a", "b"], &["b", "a"]), 4);
        assert_eq!(len(&[], &["a", "b"]), 2);
    }

    proptest! {
        #[test]
        fn any_plan_is_a_shortest_way_to_desired(applied in stack(), desired in stack(), leftovers in proptest::collection::vec(any::<bool>(), 5)) {
            // Some applied modules are disabled leftovers.
            let applied: Vec<Applied> = applied
                .iter()
                .enumerate()
                .map(|(i, m)| Applied { module: m.clone(), enabled: !leftovers[i] })
                .collect();
            let p = plan(&applied, &desired);
            let end = simulate(&applied, &p, &desired).map_err(TestCaseError::fail)?;
            prop_assert_eq!(&end, &desired);

            // No valid sequence of steps is shorter.
            let shortest = shortest_plan_len(&applied, &desired).expect("desired is reachable");
            prop_assert_eq!(p.steps.len(), shortest, "{:?}", p.steps);

            // What the plan keeps is the part of the applied stack it never reverts.
            let reverted: Vec<&str> = p
                .steps
                .iter()
                .filter(|s| matches!(s, Step::Revert { .. }))
                .map(Step::module)
                .collect();
            let untouched: Vec<&str> = applied
                .iter()
                .filter(|a| a.enabled && !reverted.contains(&a.module.as_str()))
                .map(|a| a.module.as_str())
                .collect();
            prop_assert_eq!(&p.keep, &untouched);
            // And a second plan from the result has nothing to do.
            let after: Vec<Applied> = end.iter().map(|m| Applied { module: m.clone(), enabled: true }).collect();
            prop_assert!(plan(&after, &desired).is_empty());
        }

        #[test]
        fn a_replace_plan_is_one_transition(applied in stack(), leftovers in proptest::collection::vec(any::<bool>(), 5), has_patches in any::<bool>()) {
            let applied: Vec<Applied> = applied
                .iter()
                .enumerate()
                .map(|(i, m)| Applied { module: m.clone(), enabled: !leftovers[i] })
                .collect();
            let want = DesiredModules {
                modules: if has_patches { names(&["p1", "p2"]) } else { Vec::new() },
                cumulative: Some("m0".into()),
                no_cumulative: None,
            };
            let p = plan_sync(&applied, &want, Mode::Replace, &[]);
            let end = simulate(&applied, &p, &want.end_state(&p)).map_err(TestCaseError::fail)?;
            prop_assert_eq!(&end, &want.end_state(&p));
            let transitions = p.steps.iter().filter(|s| !matches!(s, Step::Unload { .. })).count();
            // One transition, unless the cumulative module was loaded among others.
            let loaded_among_others = applied.iter().any(|a| a.enabled && a.module == "m0")
                && applied.iter().filter(|a| a.enabled).count() > 1;
            if has_patches && !loaded_among_others {
                prop_assert_eq!(p.fallback.as_deref(), None);
                prop_assert!(transitions <= 1, "{:?}", p.steps);
            }
            let after: Vec<Applied> = end.iter().map(|m| Applied { module: m.clone(), enabled: true }).collect();
            prop_assert!(plan_sync(&after, &want, Mode::Replace, &[]).is_empty());
        }
    }
}
