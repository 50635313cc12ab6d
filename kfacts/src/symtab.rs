//! The local symbols of a vmlinux by source file, from its full symbol table.
//!
//! kallsyms says where every static symbol is, but not which translation unit
//! defines it: a name several files define (`helper`, `count.3`) is a list of
//! addresses. The linked vmlinux's own symbol table (shipped, for Debian kernels, in
//! the `linux-image-*-dbg` package) has it: the linker writes each input object's
//! local symbols after an `STT_FILE` symbol naming the object's source file. That is
//! what resolves a static exactly, as kpatch does with the same table.
//!
//! The table is read straight from the vmlinux's `.symtab`/`.strtab` (a few MB of a
//! file of hundreds), and kept as a small text file:
//! `F <file>` starts a file's group, `<address> <name>` lists its locals.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// The local symbols of one input object of the link, in symbol-table order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSymbols {
    /// The `STT_FILE` name: the source file's base name (`cmdline.c`).
    pub file: String,
    pub symbols: Vec<(String, u64)>,
}

/// Every object's locals, grouped by source file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalsByFile {
    groups: Vec<FileSymbols>,
    by_file: HashMap<String, Vec<usize>>,
}

/// Why a symbol table cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SymtabError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a 64-bit little-endian ELF file with a symbol table: {0}")]
    Format(String),
    #[error("line {line}: {detail}")]
    Text { line: usize, detail: String },
}

const SHT_SYMTAB: u32 = 2;
const STT_FILE: u8 = 4;
const STB_LOCAL: u8 = 0;
const SHN_UNDEF: u16 = 0;
const SYM_SIZE: usize = 24;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("four bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("eight bytes"))
}

fn read_at(file: &mut File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

impl LocalsByFile {
    /// Reads the symbol table of an ELF64 little-endian file (a vmlinux with its
    /// symbols), without reading the rest of it.
    pub fn read_elf(path: &Path) -> Result<LocalsByFile, SymtabError> {
        let bad = |d: &str| SymtabError::Format(d.to_owned());
        let mut file = File::open(path)?;
        let header = read_at(&mut file, 0, 64)?;
        if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
            return Err(bad("not ELF64 little-endian"));
        }
        let shoff = u64_at(&header, 0x28);
        let shentsize = usize::from(u16_at(&header, 0x3a));
        let shnum = usize::from(u16_at(&header, 0x3c));
        if shentsize < 64 || shnum == 0 {
            return Err(bad("no section headers"));
        }
        let headers = read_at(&mut file, shoff, shentsize * shnum)?;
        let section = |i: usize| &headers[i * shentsize..(i + 1) * shentsize];
        let symtab = (0..shnum)
            .find(|&i| u32_at(section(i), 4) == SHT_SYMTAB)
            .ok_or_else(|| bad("no .symtab (a stripped vmlinux?)"))?;
        let sym = section(symtab);
        let (sym_off, sym_size, link) = (u64_at(sym, 0x18), u64_at(sym, 0x20), u32_at(sym, 0x28));
        let link = usize::try_from(link).map_err(|_| bad("bad link"))?;
        if link >= shnum {
            return Err(bad("the symbol table's string table is out of range"));
        }
        let str_header = section(link);
        let (str_off, str_size) = (u64_at(str_header, 0x18), u64_at(str_header, 0x20));
        let limit = 1u64 << 30;
        if sym_size > limit || str_size > limit {
            return Err(bad("symbol table larger than 1 GiB"));
        }
        let syms = read_at(&mut file, sym_off, sym_size as usize)?;
        let strings = read_at(&mut file, str_off, str_size as usize)?;
        let name = |at: u32| -> String {
            let rest = strings.get(at as usize..).unwrap_or_default();
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        };
        let mut table = LocalsByFile::default();
        for entry in syms.chunks_exact(SYM_SIZE).skip(1) {
            let info = entry[4];
            let (bind, kind) = (info >> 4, info & 0xf);
            if bind != STB_LOCAL {
                continue;
            }
            if kind == STT_FILE {
                table.groups.push(FileSymbols {
                    file: name(u32_at(entry, 0)),
                    symbols: Vec::new(),
                });
                continue;
            }
            let (shndx, value) = (u16_at(entry, 6), u64_at(entry, 8));
            let symbol = name(u32_at(entry, 0));
            if shndx == SHN_UNDEF || symbol.is_empty() || kind == 3 {
                continue; // undefined, unnamed, or a section symbol
            }
            if let Some(group) = table.groups.last_mut() {
                group.symbols.push((symbol, value));
            }
        }
        table.index();
        Ok(table)
    }

    fn index(&mut self) {
        self.by_file.clear();
        for (i, g) in self.groups.iter().enumerate() {
            self.by_file.entry(g.file.clone()).or_default().push(i);
        }
    }

    /// The groups of source file `file` (a base name: several objects may share it).
    pub fn groups_of<'a>(&'a self, file: &str) -> impl Iterator<Item = &'a FileSymbols> + use<'a> {
        let indices = self.by_file.get(file);
        indices.into_iter().flatten().map(move |&i| &self.groups[i])
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The table as text: `F <file>`, then `<hex address> <name>` per local.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for g in &self.groups {
            out.push_str("F ");
            out.push_str(&g.file);
            out.push('\n');
            for (name, addr) in &g.symbols {
                out.push_str(&format!("{addr:x} {name}\n"));
            }
        }
        out
    }

    /// Reads [`LocalsByFile::to_text`] back.
    pub fn parse(text: &str) -> Result<LocalsByFile, SymtabError> {
        let mut table = LocalsByFile::default();
        for (n, line) in text.lines().enumerate() {
            let err = |detail: &str| SymtabError::Text {
                line: n + 1,
                detail: detail.to_owned(),
            };
            if let Some(file) = line.strip_prefix("F ") {
                table.groups.push(FileSymbols {
                    file: file.to_owned(),
                    symbols: Vec::new(),
                });
                continue;
            }
            let (addr, name) = line.split_once(' ').ok_or_else(|| err("no name"))?;
            let addr = u64::from_str_radix(addr, 16).map_err(|_| err("bad address"))?;
            table
                .groups
                .last_mut()
                .ok_or_else(|| err("a symbol before any file"))?
                .symbols
                .push((name.to_owned(), addr));
        }
        table.index();
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        let text = "F cmdline.c\nffffffff813f5980 cmdline_proc_show\nF core.c\nffffffff81000010 helper\nF core.c\nffffffff81000020 helper\n";
        let t = LocalsByFile::parse(text).expect("parses");
        assert_eq!(t.len(), 3);
        assert_eq!(t.groups_of("core.c").count(), 2);
        assert_eq!(t.to_text(), text);
        assert!(LocalsByFile::parse("ffff x\n").is_err());
    }
}
