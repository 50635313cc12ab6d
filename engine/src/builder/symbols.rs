//! The target kernel's symbols: what a new function may call and how it reaches it.
//!
//! Three sources, all of the exact kernel a stack is pinned to: `Module.symvers` from
//! its headers (the exported symbols of vmlinux and of every module, which the
//! module loader resolves), its `/proc/kallsyms` (every symbol of vmlinux, static
//! ones too, in the kernel's own order, which is what `sympos` counts in), and the
//! `.ko` of each module a patch targets, from the image package (its symbol table, in
//! the order the livepatch core counts a module's `sympos`). kallsyms is captured once
//! per kernel by booting it in the sandbox with `nokaslr`, and cached beside the
//! kernel's other assets.

use std::collections::{HashMap, HashSet};

use kstack_kfacts::elf::RelObject;
use kstack_kfacts::kallsyms::{ModuleSymbol, module_symbols};
use kstack_kfacts::symtab::LocalsByFile;
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
    #[error("module {module}'s .ko: {detail}")]
    Module { module: String, detail: String },
}

/// One module's symbols, as the livepatch core counts them.
#[derive(Debug, Clone, Default)]
struct ModuleTable {
    /// Named, defined symbols in `.ko` symbol-table order.
    symbols: Vec<ModuleSymbol>,
    /// The modules it depends on (`depends=` of its `.modinfo`): loaded before it,
    /// whenever it loads.
    depends: Vec<String>,
}

/// The target kernel's symbols: vmlinux's, the exports of every object, and the
/// symbol tables of the modules a patch targets.
#[derive(Debug, Clone, Default)]
pub struct KernelSymbols {
    /// The target's kallsyms: the one index the run-pre matcher uses too, so a
    /// `sympos` means the same entry to both.
    index: KallsymsIndex,
    /// Every exported symbol and the object that exports it.
    exports: HashMap<String, String>,
    /// Per translation unit, the names its pre object defines (for disambiguation).
    tu_names: HashMap<String, Vec<String>>,
    modules: HashMap<String, ModuleTable>,
    /// vmlinux's locals by source file, when the kernel's full symbol table is at
    /// hand: the exact answer to which of several same-named statics a unit means.
    locals: Option<LocalsByFile>,
    /// The kernel's modules (the image package's, decompressed): where a name that
    /// neither the patched module nor vmlinux has is looked for, to name the module
    /// that keeps it to itself.
    modules_dir: Option<PathBuf>,
}

impl KernelSymbols {
    /// From `/proc/kallsyms` text and `Module.symvers` text.
    pub fn parse(kallsyms: &str, symvers: &str) -> Result<KernelSymbols, SymbolsError> {
        let index = KallsymsIndex::parse(kallsyms)?;
        // Module.symvers: CRC, name, object, export type, namespace (tab-separated);
        // a module's path (`fs/xfs/xfs`) stands for the module `xfs`.
        let exports = symvers
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                let _crc = f.next()?;
                let name = f.next()?;
                let object = f.next()?;
                let object = object
                    .rsplit('/')
                    .next()
                    .unwrap_or(object)
                    .replace('-', "_");
                Some((name.to_owned(), object))
            })
            .collect();
        Ok(KernelSymbols {
            index,
            exports,
            tu_names: HashMap::new(),
            modules: HashMap::new(),
            locals: None,
            modules_dir: None,
        })
    }

    /// Adds the symbol table of module `module` from its `.ko` (the one the image
    /// package ships), which code of that module is resolved against.
    pub fn add_module(&mut self, module: &str, ko: &[u8]) -> Result<(), SymbolsError> {
        let object = RelObject::parse(ko).map_err(|e| SymbolsError::Module {
            module: module.to_owned(),
            detail: e.to_string(),
        })?;
        self.modules.insert(
            module.to_owned(),
            ModuleTable {
                symbols: module_symbols(&object),
                depends: module_depends(ko),
            },
        );
        Ok(())
    }

    /// Tells the resolver which symbols translation unit `tu` defines, so that among
    /// same-named statics it can pick the one that sits among them.
    pub fn add_translation_unit(&mut self, tu: &str, names: Vec<String>) {
        self.tu_names.insert(tu.to_owned(), names);
    }

    /// Gives the resolver vmlinux's full symbol table by source file: same-named
    /// statics are then told apart exactly, not by their neighbours.
    pub fn set_locals(&mut self, locals: LocalsByFile) {
        self.locals = Some(locals);
    }

    /// Gives the resolver the kernel's modules directory (every `.ko`), read only
    /// when a reference resolves nowhere else.
    pub fn set_modules_dir(&mut self, dir: impl Into<PathBuf>) {
        self.modules_dir = Some(dir.into());
    }

    /// The module other than `object` whose `.ko` defines `name` as a global: a
    /// symbol it does not export, which no other module can reach.
    fn defined_by_another_module(&self, name: &str, object: &str) -> Option<String> {
        use object::{Object, ObjectSymbol};
        let mut files = Vec::new();
        collect_modules(self.modules_dir.as_deref()?, &mut files);
        files.sort();
        files.into_iter().find_map(|path| {
            let module = path
                .file_name()?
                .to_str()?
                .strip_suffix(".ko")?
                .replace('-', "_");
            if module == object {
                return None;
            }
            let data = std::fs::read(&path).ok()?;
            let file = object::File::parse(&*data).ok()?;
            file.symbols()
                .any(|s| s.is_global() && s.is_definition() && s.name() == Ok(name))
                .then_some(module)
        })
    }

    /// The kallsyms index the resolver reads.
    pub fn index(&self) -> &KallsymsIndex {
        &self.index
    }

    /// The object that exports `name`, if any (`vmlinux` or a module).
    pub fn exporter(&self, name: &str) -> Option<&str> {
        self.exports.get(name).map(String::as_str)
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
        let run = vm.run(&format!("cat {}", kstack_kfacts::paths::PROC_KALLSYMS))?;
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
    fn resolve(
        &self,
        object: &str,
        name: &str,
        tu: &str,
        local: bool,
    ) -> Result<Resolution, ResolveError> {
        if object == VMLINUX {
            if !local && self.exporter(name) == Some(VMLINUX) {
                return Ok(Resolution::Exported);
            }
            return self.livepatch_entry(name, tu, local).map(|(_, sympos)| {
                Resolution::Livepatch {
                    object: VMLINUX.to_owned(),
                    sympos,
                }
            });
        }
        let own = |sympos| Resolution::Livepatch {
            object: object.to_owned(),
            sympos,
        };
        if local {
            return self.module_entry(object, name, tu, true).map(own);
        }
        match self.exporter(name) {
            Some(VMLINUX) => Ok(Resolution::Exported),
            // The module's own export: the loader could resolve it only while the
            // module is loaded, so the livepatch core resolves it when it is.
            Some(owner) if owner == object => self.module_entry(object, name, tu, false).map(own),
            // Another module's export, of a module the patched one depends on: that
            // module is loaded whenever the patched one is, so the livepatch core
            // resolves the reference when the patched module loads (applied with
            // its relocations), and the patch module does not need it loaded.
            Some(owner)
                if self
                    .modules
                    .get(object)
                    .is_some_and(|t| t.depends.iter().any(|d| d == owner)) =>
            {
                Ok(Resolution::Livepatch {
                    object: owner.to_owned(),
                    sympos: 0,
                })
            }
            // Any other module's export stays a normal reference: the patch module
            // then needs that module loaded.
            Some(_) => Ok(Resolution::Exported),
            None => match self.module_entry(object, name, tu, false) {
                Ok(sympos) => Ok(own(sympos)),
                Err(ResolveError::NotInModule { .. }) => {
                    // A global of vmlinux that is not exported (vmlinux's livepatch
                    // relocations are applied when the patch module loads).
                    self.livepatch_entry(name, tu, false)
                        .map(|(_, sympos)| Resolution::Livepatch {
                            object: VMLINUX.to_owned(),
                            sympos,
                        })
                        .map_err(|e| match e {
                            ResolveError::Missing { .. } => {
                                match self.defined_by_another_module(name, object) {
                                    Some(owner) => ResolveError::OtherModule {
                                        name: name.to_owned(),
                                        module: object.to_owned(),
                                        owner,
                                    },
                                    None => ResolveError::NotInModule {
                                        name: name.to_owned(),
                                        module: object.to_owned(),
                                    },
                                }
                            }
                            other => other,
                        })
                }
                Err(e) => Err(e),
            },
        }
    }
}

impl KernelSymbols {
    /// The `sympos` of `name` in module `module`'s own symbols, counted as the
    /// livepatch core counts them both while the module loads (every named symbol)
    /// and once it is loaded (the symbols the loader keeps): 0 when the name is
    /// unique in both, an error when the two counts disagree.
    fn module_entry(
        &self,
        module: &str,
        name: &str,
        tu: &str,
        local: bool,
    ) -> Result<u64, ResolveError> {
        let not_in = || ResolveError::NotInModule {
            name: name.to_owned(),
            module: module.to_owned(),
        };
        let table = self.modules.get(module).ok_or_else(not_in)?;
        let all: Vec<(usize, &ModuleSymbol)> = table
            .symbols
            .iter()
            .enumerate()
            .filter(|(_, s)| s.name == name)
            .collect();
        let wanted: Vec<(u64, usize)> = all
            .iter()
            .enumerate()
            .filter(|(_, (_, s))| s.local == local)
            .map(|(pos, &(i, _))| (pos as u64 + 1, i))
            .collect();
        let (full, at) = match wanted.as_slice() {
            [] => return Err(not_in()),
            [one] => *one,
            many => pick_by_neighbours(
                name,
                tu,
                many,
                table.symbols.len(),
                &|j| Some(table.symbols[j].name.as_str()),
                self.tu_names.get(tu),
            )?,
        };
        let core_all: Vec<usize> = all
            .iter()
            .filter(|(_, s)| s.core)
            .map(|&(i, _)| i)
            .collect();
        let loaded = core_all.iter().position(|&i| i == at).map(|p| p as u64 + 1);
        match (all.len(), core_all.len(), loaded) {
            (1, 1, Some(_)) => Ok(0),
            (_, _, Some(loaded)) if loaded == full => Ok(full),
            (_, _, loaded) => Err(ResolveError::LoadOrder {
                name: name.to_owned(),
                module: module.to_owned(),
                loading: full,
                loaded: loaded.unwrap_or(0),
            }),
        }
    }

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
        // Per-CPU variables are absolute in kallsyms (`A`, scripts/kallsyms.c
        // `make_percpu_absolute`), static or not: their letter says nothing of their
        // binding.
        let wanted: Vec<(u64, usize)> = all
            .iter()
            .filter(|(_, s)| s.is_local() == local || s.kind == 'A')
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
                if let Some(found) = self.exact_local(name, tu, many) {
                    return found;
                }
                let (pos, i) = pick_by_neighbours(
                    name,
                    tu,
                    many,
                    entries.len(),
                    &|j| {
                        entries[j]
                            .module
                            .is_none()
                            .then_some(entries[j].name.as_str())
                    },
                    self.tu_names.get(tu),
                )?;
                Ok((entries[i].addr, pos))
            }
        }
    }
}

impl KernelSymbols {
    /// Among same-named vmlinux entries (`(sympos, index)`), the one translation
    /// unit `tu` defines, from vmlinux's full symbol table: the object of `tu`'s
    /// source file (of those with its base name, the one that defines most of the
    /// unit's names) and the address of `name` in it. `None` when the table is not
    /// at hand or has no object of that file (the caller falls back).
    fn exact_local(
        &self,
        name: &str,
        tu: &str,
        many: &[(u64, usize)],
    ) -> Option<Result<(u64, u64), ResolveError>> {
        let locals = self.locals.as_ref()?;
        let stem = Path::new(tu).file_stem()?.to_str()?;
        let unit_names: HashSet<String> = self
            .tu_names
            .get(tu)
            .map(|v| v.iter().map(|n| normalize(n)).collect())
            .unwrap_or_default();
        let groups: Vec<_> = ["c", "S"]
            .iter()
            .flat_map(|ext| locals.groups_of(&format!("{stem}.{ext}")))
            .collect();
        if groups.is_empty() {
            return None;
        }
        let overlap = |g: &kstack_kfacts::symtab::FileSymbols| {
            g.symbols
                .iter()
                .filter(|(n, _)| unit_names.contains(&normalize(n)))
                .count()
        };
        let best = groups.iter().map(|g| overlap(g)).max().unwrap_or(0);
        let winners: Vec<_> = groups.iter().filter(|g| overlap(g) == best).collect();
        let ambiguous = |detail: String| ResolveError::Ambiguous {
            name: name.to_owned(),
            candidates: many.len(),
            detail,
        };
        let [group] = winners.as_slice() else {
            return Some(Err(ambiguous(format!(
                "{} objects of the kernel are built from a file named {stem}, and the \
                 unit's symbols do not tell which is {tu}",
                winners.len()
            ))));
        };
        let Some(&(_, addr)) = group.symbols.iter().find(|(n, _)| n == name) else {
            return Some(Err(ambiguous(format!(
                "the kernel's symbol table has no {name} among the locals of {tu}'s source"
            ))));
        };
        let entries = self.index.entries();
        Some(
            many.iter()
                .find(|&&(_, i)| entries[i].addr == addr)
                .map(|&(pos, i)| (entries[i].addr, pos))
                .ok_or_else(|| ambiguous(format!("no kallsyms entry of {name} is at {addr:#x}"))),
        )
    }
}

/// A name without GCC's numbering (`count.3` → `count`), as the unit's names are kept.
fn normalize(name: &str) -> String {
    crate::builder::diff::normalize_name(name)
}

/// Among same-named local symbols (`(sympos, index)`), the one the translation unit
/// `tu` defines: a unit's symbols sit together in a symbol table, so the candidate
/// with the most of the unit's other names closest around it is the unit's own.
/// `name_at(j)` is the name at index `j` of the table (`None` to skip an entry).
fn pick_by_neighbours<'t>(
    name: &str,
    tu: &str,
    many: &[(u64, usize)],
    len: usize,
    name_at: &dyn Fn(usize) -> Option<&'t str>,
    tu_names: Option<&Vec<String>>,
) -> Result<(u64, usize), ResolveError> {
    let names: HashSet<&str> = tu_names
        .map(|v| {
            v.iter()
                .map(String::as_str)
                .filter(|n| *n != name)
                .collect()
        })
        .unwrap_or_default();
    let scores: Vec<(u64, usize, f64)> = many
        .iter()
        .map(|&(pos, i)| {
            let lo = i.saturating_sub(NEIGHBOURHOOD);
            let hi = (i + NEIGHBOURHOOD).min(len);
            let score = (lo..hi)
                .filter(|&j| j != i && name_at(j).is_some_and(|n| names.contains(n)))
                .map(|j| 1.0 / i.abs_diff(j) as f64)
                .sum::<f64>();
            (pos, i, score)
        })
        .collect();
    let best = scores.iter().map(|s| s.2).fold(0.0, f64::max);
    let winners: Vec<&(u64, usize, f64)> = scores.iter().filter(|s| s.2 >= best * 0.999).collect();
    match winners.as_slice() {
        [(pos, i, _)] if best > 0.0 => Ok((*pos, *i)),
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

/// Every `.ko` under `dir`, recursively.
fn collect_modules(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_modules(&path, out);
        } else if path.extension().is_some_and(|e| e == "ko") {
            out.push(path);
        }
    }
}

/// The `depends=` list of a module's `.modinfo` (NUL-separated `key=value` strings),
/// with `-` made `_` as module names are.
fn module_depends(ko: &[u8]) -> Vec<String> {
    use object::{Object, ObjectSection};
    let Ok(file) = object::File::parse(ko) else {
        return Vec::new();
    };
    let Some(data) = file.section_by_name(".modinfo").and_then(|s| s.data().ok()) else {
        return Vec::new();
    };
    data.split(|&b| b == 0)
        .filter_map(|entry| entry.strip_prefix(b"depends="))
        .flat_map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
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
000000000001ff00 A cached_stacks
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
    fn another_modules_export_is_resolved_when_the_patched_module_loads_if_it_depends_on_it() {
        let mut k = syms();
        for (module, depends) in [
            ("xt_nat", vec!["some_module".to_owned()]),
            ("loner", vec![]),
        ] {
            k.modules.insert(
                module.into(),
                ModuleTable {
                    symbols: Vec::new(),
                    depends,
                },
            );
        }
        // Loaded before xt_nat whenever it loads: resolved then, by the livepatch core.
        assert_eq!(
            k.resolve("xt_nat", "mod_export", "net/netfilter/xt_nat.o", false),
            Ok(Resolution::Livepatch {
                object: "some_module".into(),
                sympos: 0
            })
        );
        // Not a dependency: a plain reference, which the patch module's load needs.
        assert_eq!(
            k.resolve("loner", "mod_export", "drivers/loner.o", false),
            Ok(Resolution::Exported)
        );
        assert_eq!(
            module_depends(b"not an ELF"),
            Vec::<String>::new(),
            "an unreadable module has no known dependencies"
        );
    }

    #[test]
    fn exported_unique_and_missing() {
        let k = syms();
        assert_eq!(
            k.resolve("vmlinux", "seq_puts", "fs/a.o", false),
            Ok(Resolution::Exported)
        );
        assert_eq!(
            k.resolve("vmlinux", "unique_static", "fs/a.o", true),
            Ok(Resolution::Livepatch {
                object: VMLINUX.into(),
                sympos: 0
            })
        );
        assert_eq!(
            k.resolve("vmlinux", "saved_command_line", "fs/a.o", false),
            Ok(Resolution::Livepatch {
                object: VMLINUX.into(),
                sympos: 0
            })
        );
        // A static per-CPU variable: `A` in kallsyms.
        assert_eq!(
            k.resolve("vmlinux", "cached_stacks", "kernel/fork.o", true),
            Ok(Resolution::Livepatch {
                object: VMLINUX.into(),
                sympos: 0
            })
        );
        assert!(matches!(
            k.resolve("vmlinux", "mod_fn", "fs/a.o", true),
            Err(ResolveError::Missing { .. })
        ));
    }

    #[test]
    fn same_named_statics_are_told_apart_by_their_neighbours() {
        let k = syms();
        assert_eq!(
            k.resolve("vmlinux", "helper", "fs/a.o", true),
            Ok(Resolution::Livepatch {
                object: VMLINUX.into(),
                sympos: 1
            })
        );
        assert_eq!(
            k.resolve("vmlinux", "helper", "fs/b.o", true),
            Ok(Resolution::Livepatch {
                object: VMLINUX.into(),
                sympos: 2
            })
        );
        let err = k
            .resolve("vmlinux", "helper", "fs/unknown.o", true)
            .unwrap_err();
        assert!(
            matches!(err, ResolveError::Ambiguous { candidates: 2, .. }),
            "{err}"
        );
    }
}
