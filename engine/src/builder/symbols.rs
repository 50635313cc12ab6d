//! The target kernel's symbols: what a new function may call and how it reaches it.
//!
//! Two sources, both of the exact kernel a stack is pinned to: `Module.symvers` from
//! its headers (the exported symbols, which the module loader resolves), and its
//! `/proc/kallsyms` (every symbol, static ones too, in the kernel's own order, which
//! is what `sympos` counts in). kallsyms is captured once per kernel by booting it in
//! the sandbox with `nokaslr`, and cached beside the kernel's other assets.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use kstack_kfacts::kallsyms::{KallsymsError, KallsymsIndex, Ksym};
use kstack_kfacts::livepatch::VMLINUX;

use super::{Resolution, ResolveError, SymbolResolver};
use crate::sandbox::{Sandbox, SandboxError, SandboxOptions};

/// How far around a candidate to look for the translation unit's other symbols.
const NEIGHBOURHOOD: usize = 96;

#[derive(Debug, thiserror::Error)]
pub enum SymbolsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("capturing /proc/kallsyms of the target kernel in the sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    #[error("the target kernel's /proc/kallsyms had no addresses or no symbols ({0})")]
    BadKallsyms(String),
    #[error("the target kernel's kallsyms: {0}")]
    Kallsyms(#[from] KallsymsError),
}

/// The symbols of the kernel image (module symbols are not kept).
#[derive(Debug, Clone, Default)]
pub struct KernelSymbols {
    /// The target's kallsyms: the one index the run-pre matcher uses too, so a
    /// `sympos` means the same entry to both.
    index: KallsymsIndex,
    exported: HashSet<String>,
    /// Per translation unit, the names its pre object defines (for disambiguation).
    tu_names: HashMap<String, Vec<String>>,
}

impl KernelSymbols {
    /// From `/proc/kallsyms` text and `Module.symvers` text.
    pub fn parse(kallsyms: &str, symvers: &str) -> Result<KernelSymbols, SymbolsError> {
        let index = KallsymsIndex::parse(kallsyms)?;
        // Module.symvers: CRC, name, module, export type, namespace (tab-separated).
        let exported = symvers
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                let _crc = f.next()?;
                let name = f.next()?;
                (f.next()? == VMLINUX).then(|| name.to_owned())
            })
            .collect();
        Ok(KernelSymbols {
            index,
            exported,
            tu_names: HashMap::new(),
        })
    }

    /// Tells the resolver which symbols translation unit `tu` defines, so that among
    /// same-named statics it can pick the one that sits among them.
    pub fn add_translation_unit(&mut self, tu: &str, names: Vec<String>) {
        self.tu_names.insert(tu.to_owned(), names);
    }

    /// The kallsyms index the resolver reads.
    pub fn index(&self) -> &KallsymsIndex {
        &self.index
    }

    pub fn is_exported(&self, name: &str) -> bool {
        self.exported.contains(name)
    }

    /// The kallsyms text of a kernel: from the cache, or captured by booting the
    /// kernel in the sandbox (`nokaslr`, so addresses are the link-time ones).
    pub fn kallsyms_for(
        vmlinuz: &Path,
        cache_file: &Path,
        guest_binary: &Path,
    ) -> Result<String, SymbolsError> {
        if let Ok(text) = std::fs::read_to_string(cache_file) {
            return Ok(text);
        }
        let mut options = SandboxOptions::new(vmlinuz, guest_binary);
        options.kernel_args.push("nokaslr".into());
        let vm = Sandbox::new(options)?;
        let run = vm.run("cat /proc/kallsyms")?;
        let text = run.stdout;
        if !run.status.success()
            || text.lines().count() < 1000
            || text.lines().all(|l| l.starts_with("0000000000000000"))
        {
            return Err(SymbolsError::BadKallsyms(format!(
                "{} lines, status {:?}",
                text.lines().count(),
                run.status
            )));
        }
        let tmp = cache_file.with_extension("partial");
        std::fs::write(&tmp, &text).map_err(|source| SymbolsError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, cache_file).map_err(|source| SymbolsError::Io {
            path: cache_file.to_owned(),
            source,
        })?;
        Ok(text)
    }
}

impl SymbolResolver for KernelSymbols {
    fn resolve(&self, name: &str, tu: &str, local: bool) -> Result<Resolution, ResolveError> {
        if !local && self.exported.contains(name) {
            return Ok(Resolution::Exported);
        }
        self.livepatch_entry(name, tu, local)
            .map(|(_, sympos)| Resolution::Livepatch { sympos })
    }
}

impl KernelSymbols {
    /// The kallsyms entry a livepatch relocation to `name` from `tu` means: its
    /// address, and the `sympos` that names it (0 when the name is unique).
    pub fn livepatch_entry(
        &self,
        name: &str,
        tu: &str,
        local: bool,
    ) -> Result<(u64, u64), ResolveError> {
        let all: Vec<(usize, &Ksym)> = self.index.named_in_indexed(VMLINUX, name).collect();
        // sympos counts every kallsyms entry of that name in the object, whatever
        // its type (kernel/livepatch/core.c, klp_find_callback): the index counts.
        let sympos = |s: &Ksym| {
            self.index
                .sympos(VMLINUX, name, s.addr)
                .expect("an entry of the name is at its own address")
        };
        let wanted: Vec<(u64, usize)> = all
            .iter()
            .filter(|(_, s)| s.is_local() == local)
            .map(|&(i, s)| (sympos(s), i))
            .collect();
        let entries = self.index.entries();
        match (all.len(), wanted.as_slice()) {
            (_, []) => Err(ResolveError::Missing {
                name: name.to_owned(),
            }),
            (1, [(_, i)]) => Ok((entries[*i].addr, 0)),
            (_, [(pos, i)]) => Ok((entries[*i].addr, *pos)),
            (_, many) => {
                let names: HashSet<&str> = self
                    .tu_names
                    .get(tu)
                    .map(|v| {
                        v.iter()
                            .map(String::as_str)
                            .filter(|n| *n != name)
                            .collect()
                    })
                    .unwrap_or_default();
                // The translation unit's symbols sit together in the image: the
                // candidate with the closest ones around it is the unit's own.
                let scores: Vec<(u64, usize, f64)> = many
                    .iter()
                    .map(|&(pos, i)| {
                        let lo = i.saturating_sub(NEIGHBOURHOOD);
                        let hi = (i + NEIGHBOURHOOD).min(entries.len());
                        let score = (lo..hi)
                            .filter(|&j| {
                                j != i
                                    && entries[j].module.is_none()
                                    && names.contains(entries[j].name.as_str())
                            })
                            .map(|j| 1.0 / i.abs_diff(j) as f64)
                            .sum::<f64>();
                        (pos, i, score)
                    })
                    .collect();
                let best = scores.iter().map(|s| s.2).fold(0.0, f64::max);
                let winners: Vec<&(u64, usize, f64)> =
                    scores.iter().filter(|s| s.2 >= best * 0.999).collect();
                match winners.as_slice() {
                    [(pos, i, _)] if best > 0.0 => Ok((entries[*i].addr, *pos)),
                    _ => Err(ResolveError::Ambiguous {
                        name: name.to_owned(),
                        candidates: many.len(),
                        detail: format!(
                            "neighbour scores {:?} for translation unit {tu}",
                            scores
                                .iter()
                                .map(|s| format!("{:.2}", s.2))
                                .collect::<Vec<_>>()
                        ),
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS: &str = "\
ffffffff81000000 T _stext
ffffffff81001000 t helper
ffffffff81001100 t a_show
ffffffff81001200 t a_open
ffffffff81001300 t other_1
ffffffff81001400 t other_2
ffffffff81001500 t other_3
ffffffff81001600 t other_4
ffffffff81002000 t helper
ffffffff81002100 t b_show
ffffffff81002200 T seq_puts
ffffffff81003000 t unique_static
ffffffff81004000 D saved_command_line
ffffffffc0000000 t mod_fn\t[some_module]
";
    const SYMVERS: &str =
        "0x1\tseq_puts\tvmlinux\tEXPORT_SYMBOL\t\n0x2\tmod_export\tsome_module\tEXPORT_SYMBOL\t\n";

    fn syms() -> KernelSymbols {
        let mut k = KernelSymbols::parse(KALLSYMS, SYMVERS).expect("parses");
        k.add_translation_unit("fs/b.o", vec!["b_show".into(), "helper".into()]);
        k.add_translation_unit("fs/a.o", vec!["a_show".into(), "a_open".into()]);
        k
    }

    #[test]
    fn exported_unique_and_missing() {
        let k = syms();
        assert_eq!(
            k.resolve("seq_puts", "fs/a.o", false),
            Ok(Resolution::Exported)
        );
        assert_eq!(
            k.resolve("unique_static", "fs/a.o", true),
            Ok(Resolution::Livepatch { sympos: 0 })
        );
        assert_eq!(
            k.resolve("saved_command_line", "fs/a.o", false),
            Ok(Resolution::Livepatch { sympos: 0 })
        );
        assert!(matches!(
            k.resolve("mod_fn", "fs/a.o", true),
            Err(ResolveError::Missing { .. })
        ));
    }

    #[test]
    fn same_named_statics_are_told_apart_by_their_neighbours() {
        let k = syms();
        assert_eq!(
            k.resolve("helper", "fs/a.o", true),
            Ok(Resolution::Livepatch { sympos: 1 })
        );
        assert_eq!(
            k.resolve("helper", "fs/b.o", true),
            Ok(Resolution::Livepatch { sympos: 2 })
        );
        let err = k.resolve("helper", "fs/unknown.o", true).unwrap_err();
        assert!(
            matches!(err, ResolveError::Ambiguous { candidates: 2, .. }),
            "{err}"
        );
    }
}
