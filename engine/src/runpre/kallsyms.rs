//! The running kernel's symbol table, as `/proc/kallsyms` prints it.
//!
//! Two questions are asked of it: where are the symbols of a name (in kallsyms
//! order, which is what a livepatch `sympos` counts in), and which symbol holds an
//! address (to check a relocated field and to name it in a report). Loaded modules'
//! symbols (`[module]` lines) are kept for naming addresses but never count as
//! candidates or positions: a patch of vmlinux only ever means vmlinux symbols.

use std::collections::HashMap;

use super::RunPreError;

/// The symbols that mark the kernel image's text (the linker script,
/// arch/x86/kernel/vmlinux.lds.S).
const TEXT_START: &str = "_stext";
const TEXT_END: &str = "_etext";

/// One kallsyms line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ksym {
    pub addr: u64,
    /// The `nm`-style type letter: `T`/`t` text, `W`/`w` weak, `D`/`d` data, ...;
    /// lower case for local symbols.
    pub kind: char,
    pub name: String,
    /// The module that defines it, `None` for vmlinux.
    pub module: Option<String>,
}

impl Ksym {
    /// A strong global definition (`T`, `D`, `B`, `R`): what a linker picks over a
    /// `__weak` one.
    pub fn is_strong_global(&self) -> bool {
        self.kind.is_ascii_uppercase() && !matches!(self.kind, 'W' | 'V' | 'U')
    }
}

/// kallsyms, indexed by name and by address.
#[derive(Debug, Clone, Default)]
pub struct KallsymsIndex {
    /// In kallsyms order.
    syms: Vec<Ksym>,
    /// vmlinux entries only, in kallsyms order (the `sympos` order).
    by_name: HashMap<String, Vec<usize>>,
    /// Every entry, sorted by address.
    by_addr: Vec<usize>,
    text: Option<(u64, u64)>,
}

impl KallsymsIndex {
    /// Parses `/proc/kallsyms` text. Refuses a text whose addresses are all zero:
    /// that is what an unprivileged reader sees (`kptr_restrict`).
    pub fn parse(text: &str) -> Result<KallsymsIndex, RunPreError> {
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
            return Err(RunPreError::Kallsyms("no symbols in the text".into()));
        }
        if syms.iter().all(|s| s.addr == 0) {
            return Err(RunPreError::Kallsyms(
                "every address is zero: kallsyms was read without privilege (kptr_restrict); read it as root".into(),
            ));
        }
        Ok(Self::from_symbols(syms))
    }

    /// From entries in kallsyms order.
    pub fn from_symbols(syms: Vec<Ksym>) -> KallsymsIndex {
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in syms.iter().enumerate() {
            if s.module.is_none() {
                by_name.entry(s.name.clone()).or_default().push(i);
            }
        }
        let mut by_addr: Vec<usize> = (0..syms.len()).collect();
        by_addr.sort_by_key(|&i| (syms[i].addr, i));
        let first = |name: &str| {
            by_name
                .get(name)
                .and_then(|v| v.first())
                .map(|&i| syms[i].addr)
        };
        let text = first(TEXT_START).zip(first(TEXT_END));
        KallsymsIndex {
            syms,
            by_name,
            by_addr,
            text,
        }
    }

    pub fn len(&self) -> usize {
        self.syms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// The vmlinux entries named `name`, in kallsyms order: entry `i` is `sympos`
    /// `i + 1`. Every type counts, as in the livepatch core's own search
    /// (kernel/livepatch/core.c, `klp_find_callback`).
    pub fn named(&self, name: &str) -> impl Iterator<Item = &Ksym> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .map(|&i| &self.syms[i])
    }

    /// The addresses of [`KallsymsIndex::named`], the candidates of a match.
    pub fn candidates(&self, name: &str) -> Vec<u64> {
        self.named(name).map(|s| s.addr).collect()
    }

    /// The entry of `name` at `addr`, if kallsyms has one.
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
";

    #[test]
    fn positions_count_vmlinux_only() {
        let k = KallsymsIndex::parse(TEXT).expect("parses");
        assert_eq!(
            k.candidates("foo"),
            [0xffffffff81001000, 0xffffffff81003000]
        );
        assert_eq!(k.describe(0xffffffff81002010), "bar+0x10");
        assert_eq!(k.describe(0xffffffffc0000004), "foo+0x4");
        assert_eq!(k.next_above(0xffffffff81001000), Some(0xffffffff81002000));
        assert_eq!(k.in_kernel_text(0xffffffff81003000), Some(true));
        assert_eq!(k.in_kernel_text(0xffffffffc0000000), Some(false));
    }

    #[test]
    fn unprivileged_kallsyms_is_refused() {
        let err = KallsymsIndex::parse("0000000000000000 T foo\n0000000000000000 t bar\n")
            .expect_err("all zero");
        assert!(err.to_string().contains("as root"), "{err}");
    }
}
