//! The layouts of the named structs, unions and enums that a compiled unit defines,
//! from its DWARF (the kernel is built with `CONFIG_DEBUG_INFO`, so every object
//! kbuild compiles has it). A live patch replaces code, never the objects already in
//! memory: when a type's layout differs between the pre and post objects, the new
//! code would read the old objects wrongly.
//!
//! A relocatable object's DWARF is not final: its cross-section offsets (into
//! `.debug_str`, `.debug_abbrev`, ...) are relocations, applied here before reading.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gimli::{AttributeValue, DwTag, EndianSlice, LittleEndian, Reader, UnitOffset, constants};
use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

/// What kind of type a layout is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeKind {
    Struct,
    Union,
    Enum,
}

impl TypeKind {
    pub fn keyword(self) -> &'static str {
        match self {
            TypeKind::Struct => "struct",
            TypeKind::Union => "union",
            TypeKind::Enum => "enum",
        }
    }
}

/// One layout: a struct's or union's size and members (name, offset, bit field,
/// type with its size), or an enum's size and enumerators.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Layout {
    pub size: Option<u64>,
    /// Struct and union members, in order: `name@offset: type`.
    pub members: Vec<String>,
    /// Enumerators: name → value.
    pub enumerators: BTreeMap<String, i64>,
}

/// The layouts of the named types an object defines at file scope; one name may
/// have several (a header that defines a type differently under `#ifdef`s is rare,
/// but the set says so rather than picking one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeLayouts {
    pub types: BTreeMap<(TypeKind, String), BTreeSet<Layout>>,
}

/// A type whose layout differs between two objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutChange {
    pub kind: TypeKind,
    pub name: String,
    /// What differs, for people: sizes, the first member that differs, enumerator
    /// values.
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    #[error("cannot read the object: {0}")]
    Object(#[from] object::Error),
    #[error("its DWARF is malformed: {0}")]
    Dwarf(#[from] gimli::Error),
}

type Slice<'a> = EndianSlice<'a, LittleEndian>;

impl TypeLayouts {
    /// Reads the layouts from a relocatable (or linked) x86-64 object; an object
    /// without DWARF has none.
    pub fn from_object(data: &[u8]) -> Result<TypeLayouts, DwarfError> {
        let file = object::File::parse(data)?;
        let mut sections: HashMap<&'static str, Vec<u8>> = HashMap::new();
        for id in DEBUG_SECTIONS {
            let name = id.name();
            if let Some(section) = file.section_by_name(name) {
                sections.insert(name, relocated(&file, &section)?);
            }
        }
        if !sections.contains_key(gimli::SectionId::DebugInfo.name()) {
            return Ok(TypeLayouts::default());
        }
        let empty: &[u8] = &[];
        let load = |id: gimli::SectionId| -> Result<Slice<'_>, gimli::Error> {
            let data = sections.get(id.name()).map_or(empty, Vec::as_slice);
            Ok(EndianSlice::new(data, LittleEndian))
        };
        let dwarf = gimli::Dwarf::load(load)?;
        let mut out = TypeLayouts::default();
        let mut headers = dwarf.units();
        while let Some(header) = headers.next()? {
            let unit = dwarf.unit(header)?;
            let dies = Dies::read(&dwarf, &unit)?;
            for (offset, die) in &dies.all {
                let kind = match die.tag {
                    constants::DW_TAG_structure_type => TypeKind::Struct,
                    constants::DW_TAG_union_type => TypeKind::Union,
                    constants::DW_TAG_enumeration_type => TypeKind::Enum,
                    _ => continue,
                };
                let (Some(name), false, 1) = (&die.name, die.declaration, die.depth) else {
                    continue;
                };
                let layout = dies.layout(*offset, 0);
                out.types
                    .entry((kind, name.clone()))
                    .or_default()
                    .insert(layout);
            }
        }
        Ok(out)
    }

    /// The types both define whose layouts differ: for structs and unions any
    /// difference, for enums a changed size or an enumerator whose value changed
    /// (new enumerators are no change to what the running kernel stores).
    pub fn changes_to(&self, post: &TypeLayouts) -> Vec<LayoutChange> {
        let mut out = Vec::new();
        for ((kind, name), pre) in &self.types {
            let Some(after) = post.types.get(&(*kind, name.clone())) else {
                continue;
            };
            if pre == after {
                continue;
            }
            let (Some(a), Some(b)) = (pre.first(), after.first()) else {
                continue;
            };
            let detail = match kind {
                TypeKind::Enum => {
                    let moved: Vec<String> = a
                        .enumerators
                        .iter()
                        .filter_map(|(e, v)| {
                            let w = b.enumerators.get(e)?;
                            (v != w).then(|| format!("{e} {v} → {w}"))
                        })
                        .collect();
                    if a.size == b.size && moved.is_empty() && pre.len() == 1 && after.len() == 1 {
                        continue;
                    }
                    if moved.is_empty() {
                        format!("size {} → {}", show(a.size), show(b.size))
                    } else {
                        format!("enumerator values change: {}", moved.join(", "))
                    }
                }
                TypeKind::Struct | TypeKind::Union => describe(a, b),
            };
            out.push(LayoutChange {
                kind: *kind,
                name: name.clone(),
                detail,
            });
        }
        out
    }
}

fn show(size: Option<u64>) -> String {
    size.map_or_else(|| "?".into(), |s| s.to_string())
}

/// How two struct or union layouts differ, in words: the size, members added,
/// removed, or moved or retyped (by name).
fn describe(a: &Layout, b: &Layout) -> String {
    let split = |m: &String| -> (String, String) {
        match m.split_once('@') {
            Some((name, rest)) => (name.to_owned(), rest.to_owned()),
            None => (m.clone(), String::new()),
        }
    };
    let before: BTreeMap<String, String> = a.members.iter().map(split).collect();
    let after: BTreeMap<String, String> = b.members.iter().map(split).collect();
    let mut parts = Vec::new();
    if a.size != b.size {
        parts.push(format!("size {} → {} bytes", show(a.size), show(b.size)));
    }
    let added: Vec<String> = b
        .members
        .iter()
        .filter(|m| !before.contains_key(&split(m).0))
        .cloned()
        .collect();
    if !added.is_empty() {
        parts.push(format!("added {}", added.join(", ")));
    }
    let removed: Vec<String> = a
        .members
        .iter()
        .filter(|m| !after.contains_key(&split(m).0))
        .cloned()
        .collect();
    if !removed.is_empty() {
        parts.push(format!("removed {}", removed.join(", ")));
    }
    let changed: Vec<String> = a
        .members
        .iter()
        .map(split)
        .filter_map(|(name, was)| {
            let now = after.get(&name)?;
            (now != &was).then(|| format!("{name}@{was} → @{now}"))
        })
        .collect();
    if !changed.is_empty() {
        parts.push(changed.join(", "));
    }
    if parts.is_empty() {
        parts.push("its members are reordered".into());
    }
    parts.join("; ")
}

/// The debug sections a unit's types are read from (reading a unit's header also
/// reads its line program's).
const DEBUG_SECTIONS: [gimli::SectionId; 7] = [
    gimli::SectionId::DebugInfo,
    gimli::SectionId::DebugAbbrev,
    gimli::SectionId::DebugStr,
    gimli::SectionId::DebugLineStr,
    gimli::SectionId::DebugStrOffsets,
    gimli::SectionId::DebugAddr,
    gimli::SectionId::DebugLine,
];

/// A section's bytes with its relocations applied (symbol value plus addend: in a
/// relocatable object, debug sections start at 0).
fn relocated(
    file: &object::File<'_>,
    section: &object::Section<'_, '_>,
) -> Result<Vec<u8>, DwarfError> {
    let mut data = section.uncompressed_data()?.into_owned();
    for (offset, reloc) in section.relocations() {
        let base = match reloc.target() {
            RelocationTarget::Symbol(index) => file.symbol_by_index(index)?.address(),
            _ => 0,
        };
        let value = base.wrapping_add_signed(reloc.addend());
        let bytes = value.to_le_bytes();
        let size = usize::from(reloc.size() / 8);
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if let (Some(field), true) = (data.get_mut(start..start.saturating_add(size)), size <= 8) {
            field.copy_from_slice(&bytes[..size]);
        }
    }
    Ok(data)
}

/// What one DIE says that layouts need.
#[derive(Debug, Clone)]
struct Die {
    tag: DwTag,
    depth: usize,
    name: Option<String>,
    declaration: bool,
    size: Option<u64>,
    type_ref: Option<UnitOffset>,
    member_offset: Option<u64>,
    bit_size: Option<u64>,
    bit_offset: Option<u64>,
    count: Option<u64>,
    value: Option<i64>,
    children: Vec<UnitOffset>,
}

/// Every DIE of one unit, by offset, with its children.
struct Dies {
    all: BTreeMap<UnitOffset, Die>,
}

impl Dies {
    fn read<R: Reader<Offset = usize>>(
        dwarf: &gimli::Dwarf<R>,
        unit: &gimli::Unit<R>,
    ) -> Result<Dies, gimli::Error> {
        let mut all: BTreeMap<UnitOffset, Die> = BTreeMap::new();
        let mut stack: Vec<UnitOffset> = Vec::new();
        let mut depth: isize = 0;
        let mut cursor = unit.entries();
        while let Some((delta, entry)) = cursor.next_dfs()? {
            depth += delta;
            let depth = usize::try_from(depth).unwrap_or(0);
            stack.truncate(depth);
            let offset = entry.offset();
            let mut die = Die {
                tag: entry.tag(),
                depth,
                name: None,
                declaration: false,
                size: None,
                type_ref: None,
                member_offset: None,
                bit_size: None,
                bit_offset: None,
                count: None,
                value: None,
                children: Vec::new(),
            };
            let mut attrs = entry.attrs();
            while let Some(attr) = attrs.next()? {
                match attr.name() {
                    constants::DW_AT_name => {
                        if let Ok(s) = dwarf.attr_string(unit, attr.value()) {
                            die.name = Some(s.to_string_lossy()?.into_owned());
                        }
                    }
                    constants::DW_AT_declaration => die.declaration = true,
                    constants::DW_AT_byte_size => die.size = attr.udata_value(),
                    constants::DW_AT_type => {
                        if let AttributeValue::UnitRef(r) = attr.value() {
                            die.type_ref = Some(r);
                        }
                    }
                    constants::DW_AT_data_member_location => die.member_offset = attr.udata_value(),
                    constants::DW_AT_bit_size => die.bit_size = attr.udata_value(),
                    constants::DW_AT_data_bit_offset => die.bit_offset = attr.udata_value(),
                    constants::DW_AT_count => die.count = attr.udata_value(),
                    constants::DW_AT_upper_bound => die.count = attr.udata_value().map(|u| u + 1),
                    constants::DW_AT_const_value => {
                        die.value = attr
                            .sdata_value()
                            .or_else(|| attr.udata_value().and_then(|u| i64::try_from(u).ok()));
                    }
                    _ => {}
                }
            }
            if let Some(&parent) = stack.last()
                && let Some(p) = all.get_mut(&parent)
            {
                p.children.push(offset);
            }
            all.insert(offset, die);
            if entry.has_children() {
                stack.push(offset);
            }
        }
        Ok(Dies { all })
    }

    /// The layout of the struct, union or enum at `offset`.
    fn layout(&self, offset: UnitOffset, depth: usize) -> Layout {
        let Some(die) = self.all.get(&offset) else {
            return Layout {
                size: None,
                members: Vec::new(),
                enumerators: BTreeMap::new(),
            };
        };
        let mut layout = Layout {
            size: die.size,
            members: Vec::new(),
            enumerators: BTreeMap::new(),
        };
        for child in &die.children {
            let Some(c) = self.all.get(child) else {
                continue;
            };
            match c.tag {
                constants::DW_TAG_member => {
                    let mut at = format!("{}", c.member_offset.unwrap_or(0));
                    if let Some(bits) = c.bit_size {
                        at = format!("bit {}:{bits}", c.bit_offset.unwrap_or(0));
                    }
                    let ty = c
                        .type_ref
                        .map_or_else(|| "?".into(), |t| self.type_name(t, depth + 1));
                    let name = c.name.as_deref().unwrap_or("(anonymous)");
                    layout.members.push(format!("{name}@{at}: {ty}"));
                }
                constants::DW_TAG_enumerator => {
                    if let (Some(name), Some(v)) = (&c.name, c.value) {
                        layout.enumerators.insert(name.clone(), v);
                    }
                }
                _ => {}
            }
        }
        layout
    }

    /// A member's type as a string that differs when its layout does: named
    /// aggregates by name and size, anonymous ones by their whole layout.
    fn type_name(&self, offset: UnitOffset, depth: usize) -> String {
        let Some(die) = self.all.get(&offset) else {
            return "?".into();
        };
        if depth > 16 {
            return "…".into();
        }
        let inner = |d: usize| {
            die.type_ref
                .map_or_else(|| "void".into(), |t| self.type_name(t, d))
        };
        let sized = |name: &str| format!("{name}({})", show(die.size));
        match die.tag {
            constants::DW_TAG_base_type => sized(die.name.as_deref().unwrap_or("?")),
            constants::DW_TAG_pointer_type => {
                // Only the pointer is in the object: what it points to is its own
                // type's business.
                let target = die.type_ref.and_then(|t| self.all.get(&t));
                let name = target
                    .and_then(|t| t.name.clone())
                    .unwrap_or_else(|| "…".into());
                format!("*{name}")
            }
            constants::DW_TAG_typedef => {
                format!(
                    "{}={}",
                    die.name.as_deref().unwrap_or("?"),
                    inner(depth + 1)
                )
            }
            constants::DW_TAG_const_type => format!("const {}", inner(depth + 1)),
            constants::DW_TAG_volatile_type => format!("volatile {}", inner(depth + 1)),
            constants::DW_TAG_array_type => {
                let dims: Vec<String> = die
                    .children
                    .iter()
                    .filter_map(|c| self.all.get(c))
                    .map(|c| c.count.map_or_else(|| "[]".into(), |n| format!("[{n}]")))
                    .collect();
                format!("{}{}", inner(depth + 1), dims.concat())
            }
            constants::DW_TAG_structure_type
            | constants::DW_TAG_union_type
            | constants::DW_TAG_enumeration_type => {
                let keyword = match die.tag {
                    constants::DW_TAG_structure_type => "struct",
                    constants::DW_TAG_union_type => "union",
                    _ => "enum",
                };
                match &die.name {
                    Some(name) => sized(&format!("{keyword} {name}")),
                    None => {
                        let l = self.layout(offset, depth + 1);
                        format!("{keyword} {{{}}}({})", l.members.join(", "), show(l.size))
                    }
                }
            }
            constants::DW_TAG_subroutine_type => "fn".into(),
            _ => sized("?"),
        }
    }
}
