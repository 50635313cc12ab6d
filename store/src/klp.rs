//! Which functions a livepatch module replaces, read from its `klp_func` tables.
//!
//! A livepatch module describes itself with `struct klp_patch` → array of
//! `struct klp_object` (an object name, NULL for vmlinux, and its array of
//! `struct klp_func`) → `old_name` / `new_func` / `old_sympos`. In a relocatable
//! `.ko` those pointers are relocations, so the tables can be read without knowing
//! the structs' sizes: a `klp_func` is a relocation to a C identifier followed, 8
//! bytes on, by a relocation to a function of the module; a `klp_object` is a
//! relocation that points at the first `klp_func` of an array. Modules whose tables
//! cannot be found this way yield no functions (the caller can name them).

use std::collections::{BTreeMap, HashMap};

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionKind};

/// A section by its index (`object::SectionIndex` is not ordered).
type SectionIndex = usize;

use crate::model::{FunctionRef, VMLINUX};

/// Offsets in `struct klp_func` (`include/linux/livepatch.h`, 64-bit).
pub const KLP_FUNC_OLD_NAME: usize = 0;
/// `klp_func.new_func`.
pub const KLP_FUNC_NEW_FUNC: usize = 8;
/// `klp_func.old_sympos`.
pub const KLP_FUNC_OLD_SYMPOS: usize = 16;
/// `klp_object.name` (NULL means vmlinux).
pub const KLP_OBJECT_NAME: usize = 0;
/// `klp_object.funcs`.
pub const KLP_OBJECT_FUNCS: usize = 8;

/// A module whose tables could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KlpError {
    #[error("{what}: bad ELF: {message}")]
    BadElf { what: String, message: String },
}

#[derive(Debug, Clone, Copy)]
struct Target {
    section: SectionIndex,
    offset: u64,
    is_function: bool,
}

/// The functions that the module's `klp_func` tables replace, grouped by object in
/// table order; `what` names the module in errors.
pub fn replaced_functions(bytes: &[u8], what: &str) -> Result<Vec<FunctionRef>, KlpError> {
    let file = object::File::parse(bytes).map_err(|e| KlpError::BadElf {
        what: what.to_owned(),
        message: e.to_string(),
    })?;

    // Every absolute pointer stored in the module: (section, offset) → target.
    let mut pointers: HashMap<SectionIndex, BTreeMap<u64, Target>> = HashMap::new();
    for section in file.sections() {
        for (offset, reloc) in section.relocations() {
            let RelocationTarget::Symbol(index) = reloc.target() else {
                continue;
            };
            let Ok(symbol) = file.symbol_by_index(index) else {
                continue;
            };
            let Some(target_section) = symbol.section_index() else {
                continue;
            };
            let is_function = match symbol.kind() {
                object::SymbolKind::Text => true,
                object::SymbolKind::Section => file
                    .section_by_index(target_section)
                    .is_ok_and(|s| s.kind() == SectionKind::Text),
                _ => false,
            };
            let Some(target_offset) = symbol.address().checked_add_signed(reloc.addend()) else {
                continue;
            };
            pointers.entry(section.index().0).or_default().insert(
                offset,
                Target {
                    section: target_section.0,
                    offset: target_offset,
                    is_function,
                },
            );
        }
    }

    let identifier_at = |target: &Target| -> Option<String> {
        let data = file
            .section_by_index(object::SectionIndex(target.section))
            .ok()?
            .data()
            .ok()?;
        let rest = data.get(usize::try_from(target.offset).ok()?..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        let text = std::str::from_utf8(&rest[..end]).ok()?;
        let ok = !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        ok.then(|| text.to_owned())
    };

    // klp_func candidates: (section, offset) → (old_name, old_sympos).
    let mut funcs: BTreeMap<(SectionIndex, u64), (String, u64)> = BTreeMap::new();
    for (section, map) in &pointers {
        let data = file
            .section_by_index(object::SectionIndex(*section))
            .ok()
            .and_then(|s| s.data().ok())
            .unwrap_or(&[]);
        for (offset, target) in map {
            // Offsets come from the file: near 2^64 they name no klp_func.
            let new_func = offset
                .checked_add((KLP_FUNC_NEW_FUNC - KLP_FUNC_OLD_NAME) as u64)
                .and_then(|at| map.get(&at));
            if !new_func.is_some_and(|t| t.is_function) {
                continue;
            }
            let Some(name) = identifier_at(target) else {
                continue;
            };
            let sympos_at = usize::try_from(*offset)
                .ok()
                .and_then(|o| o.checked_add(KLP_FUNC_OLD_SYMPOS - KLP_FUNC_OLD_NAME));
            let sympos = sympos_at
                .and_then(|at| data.get(at..at.checked_add(8)?))
                .map(|b| u64::from_le_bytes(b.try_into().expect("an 8-byte slice")))
                .unwrap_or(0);
            funcs.insert((*section, *offset), (name, sympos));
        }
    }

    // klp_object candidates: a pointer to the first klp_func of an array.
    let mut objects: Vec<(SectionIndex, u64, String)> = Vec::new();
    for map in pointers.values() {
        for (offset, target) in map {
            if target.is_function || !funcs.contains_key(&(target.section, target.offset)) {
                continue;
            }
            let Some(object_at) = offset.checked_sub((KLP_OBJECT_FUNCS - KLP_OBJECT_NAME) as u64)
            else {
                continue;
            };
            // A klp_func's new_func is never a pointer to another klp_func, so this
            // is not the second half of a klp_func.
            let name = match map.get(&object_at) {
                Some(t) => match identifier_at(t) {
                    Some(name) => name,
                    None => continue,
                },
                None => VMLINUX.to_owned(),
            };
            objects.push((target.section, target.offset, name));
        }
    }
    objects.sort();
    objects.dedup();

    // Each array runs from its start to the next array's start in the same section.
    let mut found = Vec::new();
    for (i, (section, start, object)) in objects.iter().enumerate() {
        let end = objects
            .get(i + 1)
            .filter(|(s, _, _)| s == section)
            .map_or(u64::MAX, |(_, next, _)| *next);
        for ((_, _), (name, sympos)) in funcs.range((*section, *start)..(*section, end)) {
            let f = FunctionRef {
                object: object.clone(),
                name: name.clone(),
                sympos: *sympos,
            };
            if !found.contains(&f) {
                found.push(f);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error() {
        let err = replaced_functions(b"not an elf", "m.ko").unwrap_err();
        assert!(err.to_string().starts_with("m.ko: bad ELF"), "{err}");
    }
}
