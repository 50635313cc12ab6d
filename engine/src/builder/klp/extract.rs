//! What the output object carries: the requested functions, then, until nothing
//! changes, what they need (their `.cold` parts, strings and read-only data of their
//! own, `static_cpu_has()` snippets, the replacement code of their alternatives) and
//! the special-section entries that describe them. Also where each relocation of
//! carried code points, and how the target kernel resolves what is not carried.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kstack_kfacts::elf::{RelObject, Reloc, Symbol};
use kstack_kfacts::livepatch::check_objname;
use kstack_kfacts::reloc::is_pc_relative;
use kstack_kfacts::sections::{
    self, ALTINSTR_AUX, EntryKind, SPECIAL_SECTIONS, SpecialSection, alt_instr,
};
use kstack_kfacts::x86;
use object::elf;

use super::emit::Layout;
use super::{ExtractRequest, Extracted, KlpError, Resolution, Result, malformed, new_symbol_name};
use crate::builder::SymbolResolver;

/// How an included section is carried.
#[derive(Debug, Clone)]
pub(super) enum Carried {
    /// The whole section: a function (with the symbol it gets), its `.cold` part, or
    /// data.
    Whole,
    /// Byte ranges of it (`.altinstr_replacement`, `.altinstr_aux`), sorted, disjoint.
    Slices(Vec<(u64, u64)>),
}

/// The instructions of one code section, as far as they could be decoded.
#[derive(Debug)]
struct Decoded {
    /// (start, length) of each instruction, in order.
    insns: Vec<(u64, u8)>,
    /// Where decoding stopped, if it did not reach the end.
    failure: Option<u64>,
}

/// A relocation's target after translation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Target {
    /// An output section (by index), addend adjusted.
    Internal(usize, i64),
    /// An input symbol the object does not carry, addend relative to it.
    Named(usize, i64),
}

pub(super) struct Extractor<'a, 'd> {
    pub(super) input: RelObject<'d>,
    /// The translation unit's object path, for messages and the resolver.
    pub(super) unit: String,
    pub(super) request: &'a ExtractRequest<'a>,
    resolver: &'a dyn SymbolResolver,
    decoded: HashMap<usize, Decoded>,
    pub(super) carried: BTreeMap<usize, Carried>,
    /// Input section of each requested function → index into `request.functions`.
    pub(super) function_sections: BTreeMap<usize, usize>,
    /// Post names of the carried functions, for finding their `.cold` parts.
    function_names: BTreeSet<String>,
    /// Every relocation source, per target section: (source section, offset).
    referrers: HashMap<usize, Vec<(usize, u64)>>,
    resolved: BTreeMap<(String, bool), Resolution>,
}

/// Writes the output object for `request.functions` of one translation unit.
///
/// References the object does not carry are resolved with `resolver`; the old
/// function of each changed function too, for its `sympos`.
pub fn extract(request: &ExtractRequest<'_>, resolver: &dyn SymbolResolver) -> Result<Extracted> {
    let input = RelObject::parse(request.object).map_err(|source| KlpError::Object {
        what: request.tu.to_owned(),
        source,
    })?;
    check_objname(request.objname).map_err(|reason| KlpError::BadKlpName {
        name: request.objname.to_owned(),
        reason,
    })?;
    let mut ex = Extractor {
        input,
        unit: request.tu.to_owned(),
        request,
        resolver,
        decoded: HashMap::new(),
        carried: BTreeMap::new(),
        function_sections: BTreeMap::new(),
        function_names: BTreeSet::new(),
        referrers: HashMap::new(),
        resolved: BTreeMap::new(),
    };
    ex.index_referrers();
    ex.seed()?;
    ex.discover()?;
    ex.emit()
}

impl Extractor<'_, '_> {
    pub(super) fn tu(&self) -> String {
        self.unit.clone()
    }

    fn index_referrers(&mut self) {
        for (src, section) in self.input.sections.iter().enumerate() {
            if section.name.starts_with(".debug") || section.name.starts_with(".discard") {
                continue;
            }
            for rel in &section.relocs {
                if let Some(t) = self.input.symbols[rel.sym].section
                    && t != src
                {
                    self.referrers.entry(t).or_default().push((src, rel.offset));
                }
            }
        }
    }

    fn seed(&mut self) -> Result<()> {
        let mut names = BTreeSet::new();
        for (i, f) in self.request.functions.iter().enumerate() {
            let sym =
                self.input
                    .function(&f.post_name)
                    .ok_or_else(|| KlpError::NoSuchFunction {
                        tu: self.tu(),
                        name: f.post_name.clone(),
                    })?;
            let s = &self.input.symbols[sym];
            let sec = s.section.expect("functions() only returns defined symbols");
            let section = &self.input.sections[sec];
            // Aliases (SYSCALL_DEFINE's `__x64_sys_*` for `__do_sys_*`) are the same code.
            let others = section.symbols.iter().any(|&o| {
                let other = &self.input.symbols[o];
                o != sym && other.is_func() && (other.value, other.size) != (s.value, s.size)
            });
            if s.value != 0 || others || !section.is_text() {
                return Err(KlpError::NotBundled {
                    tu: self.tu(),
                    name: f.post_name.clone(),
                    section: section.name.clone(),
                });
            }
            if !f.new {
                let symbol = new_symbol_name(&f.old_name)?;
                if !names.insert(symbol.clone()) {
                    return Err(KlpError::BadNewName {
                        old_name: f.old_name.clone(),
                        symbol,
                        reason: "another function of the patch has the same name".into(),
                    });
                }
            }
            self.function_sections.insert(sec, i);
            self.function_names.insert(f.post_name.clone());
            self.carried.insert(sec, Carried::Whole);
        }
        Ok(())
    }

    /// Includes, until nothing changes, everything the carried code needs: `.cold`
    /// parts, strings, read-only data of its own, `static_cpu_has()` snippets, and the
    /// replacement code of its alternatives.
    fn discover(&mut self) -> Result<()> {
        loop {
            let mut changed = false;
            let sources: Vec<(usize, Vec<Reloc>)> = self
                .carried
                .keys()
                .map(|&s| (s, self.carried_relocs(s)))
                .collect();
            for (sec, relocs) in sources {
                for rel in relocs {
                    changed |= self.discover_reference(sec, rel)?;
                }
            }
            for special in SPECIAL_SECTIONS {
                let Some(sec) = self.section_named(special.name) else {
                    continue;
                };
                for (start, _) in self.kept_groups(sec, special)? {
                    let relocs = self.group_relocs(sec, start, special.entry_size);
                    for rel in &relocs {
                        changed |= self.discover_reference(sec, *rel)?;
                    }
                    if special.kind == EntryKind::Alternatives {
                        changed |= self.include_replacement(sec, start)?;
                    }
                }
            }
            if !changed {
                return Ok(());
            }
        }
    }

    pub(super) fn section_named(&self, name: &str) -> Option<usize> {
        self.input.section_named(name)
    }

    /// The relocations inside what is carried of `sec`.
    pub(super) fn carried_relocs(&self, sec: usize) -> Vec<Reloc> {
        let relocs = &self.input.sections[sec].relocs;
        match self.carried.get(&sec) {
            Some(Carried::Whole) => relocs.clone(),
            Some(Carried::Slices(slices)) => relocs
                .iter()
                .filter(|r| slices.iter().any(|&(a, b)| a <= r.offset && r.offset < b))
                .copied()
                .collect(),
            None => Vec::new(),
        }
    }

    pub(super) fn group_relocs(&self, sec: usize, start: u64, stride: u64) -> Vec<Reloc> {
        self.input.sections[sec]
            .relocs
            .iter()
            .filter(|r| start <= r.offset && r.offset < start + stride)
            .copied()
            .collect()
    }

    /// Whether `offset` of input section `sec` lies in what is carried. The end of a
    /// whole function counts (objtool's ORC terminator sits there); the end of a
    /// snippet does not, since what is there belongs to the next snippet.
    fn is_carried(&self, sec: usize, offset: i64) -> bool {
        match self.carried.get(&sec) {
            Some(Carried::Whole) => 0 <= offset && offset <= self.input.sections[sec].size as i64,
            Some(Carried::Slices(slices)) => slices
                .iter()
                .any(|&(a, b)| a as i64 <= offset && offset < b as i64),
            None => false,
        }
    }

    /// The groups (entries) of a special section whose owner, the code its first field
    /// points to, is carried: (offset, length).
    pub(super) fn kept_groups(
        &mut self,
        sec: usize,
        special: &SpecialSection,
    ) -> Result<Vec<(u64, u64)>> {
        let section = &self.input.sections[sec];
        let what = format!("{}: {}", self.unit, section.name);
        if section.entsize != 0 && section.entsize != special.entry_size {
            return Err(malformed(
                &what,
                format!(
                    "entries of {} bytes, kstack expects {} (a different kernel configuration?)",
                    section.entsize, special.entry_size
                ),
            ));
        }
        let size = section.size;
        let mut kept = Vec::new();
        let mut start = 0;
        while start < size {
            let len = special.entry_size.min(size - start);
            let owner = section
                .relocs
                .iter()
                .find(|r| r.offset == start + special.anchor)
                .copied()
                .ok_or_else(|| {
                    malformed(
                        &what,
                        format!(
                            "no relocation at entry offset {start:#x}: the entries are not \
                             {} bytes long (a different kernel configuration?)",
                            special.entry_size
                        ),
                    )
                })?;
            if let Some(t) = self.input.symbols[owner.sym].section {
                let position = self.input.symbols[owner.sym].value as i64 + owner.addend;
                if self.input.sections[t].is_text() && self.is_carried(t, position) {
                    kept.push((start, len));
                }
            }
            start += special.entry_size;
        }
        Ok(kept)
    }

    /// Carries the replacement code of the alternative at `start` of `.altinstructions`.
    fn include_replacement(&mut self, sec: usize, start: u64) -> Result<bool> {
        let section = &self.input.sections[sec];
        let what = format!("{}: {}", self.unit, section.name);
        let repl = section
            .relocs
            .iter()
            .find(|r| r.offset == start + alt_instr::REPL_OFFSET)
            .copied()
            .ok_or_else(|| malformed(&what, format!("entry {start:#x} has no replacement")))?;
        let len = u64::from(
            *section
                .data
                .get((start + alt_instr::REPLACEMENTLEN) as usize)
                .ok_or_else(|| malformed(&what, "truncated entry"))?,
        );
        let sym = &self.input.symbols[repl.sym];
        let Some(t) = sym.section else {
            return Err(malformed(&what, "replacement outside the object"));
        };
        let begin = sym.value as i64 + repl.addend;
        if begin < 0 || (begin as u64 + len) > self.input.sections[t].size {
            return Err(malformed(
                &what,
                format!("replacement at {begin:#x} out of range"),
            ));
        }
        Ok(self.add_slice(t, begin as u64, begin as u64 + len))
    }

    fn add_slice(&mut self, sec: usize, start: u64, end: u64) -> bool {
        let entry = self
            .carried
            .entry(sec)
            .or_insert_with(|| Carried::Slices(Vec::new()));
        let Carried::Slices(slices) = entry else {
            return false;
        };
        if slices.iter().any(|&(a, b)| a <= start && end <= b) {
            return false;
        }
        slices.push((start, end));
        slices.sort_unstable();
        // Merge overlapping (not merely adjacent) ranges, so each byte is copied once.
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for &(a, b) in slices.iter() {
            match merged.last_mut() {
                Some(last) if a < last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *slices = merged;
        true
    }

    /// Follows one relocation of carried code or data, including what it needs.
    fn discover_reference(&mut self, sec: usize, rel: Reloc) -> Result<bool> {
        let sym = self.input.symbols[rel.sym].clone();
        let Some(t) = sym.section else {
            return Ok(false);
        };
        if self
            .carried
            .get(&t)
            .is_some_and(|c| matches!(c, Carried::Whole))
        {
            return Ok(false);
        }
        let target = &self.input.sections[t];
        if target.is_text() {
            if target.name == ALTINSTR_AUX {
                let anchor = self.exact_anchor(sec, rel, t)?;
                let end = self.snippet_end(t, anchor)?;
                return Ok(self.add_slice(t, anchor as u64, end));
            }
            if self.is_cold_part(t) {
                self.carried.insert(t, Carried::Whole);
                return Ok(true);
            }
            return Ok(false);
        }
        let read_only = target.has(elf::SHF_ALLOC) && !target.has(elf::SHF_WRITE);
        if !read_only || sections::is_freed_after_boot(&target.name) {
            return Ok(false);
        }
        if target.has(elf::SHF_MERGE) || self.owns_read_only(t) {
            self.carried.insert(t, Carried::Whole);
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether code section `t` is the `.cold` part of a carried function.
    fn is_cold_part(&self, t: usize) -> bool {
        let funcs: Vec<&Symbol> = self.input.sections[t]
            .symbols
            .iter()
            .map(|&s| &self.input.symbols[s])
            .filter(|s| s.is_func())
            .collect();
        !funcs.is_empty()
            && funcs.iter().all(|f| {
                f.name.split_once(".cold").is_some_and(|(parent, rest)| {
                    (rest.is_empty() || rest.starts_with('.'))
                        && self.function_names.contains(parent)
                })
            })
    }

    /// Whether the read-only data section `t` may be copied into the patch: all its
    /// symbols are local, and either only carried code refers to it or it holds only
    /// compiler-made constants (`CSWTCH.12`, `__func__.3`), whose address nobody
    /// compares. Data shared with code that stays in the kernel is referred to, not
    /// copied, so that its address stays the same.
    fn owns_read_only(&self, t: usize) -> bool {
        let section = &self.input.sections[t];
        if section.sh_type != elf::SHT_PROGBITS.0 || section.is_text() {
            return false;
        }
        let syms: Vec<&Symbol> = section
            .symbols
            .iter()
            .map(|&s| &self.input.symbols[s])
            .collect();
        if syms.iter().any(|s| !s.is_local()) {
            return false;
        }
        if syms
            .iter()
            .all(|s| s.name.is_empty() || s.name.contains('.'))
        {
            return true;
        }
        self.referrers
            .get(&t)
            .into_iter()
            .flatten()
            .all(|&(src, offset)| {
                let name = &self.input.sections[src].name;
                SPECIAL_SECTIONS.iter().any(|s| s.name == name)
                    || match self.carried.get(&src) {
                        Some(Carried::Whole) => true,
                        Some(Carried::Slices(slices)) => {
                            slices.iter().any(|&(a, b)| a <= offset && offset < b)
                        }
                        None => false,
                    }
            })
    }

    /// The end of the `static_cpu_has()` snippet at `start` of `.altinstr_aux`: after
    /// the first instruction that does not fall through.
    fn snippet_end(&self, sec: usize, start: i64) -> Result<u64> {
        let section = &self.input.sections[sec];
        let mut pos = usize::try_from(start).unwrap_or(usize::MAX);
        while pos < section.data.len() {
            let decoded = x86::decode_one(&section.data[pos..], pos as u64).ok_or_else(|| {
                KlpError::Ambiguous {
                    tu: self.tu(),
                    place: self.input.place(sec, pos as u64),
                    section: section.name.clone(),
                    detail: format!("no valid instruction at {pos:#x}"),
                }
            })?;
            pos += decoded.len();
            if x86::stops(&decoded) {
                return Ok(pos as u64);
            }
        }
        Err(malformed(
            &format!("{}: {}", self.unit, section.name),
            format!("snippet at {start:#x} does not end"),
        ))
    }

    fn decoded(&mut self, sec: usize) -> &Decoded {
        let data = self.input.sections[sec].data;
        self.decoded.entry(sec).or_insert_with(|| {
            let (insns, failure) = x86::boundaries(data);
            Decoded { insns, failure }
        })
    }

    /// The distance from a PC-relative relocation in code to the end of its
    /// instruction, which the assembler folded into the addend.
    fn pc_bias(&mut self, sec: usize, offset: u64) -> Result<i64, String> {
        let data = self.input.sections[sec].data;
        let decoded = self.decoded(sec);
        let Some((start, _)) = x86::containing(&decoded.insns, offset) else {
            return Err(match decoded.failure {
                Some(at) => format!("decoding stopped at {at:#x}: not a valid instruction"),
                None => format!("no instruction at {offset:#x}"),
            });
        };
        x86::pc_relative_bias(&data[start as usize..], (offset - start) as usize).ok_or_else(|| {
            format!("the relocated field at {offset:#x} is not a RIP-relative operand")
        })
    }

    /// The possible offsets in the target section that a relocation refers to. One,
    /// unless it is PC-relative in code that could not be decoded: then the
    /// candidates for every immediate size.
    fn anchors(&mut self, sec: usize, rel: Reloc) -> (Vec<i64>, Option<String>) {
        let base = self.input.symbols[rel.sym].value as i64 + rel.addend;
        if !is_pc_relative(rel.r_type) || !self.input.sections[sec].is_text() {
            return (vec![base], None);
        }
        match self.pc_bias(sec, rel.offset) {
            Ok(bias) => (vec![base + bias], None),
            Err(why) => ([4, 5, 6, 8].iter().map(|b| base + b).collect(), Some(why)),
        }
    }

    fn exact_anchor(&mut self, sec: usize, rel: Reloc, target: usize) -> Result<i64> {
        let (anchors, why) = self.anchors(sec, rel);
        match anchors.as_slice() {
            [one] => Ok(*one),
            _ => Err(KlpError::Ambiguous {
                tu: self.tu(),
                place: self.input.place(sec, rel.offset),
                section: self.input.sections[target].name.clone(),
                detail: why.unwrap_or_default(),
            }),
        }
    }

    /// Where a relocation of carried code or data points after extraction.
    pub(super) fn target(&mut self, sec: usize, rel: Reloc, layout: &Layout) -> Result<Target> {
        let sym = self.input.symbols[rel.sym].clone();
        let Some(t) = sym.section else {
            return Ok(Target::Named(rel.sym, rel.addend));
        };
        if !sym.is_section() {
            if let Some((out, shift)) = layout.locate(t, sym.value as i64) {
                return Ok(Target::Internal(out, sym.value as i64 + rel.addend + shift));
            }
            return Ok(Target::Named(rel.sym, rel.addend));
        }
        // A section symbol: find the object that the reference means.
        let (anchors, why) = self.anchors(sec, rel);
        let mut outcomes = BTreeSet::new();
        for anchor in anchors {
            let outcome = if let Some((out, shift)) = layout.locate(t, anchor) {
                Target::Internal(out, sym.value as i64 + rel.addend + shift)
            } else if let Some(named) = self.input.symbol_at(t, anchor) {
                let named_value = self.input.symbols[named].value as i64;
                Target::Named(named, sym.value as i64 + rel.addend - named_value)
            } else {
                if why.is_some() {
                    continue;
                }
                return Err(KlpError::NoSymbol {
                    tu: self.tu(),
                    place: self.input.place(sec, rel.offset),
                    section: self.input.sections[t].name.clone(),
                    offset: anchor,
                });
            };
            outcomes.insert(outcome);
        }
        let mut outcomes = outcomes.into_iter();
        match (outcomes.next(), outcomes.next()) {
            (Some(one), None) => Ok(one),
            _ => Err(KlpError::Ambiguous {
                tu: self.tu(),
                place: self.input.place(sec, rel.offset),
                section: self.input.sections[t].name.clone(),
                detail: why.unwrap_or_default(),
            }),
        }
    }

    pub(super) fn resolve(&mut self, name: &str, local: bool, place: &str) -> Result<Resolution> {
        let key = (name.to_owned(), local);
        if let Some(r) = self.resolved.get(&key) {
            return Ok(r.clone());
        }
        let r = self
            .resolver
            .resolve(self.request.objname, name, self.request.tu, local)
            .map_err(|source| KlpError::Resolve {
                tu: self.tu(),
                place: place.to_owned(),
                symbol: name.to_owned(),
                source: Box::new(source),
            })?;
        self.resolved.insert(key, r.clone());
        Ok(r)
    }
}
