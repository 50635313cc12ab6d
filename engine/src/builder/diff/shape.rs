//! What an entity is, for comparing: its bytes with every relocated field zeroed,
//! what each relocation refers to (a correlated name, the contents of a string
//! literal, a digest of anonymous data), where it lives, and the special-section
//! entries that point into it.

use std::collections::HashMap;

use kstack_kfacts::elf::Reloc;
use kstack_kfacts::reloc::{field_size, is_pc_relative, pc_relative_slack};
use kstack_kfacts::sections::{ALTINSTR_REPLACEMENT, alt_instr, ddebug};
use kstack_kfacts::symbols::{FENTRY, FENTRY_MAX_RELOC_OFFSET};
use kstack_kfacts::x86;
use object::elf;

use super::SymbolInfo;
use super::entities::{Entity, Kind};
use super::model::{Class, Elf, Piece, Special};
use super::names::normalize_section;

/// What a relocation refers to, as a string that is equal in pre and post exactly
/// when the referent is the same.
pub(super) struct Namer<'a> {
    /// Correlated names of entity symbols; other symbols go by their own name.
    pub(super) names: &'a HashMap<usize, String>,
    /// Whether anonymous sections are identified by their contents (a digest).
    pub(super) digest_anonymous: bool,
}

/// The piece of a section that one entity, or one special entry, occupies: masked
/// bytes and normalised relocations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Shape {
    pub(super) size: u64,
    pub(super) bytes: Vec<u8>,
    pub(super) relocs: Vec<NormRel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct NormRel {
    /// From the start of the piece.
    pub(super) offset: u64,
    pub(super) r_type: elf::RelocationType,
    pub(super) target: String,
    /// The field is the operand of a `call`, `jmp` or `jcc`: the target is a callee.
    pub(super) branch: bool,
}

impl<'d> Elf<'d> {
    pub(super) fn shape(&self, piece: Piece, code: bool, namer: &Namer<'_>) -> Shape {
        let bytes = {
            let start = usize::try_from(piece.offset).unwrap_or(usize::MAX);
            let end = usize::try_from(piece.offset + piece.size).unwrap_or(usize::MAX);
            self.data(piece.section)
                .get(start..end)
                .map(<[u8]>::to_vec)
                .unwrap_or_default()
        };
        let relocs = self.relocs_in(piece.section, piece.offset, piece.offset + piece.size);
        // Instruction boundaries, to tell a callee from data a field refers to.
        let insns = if code && !relocs.is_empty() {
            x86::boundaries(&bytes).0
        } else {
            Vec::new()
        };
        let original = bytes.clone();
        let mut shape = Shape {
            size: piece.size,
            bytes,
            relocs: Vec::new(),
        };
        for rel in relocs {
            let offset = rel.offset - piece.offset;
            let branch = code
                && is_pc_relative(rel.r_type)
                && x86::containing(&insns, offset).is_some_and(|(start, len)| {
                    let insn = &original[start as usize..(start + u64::from(len)) as usize];
                    x86::is_branch_operand(insn, (offset - start) as usize)
                });
            mask(&mut shape.bytes, offset, field_size(rel.r_type));
            shape.relocs.push(NormRel {
                offset,
                r_type: rel.r_type,
                target: self.describe(rel, code, namer),
                branch,
            });
        }
        if code {
            self.add_resolved_references(piece, &mut shape, namer);
        }
        shape
    }

    /// References the assembler resolved itself, with no relocation: from a function
    /// to another function of the same section (`.sched.text` holds many; a call to a
    /// static one among them is resolved at assembly time). Their offsets depend on
    /// the layout of the section, so they are masked and named like relocations.
    fn add_resolved_references(&self, piece: Piece, shape: &mut Shape, namer: &Namer<'_>) {
        for field in self.resolved_fields(piece) {
            let at = piece.offset as i64 + field.target;
            let target = match self.symbol_at(piece.section, at, 0) {
                Some(sym) => {
                    let value = self.sym(sym).value as i64;
                    format!("{}{}", self.name_of(sym, namer), signed_hex(at - value))
                }
                None => format!("{}{}", self.sec(piece.section).name, signed_hex(at)),
            };
            mask(&mut shape.bytes, field.offset, u64::from(field.size));
            shape.relocs.push(NormRel {
                offset: field.offset,
                r_type: elf::R_X86_64_NONE,
                target,
                branch: field.branch,
            });
        }
        shape.relocs.sort();
    }

    /// Names the referent of a relocation: a symbol by its correlated name plus
    /// the addend relative to it, a string literal by its contents.
    fn describe(&self, rel: &Reloc, code: bool, namer: &Namer<'_>) -> String {
        // The place referred to: a PC-relative field in code is relative to its own
        // end, so its addend is 4 short (more if an immediate follows the field).
        let slack = code_slack(rel, code);
        let at = rel.addend + slack;
        let Some(sym_index) = rel.symbol() else {
            return format!("absolute{}", signed_hex(at));
        };
        let sym = &self.sym(sym_index);
        // A string literal reached through a local label (`.LC5`, as GCC emits for
        // the file names of `__bug_table` entries): its contents, not its label,
        // whose number shifts with every other literal of the file.
        if let Some(section) = sym.section
            && self.class(section) == Class::Strings
            && let Some(text) = c_string_at(self.data(section), sym.value as i64 + at)
        {
            return format!("\"{}\"", without_line_numbers(text).escape_ascii());
        }
        let (true, Some(section)) = (sym.is_section(), sym.section) else {
            return format!("{}{}", self.name_of(sym_index, namer), signed_hex(at));
        };
        // A reference through a section symbol: what is at that place?
        let sec = self.sec(section);
        let data = self.data(section);
        if self.class(section) == Class::Strings
            && let Some(text) = c_string_at(data, at)
        {
            return format!("\"{}\"", without_line_numbers(text).escape_ascii());
        }
        if let Some(target) = self.symbol_at(section, at, slack) {
            let relative = at - self.sym(target).value as i64;
            return format!("{}{}", self.name_of(target, namer), signed_hex(relative));
        }
        if let (Some(size), Ok(start)) = (self.info[section].merge_entsize, usize::try_from(at)) {
            let end = start.saturating_add(size as usize);
            if let Some(bytes) = data.get(start..end) {
                return format!("constant {}", hex(bytes));
            }
        }
        let name = normalize_section(&sec.name);
        if !namer.digest_anonymous {
            return format!("{name}{}", signed_hex(at));
        }
        let inner = Namer {
            names: namer.names,
            digest_anonymous: false,
        };
        if sec.is_text() {
            // Anonymous code: the snippets that `static_cpu_has()` puts in
            // `.altinstr_aux`, each entered from one place and jumping back into
            // its function. A snippet runs from where it is entered to where the
            // next one is, and is what it contains, wherever it sits.
            let start = u64::try_from(at).unwrap_or(0).min(sec.size);
            let end = self.info[section]
                .entry_points
                .iter()
                .copied()
                .find(|&p| p > at)
                .map_or(sec.size, |p| u64::try_from(p).unwrap_or(sec.size));
            let snippet = Piece {
                section,
                offset: start,
                size: end.max(start) - start,
            };
            let digest = fnv1a(format!("{:?}", self.shape(snippet, true, &inner)).as_bytes());
            return format!("{name} snippet [{digest:08x}]");
        }
        // Anonymous data: by offset, and by the whole section's contents so that
        // any change in it counts.
        let whole = Piece {
            section,
            offset: 0,
            size: sec.size,
        };
        let digest = fnv1a(format!("{:?}", self.shape(whole, false, &inner)).as_bytes());
        format!("{name}{} [{digest:08x}]", signed_hex(at))
    }

    pub(super) fn name_of(&self, sym: usize, namer: &Namer<'_>) -> String {
        match namer.names.get(&sym) {
            Some(name) => name.clone(),
            None => self.sym(sym).name.clone(),
        }
    }

    /// The function's or object's own piece of its section.
    pub(super) fn piece(&self, sym: usize) -> Piece {
        let s = &self.sym(sym);
        Piece {
            section: s.section.unwrap_or(0),
            offset: s.value,
            size: s.size,
        }
    }

    /// The special entries that point into a symbol's piece. An entry at the very
    /// end belongs to it too (the ORC terminator) unless another symbol starts there.
    fn specials_of(&self, sym: usize) -> Vec<&Special> {
        let s = &self.sym(sym);
        let Some(section) = s.section else {
            return Vec::new();
        };
        let end = s.value + s.size;
        let next_starts_at_end = self.by_section[section]
            .iter()
            .any(|&i| i != sym && self.sym(i).value == end);
        self.specials_by_target
            .get(&section)
            .into_iter()
            .flatten()
            .map(|&i| &self.specials[i])
            .filter(|sp| {
                (s.value..end).contains(&sp.target) || (sp.target == end && !next_starts_at_end)
            })
            .collect()
    }

    pub(super) fn has_fentry(&self, sym: usize) -> bool {
        let s = &self.sym(sym);
        let Some(section) = s.section else {
            return false;
        };
        self.relocs_in(section, s.value, s.value + FENTRY_MAX_RELOC_OFFSET + 1)
            .iter()
            .any(|r| {
                is_pc_relative(r.r_type) && r.symbol().is_some_and(|i| self.sym(i).name == FENTRY)
            })
    }

    /// Whether relocation `rel`, in the code of function `caller`, is the operand of a
    /// direct call or jump to offset `start` of its target's section.
    pub(super) fn is_call_to(&self, rel: &Reloc, caller: usize, start: u64) -> bool {
        let Some(sym) = rel.symbol().map(|i| self.sym(i)) else {
            return false;
        };
        let base = if sym.is_section() {
            0
        } else {
            sym.value as i64
        };
        if base + rel.addend + code_slack(rel, true) != start as i64 {
            return false;
        }
        let piece = self.piece(caller);
        let data = self.data(piece.section);
        let Some(bytes) = data.get(piece.offset as usize..(piece.offset + piece.size) as usize)
        else {
            return false;
        };
        let (insns, _) = x86::boundaries(bytes);
        let offset = rel.offset - piece.offset;
        x86::containing(&insns, offset).is_some_and(|(at, len)| {
            let insn = &bytes[at as usize..(at + u64::from(len)) as usize];
            x86::is_branch_operand(insn, (offset - at) as usize)
        })
    }

    /// The PC-relative fields of code `piece` that reach outside it with no
    /// relocation: the assembler resolved them within the section. Offsets and
    /// targets are relative to the piece.
    pub(super) fn resolved_fields(&self, piece: Piece) -> Vec<x86::PcField> {
        let data = self.data(piece.section);
        let Some(bytes) = data.get(piece.offset as usize..(piece.offset + piece.size) as usize)
        else {
            return Vec::new();
        };
        let relocated: Vec<u64> = self
            .relocs_in(piece.section, piece.offset, piece.offset + piece.size)
            .iter()
            .map(|r| r.offset - piece.offset)
            .collect();
        x86::pc_relative_fields(bytes)
            .unwrap_or_default()
            .into_iter()
            .filter(|f| !relocated.contains(&f.offset))
            .filter(|f| !(0..piece.size as i64).contains(&f.target))
            .collect()
    }

    /// The symbol that a relocation refers to, through a section symbol if need be.
    pub(super) fn referent(&self, rel: &Reloc, code: bool) -> Option<usize> {
        let sym = self.sym(rel.symbol()?);
        match (sym.is_section(), sym.section) {
            (true, Some(section)) => {
                let slack = code_slack(rel, code);
                self.symbol_at(section, rel.addend + slack, slack)
            }
            _ => rel.symbol(),
        }
    }
}

/// A string literal with the line numbers that `__FILE__ ":" __LINE__` puts after a
/// source file's name (`fs/dcache.c:2930`, as FORTIFY_SOURCE's field-spanning checks
/// and many messages embed them) replaced by `#`: a line that moved is no change,
/// as for a WARN's line in `__bug_table`.
fn without_line_numbers(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        out.push(text[i]);
        let after_source = text[i] == b':'
            && i >= 2
            && text[i - 2] == b'.'
            && matches!(text[i - 1], b'c' | b'h' | b'S');
        i += 1;
        if after_source && text.get(i).is_some_and(u8::is_ascii_digit) {
            while text.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            out.push(b'#');
        }
    }
    out
}

/// How far beyond the addend the place a relocated field means lies: for a
/// PC-relative field in code, the field's width (the addend is relative to the
/// field's end).
fn code_slack(rel: &Reloc, code: bool) -> i64 {
    if code {
        pc_relative_slack(rel.r_type).unwrap_or(0)
    } else {
        0
    }
}

pub(super) fn mask(bytes: &mut [u8], offset: u64, size: u64) {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let end = usize::try_from(offset + size)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    bytes[start..end].fill(0);
}

fn c_string_at(data: &[u8], at: i64) -> Option<&[u8]> {
    let rest = data.get(usize::try_from(at).ok()?..)?;
    let len = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..len])
}

fn signed_hex(value: i64) -> String {
    match value {
        0 => String::new(),
        v if v < 0 => format!("-{:#x}", v.unsigned_abs()),
        v => format!("+{v:#x}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// FNV-1a, 32 bits: a digest that is the same in every run and Rust version, for
/// reasons that the snapshots keep.
pub(super) fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h: u32, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Everything the comparison of one entity looks at.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct Fingerprint {
    /// Where the entity lives, beyond its own name: `.sched.text`, `.bss`, ...
    pub(super) placement: String,
    pub(super) main: Shape,
    pub(super) parts: Vec<Shape>,
    /// The special-section entries that point into the function, sorted.
    pub(super) specials: Vec<EntryPrint>,
}

/// One special-section entry as the comparison sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct EntryPrint {
    pub(super) section: String,
    /// 0: the function itself, i: its cold part i.
    pub(super) piece: usize,
    /// Where the entry points, from the start of that piece.
    pub(super) at: u64,
    /// The entry, then what it drags along.
    pub(super) shapes: Vec<Shape>,
}

impl<'d> Elf<'d> {
    pub(super) fn info(&self, sym: usize) -> SymbolInfo {
        let s = &self.sym(sym);
        SymbolInfo {
            name: s.name.clone(),
            section: s
                .section
                .map(|i| self.sec(i).name.clone())
                .unwrap_or_default(),
            local: s.is_local(),
            weak: s.is_weak(),
            size: s.size,
        }
    }

    pub(super) fn fingerprint(&self, e: &Entity, namer: &Namer<'_>) -> Fingerprint {
        let code = e.kind == Kind::Function;
        let mut main = self.shape(self.piece(e.sym), code, namer);
        let section = self.sym(e.sym).section.map(|s| self.sec(s));
        if section.is_some_and(|s| s.name == ddebug::SECTION) {
            mask_ddebug_lineno(&mut main.bytes);
        }
        let mut specials = Vec::new();
        for (piece, &sym) in std::iter::once(&e.sym).chain(&e.parts).enumerate() {
            let start = self.sym(sym).value;
            for special in self.specials_of(sym) {
                let mut shapes: Vec<Shape> = special
                    .parts
                    .iter()
                    .map(|&piece| {
                        let code = self.class(piece.section) == Class::Special
                            && self.sec(piece.section).name == ALTINSTR_REPLACEMENT;
                        self.shape(piece, code, namer)
                    })
                    .collect();
                let section = self.sec(special.parts[0].section).name.clone();
                if let Some(entry) = shapes.first_mut() {
                    for &(offset, size) in special.ignored {
                        mask(&mut entry.bytes, offset, size);
                    }
                    if section == alt_instr::SECTION {
                        name_replacement(entry);
                    }
                }
                specials.push(EntryPrint {
                    section,
                    piece,
                    at: special.target - start,
                    shapes,
                });
            }
        }
        specials.sort();
        Fingerprint {
            placement: section
                .map(|s| placement(&s.name, &self.sym(e.sym).name, s.is_nobits()))
                .unwrap_or_default(),
            main,
            parts: e
                .parts
                .iter()
                .map(|&p| self.shape(self.piece(p), true, namer))
                .collect(),
            specials,
        }
    }
}

/// A section name with the symbol's own name taken out: `.text.foo` → `.text.*`,
/// `.bss.counter.3` → `.bss.*`, `.sched.text` stays; `nobits` as `(nobits)`.
fn placement(section: &str, symbol: &str, nobits: bool) -> String {
    let mut out = match section.strip_suffix(symbol) {
        Some(prefix) if prefix.ends_with('.') => format!("{prefix}*"),
        _ => normalize_section(section),
    };
    if nobits {
        out.push_str(" (nobits)");
    }
    out
}

impl PartialOrd for Shape {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Shape {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.size, &self.bytes, &self.relocs).cmp(&(other.size, &other.bytes, &other.relocs))
    }
}

/// An `.altinstructions` entry refers to its replacement instructions, which the
/// entry's next part holds and compares by contents (none when the replacement
/// is empty). Named by place, the reference would take in whatever replacement
/// follows: `static_cpu_has()` leaves an empty one, which starts where the next
/// function's replacement starts, and that function's change is not this one's.
fn name_replacement(entry: &mut Shape) {
    for rel in &mut entry.relocs {
        if rel.offset == alt_instr::REPL_OFFSET {
            rel.target = ALTINSTR_REPLACEMENT.to_owned();
        }
    }
}

fn mask_ddebug_lineno(bytes: &mut [u8]) {
    let Some(word) = bytes.get_mut(ddebug::LINENO_OFFSET..ddebug::LINENO_OFFSET + 4) else {
        return;
    };
    let mut value = [0u8; 4];
    value.copy_from_slice(word);
    let masked = u32::from_le_bytes(value) & !ddebug::LINENO_MASK;
    word.copy_from_slice(&masked.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_hides_the_symbols_own_name() {
        assert_eq!(placement(".text.foo", "foo", false), ".text.*");
        assert_eq!(
            placement(".text.unlikely.foo", "foo", false),
            ".text.unlikely.*"
        );
        assert_eq!(
            placement(".bss.count.3", "count.3", true),
            ".bss.* (nobits)"
        );
        assert_eq!(placement(".sched.text", "schedule", false), ".sched.text");
        assert_eq!(
            placement(".data..once", "__already_done.3", false),
            ".data..once"
        );
        assert_eq!(normalize_section(".rodata.__func__.12"), ".rodata.__func__");
    }

    #[test]
    fn line_numbers_after_source_files_are_masked_in_strings() {
        assert_eq!(
            without_line_numbers(b"field \"dentry->d_iname\" at fs/dcache.c:2930"),
            b"field \"dentry->d_iname\" at fs/dcache.c:#"
        );
        assert_eq!(
            without_line_numbers(b"a.h:12 and x:3 c:4"),
            b"a.h:# and x:3 c:4"
        );
        assert_eq!(without_line_numbers(b"version 1.2"), b"version 1.2");
    }

    #[test]
    fn ddebug_line_numbers_are_masked() {
        let mut bytes = vec![0u8; 40];
        bytes[32..36].copy_from_slice(&(0x00ab_c000u32 | 1234).to_le_bytes());
        mask_ddebug_lineno(&mut bytes);
        let word = u32::from_le_bytes([bytes[32], bytes[33], bytes[34], bytes[35]]);
        assert_eq!(word, 0x00ab_c000 & !ddebug::LINENO_MASK);
    }
}
