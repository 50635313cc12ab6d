//! Benchmark: run-pre matching over a whole kernel. Every function of every object
//! of vmlinux is matched against the shipped image at its kallsyms addresses, and
//! every function of every module's objects against the shipped `.ko` of the
//! kernel's image package, laid out as the engine lays out a module for a module
//! patch: the figure "how much of a kernel does the matcher match or explain".
//!
//! The objects come from a full build of the prepared tree with the builder's own
//! flags, cached in `<kstack cache>/sweep/<release>/` (a marker says it is
//! complete; an unfinished one is resumed): about an hour on 2 cores, niced.
//!
//! Run: `cargo bench -p kstack-tests --bench runpre_sweep` (after `cargo xtask setup`).
//! `SWEEP_EXAMPLES` (default all) caps the differences printed with their bytes.

// A benchmark driver: a failed unwrap is a failed run, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kstack_engine::builder::assets::{Cache, Kernel};
use kstack_engine::builder::tree::{EXTRA_CFLAGS, WorkTree};
use kstack_engine::runpre::{
    self, BeforeImage, Binding, CodeSources, ImageText, KallsymsIndex, MatchReport, ModulesDir,
    Outcome,
};
use kstack_kfacts::livepatch::VMLINUX;
use kstack_tests::kernel;

/// Written in the build tree once the build is complete.
const BUILT_MARKER: &str = ".kstack-sweep-built";

fn main() {
    let kernel = kernel();
    let started = Instant::now();
    // `SWEEP_PARTIAL=1`: sweep what an unfinished build has, without building.
    let partial = std::env::var("SWEEP_PARTIAL").as_deref() == Ok("1");
    let tree = if partial {
        existing_build(&kernel).expect("SWEEP_PARTIAL=1 needs a build to sweep")
    } else {
        build(&kernel)
    };
    println!(
        "build: {} ({:.0} s this run)",
        tree.display(),
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let text = ImageText::open(&kernel.vmlinuz()).unwrap();
    let kallsyms = std::fs::read_to_string(kernel.dir().join("kallsyms")).unwrap();
    let symbols = KallsymsIndex::parse(&kallsyms).unwrap();
    let modules_dir = ModulesDir::new(kernel.modules_dir());
    let mut sources = CodeSources::new(&text, &symbols, Some(&modules_dir));
    let units = units(&tree);
    let mut sweep = Sweep::default();
    for unit in &units {
        sweep.object(&tree, unit, &mut sources);
        if unit.last_of_module {
            sources.release(&unit.object);
        }
    }
    sweep.explain_weak(&tree, &text, &symbols);
    let seconds = started.elapsed().as_secs_f64();
    let modules: BTreeSet<&str> = units
        .iter()
        .filter(|u| u.object != VMLINUX)
        .map(|u| u.object.as_str())
        .collect();
    println!(
        "swept {} objects of vmlinux and {} objects of {} modules in {seconds:.1} s",
        units.iter().filter(|u| u.object == VMLINUX).count(),
        units.iter().filter(|u| u.object != VMLINUX).count(),
        modules.len(),
    );
    sweep.print();
}

/// One object to sweep and the livepatch object (vmlinux or a module) it is part of.
struct Unit {
    /// Relative to the top of the tree.
    path: String,
    object: String,
    /// The last object of its module in the list: its `.ko` can be dropped after it.
    last_of_module: bool,
}

/// The objects of vmlinux (the members of every `built-in.a` and `lib.a`), then
/// those of each module (as its `.mod` lists them), modules in order. Host tools
/// (`scripts/`, `tools/`) are not part of the kernel.
fn units(tree: &Path) -> Vec<Unit> {
    let mut archives = Vec::new();
    let mut mods = Vec::new();
    walk(tree, tree, &mut |rel| {
        if rel.ends_with("/built-in.a") || rel.ends_with("/lib.a") {
            archives.push(rel.to_owned());
        } else if rel.ends_with(".mod") {
            mods.push(rel.to_owned());
        }
    });
    let mut builtin = BTreeSet::new();
    for archive in &archives {
        let out = Command::new("ar")
            .arg("t")
            .arg(tree.join(archive))
            .output()
            .unwrap();
        assert!(out.status.success(), "ar t {archive}");
        // A thin archive lists its members by their paths from the top.
        builtin.extend(
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .filter(|m| m.ends_with(".o"))
                .map(str::to_owned),
        );
    }
    let mut units: Vec<Unit> = builtin
        .into_iter()
        .filter(|m| tree.join(m).is_file())
        .map(|path| Unit {
            path,
            object: VMLINUX.to_owned(),
            last_of_module: false,
        })
        .collect();
    mods.sort();
    for m in &mods {
        let list = std::fs::read_to_string(tree.join(m)).unwrap();
        let members: Vec<&str> = list.split_whitespace().collect();
        // A module the build has not finished is left out whole.
        if members.is_empty() || !members.iter().all(|o| tree.join(o).is_file()) {
            continue;
        }
        // The kernel's name for it (KBUILD_MODNAME): `-` becomes `_`.
        let name = Path::new(m)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .replace('-', "_");
        let n = members.len();
        for (i, member) in members.into_iter().enumerate() {
            units.push(Unit {
                path: member.to_owned(),
                object: name.clone(),
                last_of_module: i + 1 == n,
            });
        }
    }
    units
}

/// Calls `found` with every file under `dir`, relative to `root`, outside host tools.
fn walk(dir: &Path, root: &Path, found: &mut dyn FnMut(&str)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if ["scripts", "tools", ".kstack"]
            .iter()
            .any(|p| Path::new(&rel).starts_with(p))
        {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            walk(&path, root, found);
        } else if kind.is_file() {
            found(&rel);
        }
    }
}

/// The tally of outcomes, for vmlinux and for modules, and every difference.
#[derive(Default)]
struct Sweep {
    /// (group, outcome key) -> functions.
    counts: BTreeMap<(&'static str, &'static str), usize>,
    differences: Vec<Difference>,
    /// Functions in sections they share, by section: not swept.
    shared: BTreeMap<String, usize>,
    /// (livepatch object, function) -> the objects that define it `__weak`.
    weak: BTreeMap<(String, String), Vec<String>>,
}

struct Difference {
    path: String,
    image: BeforeImage,
    report: MatchReport,
}

/// An outcome that says the code is the shipped code, or why it need not be.
fn explained(key: &str) -> bool {
    !matches!(key, "differs" | "unreadable")
}

impl Sweep {
    fn count(&mut self, object: &str, key: &'static str, by: isize) {
        let group = if object == VMLINUX {
            "vmlinux"
        } else {
            "modules"
        };
        let n = self.counts.entry((group, key)).or_default();
        *n = n.checked_add_signed(by).unwrap();
    }

    /// Weak definitions that differ may be another weak definition's name, and
    /// the cold part of an overridden weak function jumps back into a body without
    /// a name: the engine explains them with the other definitions' code and the
    /// parent's.
    fn explain_weak(&mut self, tree: &Path, text: &ImageText, symbols: &KallsymsIndex) {
        let differences = std::mem::take(&mut self.differences);
        for d in differences {
            let key = (d.image.object.clone(), d.image.function.clone());
            let others: Vec<BeforeImage> = self
                .weak
                .get(&key)
                .into_iter()
                .flatten()
                .filter(|path| **path != d.path)
                .filter_map(|path| {
                    let bytes = std::fs::read(tree.join(path)).unwrap();
                    let mut other =
                        runpre::before_image_named(&bytes, &d.image.function, path).ok()?;
                    other.object = d.image.object.clone();
                    Some(other)
                })
                .collect();
            let before = d.report.outcome.key();
            let report = runpre::explain_weak(d.report, &d.image, &others, text, symbols);
            // The cold part of an overridden weak function: proven with its parent.
            let parent = d.image.function.strip_suffix(".cold").and_then(|name| {
                let bytes = std::fs::read(tree.join(&d.path)).unwrap();
                let mut parent = runpre::before_image_named(&bytes, name, &d.path).ok()?;
                parent.object = d.image.object.clone();
                Some(parent)
            });
            let report = match &parent {
                Some(parent) => runpre::explain_cold(report, &d.image, parent, text, symbols),
                None => report,
            };
            if report.outcome.key() != before {
                self.count(&d.image.object, before, -1);
                self.count(&d.image.object, report.outcome.key(), 1);
                continue;
            }
            self.differences.push(Difference { report, ..d });
        }
    }

    /// Matches every function of `unit` with the shipped code of its object.
    fn object(&mut self, tree: &Path, unit: &Unit, sources: &mut CodeSources<'_>) {
        let bytes = std::fs::read(tree.join(&unit.path)).unwrap();
        let (own, shared) = functions(&bytes);
        for section in shared {
            *self.shared.entry(section).or_default() += 1;
        }
        for name in own {
            let Ok(mut image) = runpre::before_image_named(&bytes, &name, &unit.path) else {
                self.count(&unit.object, "no-image", 1);
                continue;
            };
            image.object = unit.object.clone();
            if image.binding == Binding::Weak {
                self.weak
                    .entry((unit.object.clone(), name.clone()))
                    .or_default()
                    .push(unit.path.clone());
            }
            let Some(report) = sources.match_image(&image).unwrap() else {
                self.count(&unit.object, "no-ko", 1);
                continue;
            };
            self.count(&unit.object, report.outcome.key(), 1);
            if matches!(report.outcome, Outcome::Differs | Outcome::Unreadable) {
                self.differences.push(Difference {
                    path: unit.path.clone(),
                    image,
                    report,
                });
            }
        }
    }

    fn print(&self) {
        let keys: BTreeSet<&str> = self.counts.keys().map(|(_, k)| *k).collect();
        for group in ["vmlinux", "modules", "total"] {
            let of = |key: &str| -> usize {
                self.counts
                    .iter()
                    .filter(|((g, k), _)| *k == key && (group == "total" || *g == group))
                    .map(|(_, n)| n)
                    .sum()
            };
            let all: usize = keys.iter().map(|k| of(k)).sum();
            let share = |n: usize| 100.0 * n as f64 / all.max(1) as f64;
            println!("\n{group}: {all} functions");
            println!("| outcome | functions | share |\n|---|---|---|");
            for key in &keys {
                println!("| {key} | {} | {:.2}% |", of(key), share(of(key)));
            }
            let ok: usize = keys.iter().filter(|k| explained(k)).map(|k| of(k)).sum();
            println!("matched or explained: {ok} of {all} ({:.3}%)", share(ok));
        }
        let cap: usize = std::env::var("SWEEP_EXAMPLES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(usize::MAX);
        let mut shared: Vec<(&String, &usize)> = self.shared.iter().collect();
        shared.sort_by(|a, b| b.1.cmp(a.1));
        println!(
            "\nnot swept, in sections they share: {} functions ({})",
            shared.iter().map(|(_, n)| **n).sum::<usize>(),
            shared
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("\n{} functions differ", self.differences.len());
        for d in self.differences.iter().take(cap) {
            println!("---\n{} ({}): {}", d.path, d.image.object, d.report);
        }
    }
}

/// The functions an object defines in sections of their own (`.text.<name>`), and
/// the sections of the others: code the kernel places by section (`.init.text`,
/// `.noinstr.text`, `.entry.text`, ...) shares one, whatever `-ffunction-sections`
/// says, and is not what a live patch replaces.
fn functions(bytes: &[u8]) -> (Vec<String>, Vec<String>) {
    use object::{Object, ObjectSection, ObjectSymbol};
    let Ok(file) = object::File::parse(bytes) else {
        return (Vec::new(), Vec::new());
    };
    let mut own = Vec::new();
    let mut shared = Vec::new();
    for s in file.symbols() {
        if s.kind() != object::SymbolKind::Text || !s.is_definition() {
            continue;
        }
        let Some(section) = s
            .section_index()
            .and_then(|i| file.section_by_index(i).ok())
            .and_then(|sec| sec.name().ok().map(str::to_owned))
        else {
            continue;
        };
        if section.starts_with(".text.") {
            own.extend(s.name().ok().map(str::to_owned));
        } else {
            shared.push(section);
        }
    }
    (own, shared)
}

/// The sweep's build tree of `kernel`, finished or not.
fn existing_build(kernel: &Kernel) -> Option<PathBuf> {
    let dir = sweep_dir(kernel);
    std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.is_dir()
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("build-")
        })
}

fn sweep_dir(kernel: &Kernel) -> PathBuf {
    Cache::from_env().root().join("sweep").join(&kernel.release)
}

/// The cached full build of `kernel`'s prepared tree, made (or finished) first if
/// needed.
fn build(kernel: &Kernel) -> PathBuf {
    let dir = sweep_dir(kernel);
    std::fs::create_dir_all(&dir).unwrap();
    let shipped = std::fs::read_to_string(kernel.headers().join(".config")).unwrap();
    let tree = match existing_build(kernel) {
        Some(tree) if tree.join(BUILT_MARKER).is_file() => {
            check_config(&shipped, &tree);
            return tree;
        }
        Some(tree) => {
            println!("resuming the build in {}", tree.display());
            check_config(&shipped, &tree);
            tree
        }
        None => {
            let source = kernel.source().unwrap();
            let tree = WorkTree::new(&source, &dir, &kernel.release)
                .unwrap()
                .into_path();
            println!("building vmlinux and modules in {}", tree.display());
            configure(kernel, &tree);
            tree
        }
    };
    signing_key(&tree);
    let release = format!("KERNELRELEASE={}", kernel.release);
    // No debug information: Debian's config asks for it (DEBUG_INFO), and with it
    // the objects of a full build would need tens of GB. `-g0` comes last on the
    // command line (KCFLAGS is appended after the config's `-g`), and GCC's debug
    // options never change the code it generates (what `-fcompare-debug` checks);
    // the config, and with it every `#ifdef`, stays the shipped one.
    let kcflags = format!("KCFLAGS={EXTRA_CFLAGS} -g0");
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    // `-k`: linking vmlinux and the modules needs their BTF, which pahole cannot
    // make without DWARF; the sweep needs only the objects, checked below.
    let status = Command::new("nice")
        .args(["-n", "19", "make", "-C"])
        .arg(&tree)
        .args(["-s", "-k", &format!("-j{jobs}")])
        .arg(&release)
        .arg(&kcflags)
        .arg("all")
        .status()
        .unwrap();
    println!("make exited with {status}");
    if let Err(missing) = complete(&tree) {
        panic!("the build is not complete ({missing}); run the benchmark again to resume it");
    }
    std::fs::write(tree.join(BUILT_MARKER), "").unwrap();
    tree
}

/// Whether every object of vmlinux and of each module was built: `vmlinux.o` (linked
/// from all of vmlinux's objects, before the BTF that `-g0` leaves pahole unable
/// to make), and the objects each module in `modules.order` lists in its `.mod`.
fn complete(tree: &Path) -> Result<(), String> {
    let newer = |path: &Path| {
        let time = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        time(path).is_some_and(|t| Some(t) >= time(&tree.join(".config")))
    };
    if !newer(&tree.join("vmlinux.o")) {
        return Err("no vmlinux.o".into());
    }
    let order = std::fs::read_to_string(tree.join("modules.order"))
        .map_err(|e| format!("modules.order: {e}"))?;
    for ko in order.lines() {
        let mod_file = tree.join(ko).with_extension("mod");
        let list = std::fs::read_to_string(&mod_file)
            .map_err(|e| format!("{}: {e}", mod_file.display()))?;
        if let Some(o) = list.split_whitespace().find(|o| !newer(&tree.join(o))) {
            return Err(format!("no {o}"));
        }
    }
    Ok(())
}

/// The module signing key the configuration names, made as the shipped build made
/// it. Debian's config names `output/signing_key.pem`, a key its build generates
/// and does not ship (its certificate is in vmlinux: RSA 4096, "Build time
/// autogenerated kernel key", kbuild's own recipe and `certs/default_x509.genkey`);
/// kbuild generates one only at its default path (certs/Makefile), so without it
/// `certs/` does not build. Only the certificate vmlinux carries (data) depends on
/// the key.
fn signing_key(tree: &Path) {
    let config = std::fs::read_to_string(tree.join(".config")).unwrap();
    let value = |name: &str| {
        config
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(|v| v.trim_matches('"').to_owned())
    };
    let Some(key) = value("CONFIG_MODULE_SIG_KEY") else {
        return;
    };
    let path = tree.join(&key);
    if key.is_empty() || key == "certs/signing_key.pem" || key.contains(':') || path.is_file() {
        return;
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let hash = value("CONFIG_MODULE_SIG_HASH").unwrap_or_else(|| "sha256".into());
    let mut openssl = Command::new("openssl");
    openssl
        .current_dir(tree)
        .args(["req", "-new", "-nodes", "-utf8", &format!("-{hash}")])
        .args(["-days", "36500", "-batch", "-x509"])
        .args(["-config", "certs/default_x509.genkey", "-outform", "PEM"])
        .arg("-out")
        .arg(&key)
        .arg("-keyout")
        .arg(&key);
    if value("CONFIG_MODULE_SIG_KEY_TYPE_ECDSA").as_deref() == Some("y") {
        openssl.args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1"]);
    }
    let out = openssl.output().unwrap();
    assert!(
        out.status.success(),
        "{openssl:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Gives the work tree the configuration the shipped kernel was built with (the
/// headers package's `.config`), as `make olddefconfig` resolves it on this machine.
fn configure(kernel: &Kernel, tree: &Path) {
    let shipped = kernel.headers().join(".config");
    let text = std::fs::read_to_string(&shipped).unwrap();
    let config = tree.join(".config");
    // A new file, not a write through a hard link into the prepared tree.
    let _ = std::fs::remove_file(&config);
    std::fs::write(&config, &text).unwrap();
    let status = Command::new("make")
        .arg("-C")
        .arg(tree)
        .args(["-s", "olddefconfig"])
        .arg(format!("KERNELRELEASE={}", kernel.release))
        .status()
        .unwrap();
    assert!(status.success());
    check_config(&text, tree);
}

/// The tree builds with the shipped configuration, as preparing a kernel checks.
fn check_config(shipped: &str, tree: &Path) {
    let made = std::fs::read_to_string(tree.join(".config")).unwrap();
    let differences = kstack_engine::builder::config::differences(shipped, &made);
    assert!(
        differences.is_empty(),
        "the sweep's tree is not configured as the shipped kernel: {}{}",
        differences
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        kstack_engine::builder::config::hint(&differences)
            .map(|h| format!("; {h}"))
            .unwrap_or_default()
    );
}
