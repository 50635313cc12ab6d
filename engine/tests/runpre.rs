//! Run-pre matching on the real kernel, offline: pre objects compiled from the
//! prepared Debian tree, matched against the kernel image file with its kallsyms
//! (what `kstack verify --image` does on a build host).

#![allow(clippy::unwrap_used)]

#[path = "runpre/common.rs"]
mod common;

use std::collections::BTreeMap;

use kstack_engine::runpre::{self, BeforeImage, Cause, FentryState, Outcome};
use object::{Object, ObjectSymbol, SymbolKind};

use common::{BIG, NAMED};

/// Every function an object defines.
fn functions_of(bytes: &[u8]) -> Vec<String> {
    let file = object::File::parse(bytes).unwrap();
    let mut names: Vec<String> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.size() > 0)
        .map(|s| s.name().unwrap().to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn patched_functions_match_the_image() {
    let tree = common::tree();
    for (unit, name) in NAMED {
        let object = &tree.objects(&[unit])[0];
        let image = runpre::before_image(&std::fs::read(object).unwrap(), name).unwrap();
        // What the store keeps reads back the same.
        let toml = image.to_toml().unwrap();
        assert_eq!(BeforeImage::from_toml(&toml).unwrap(), image, "{toml}");

        let report = runpre::match_by_name(&image, common::image(), common::kallsyms());
        let Outcome::Matched { sympos, addr } = report.outcome else {
            panic!("{report}")
        };
        assert_eq!(sympos, 1, "{report}");
        assert_eq!(common::kallsyms().candidates(name), [addr]);
        let Ok(stats) = &report.candidates[0].result else {
            unreachable!()
        };
        // An image file is the code before boot: `call __fentry__` still.
        assert!(
            matches!(stats.fentry, FentryState::Fentry | FentryState::None),
            "{name}: {stats:?}"
        );
        assert!(stats.relocs_checked > 0, "{name}: {stats:?}");
    }
}

#[test]
fn a_patch_built_from_the_wrong_tree_is_refused() {
    let tree = common::tree();
    let line = tree.variant(
        "fs/proc/cmdline.o",
        "cmdline-tab",
        |s| s.replace("seq_putc(m, '\\n');", "seq_putc(m, '\\t');"),
        None,
    );
    let image = runpre::before_image(&std::fs::read(line).unwrap(), "cmdline_proc_show").unwrap();
    let report = runpre::match_by_name(&image, common::image(), common::kallsyms());
    assert_eq!(report.outcome, Outcome::Differs, "{report}");
    let (_, d) = report.best_divergence().unwrap();
    assert_eq!(d.cause, Cause::Constant, "{report}");
    let text = report.to_string();
    for part in [
        "cmdline_proc_show: does not match the running code",
        "expected be 09 00 00 00",
        "mov $9, %esi",
        "found    be 0a 00 00 00",
        "mov $0xa, %esi",
        "likely cause: a constant differs",
    ] {
        assert!(text.contains(part), "{part:?} not in:\n{text}");
    }

    let config = tree.variant(
        "fs/proc/meminfo.o",
        "meminfo-memory-failure",
        |s| s.replacen("#include", "\n#include", 1),
        Some("#define CONFIG_MEMORY_FAILURE 1\n"),
    );
    let image = runpre::before_image(&std::fs::read(config).unwrap(), "meminfo_proc_show").unwrap();
    let report = runpre::match_by_name(&image, common::image(), common::kallsyms());
    assert_eq!(report.outcome, Outcome::Differs, "{report}");
    let text = report.to_string();
    assert!(
        text.starts_with("meminfo_proc_show: does not match"),
        "{text}"
    );
    assert!(text.contains("num_poisoned_pages"), "{text}");
}

/// `KSTACK_RUNPRE_OBJECTS` (objects of the tree, space-separated) widens the sweep.
#[test]
fn every_function_of_big_objects_matches_or_is_explained() {
    let tree = common::tree();
    let extra = std::env::var("KSTACK_RUNPRE_OBJECTS").unwrap_or_default();
    let units: Vec<&str> = if extra.trim().is_empty() {
        BIG.to_vec()
    } else {
        extra.split_whitespace().collect()
    };
    let objects = tree.objects(&units);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unexplained = Vec::new();
    let mut n = 0;
    let mut matching = std::time::Duration::ZERO;
    for path in &objects {
        let bytes = std::fs::read(path).unwrap();
        for f in functions_of(&bytes) {
            n += 1;
            let image = runpre::before_image(&bytes, &f).unwrap();
            let started = std::time::Instant::now();
            let report = runpre::match_by_name(&image, common::image(), common::kallsyms());
            matching += started.elapsed();
            *counts.entry(report.outcome.key()).or_default() += 1;
            for c in &report.candidates {
                if let Ok(s) = &c.result {
                    *totals.entry("instructions").or_default() += s.instructions;
                    *totals.entry("relocations checked").or_default() += s.relocs_checked;
                    *totals.entry("relocations unlocated").or_default() += s.relocs_unlocated;
                    *totals.entry("branches relaxed").or_default() += s.relaxed;
                }
            }
            match report.outcome {
                Outcome::Matched { .. } | Outcome::Ambiguous { .. } => {}
                // A weak definition another file overrides never runs.
                Outcome::Overridden { .. } => assert_eq!(image.binding, runpre::Binding::Weak),
                _ => unexplained.push(report.to_string()),
            }
        }
    }
    println!("image, {n} functions of {units:?}: {counts:?}; {totals:?}");
    println!(
        "matching took {matching:?}, {:?} a function (this build's profile)",
        matching / n.max(1) as u32
    );
    for u in &unexplained {
        println!("{u}");
    }
    assert!(
        (n - unexplained.len()) * 1000 >= n * 995,
        "{} of {n} unexplained:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
}

#[path = "runpre/link.rs"]
mod link;

#[path = "runpre/honest.rs"]
mod honest;

/// The builder's `sympos` (what a patch's `klp_func` and `.klp.sym` names carry) and
/// the matcher's (which candidate the running code matched) count the same entries
/// in the same order as the kernel does, for every name the real kernel's kallsyms
/// has more than once. For each candidate of each such name the resolver is steered
/// towards it by the translation unit's neighbouring symbols; whichever entry it
/// picks, the matcher, finding the function's code only at that entry's address,
/// must report the same `sympos`, and both must be the entry's position among the
/// name's vmlinux lines of /proc/kallsyms, counted here from the raw text.
#[test]
fn builder_and_matcher_agree_on_the_sympos_of_every_ambiguous_name() {
    use kstack_engine::builder::symbols::KernelSymbols;
    use kstack_engine::runpre::{Binding, MemoryText};

    // The kernel's rule, from the text: vmlinux lines (no `[module]`), file order.
    let mut positions: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for line in common::kallsyms_text().lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [addr, _, name] = fields[..] {
            positions
                .entry(name)
                .or_default()
                .push(u64::from_str_radix(addr, 16).unwrap());
        }
    }
    positions.retain(|_, addrs| addrs.len() > 1);
    assert!(
        positions.len() > 500,
        "only {} ambiguous names in the kernel's kallsyms",
        positions.len()
    );

    let index = common::kallsyms();
    let entries = index.entries();
    let mut symbols = KernelSymbols::parse(common::kallsyms_text(), "").unwrap();
    let code = vec![0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3]; // push; mov; pop; ret
    let other = vec![0x0f, 0x0b, 0x0f, 0x0b, 0x0f, 0x0b]; // ud2
    let (mut compared, mut undecided) = (0usize, 0usize);
    for (&name, addrs) in &positions {
        let candidates: Vec<(usize, bool)> = index
            .named_in_indexed("vmlinux", name)
            .map(|(i, s)| (i, s.is_local()))
            .collect();
        assert_eq!(candidates.len(), addrs.len(), "{name}");
        // Every candidate of most names; of the few names with hundreds of entries
        // (each candidate costs a match of all of them), the first, middle and last.
        let n = candidates.len();
        let picked: Vec<(usize, bool)> = if n <= 16 {
            candidates.clone()
        } else {
            vec![candidates[0], candidates[n / 2], candidates[n - 1]]
        };
        for &(at, local) in &picked {
            let neighbours: Vec<String> = entries
                [at.saturating_sub(4)..(at + 5).min(entries.len())]
                .iter()
                .filter(|s| s.name != name && s.module.is_none())
                .map(|s| s.name.clone())
                .collect();
            symbols.add_translation_unit("unit.o", neighbours);
            let (addr, built) = match symbols.livepatch_entry(name, "unit.o", local) {
                // Unique among the entries of its binding: sympos 0 is for a name
                // with a single entry only.
                Ok((_, 0)) => panic!("{name}: sympos 0 for a name with {} entries", addrs.len()),
                Ok(found) => found,
                // Neighbours that do not tell the candidates apart: the patch would be
                // refused, so there is no sympos to disagree about.
                Err(_) => {
                    undecided += 1;
                    continue;
                }
            };
            let kernel = addrs.iter().position(|&a| a == addr).unwrap() as u64 + 1;

            let mut text = MemoryText::new();
            for &a in addrs {
                let mut region = if a == addr {
                    code.clone()
                } else {
                    other.clone()
                };
                region.resize(96, 0xcc);
                text.insert(a, region);
            }
            let image = BeforeImage {
                function: name.to_owned(),
                object: "vmlinux".into(),
                section: format!(".text.{name}"),
                binding: Binding::Local,
                size: code.len() as u32,
                code: code.clone(),
                relocs: Vec::new(),
                sites: Vec::new(),
            };
            let matched = match runpre::match_by_name(&image, &text, index).outcome {
                Outcome::Matched { sympos, .. } => sympos as u64,
                // Two entries of the name at one address: both hold the code.
                Outcome::Ambiguous { sympos } => {
                    assert!(sympos.contains(&(kernel as usize)), "{name}: {sympos:?}");
                    kernel
                }
                other => panic!("{name} at {addr:#x}: {other:?}"),
            };
            assert_eq!(
                (built, matched),
                (kernel, kernel),
                "{name} at {addr:#x}: the builder says sympos {built}, the matcher {matched}, the kernel counts {kernel}"
            );
            compared += 1;
        }
    }
    // The resolver's heuristic may leave some candidates undecided (it then refuses
    // the patch); most must be compared for the agreement to mean anything.
    assert!(
        compared > 10 * undecided.max(1),
        "{compared} candidates compared, {undecided} undecided"
    );
    eprintln!("{compared} candidates of ambiguous names agree; {undecided} undecided");
}

/// A module that is not loaded is proven against its `.ko` as the host would load it:
/// every function of a module's translation unit, compiled from the prepared tree,
/// matches the image package's `.ko` laid out at addresses of its own, its
/// relocations resolved against the kernel's kallsyms; a changed function does not.
#[test]
fn module_functions_match_the_ko_the_host_would_load() {
    use kstack_engine::runpre::{ModuleImage, ModulesDir};

    let tree = common::tree();
    let object = std::fs::read(&tree.objects(&["fs/xfs/xfs_stats.o"])[0]).unwrap();
    let modules = ModulesDir::new(common::kernel().modules_dir());
    let ko = modules
        .ko("xfs")
        .unwrap()
        .expect("xfs.ko in the image package");
    let laid = ModuleImage::load(&ko, "xfs", common::kallsyms()).unwrap();
    let mut matched = Vec::new();
    for function in functions_of(&object) {
        let mut image = runpre::before_image(&object, &function).unwrap();
        image.object = "xfs".into();
        let report = runpre::match_by_name(&image, &laid.text, &laid.symbols);
        assert!(report.is_match(), "{report}");
        matched.push(function);
    }
    assert!(
        matched.contains(&"xfs_stats_format".to_owned()),
        "{matched:?}"
    );

    // The same function built from a changed source is refused, with its bytes.
    let changed = tree.variant(
        "fs/xfs/xfs_stats.o",
        "xfs_stats_changed",
        |text| text.replacen("#else\n\t\t0);", "#else\n\t\t7);", 1),
        None,
    );
    let mut image =
        runpre::before_image(&std::fs::read(changed).unwrap(), "xfs_stats_format").unwrap();
    image.object = "xfs".into();
    let report = runpre::match_by_name(&image, &laid.text, &laid.symbols);
    assert_eq!(report.outcome, Outcome::Differs, "{report}");
}

/// A host whose modules are installed compressed (Debian's 6.12 packages ship
/// `.ko.xz`, kbuild's `xz --check=crc32 --lzma2=dict=1MiB`) proves against the
/// decompressed ELF modprobe would load: the same bytes as the plain `.ko`.
#[test]
fn a_compressed_installed_module_reads_as_its_elf() {
    use kstack_engine::runpre::ModulesDir;

    let plain_dir = ModulesDir::new(common::kernel().modules_dir());
    let plain = plain_dir
        .ko("binfmt_misc")
        .unwrap()
        .expect("binfmt_misc.ko in the image package");
    let dir = tempfile::tempdir().unwrap();
    let rel = "kernel/fs/binfmt_misc.ko";
    std::fs::create_dir_all(dir.path().join("kernel/fs")).unwrap();
    std::fs::write(dir.path().join(rel), &plain).unwrap();
    let status = std::process::Command::new("xz")
        .args(["--check=crc32", "--lzma2=dict=1MiB"])
        .arg(dir.path().join(rel))
        .status()
        .expect("xz runs (cargo xtask setup installs it)");
    assert!(status.success());
    std::fs::write(dir.path().join("modules.dep"), format!("{rel}.xz:\n")).unwrap();
    let read = ModulesDir::new(dir.path()).ko("binfmt_misc").unwrap();
    assert!(
        read.as_deref() == Some(&plain[..]),
        "not the plain module's bytes"
    );
}
