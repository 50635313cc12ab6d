//! Where the kernel's code is read from.
//!
//! On the target, `/proc/kcore`: an ELF core file whose `PT_LOAD` program headers
//! map kernel virtual addresses to file offsets (fs/proc/kcore.c); reading needs
//! root, and some ranges of text refuse to be read. Offline, the vmlinux inside a
//! kernel image file, mapped through its own `PT_LOAD` segments, which is the code
//! before the kernel rewrote it at boot (the matcher accepts both states). In tests
//! and for dumps copied out of a guest, bytes in memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use object::read::elf::{FileHeader, ProgramHeader};
use object::{Endianness, elf};

use super::RunPreError;

pub use kstack_kfacts::paths::PROC_KCORE;

/// Reads kernel code at virtual addresses.
pub trait KernelText {
    /// Exactly `len` bytes at `addr`, or an error saying why not.
    fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, RunPreError>;
    /// What the bytes come from, for reports.
    fn describe(&self) -> String;
}

/// One `PT_LOAD` mapping: `[vaddr, vaddr + filesz)` lives at `offset` in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
}

impl Segment {
    fn file_offset(&self, addr: u64, len: usize) -> Option<u64> {
        let end = addr.checked_add(len as u64)?;
        (addr >= self.vaddr && end <= self.vaddr.checked_add(self.filesz)?)
            .then(|| self.offset + (addr - self.vaddr))
    }
}

/// The `PT_LOAD` segments of an ELF file whose header and program headers are in
/// `prefix`.
fn load_segments(prefix: &[u8], what: &str) -> Result<Vec<Segment>, RunPreError> {
    let bad = |detail: String| RunPreError::Image {
        what: what.to_owned(),
        detail,
    };
    let header = elf::FileHeader64::<Endianness>::parse(prefix)
        .map_err(|e| bad(format!("not an ELF64 file: {e}")))?;
    let endian = header
        .endian()
        .map_err(|e| bad(format!("bad ELF header: {e}")))?;
    let phdrs = header
        .program_headers(endian, prefix)
        .map_err(|e| bad(format!("bad program headers: {e}")))?;
    let segments: Vec<Segment> = phdrs
        .iter()
        .filter(|p| p.p_type(endian) == elf::PT_LOAD && p.p_filesz(endian) > 0)
        .map(|p| Segment {
            vaddr: p.p_vaddr(endian),
            offset: p.p_offset(endian),
            filesz: p.p_filesz(endian),
        })
        .collect();
    if segments.is_empty() {
        return Err(bad("no PT_LOAD segment".into()));
    }
    Ok(segments)
}

fn find_offset(
    segments: &[Segment],
    addr: u64,
    len: usize,
    source_name: &str,
) -> Result<u64, RunPreError> {
    segments
        .iter()
        .find_map(|s| s.file_offset(addr, len))
        .ok_or_else(|| RunPreError::Unmapped {
            source_name: source_name.to_owned(),
            addr,
            len,
        })
}

/// `/proc/kcore` (or a file laid out like it).
#[derive(Debug)]
pub struct Kcore {
    file: File,
    path: PathBuf,
    segments: Vec<Segment>,
}

impl Kcore {
    /// Opens the running kernel's `/proc/kcore`.
    pub fn open() -> Result<Kcore, RunPreError> {
        Self::open_path(Path::new(PROC_KCORE))
    }

    pub fn open_path(path: &Path) -> Result<Kcore, RunPreError> {
        let io = |source| RunPreError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let what = path.display().to_string();
        // kcore reports an enormous size, so only the headers are read: the ELF
        // header says where the program headers are and how many.
        let mut head = vec![0; size_of::<elf::FileHeader64<Endianness>>()];
        file.read_exact_at(&mut head, 0).map_err(io)?;
        let header =
            elf::FileHeader64::<Endianness>::parse(&head[..]).map_err(|e| RunPreError::Image {
                what: what.clone(),
                detail: format!("not an ELF64 core file: {e}"),
            })?;
        let endian = header.endian().map_err(|e| RunPreError::Image {
            what: what.clone(),
            detail: e.to_string(),
        })?;
        let end = header.e_phoff(endian)
            + u64::from(header.e_phnum(endian)) * u64::from(header.e_phentsize(endian));
        let end = usize::try_from(end).map_err(|_| RunPreError::Image {
            what: what.clone(),
            detail: "program headers beyond the address space".into(),
        })?;
        let mut prefix = vec![0; end];
        file.read_exact_at(&mut prefix, 0).map_err(io)?;
        let segments = load_segments(&prefix, &what)?;
        Ok(Kcore {
            file,
            path: path.to_owned(),
            segments,
        })
    }

    /// Where `len` bytes at `addr` are in the file.
    pub fn file_offset(&self, addr: u64, len: usize) -> Result<u64, RunPreError> {
        find_offset(&self.segments, addr, len, &self.describe())
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }
}

impl KernelText for Kcore {
    fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, RunPreError> {
        let offset = self.file_offset(addr, len)?;
        let mut buf = vec![0; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| RunPreError::Read {
                source_name: self.describe(),
                addr,
                len,
                source,
            })?;
        Ok(buf)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A kernel image file: the vmlinux ELF, possibly taken out of a bzImage.
#[derive(Debug)]
pub struct ImageText {
    what: String,
    vmlinux: Vec<u8>,
    segments: Vec<Segment>,
}

impl ImageText {
    /// A `vmlinux` or a bzImage (`vmlinuz`) file.
    pub fn open(path: &Path) -> Result<ImageText, RunPreError> {
        let bytes = std::fs::read(path).map_err(|source| RunPreError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(bytes, &path.display().to_string())
    }

    /// From the bytes of a `vmlinux` (an ELF file) or of a bzImage, which is
    /// decompressed.
    pub fn from_bytes(bytes: Vec<u8>, what: &str) -> Result<ImageText, RunPreError> {
        let vmlinux = if bytes.starts_with(&elf::ELFMAG) {
            bytes
        } else {
            kstack_store::ident::bzimage_vmlinux(&bytes, what).map_err(|e| RunPreError::Image {
                what: what.to_owned(),
                detail: e.to_string(),
            })?
        };
        let segments = load_segments(&vmlinux, what)?;
        Ok(ImageText {
            what: what.to_owned(),
            vmlinux,
            segments,
        })
    }

    /// The vmlinux ELF bytes.
    pub fn vmlinux(&self) -> &[u8] {
        &self.vmlinux
    }
}

impl KernelText for ImageText {
    fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, RunPreError> {
        let offset = find_offset(&self.segments, addr, len, &self.what)?;
        let start = usize::try_from(offset).ok();
        start
            .and_then(|s| self.vmlinux.get(s..s.checked_add(len)?))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| RunPreError::Image {
                what: self.what.clone(),
                detail: format!("segment for {addr:#x} points beyond the end of the file"),
            })
    }

    fn describe(&self) -> String {
        format!("kernel image {}", self.what)
    }
}

/// Bytes at addresses, held in memory: tests, and ranges dumped from a guest.
#[derive(Debug, Clone, Default)]
pub struct MemoryText {
    regions: BTreeMap<u64, Vec<u8>>,
}

impl MemoryText {
    pub fn new() -> MemoryText {
        MemoryText::default()
    }

    /// Adds `bytes` at `addr` (a later region wins where two overlap).
    pub fn insert(&mut self, addr: u64, bytes: Vec<u8>) {
        self.regions.insert(addr, bytes);
    }
}

impl KernelText for MemoryText {
    fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, RunPreError> {
        self.regions
            .range(..=addr)
            .rev()
            .find_map(|(&start, bytes)| {
                let from = usize::try_from(addr - start).ok()?;
                bytes.get(from..from.checked_add(len)?).map(<[u8]>::to_vec)
            })
            .ok_or_else(|| RunPreError::Unmapped {
                source_name: self.describe(),
                addr,
                len,
            })
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little ELF core file with two PT_LOAD segments, like kcore's.
    fn core_file() -> Vec<u8> {
        let mut out = Vec::new();
        let mut ehdr = [0u8; 64];
        ehdr[..4].copy_from_slice(&elf::ELFMAG);
        ehdr[4] = elf::ELFCLASS64.0;
        ehdr[5] = elf::ELFDATA2LSB.0;
        ehdr[6] = elf::EV_CURRENT.0;
        ehdr[16..18].copy_from_slice(&elf::ET_CORE.0.to_le_bytes());
        ehdr[18..20].copy_from_slice(&elf::EM_X86_64.0.to_le_bytes());
        ehdr[20..24].copy_from_slice(&1u32.to_le_bytes());
        ehdr[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        ehdr[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        ehdr[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        ehdr[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
        out.extend_from_slice(&ehdr);
        for (vaddr, offset, size) in [
            (0xffffffff81000000u64, 0x100u64, 0x10u64),
            (0xffff888000000000, 0x110, 0x10),
        ] {
            let mut ph = [0u8; 56];
            ph[..4].copy_from_slice(&elf::PT_LOAD.0.to_le_bytes());
            ph[8..16].copy_from_slice(&offset.to_le_bytes());
            ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
            ph[32..40].copy_from_slice(&size.to_le_bytes());
            ph[40..48].copy_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&ph);
        }
        out.resize(0x100, 0);
        out.extend(0u8..0x20);
        out
    }

    #[test]
    fn kcore_maps_addresses_through_program_headers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kcore");
        std::fs::write(&path, core_file()).expect("write");
        let kcore = Kcore::open_path(&path).expect("opens");
        assert_eq!(kcore.segments().len(), 2);
        assert_eq!(
            kcore.read(0xffffffff81000004, 4).expect("reads"),
            [4, 5, 6, 7]
        );
        assert_eq!(
            kcore.read(0xffff888000000000, 2).expect("reads"),
            [0x10, 0x11]
        );
        let err = kcore
            .read(0xffffffff8100000e, 4)
            .expect_err("crosses the end");
        assert!(matches!(err, RunPreError::Unmapped { .. }), "{err}");
    }

    #[test]
    fn memory_text_reads_inside_regions() {
        let mut m = MemoryText::new();
        m.insert(0x1000, vec![1, 2, 3, 4]);
        assert_eq!(m.read(0x1001, 2).expect("inside"), [2, 3]);
        assert!(m.read(0x1003, 2).is_err());
    }
}
