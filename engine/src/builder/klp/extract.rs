//! What the output object carries: the requested functions, then, until nothing
//! changes, what they need (their `.cold` parts, strings and read-only data of their
//! own, `static_cpu_has()` snippets, the replacement code of their alternatives) and
//! the special-section entries that describe them. Also where each relocation of
//! carried code points, and how the target kernel resolves what is not carried.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kstack_kfacts::elf::{RelObject, Reloc, Symbol};
use kstack_kfacts::livepatch::{VMLINUX, check_objname};
use kstack_kfacts::reloc::is_pc_relative;
use kstack_kfacts::sections::{
    self, ALTINSTR_AUX, DEBUG_PREFIX, DISCARD_PREFIX, EntryKind, SPECIAL_SECTIONS, SpecialSection,
    alt_instr, has_prefix,
};
use kstack_kfacts::symbols::PREFIX_SYMBOL_PREFIX;
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
    /// Functions (and their `.cold` parts) of a section they share with other code
    /// (`.sched.text`, `.spinlock.text`): each range, sorted, becomes an output
    /// section of its own.
    Functions(Vec<(u64, u64)>),
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
    /// Where each requested function starts, (input section, offset) → index into
    /// `request.functions`.
    pub(super) function_starts: BTreeMap<(usize, u64), usize>,
    /// Post names of the carried functions, for finding their `.cold` parts.
    function_names: BTreeSet<String>,
    /// Every relocation source, per target section: (source section, offset).
    referrers: HashMap<usize, Vec<(usize, u64)>>,
    resolved: BTreeMap<(String, bool), Resolution>,
    /// Per section carried as [`Carried::Functions`]: the references of carried code
    /// to other code of the section that the assembler resolved itself (a call to a
    /// static function of the same section has no relocation), as relocations.
    implicit: HashMap<usize, Vec<Reloc>>,
    /// What the output leaves out on purpose, for the build's notes.
    pub(super) notes: BTreeSet<String>,
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
        function_starts: BTreeMap::new(),
        function_names: BTreeSet::new(),
        referrers: HashMap::new(),
        resolved: BTreeMap::new(),
        implicit: HashMap::new(),
        notes: BTreeSet::new(),
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
            if has_prefix(&section.name, &[DEBUG_PREFIX, DISCARD_PREFIX]) {
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
            if !section.is_text() || s.size == 0 {
                return Err(KlpError::NotBundled {
                    tu: self.tu(),
                    name: f.post_name.clone(),
                    section: section.name.clone(),
                });
            }
            // Aliases (SYSCALL_DEFINE's `__x64_sys_*` for `__do_sys_*`) are the same code.
            let shared = s.value != 0
                || section.symbols.iter().any(|&o| {
                    let other = &self.input.symbols[o];
                    o != sym && other.is_func() && (other.value, other.size) != (s.value, s.size)
                });
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
            // 6.12's padding before the function comes along, so that call-depth
            // tracking finds no-ops there for the function's call thunk.
            let start = s.value - self.padding_before(sec, sym);
            self.function_starts.insert((sec, start), i);
            self.function_names.insert(f.post_name.clone());
            if shared {
                let end = s.end();
                self.add_function_range(sec, start, end)?;
            } else {
                self.carried.insert(sec, Carried::Whole);
            }
        }
        // New global data: another file of the patch may be its only user.
        let globals: Vec<usize> = (1..self.input.symbols.len())
            .filter(|&i| {
                let s = &self.input.symbols[i];
                s.is_object()
                    && s.is_defined()
                    && !s.is_local()
                    && self.request.new_data.contains(&s.name)
            })
            .collect();
        for object in globals {
            self.carry_data_object(object);
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
            for special in self.carried_specials() {
                let Some(sec) = self.section_named(special.name) else {
                    continue;
                };
                let stride = self.entry_size(sec, special)?;
                for (start, _) in self.kept_groups(sec, special)? {
                    let relocs = self.group_relocs(sec, start, stride);
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

    /// The special sections whose entries the patch carries: all of them, but for
    /// those objtool writes when it runs on the linked module.
    pub(super) fn carried_specials(&self) -> Vec<&'static SpecialSection> {
        SPECIAL_SECTIONS
            .iter()
            .filter(|s| !self.left_to_objtool(s.name))
            .collect()
    }

    /// Whether section `name` is objtool's and objtool runs on the linked module.
    pub(super) fn left_to_objtool(&self, name: &str) -> bool {
        self.request.objtool_at_link && sections::OBJTOOL_SECTIONS.contains(&name)
    }

    pub(super) fn section_named(&self, name: &str) -> Option<usize> {
        self.input.section_named(name)
    }

    /// The relocations inside what is carried of `sec`.
    pub(super) fn carried_relocs(&self, sec: usize) -> Vec<Reloc> {
        let relocs = &self.input.sections[sec].relocs;
        match self.carried.get(&sec) {
            Some(Carried::Whole) => relocs.clone(),
            Some(Carried::Slices(slices) | Carried::Functions(slices)) => relocs
                .iter()
                .chain(self.implicit.get(&sec).into_iter().flatten())
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
    /// section counts (objtool's ORC terminator sits there); the end of a snippet or
    /// of a function in a shared section does not, since what is there belongs to
    /// the next one.
    fn is_carried(&self, sec: usize, offset: i64) -> bool {
        let size = self.input.sections[sec].size as i64;
        match self.carried.get(&sec) {
            Some(Carried::Whole) => 0 <= offset && offset <= size,
            Some(Carried::Functions(ranges)) => ranges
                .iter()
                .any(|&(a, b)| a as i64 <= offset && (offset < b as i64 || offset == size)),
            Some(Carried::Slices(slices)) => slices
                .iter()
                .any(|&(a, b)| a as i64 <= offset && offset < b as i64),
            None => false,
        }
    }

    /// The size of the entries of special section `sec` in this object (the layout
    /// of `.altinstructions` depends on the kernel version).
    pub(super) fn entry_size(&self, sec: usize, special: &SpecialSection) -> Result<u64> {
        let section = &self.input.sections[sec];
        let offsets: Vec<u64> = section.relocs.iter().map(|r| r.offset).collect();
        special
            .entry_size_in(section.size, &offsets)
            .ok_or_else(|| {
                malformed(
                    &format!("{}: {}", self.unit, section.name),
                    format!(
                        "its {} relocations in {:#x} bytes fit no entry layout of the kernel \
                         versions kstack knows (6.1, 6.12)",
                        offsets.len(),
                        section.size
                    ),
                )
            })
    }

    /// The layout of the object's `.altinstructions` entries (section `sec`).
    pub(super) fn alt_layout(&self, sec: usize) -> Result<alt_instr::Layout> {
        let section = &self.input.sections[sec];
        section.alt_layout().ok_or_else(|| {
            malformed(
                &format!("{}: {}", self.unit, section.name),
                "its entries fit no layout of the kernel versions kstack knows (6.1, 6.12)",
            )
        })
    }

    /// The groups (entries) of a special section whose owner, the code its first field
    /// points to, is carried: (offset, length).
    pub(super) fn kept_groups(
        &mut self,
        sec: usize,
        special: &SpecialSection,
    ) -> Result<Vec<(u64, u64)>> {
        let stride = self.entry_size(sec, special)?;
        let section = &self.input.sections[sec];
        let what = format!("{}: {}", self.unit, section.name);
        if section.entsize != 0 && section.entsize != stride {
            return Err(malformed(
                &what,
                format!(
                    "entries of {} bytes, kstack expects {} (a different kernel configuration?)",
                    section.entsize, stride
                ),
            ));
        }
        let size = section.size;
        let mut kept = Vec::new();
        let mut start = 0;
        while start < size {
            let len = stride.min(size - start);
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
                            stride
                        ),
                    )
                })?;
            if let Some(t) = self.input.symbols[owner.sym].section {
                let position = self.input.symbols[owner.sym].value as i64 + owner.addend;
                if self.input.sections[t].is_text() && self.is_carried(t, position) {
                    kept.push((start, len));
                }
            }
            start += stride;
        }
        kept.retain(|&(start, _)| !self.is_module_own_key_site(sec, special, start));
        Ok(kept)
    }

    /// Whether the entry at `start` of a module's jump table or static call sites is
    /// keyed by the target module's own dynamic-debug descriptor (`pr_debug`,
    /// `dev_dbg`: `__UNIQUE_ID_ddebugN`) or tracepoint (`__tracepoint_X`, and its
    /// static call `__SCK__tp_func_X`): a livepatch relocation cannot reach those
    /// from a special section (see [`KlpError::ModuleSpecialRelocation`]). Such an
    /// entry is left out, as kpatch does for debug sites: the site keeps its compiled
    /// default (a jump over the message, over the trace call; the call itself goes
    /// through the module's static call trampoline), so while patched the functions'
    /// debug messages and that tracepoint stay off. A descriptor the patch adds lives
    /// in the patch module with its key: its jump label is the patch's own.
    fn is_module_own_key_site(&mut self, sec: usize, special: &SpecialSection, start: u64) -> bool {
        use kstack_kfacts::sections::{jump_entry, static_call_site};
        if self.request.objname == VMLINUX {
            return false;
        }
        let key_offset = match special.name {
            n if n == jump_entry::SECTION => jump_entry::KEY,
            n if n == static_call_site::SECTION => static_call_site::KEY,
            _ => return false,
        };
        let section = &self.input.sections[sec];
        let Some(key) = section
            .relocs
            .iter()
            .find(|r| r.offset == start + key_offset)
        else {
            return false;
        };
        let (key_sym, addend) = (key.sym, key.addend);
        let symbol = &self.input.symbols[key_sym];
        // The key's address carries flags in its low bits; a section symbol names
        // the descriptor through what is defined there.
        let name = match symbol.section {
            Some(t) if symbol.is_section() => self
                .input
                .symbol_at(t, (symbol.value as i64 + addend) & !3)
                .map(|named| self.input.symbols[named].name.clone()),
            _ => Some(symbol.name.clone()),
        };
        let Some(name) = name else {
            return false;
        };
        if name.starts_with("__UNIQUE_ID_ddebug") && !self.request.new_data.contains(&name) {
            self.notes.insert(format!(
                "{}: the dynamic debug messages (pr_debug) of the patched functions stay off \
                 while patched: their keys belong to module {}, which a jump label of a \
                 livepatch cannot refer to",
                self.unit, self.request.objname
            ));
            return true;
        }
        let Some(tracepoint) = name
            .strip_prefix("__tracepoint_")
            .or_else(|| name.strip_prefix("__SCK__tp_func_"))
        else {
            return false;
        };
        let objname = self.request.objname;
        let own = matches!(
            self.resolve(&name, false, &format!("{}+{start:#x}", special.name)),
            Ok(Resolution::Livepatch { ref object, .. }) if object == objname
        );
        if own {
            self.notes.insert(format!(
                "{}: tracepoint {tracepoint} stays off in the patched functions while they \
                 are patched: its key belongs to module {objname}, which a jump label or \
                 static call site of a livepatch cannot refer to",
                self.unit
            ));
        }
        own
    }

    /// Carries the replacement code of the alternative at `start` of `.altinstructions`.
    fn include_replacement(&mut self, sec: usize, start: u64) -> Result<bool> {
        let layout = self.alt_layout(sec)?;
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
                .get((start + layout.replacementlen) as usize)
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

    /// The bytes of `CONFIG_CALL_PADDING` before function `sym`: [`x86::FUNCTION_PADDING`]
    /// no-ops right before it in its section that no other code claims (the
    /// function's own `__pfx_` symbol aside), else 0 (6.1 has none).
    fn padding_before(&self, sec: usize, sym: usize) -> u64 {
        let s = &self.input.symbols[sym];
        let section = &self.input.sections[sec];
        let Some(start) = s.value.checked_sub(x86::FUNCTION_PADDING) else {
            return 0;
        };
        let nops = section
            .data
            .get(start as usize..s.value as usize)
            .is_some_and(|b| b.iter().all(|&x| x == x86::NOP1));
        let claimed = section.symbols.iter().any(|&o| {
            let other = &self.input.symbols[o];
            o != sym
                && other.is_func()
                && !other.name.starts_with(PREFIX_SYMBOL_PREFIX)
                && other.value < s.value
                && other.end() > start
        });
        if nops && !claimed {
            x86::FUNCTION_PADDING
        } else {
            0
        }
    }

    /// Carries a function, or a `.cold` part, of a shared section as a range of its own.
    fn add_function_range(&mut self, sec: usize, start: u64, end: u64) -> Result<bool> {
        if let Some(Carried::Functions(ranges)) = self.carried.get(&sec)
            && ranges.contains(&(start, end))
        {
            return Ok(false);
        }
        let implicit = self.implicit_relocs(sec, start, end)?;
        let entry = self
            .carried
            .entry(sec)
            .or_insert_with(|| Carried::Functions(Vec::new()));
        let Carried::Functions(ranges) = entry else {
            return Ok(false);
        };
        ranges.push((start, end));
        ranges.sort_unstable();
        self.implicit.entry(sec).or_default().extend(implicit);
        Ok(true)
    }

    /// The PC-relative references from `start..end` of code section `sec` to the rest
    /// of the section that have no relocation, as relocations against the function
    /// they reach. A short (one-byte) one cannot be relocated: refused.
    fn implicit_relocs(&self, sec: usize, start: u64, end: u64) -> Result<Vec<Reloc>> {
        let section = &self.input.sections[sec];
        let code = &section.data[start as usize..end as usize];
        let fields = x86::pc_relative_fields(code).map_err(|at| KlpError::Ambiguous {
            tu: self.tu(),
            place: self.input.place(sec, start + at),
            section: section.name.clone(),
            detail: "not a valid instruction, so its references to the rest of the \
                     section cannot be found"
                .into(),
        })?;
        let relocated: BTreeSet<u64> = section
            .relocs_in(start, end)
            .iter()
            .map(|r| r.offset)
            .collect();
        let mut out = Vec::new();
        for field in fields {
            let offset = start + field.offset;
            let target = start as i64 + field.target;
            if relocated.contains(&offset) || (start as i64..end as i64).contains(&target) {
                continue;
            }
            let place = self.input.place(sec, offset);
            let Some(sym) = self
                .input
                .symbol_at(sec, target)
                .filter(|&s| !self.input.symbols[s].name.is_empty())
            else {
                return Err(KlpError::NoSymbol {
                    tu: self.tu(),
                    place,
                    section: section.name.clone(),
                    offset: target,
                });
            };
            if field.size != 4 {
                return Err(KlpError::ShortReference {
                    tu: self.tu(),
                    place,
                    symbol: self.input.symbols[sym].name.clone(),
                    section: section.name.clone(),
                });
            }
            let value = self.input.symbols[sym].value as i64;
            out.push(Reloc {
                offset,
                sym,
                r_type: elf::R_X86_64_PC32,
                addend: target - value - (field.insn_end - field.offset) as i64,
            });
        }
        Ok(out)
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
        if let Some(carried) = self.carry_new_data(sec, rel, t)? {
            return Ok(carried);
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
            // The `.cold` part of a carried function in a shared section.
            let at = if sym.is_section() {
                self.exact_anchor(sec, rel, t)?
            } else {
                sym.value as i64
            };
            if let Some(part) = self.input.symbol_at(t, at)
                && self.is_cold_of_carried(&self.input.symbols[part].name)
            {
                let part = &self.input.symbols[part];
                let (start, end) = (part.value, part.end());
                return self.add_function_range(t, start, end);
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

    /// Carries the data object a reference means when the patch brings its own copy
    /// of it ([`ExtractRequest::new_data`]); `None` when it is not such an object.
    fn carry_new_data(&mut self, sec: usize, rel: Reloc, t: usize) -> Result<Option<bool>> {
        if self.request.new_data.is_empty() || self.input.sections[t].is_text() {
            return Ok(None);
        }
        let sym = &self.input.symbols[rel.sym];
        let at = if sym.is_section() {
            self.exact_anchor(sec, rel, t)?
        } else {
            sym.value as i64
        };
        let Some(object) = self.input.symbol_at(t, at) else {
            return Ok(None);
        };
        if !self
            .request
            .new_data
            .contains(&self.input.symbols[object].name)
        {
            return Ok(None);
        }
        Ok(Some(self.carry_data_object(object)))
    }

    /// Carries one data object: its whole section when the object is all of it
    /// (`-fdata-sections`), else its bytes.
    pub(super) fn carry_data_object(&mut self, object: usize) -> bool {
        let sym = &self.input.symbols[object];
        let Some(t) = sym.section else {
            return false;
        };
        let section = &self.input.sections[t];
        let alone = section.symbols.iter().all(|&s| {
            let other = &self.input.symbols[s];
            (other.value, other.size) == (sym.value, sym.size)
        });
        if alone && sym.value == 0 && sym.size == section.size {
            if matches!(self.carried.get(&t), Some(Carried::Whole)) {
                return false;
            }
            self.carried.insert(t, Carried::Whole);
            return true;
        }
        let (start, end) = (sym.value, sym.value + sym.size.max(1));
        self.add_slice(t, start, end)
    }

    /// Whether code section `t` is the `.cold` part of a carried function.
    fn is_cold_part(&self, t: usize) -> bool {
        let funcs: Vec<&Symbol> = self.input.sections[t]
            .symbols
            .iter()
            .map(|&s| &self.input.symbols[s])
            .filter(|s| s.is_func())
            .collect();
        !funcs.is_empty() && funcs.iter().all(|f| self.is_cold_of_carried(&f.name))
    }

    /// Whether `name` is a `.cold` part (`foo.cold`, `foo.cold.3`) of a carried function.
    fn is_cold_of_carried(&self, name: &str) -> bool {
        name.split_once(".cold").is_some_and(|(parent, rest)| {
            (rest.is_empty() || rest.starts_with('.')) && self.function_names.contains(parent)
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
                        Some(Carried::Slices(slices) | Carried::Functions(slices)) => {
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

    /// The running kernel's name of local symbol `name` of the post object (defined
    /// in section `section`, if in one): the pre name the differ paired it with
    /// where the change renumbered it. A reference to writable data the differ could
    /// only guess the pairing of is refused.
    pub(super) fn kernel_name(
        &self,
        name: &str,
        section: Option<usize>,
        place: &str,
    ) -> Result<String> {
        let writable = section.is_some_and(|t| {
            let s = &self.input.sections[t];
            s.has(object::elf::SHF_WRITE)
        });
        if writable && self.request.indistinct.contains(name) {
            return Err(KlpError::IndistinctStatic {
                tu: self.tu(),
                place: place.to_owned(),
                symbol: name.to_owned(),
                base: crate::builder::diff::normalize_name(name),
            });
        }
        Ok(self
            .request
            .kernel_names
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_owned()))
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
