//! Run-pre matching against a running kernel, through its `/proc/kcore`.
//!
//! The Debian cloud kernel boots in QEMU (`nokaslr`) with a livepatch already
//! replacing `cmdline_proc_show`. The static `kstack` in the guest cannot run this
//! test's code, so the guest copies code out of `/proc/kcore` with `dd` at file
//! offsets computed here: a first boot prints kcore's ELF header, [`Kcore`] maps each
//! function's kallsyms address through its program headers, and a second boot (the
//! same machine, so the same layout; checked) prints those ranges. The matcher then
//! runs on the host, on the bytes the running kernel executes: code that ftrace,
//! alternatives, static keys and calls, retpoline and return-thunk patching have
//! rewritten at boot, which the image file (the other test) does not show.

#![allow(clippy::unwrap_used)]

#[path = "runpre/common.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use kstack_engine::builder::kbuild::{self, ModuleSpec};
use kstack_engine::runpre::{self, BeforeImage, FentryState, Kcore, MemoryText, Outcome, read_len};
use kstack_engine::sandbox::{GuestRun, Sandbox, SandboxOptions};
use object::{Object, ObjectSymbol, SymbolKind};

use common::{BIG, NAMED};
/// kcore's ELF header and program headers fit in this (a few dozen segments).
const KCORE_HEADER: usize = 8192;

fn sandbox() -> Sandbox {
    let mut options = SandboxOptions::new(common::kernel().vmlinuz(), common::guest_binary());
    options.kernel_args.push("nokaslr".into());
    // More of the code rewritten at boot: every CPU feature QEMU emulates picks
    // alternatives, and without the retpoline mitigation indirect calls go back
    // to `call *%reg`.
    options.cpu = Some("max".into());
    options.kernel_args.push("spectre_v2=off".into());
    Sandbox::new(options).unwrap_or_else(|e| panic!("{e}\nrun `{}` first", common::SETUP))
}

fn check(run: &GuestRun) {
    assert!(
        run.status.success(),
        "guest failed: {:?}\nstdout (end):\n{}\nstderr:\n{}\nconsole:\n{}",
        run.status,
        tail(&run.stdout),
        run.stderr,
        run.console
    );
}

fn tail(text: &str) -> &str {
    &text[text.len().saturating_sub(4000)..]
}

/// `od -An -tx1` output back to bytes.
fn parse_od(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn dump_command(offset: u64, len: usize) -> String {
    format!(
        "dd if=/proc/kcore bs=65536 iflag=skip_bytes,count_bytes skip={offset} count={len} 2>/dev/null | od -An -tx1 -v"
    )
}

/// The test livepatch module that replaces `cmdline_proc_show`.
fn livepatch_module(dir: &std::path::Path) -> std::path::PathBuf {
    let src = common::workspace_root().join("kmod/test");
    kbuild::build_module(
        &common::kernel().headers(),
        &ModuleSpec {
            name: "kstack_test_a".into(),
            sources: vec![src.join("kstack_test_a.c"), src.join("proc_patch.h")],
            ccflags: vec![],
        },
        dir,
    )
    .unwrap_or_else(|e| panic!("{e}\nrun `{}` first", common::SETUP))
}

fn functions_of(bytes: &[u8]) -> Vec<String> {
    let file = object::File::parse(bytes).unwrap();
    let names: BTreeSet<String> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.size() > 0)
        .map(|s| s.name().unwrap().to_owned())
        .collect();
    names.into_iter().collect()
}

#[test]
fn running_kernel_matches_its_pre_objects_through_kcore() {
    let tree = common::tree();
    let symbols = common::kallsyms();
    // `KSTACK_RUNPRE_OBJECTS` (objects of the tree, space-separated) widens the sweep.
    let extra = std::env::var("KSTACK_RUNPRE_OBJECTS").unwrap_or_default();
    let big_units: Vec<&str> = if extra.trim().is_empty() {
        BIG.to_vec()
    } else {
        extra.split_whitespace().collect()
    };
    let mut units: Vec<&str> = NAMED.iter().map(|(u, _)| *u).collect();
    units.extend(&big_units);
    units.sort();
    units.dedup();
    let objects = tree.objects(&units);
    let mut images: BTreeMap<String, BeforeImage> = BTreeMap::new();
    let mut big: Vec<String> = Vec::new();
    for (unit, path) in units.iter().zip(&objects) {
        let bytes = std::fs::read(path).unwrap();
        for f in functions_of(&bytes) {
            let image = runpre::before_image(&bytes, &f).unwrap();
            if big_units.contains(unit) {
                big.push(f.clone());
            }
            images.insert(f, image);
        }
    }
    // One line changed in a patched function; one configuration option flipped.
    let wrong_line = tree.variant(
        "fs/proc/cmdline.o",
        "cmdline-tab",
        |s| s.replace("seq_putc(m, '\\n');", "seq_putc(m, '\\t');"),
        None,
    );
    let wrong_config = tree.variant(
        "fs/proc/meminfo.o",
        "meminfo-memory-failure",
        |s| s.replacen("#include", "\n#include", 1),
        Some("#define CONFIG_MEMORY_FAILURE 1\n"),
    );
    let wrong = [
        runpre::before_image(&std::fs::read(wrong_line).unwrap(), "cmdline_proc_show").unwrap(),
        runpre::before_image(&std::fs::read(wrong_config).unwrap(), "meminfo_proc_show").unwrap(),
    ];

    // Boot 1: where kcore puts what.
    let header_cmd =
        format!("dd if=/proc/kcore bs={KCORE_HEADER} count=1 2>/dev/null | od -An -tx1 -v");
    let run = sandbox().run(&header_cmd).unwrap();
    check(&run);
    let header = parse_od(&run.stdout);
    let dir = tempfile::tempdir().unwrap();
    let header_file = dir.path().join("kcore-header");
    std::fs::write(&header_file, &header).unwrap();
    let kcore = Kcore::open_path(&header_file).unwrap();

    // Boot 2: the code, with cmdline_proc_show live-patched.
    let mut ranges: BTreeMap<u64, usize> = BTreeMap::new();
    for image in images.values() {
        for addr in symbols.candidates(&image.function) {
            let len = ranges.entry(addr).or_default();
            *len = (*len).max(read_len(image.size));
        }
    }
    let lp = "/sys/kernel/livepatch/kstack_test_a";
    let mut script = format!(
        r#"
insmod /root/kstack_test_a.ko || exit 3
n=0; while [ "$(cat {lp}/transition)" = 1 ]; do n=$((n+1)); [ $n -gt 300 ] && exit 4; sleep 0.1; done
echo "== cmdline"; cat /proc/cmdline
echo "== header"; {header_cmd}
"#
    );
    for (&addr, &len) in &ranges {
        let offset = kcore.file_offset(addr, len).unwrap();
        writeln!(
            script,
            "echo \"== {addr:x}\"; {}",
            dump_command(offset, len)
        )
        .unwrap();
    }
    let mut vm = sandbox();
    let ko = livepatch_module(&dir.path().join("module"));
    vm.add_host_file("/root/kstack_test_a.ko", &ko).unwrap();
    let run = vm.run(&script).unwrap();
    check(&run);
    let sections = run.sections();
    assert_eq!(
        sections["cmdline"].trim(),
        "kstack-test-a",
        "the livepatch is live"
    );
    // The notes in the header change from boot to boot; the mapping must not.
    let header_file2 = dir.path().join("kcore-header-2");
    std::fs::write(&header_file2, parse_od(&sections["header"])).unwrap();
    assert_eq!(
        Kcore::open_path(&header_file2).unwrap().segments(),
        kcore.segments(),
        "kcore's layout changed between two boots of the same machine"
    );
    let mut text = MemoryText::new();
    for (&addr, &len) in &ranges {
        let bytes = parse_od(&sections[&format!("{addr:x}")]);
        assert_eq!(
            bytes.len(),
            len,
            "kcore gave {} of {len} bytes at {addr:#x}",
            bytes.len()
        );
        text.insert(addr, bytes);
    }

    // The functions the examples patch, cmdline_proc_show under a livepatch.
    for (_, name) in NAMED {
        let report = runpre::match_by_name(&images[name], &text, symbols);
        assert!(report.is_match(), "{report}");
        let Ok(stats) = &report.candidates[0].result else {
            unreachable!()
        };
        if name == "cmdline_proc_show" {
            assert!(
                matches!(stats.fentry, FentryState::Trampoline(_)),
                "live-patched, its fentry site calls an ftrace trampoline: {stats:?}"
            );
        } else {
            // Booted and not traced: the no-op (or no fentry site at all).
            assert!(
                matches!(stats.fentry, FentryState::Nop | FentryState::None),
                "{name}: {stats:?}"
            );
        }
    }
    for image in &wrong {
        let report = runpre::match_by_name(image, &text, symbols);
        assert_eq!(report.outcome, Outcome::Differs, "{report}");
        let shown = report.to_string();
        assert!(
            shown.starts_with(&format!("{}: does not match", image.function)),
            "{shown}"
        );
        assert!(
            shown.contains("expected") && shown.contains("likely cause"),
            "{shown}"
        );
    }

    // Every function of the big units.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut rewritten: BTreeMap<String, usize> = BTreeMap::new();
    let mut unexplained = Vec::new();
    for name in &big {
        let report = runpre::match_by_name(&images[name], &text, symbols);
        *counts.entry(report.outcome.key()).or_default() += 1;
        for c in &report.candidates {
            if let Ok(stats) = &c.result {
                for (k, v) in &stats.rewritten {
                    *rewritten.entry(k.clone()).or_default() += v;
                }
            }
        }
        if !matches!(
            report.outcome,
            Outcome::Matched { .. }
                | Outcome::Ambiguous { .. }
                | Outcome::Overridden { .. }
                | Outcome::Freed
        ) {
            unexplained.push(report.to_string());
        }
    }
    println!(
        "running kernel, {} functions of {big_units:?}: {counts:?}",
        big.len()
    );
    println!("sites the kernel rewrote, all matched: {rewritten:?}");
    for u in &unexplained {
        println!("{u}");
    }
    let explained = big.len() - unexplained.len();
    assert!(
        explained * 1000 >= big.len() * 995,
        "{explained} of {} matched or explained:\n{}",
        big.len(),
        unexplained.join("\n")
    );
    assert!(
        !rewritten.is_empty(),
        "nothing rewritten at boot: not the running code?"
    );
}
