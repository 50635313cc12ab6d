//! Run-pre matching over every function of many objects, against a kernel image:
//! the figure "how much of a kernel does the matcher match or explain".
//!
//! `cargo run --release -p kstack-engine --example runpre_sweep -- TREE VMLINUZ KALLSYMS`
//! where TREE holds objects compiled with `-ffunction-sections` (a `make vmlinux` of
//! the prepared tree with `KCFLAGS="-ffunction-sections -fdata-sections"`, complete
//! or not); objects of host tools (`scripts/`, `tools/`, `usr/`) are skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kstack_engine::runpre::{self, ImageText, KallsymsIndex, Outcome};
use object::{Object, ObjectSection, ObjectSymbol};

fn objects(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(&path);
        // Host tools, and what is not linked into vmlinux: the boot stub, the
        // real-mode trampoline and kexec's purgatory are separate binaries.
        let outside = [
            "scripts",
            "tools",
            "usr",
            ".kstack",
            "arch/x86/boot",
            "arch/x86/realmode",
            "arch/x86/purgatory",
        ];
        if outside.iter().any(|p| rel.starts_with(p)) {
            continue;
        }
        if path.is_dir() {
            objects(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "o")
            && !path.to_string_lossy().ends_with(".mod.o")
        {
            out.push(path);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [tree, image, kallsyms] = args.as_slice() else {
        return Err("usage: runpre_sweep TREE VMLINUZ KALLSYMS".into());
    };
    let text = ImageText::open(Path::new(image))?;
    let symbols = KallsymsIndex::parse(&std::fs::read_to_string(kallsyms)?)?;
    let mut files = Vec::new();
    objects(Path::new(tree), Path::new(tree), &mut files);
    files.sort();
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut causes: BTreeMap<String, usize> = BTreeMap::new();
    let mut examples: Vec<String> = Vec::new();
    let mut functions = 0usize;
    let started = std::time::Instant::now();
    for path in &files {
        let bytes = std::fs::read(path)?;
        let Ok(file) = object::File::parse(&*bytes) else {
            continue;
        };
        let names: Vec<String> = file
            .symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.is_definition())
            .filter(|s| {
                s.section_index()
                    .and_then(|i| file.section_by_index(i).ok())
                    .and_then(|sec| sec.name().ok().map(|n| n.starts_with(".text.")))
                    .unwrap_or(false)
            })
            .filter_map(|s| s.name().ok().map(str::to_owned))
            .collect();
        for name in names {
            let Ok(image) = runpre::before_image(&bytes, &name) else {
                *outcomes.entry("no-image").or_default() += 1;
                continue;
            };
            functions += 1;
            let report = runpre::match_by_name(&image, &text, &symbols);
            *outcomes.entry(report.outcome.key()).or_default() += 1;
            if matches!(report.outcome, Outcome::Differs | Outcome::Unreadable) {
                let cause = report
                    .best_divergence()
                    .map_or("unknown".to_owned(), |(_, d)| d.cause.key().to_owned());
                *causes.entry(cause).or_default() += 1;
                if examples.len() < 40 {
                    examples.push(format!("{}: {}", path.display(), report));
                }
            }
        }
    }
    println!(
        "{} objects, {functions} functions, {:.1} s",
        files.len(),
        started.elapsed().as_secs_f64()
    );
    for (k, n) in &outcomes {
        println!(
            "  {k:<12} {n:>7}  {:>6.2}%",
            100.0 * *n as f64 / functions.max(1) as f64
        );
    }
    for (k, n) in &causes {
        println!("  differs by {k:<10} {n:>5}");
    }
    for e in &examples {
        println!("---\n{e}");
    }
    Ok(())
}
