//! The kernel's symbol table as `/proc/kallsyms` prints it, indexed once for every
//! question kstack asks of it.
//!
//! - Where are the symbols of a name in one object (vmlinux or a module), in
//!   kallsyms order: that order is what a livepatch `sympos` counts in. The livepatch
//!   core counts every entry of the name in the object, whatever its type, from 1;
//!   `sympos` 0 means "the only one" (kernel/livepatch/core.c, `klp_find_callback`,
//!   `klp_find_object_symbol`).
//! - Which symbol holds an address, to check a relocated field and to name it.
//!
//! The builder resolves `sympos` with [`KallsymsIndex::sympos`], and the run-pre
//! matcher numbers its candidates with [`KallsymsIndex::named`]: the same entries in
//! the same order, so the two cannot disagree.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::livepatch::VMLINUX;
use crate::symbols::{TEXT_END, TEXT_START};

/// One kallsyms line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ksym {
    pub addr: u64,
    /// The `nm`-style type letter: `T`/`t` text, `W`/`w` weak, `D`/`d` data, `A`
    /// absolute (per-CPU variables), ...; lower case for local symbols.
    pub kind: char,
    pub name: String,
    /// The module that defines it, `None` for vmlinux.
    pub module: Option<String>,
}

impl Ksym {
    /// A local (static) symbol.
    pub fn is_local(&self) -> bool {
        self.kind.is_ascii_lowercase()
    }

    /// A strong global definition (`T`, `D`, `B`, `R`): what a linker picks over a
    /// `__weak` one.
    pub fn is_strong_global(&self) -> bool {
        self.kind.is_ascii_uppercase() && !matches!(self.kind, 'W' | 'V' | 'U')
    }

    /// The livepatch object that defines it: `vmlinux` or the module's name.
    pub fn object(&self) -> &str {
        self.module.as_deref().unwrap_or(VMLINUX)
    }
}

/// Why a kallsyms text cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KallsymsError {
    #[error("no symbols in the text")]
    Empty,
    #[error(
        "every address is zero: kallsyms was read without privilege (kptr_restrict); read it as root"
    )]
    Unprivileged,
}

/// A fast, non-cryptographic hasher for symbol names (FxHash's multiply-rotate):
/// the index is built on every sync, from about 90,000 names, and the names are the
/// running kernel's own, not an adversary's.
#[derive(Debug, Default, Clone, Copy)]
struct NameHasher(u64);

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn name_hash(name: &str) -> u64 {
    let mut h = NameHasher::default();
    h.write(name.as_bytes());
    h.finish()
}

/// No entry (the end of a chain).
const NONE: u32 = u32::MAX;

/// kallsyms, indexed by object and name and by address.
#[derive(Debug, Clone, Default)]
pub struct KallsymsIndex {
    /// In kallsyms order.
    syms: Vec<Ksym>,
    /// The first entry of each name hash; the entries of a hash are chained through
    /// `next` in kallsyms order. Built without copying a name, since the index is
    /// built on every sync (a `HashMap<String, Vec<usize>>` made two allocations per
    /// symbol). Lookups compare the names: a shared hash only lengthens a chain.
    by_name: HashMap<u64, u32, BuildHasherDefault<NameHasher>>,
    next: Vec<u32>,
    /// Every entry, sorted by address.
    by_addr: Vec<usize>,
    text: Option<(u64, u64)>,
}

impl KallsymsIndex {
    /// Parses `/proc/kallsyms` text. Refuses a text whose addresses are all zero:
    /// that is what an unprivileged reader sees (`kptr_restrict`).
    pub fn parse(text: &str) -> Result<KallsymsIndex, KallsymsError> {
        let mut syms = Vec::new();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            let module = parts
                .next()
                .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_owned());
            syms.push(Ksym {
                addr,
                kind: kind.chars().next().unwrap_or('?'),
                name: name.to_owned(),
                module,
            });
        }
        if syms.is_empty() {
            return Err(KallsymsError::Empty);
        }
        if syms.iter().all(|s| s.addr == 0) {
            return Err(KallsymsError::Unprivileged);
        }
        Ok(Self::from_symbols(syms))
    }

    /// From entries in kallsyms order.
    pub fn from_symbols(syms: Vec<Ksym>) -> KallsymsIndex {
        let mut by_name: HashMap<u64, u32, BuildHasherDefault<NameHasher>> =
            HashMap::with_capacity_and_hasher(syms.len(), BuildHasherDefault::default());
        let mut next = vec![NONE; syms.len()];
        // Chained from the back, so each chain runs in kallsyms order.
        for (i, s) in syms.iter().enumerate().rev() {
            let head = by_name.entry(name_hash(&s.name)).or_insert(NONE);
            next[i] = *head;
            *head = i as u32;
        }
        let mut by_addr: Vec<usize> = (0..syms.len()).collect();
        by_addr.sort_by_key(|&i| (syms[i].addr, i));
        let mut index = KallsymsIndex {
            syms,
            by_name,
            next,
            by_addr,
            text: None,
        };
        let first = |name: &str| index.named(name).next().map(|s| s.addr);
        index.text = first(TEXT_START).zip(first(TEXT_END));
        index
    }

    pub fn len(&self) -> usize {
        self.syms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// Every entry, in kallsyms order.
    pub fn entries(&self) -> &[Ksym] {
        &self.syms
    }

    /// The entries named `name` in `object` (`vmlinux` or a module), in kallsyms
    /// order: entry `i` is `sympos` `i + 1`.
    pub fn named_in<'a>(&'a self, object: &'a str, name: &str) -> impl Iterator<Item = &'a Ksym> {
        self.named_in_indexed(object, name).map(|(_, s)| s)
    }

    /// [`KallsymsIndex::named_in`], each entry with its index in [`KallsymsIndex::entries`].
    pub fn named_in_indexed<'a>(
        &'a self,
        object: &'a str,
        name: &str,
    ) -> impl Iterator<Item = (usize, &'a Ksym)> {
        self.all_named(name)
            .filter(move |(_, s)| s.object() == object)
    }

    /// Every entry named `name` (all objects), in kallsyms order.
    fn all_named<'a>(&'a self, name: &str) -> impl Iterator<Item = (usize, &'a Ksym)> {
        let mut at = self.by_name.get(&name_hash(name)).copied().unwrap_or(NONE);
        std::iter::from_fn(move || {
            while at != NONE {
                let i = at as usize;
                at = self.next[i];
                if self.syms[i].name == name {
                    return Some((i, &self.syms[i]));
                }
            }
            None
        })
    }

    /// The entries a reference to `name` from code of `object` can mean: the
    /// object's own symbols of that name, else vmlinux's, else any module's (an
    /// export of another module), in kallsyms order.
    pub fn seen_from<'a>(&'a self, object: &'a str, name: &str) -> Vec<&'a Ksym> {
        let own: Vec<&Ksym> = self.named_in(object, name).collect();
        if !own.is_empty() {
            return own;
        }
        let vmlinux: Vec<&Ksym> = self.named(name).collect();
        if !vmlinux.is_empty() {
            return vmlinux;
        }
        self.all_named(name).map(|(_, s)| s).collect()
    }

    /// Whether kallsyms lists any symbol of `object` (a module is loaded).
    pub fn has_object(&self, object: &str) -> bool {
        object == VMLINUX
            || self
                .syms
                .iter()
                .any(|s| s.module.as_deref() == Some(object))
    }

    /// The vmlinux entries named `name`, in kallsyms order.
    pub fn named<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Ksym> {
        self.named_in(VMLINUX, name)
    }

    /// The `sympos` of the entry of `name` at `addr` in `object`, counted as the
    /// livepatch core counts: 1 for the first entry of the name in kallsyms order;
    /// `None` when no entry of that name is there.
    pub fn sympos(&self, object: &str, name: &str, addr: u64) -> Option<u64> {
        self.named_in(object, name)
            .position(|s| s.addr == addr)
            .map(|i| i as u64 + 1)
    }

    /// The addresses of [`KallsymsIndex::named`], the candidates of a match.
    pub fn candidates(&self, name: &str) -> Vec<u64> {
        self.named(name).map(|s| s.addr).collect()
    }

    /// The vmlinux entry of `name` at `addr`, if kallsyms has one.
    pub fn at(&self, name: &str, addr: u64) -> Option<&Ksym> {
        self.named(name).find(|s| s.addr == addr)
    }

    /// The symbol that holds `addr`: the last one at or below it, and the offset.
    pub fn symbolize(&self, addr: u64) -> Option<(&Ksym, u64)> {
        let pos = self.by_addr.partition_point(|&i| self.syms[i].addr <= addr);
        let i = *self.by_addr.get(pos.checked_sub(1)?)?;
        let sym = &self.syms[i];
        Some((sym, addr - sym.addr))
    }

    /// `addr` as `name+0xoff`, or hex when nothing holds it.
    pub fn describe(&self, addr: u64) -> String {
        match self.symbolize(addr) {
            Some((s, 0)) => s.name.clone(),
            Some((s, off)) if off < 1 << 20 => format!("{}+{off:#x}", s.name),
            _ => format!("{addr:#x}"),
        }
    }

    /// The address of the next symbol above `addr`, a bound for a function's end.
    pub fn next_above(&self, addr: u64) -> Option<u64> {
        let pos = self.by_addr.partition_point(|&i| self.syms[i].addr <= addr);
        self.by_addr.get(pos).map(|&i| self.syms[i].addr)
    }

    /// Whether `addr` lies in the kernel image's text (`_stext`..`_etext`); `None`
    /// when kallsyms lacks those markers.
    pub fn in_kernel_text(&self, addr: u64) -> Option<bool> {
        self.text.map(|(start, end)| (start..end).contains(&addr))
    }

    /// Names with more than one entry in `object`: where `sympos` matters.
    pub fn ambiguous_names<'a>(&'a self, object: &'a str) -> impl Iterator<Item = &'a str> {
        // Each name once: at its first entry in the object.
        self.syms.iter().enumerate().filter_map(move |(i, s)| {
            if s.object() != object {
                return None;
            }
            let mut same = self
                .named_in_indexed(object, &s.name)
                .map(|(index, _)| index);
            (same.next() == Some(i) && same.next().is_some()).then_some(s.name.as_str())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
ffffffff81000000 T _stext
ffffffff81001000 t foo
ffffffff81002000 T bar
ffffffff81003000 t foo
ffffffff81004000 T _etext
ffffffffc0000000 t foo\t[some_module]
ffffffffc0000100 t foo\t[some_module]
";

    #[test]
    fn positions_count_per_object_in_kallsyms_order() {
        let k = KallsymsIndex::parse(TEXT).expect("parses");
        assert_eq!(
            k.candidates("foo"),
            [0xffffffff81001000, 0xffffffff81003000]
        );
        assert_eq!(k.sympos(VMLINUX, "foo", 0xffffffff81003000), Some(2));
        assert_eq!(k.sympos("some_module", "foo", 0xffffffffc0000100), Some(2));
        assert_eq!(k.sympos(VMLINUX, "foo", 0xffffffffc0000100), None);
        assert_eq!(k.describe(0xffffffff81002010), "bar+0x10");
        assert_eq!(k.describe(0xffffffffc0000004), "foo+0x4");
        assert_eq!(k.next_above(0xffffffff81001000), Some(0xffffffff81002000));
        assert_eq!(k.in_kernel_text(0xffffffff81003000), Some(true));
        assert_eq!(k.in_kernel_text(0xffffffffc0000000), Some(false));
        let mut ambiguous: Vec<&str> = k.ambiguous_names(VMLINUX).collect();
        ambiguous.sort_unstable();
        assert_eq!(ambiguous, ["foo"]);
    }

    #[test]
    fn unprivileged_kallsyms_is_refused() {
        let err = KallsymsIndex::parse("0000000000000000 T foo\n0000000000000000 t bar\n")
            .expect_err("all zero");
        assert!(err.to_string().contains("as root"), "{err}");
        assert!(matches!(
            KallsymsIndex::parse(""),
            Err(KallsymsError::Empty)
        ));
    }
}

/// One symbol of a module's `.ko` as the module loader sees it
/// (kernel/module/kallsyms.c, `add_kallsyms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSymbol {
    /// Its index in the `.ko`'s symbol table.
    pub index: usize,
    pub name: String,
    /// The letter `/proc/kallsyms` shows (`elf_type`; upper case only for exports,
    /// which the `.ko` alone does not tell).
    pub kind: char,
    /// Bound locally (`static`).
    pub local: bool,
    /// Kept once the module has finished loading (`is_core_symbol`): not in an
    /// `.init*` section, allocated, named. While the module loads (when the
    /// livepatch core patches a module that loads after the patch), every named
    /// defined symbol counts.
    pub core: bool,
}

/// Module sections the loader places in the init layout and frees once the module's
/// init has run (kernel/module/main.c, `module_init_section`).
pub const MODULE_INIT_PREFIX: &str = ".init";

/// The named, defined symbols of a module's `.ko`, in its symbol-table order: the
/// order the livepatch core counts a module's `sympos` in
/// (`module_kallsyms_on_each_symbol`). The per-CPU section is `percpu` (its index).
pub fn module_symbols(object: &crate::elf::RelObject<'_>) -> Vec<ModuleSymbol> {
    use object::elf;
    let pcpu = object.section_named(".data..percpu");
    let mut out = Vec::new();
    for (index, sym) in object.symbols.iter().enumerate().skip(1) {
        if sym.shndx == elf::SHN_UNDEF.0 || sym.name.is_empty() {
            continue;
        }
        let section = sym.section.map(|s| &object.sections[s]);
        let kind = if sym.is_weak() {
            if sym.is_object() { 'v' } else { 'w' }
        } else if sym.shndx == elf::SHN_ABS.0 || (sym.section.is_some() && sym.section == pcpu) {
            'a'
        } else {
            match section {
                None => '?',
                Some(s) if s.is_text() => 't',
                Some(s) if s.is_alloc() && !s.is_nobits() => {
                    if s.has(elf::SHF_WRITE) {
                        'd'
                    } else {
                        'r'
                    }
                }
                Some(s) if s.is_nobits() => 'b',
                Some(s) if s.name.starts_with(crate::sections::DEBUG_PREFIX) => 'n',
                Some(_) => '?',
            }
        };
        let core = match section {
            Some(_) if sym.section.is_some() && sym.section == pcpu => true,
            Some(s) => s.is_alloc() && !s.name.starts_with(MODULE_INIT_PREFIX),
            None => false,
        };
        out.push(ModuleSymbol {
            index,
            name: sym.name.clone(),
            kind,
            local: sym.is_local(),
            core,
        });
    }
    out
}
