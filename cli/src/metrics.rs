//! `kstack status --format prometheus`: the host's state in Prometheus' text
//! exposition format (version 0.0.4), for a scrape or for node-exporter's textfile
//! collector (`--textfile`). The metric names are part of the stable output, as the
//! `--json` schema is (docs/json.md).

use std::fmt::Write as _;

use kstack_engine::host::reconcile::Status;

/// Renders `status` as exposition text.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let generation = status.generation.as_ref();
    metric(
        "kstack_info",
        "The running kernel and the stack commit of the current generation (always 1).",
        &[(
            labels(&[
                ("release", &status.release),
                ("build_id", &status.build_id),
                ("stack", generation.map_or("", |g| g.stack.as_str())),
                ("commit", generation.map_or("", |g| g.commit.as_str())),
            ]),
            1.0,
        )],
    );
    metric(
        "kstack_livepatch_supported",
        "Whether the kernel supports livepatch.",
        &one(flag(status.livepatch)),
    );
    metric(
        "kstack_generation",
        "The generation the host is on (0: none recorded yet).",
        &one(generation.map_or(0.0, |g| g.number as f64)),
    );
    metric(
        "kstack_patches_applied",
        "Patches in kstack's livepatch modules that are enabled in the kernel \
         (a cumulative module counts the patches it holds).",
        &one(patches_applied(status) as f64),
    );
    metric(
        "kstack_patches_in_transition",
        "kstack's livepatches whose transition has not finished.",
        &one(status.applied.iter().filter(|p| p.transition).count() as f64),
    );
    metric(
        "kstack_patches_waiting_objects",
        "Objects (modules) that applied patches change but that are not loaded yet.",
        &one(status
            .applied
            .iter()
            .flat_map(|p| &p.objects)
            .filter(|o| !o.patched)
            .count() as f64),
    );
    metric(
        "kstack_foreign_livepatches",
        "Livepatches that kstack did not load (never touched).",
        &one(status.foreign.len() as f64),
    );
    metric(
        "kstack_drift",
        "Differences between kstack's state file and the kernel (0: none).",
        &one(status.drift.len() as f64),
    );
    metric(
        "kstack_kernel_tainted",
        "The kernel's taint mask (/proc/sys/kernel/tainted).",
        &one(status.taint as f64),
    );
    let flags: Vec<(String, f64)> = status
        .taint_flags
        .chars()
        .map(|c| (labels(&[("flag", &c.to_string())]), 1.0))
        .collect();
    metric(
        "kstack_kernel_taint_flag",
        "A taint flag the kernel has set, by letter (K: live patched, E: unsigned module).",
        &flags,
    );
    metric(
        "kstack_module_signatures_enforced",
        "Whether the kernel refuses modules without a valid signature by a trusted key.",
        &one(flag(status.module_signing.enforced)),
    );
    if let Some(window) = &status.validity {
        metric(
            "kstack_stack_expires_timestamp_seconds",
            "When the signed validity window of the current generation's stack commit ends, \
             in seconds since the epoch (a head past it is refused: renew it before).",
            &one(window.expires.secs() as f64),
        );
    }
    if let Some(last) = &status.last_sync {
        metric(
            "kstack_last_sync_success",
            "Whether the last sync or rollback succeeded (1) or failed and was rolled back (0).",
            &[(labels(&[("operation", &last.operation)]), flag(last.ok))],
        );
        metric(
            "kstack_last_sync_timestamp_seconds",
            "When the last sync or rollback ended, in seconds since the epoch.",
            &one(last.unix_time as f64),
        );
    }
    out
}

/// The patches the enabled modules carry: in replace mode one cumulative module
/// holds every patch of the stack, so counting modules would say 1 for a host
/// running five fixes. A module whose patches are not known (its commit is not in
/// the store) counts as one.
fn patches_applied(status: &Status) -> usize {
    status
        .applied
        .iter()
        .filter(|p| p.enabled)
        .map(|p| p.holds.len().max(1))
        .sum()
}

/// `{a="x",b="y"}`, values escaped as the format requires.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests {
    use kstack_engine::host::kernel::PatchedObject;
    use kstack_engine::host::reconcile::{AppliedPatch, ModuleSigning};
    use kstack_engine::host::state::{Generation, LastSync};
    use kstack_store::validity::{Timestamp, Validity};

    use super::*;

    #[test]
    fn a_patched_host_renders_every_metric() {
        let status = Status {
            release: "6.1.0-56-cloud-amd64".into(),
            build_id: "3b43fad5".into(),
            livepatch: true,
            mode: kstack_engine::host::plan::Mode::Replace,
            generation: Some(Generation {
                number: 4,
                commit: "4579399eeb96".into(),
                stack: "prod\"uction".into(),
                build_id: "3b43fad5".into(),
                created_at: "2023-11-14T22:13:20Z".into(),
                modules: vec!["kstack_a".into()],
                stack_sha256: None,
            }),
            applied: vec![AppliedPatch {
                module: "kstack_a".into(),
                enabled: true,
                transition: false,
                patch: Some("a".into()),
                functions: vec![],
                holds: vec![],
                objects: vec![PatchedObject {
                    name: "xfs".into(),
                    patched: false,
                }],
            }],
            foreign: vec![],
            drift: vec!["something".into()],
            taint: 36864,
            taint_flags: "OK".into(),
            validity: Some(Validity::starting(
                Timestamp::from_secs(1_700_000_000),
                std::time::Duration::from_secs(30 * 86_400),
            )),
            signers: vec![],
            module_signing: ModuleSigning {
                enforcement: Default::default(),
                enforced: true,
                trusted_keys: None,
                trusted_keys_error: None,
            },
            last_sync: Some(LastSync {
                operation: "sync".into(),
                finished_at: "2023-11-14T22:13:20Z".into(),
                unix_time: 1_700_000_000,
                ok: true,
                generation: Some(4),
                error: None,
            }),
        };
        insta::assert_snapshot!(render(&status), @r#"
        # HELP kstack_info The running kernel and the stack commit of the current generation (always 1).
        # TYPE kstack_info gauge
        kstack_info{release="6.1.0-56-cloud-amd64",build_id="3b43fad5",stack="prod\"uction",commit="4579399eeb96"} 1
        # HELP kstack_livepatch_supported Whether the kernel supports livepatch.
        # TYPE kstack_livepatch_supported gauge
        kstack_livepatch_supported 1
        # HELP kstack_generation The generation the host is on (0: none recorded yet).
        # TYPE kstack_generation gauge
        kstack_generation 4
        # HELP kstack_patches_applied Patches in kstack's livepatch modules that are enabled in the kernel (a cumulative module counts the patches it holds).
        # TYPE kstack_patches_applied gauge
        kstack_patches_applied 1
        # HELP kstack_patches_in_transition kstack's livepatches whose transition has not finished.
        # TYPE kstack_patches_in_transition gauge
        kstack_patches_in_transition 0
        # HELP kstack_patches_waiting_objects Objects (modules) that applied patches change but that are not loaded yet.
        # TYPE kstack_patches_waiting_objects gauge
        kstack_patches_waiting_objects 1
        # HELP kstack_foreign_livepatches Livepatches that kstack did not load (never touched).
        # TYPE kstack_foreign_livepatches gauge
        kstack_foreign_livepatches 0
        # HELP kstack_drift Differences between kstack's state file and the kernel (0: none).
        # TYPE kstack_drift gauge
        kstack_drift 1
        # HELP kstack_kernel_tainted The kernel's taint mask (/proc/sys/kernel/tainted).
        # TYPE kstack_kernel_tainted gauge
        kstack_kernel_tainted 36864
        # HELP kstack_kernel_taint_flag A taint flag the kernel has set, by letter (K: live patched, E: unsigned module).
        # TYPE kstack_kernel_taint_flag gauge
        kstack_kernel_taint_flag{flag="O"} 1
        kstack_kernel_taint_flag{flag="K"} 1
        # HELP kstack_module_signatures_enforced Whether the kernel refuses modules without a valid signature by a trusted key.
        # TYPE kstack_module_signatures_enforced gauge
        kstack_module_signatures_enforced 1
        # HELP kstack_stack_expires_timestamp_seconds When the signed validity window of the current generation's stack commit ends, in seconds since the epoch (a head past it is refused: renew it before).
        # TYPE kstack_stack_expires_timestamp_seconds gauge
        kstack_stack_expires_timestamp_seconds 1702592000
        # HELP kstack_last_sync_success Whether the last sync or rollback succeeded (1) or failed and was rolled back (0).
        # TYPE kstack_last_sync_success gauge
        kstack_last_sync_success{operation="sync"} 1
        # HELP kstack_last_sync_timestamp_seconds When the last sync or rollback ended, in seconds since the epoch.
        # TYPE kstack_last_sync_timestamp_seconds gauge
        kstack_last_sync_timestamp_seconds 1700000000
        "#);
    }

    #[test]
    fn a_cumulative_module_counts_the_patches_it_holds() {
        let module = |name: &str, enabled: bool, holds: &[&str]| AppliedPatch {
            module: name.into(),
            enabled,
            transition: false,
            patch: Some("cumulative".into()),
            functions: vec![],
            holds: holds.iter().map(|h| (*h).to_owned()).collect(),
            objects: vec![],
        };
        let mut status = Status {
            release: "6.1.0-56-cloud-amd64".into(),
            build_id: "3b43fad5".into(),
            livepatch: true,
            mode: kstack_engine::host::plan::Mode::Replace,
            generation: None,
            applied: vec![module("kstack_c1", true, &["a", "b", "c"])],
            foreign: vec![],
            drift: vec![],
            taint: 0,
            taint_flags: String::new(),
            validity: None,
            signers: vec![],
            module_signing: ModuleSigning {
                enforcement: Default::default(),
                enforced: false,
                trusted_keys: None,
                trusted_keys_error: None,
            },
            last_sync: None,
        };
        let applied = |status: &Status| {
            render(status)
                .lines()
                .find_map(|l| l.strip_prefix("kstack_patches_applied ").map(str::to_owned))
                .expect("the metric is always there")
        };
        assert_eq!(applied(&status), "3");
        // A disabled module does not count; one whose patches are unknown (its commit
        // is not in the store) counts as one.
        status
            .applied
            .insert(0, module("kstack_c0", false, &["a", "b"]));
        status.applied.push(module("kstack_x", true, &[]));
        assert_eq!(applied(&status), "4");
    }
}
