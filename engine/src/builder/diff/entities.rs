//! The entities the report is about: the functions (each with its `.cold` parts)
//! and data objects of an object.

use std::collections::HashMap;

use kstack_kfacts::symbols::PREFIX_SYMBOL_PREFIX;

use super::model::{Class, Elf};
use super::names::{cold_parent, normalize_name};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Kind {
    Function,
    Data,
}

#[derive(Debug, Clone)]
pub(super) struct Entity {
    pub(super) sym: usize,
    pub(super) kind: Kind,
    pub(super) norm: String,
    /// `.cold` parts of a function.
    pub(super) parts: Vec<usize>,
}

pub(super) fn entities(elf: &Elf<'_>) -> Vec<Entity> {
    let mut out: Vec<Entity> = Vec::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    let mut cold = Vec::new();
    for (i, sym) in elf.obj.symbols.iter().enumerate() {
        let Some(section) = sym.section else { continue };
        let class = elf.class(section);
        let kind = match class {
            // objtool's `__pfx_` symbols (a unit it processed: 6.12's one-file modules)
            // name a function's padding, which comes along with the function.
            Class::Text | Class::InitText if sym.name.starts_with(PREFIX_SYMBOL_PREFIX) => {
                continue;
            }
            Class::Text | Class::InitText if sym.is_func() && sym.size > 0 => Kind::Function,
            Class::Data | Class::InitData if sym.is_object() => Kind::Data,
            _ => continue,
        };
        if kind == Kind::Function && cold_parent(&sym.name).is_some() {
            cold.push(i);
            continue;
        }
        by_name.insert(&sym.name, out.len());
        out.push(Entity {
            sym: i,
            kind,
            norm: normalize_name(&sym.name),
            parts: Vec::new(),
        });
    }
    for i in cold {
        let name = &elf.sym(i).name;
        match cold_parent(name).and_then(|p| by_name.get(p)) {
            Some(&parent) if out[parent].kind == Kind::Function => out[parent].parts.push(i),
            // An orphan: compare it as a function of its own.
            _ => out.push(Entity {
                sym: i,
                kind: Kind::Function,
                norm: normalize_name(name),
                parts: Vec::new(),
            }),
        }
    }
    out
}
