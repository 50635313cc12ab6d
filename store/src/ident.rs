//! Kernel and module identity: which kernel a stack is pinned to, and which kernel a
//! module was built for.
//!
//! - The build ID (the GNU build-id note) of the running kernel, from
//!   `/sys/kernel/notes`, and of a kernel image file: a raw `vmlinux` ELF, or a
//!   bzImage whose compressed payload is found through the x86 boot header and
//!   decompressed here, in Rust (gzip, xz, lzma, zstd and the LZ4 legacy frames that
//!   Debian's cloud kernel uses).
//! - The `.modinfo` of a module: vermagic (whose first word is the kernel release),
//!   the module's own name and whether it is a livepatch module.
//!
//! It reads files and bytes only; it never loads anything into the kernel.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use object::{Object, ObjectSection};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use kstack_kfacts::paths::{PROC_OSRELEASE, SYS_KERNEL_NOTES};

/// Note type of the build ID; `NT_GNU_BUILD_ID` in `<elf.h>`, read by the kernel's
/// `lib/buildid.c`.
pub const NT_GNU_BUILD_ID: u32 = 3;
/// Owner name of GNU notes (without its NUL).
pub const GNU_NOTE_NAME: &[u8] = b"GNU";

/// bzImage setup header offsets, from `Documentation/x86/boot.rst` ("The real-mode
/// kernel header") and `arch/x86/boot/header.S`.
pub mod bzimage {
    /// `setup_sects`: number of 512-byte setup sectors after the boot sector (0 means 4).
    pub const SETUP_SECTS: usize = 0x1f1;
    /// `header`: the magic `HdrS`.
    pub const HEADER: usize = 0x202;
    /// The magic at [`HEADER`].
    pub const HEADER_MAGIC: &[u8; 4] = b"HdrS";
    /// `version`: boot protocol version; `payload_*` exist from 2.08.
    pub const VERSION: usize = 0x206;
    /// First protocol version with `payload_offset` / `payload_length`.
    pub const MIN_VERSION_WITH_PAYLOAD: u16 = 0x0208;
    /// `payload_offset`: from the start of the protected-mode code.
    pub const PAYLOAD_OFFSET: usize = 0x248;
    /// `payload_length`.
    pub const PAYLOAD_LENGTH: usize = 0x24c;
    /// `kernel_version`: offset of the version string, minus 0x200 (protocol 2.00+).
    pub const KERNEL_VERSION: usize = 0x20e;
    /// What `kernel_version` is relative to.
    pub const KERNEL_VERSION_BASE: usize = 0x200;
    /// Size of one setup sector.
    pub const SECTOR: usize = 512;
    /// What `setup_sects == 0` means, for compatibility with old images.
    pub const DEFAULT_SETUP_SECTS: usize = 4;
}

/// LZ4 legacy frame magic; `ARCHIVE_MAGICNUMBER` in `lib/decompress_unlz4.c`.
pub const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Largest uncompressed LZ4 legacy chunk; `LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE` in
/// `lib/decompress_unlz4.c`.
pub const LZ4_LEGACY_CHUNK: usize = 8 << 20;
/// A decompressed kernel larger than this is refused (a bomb, not a kernel): the
/// payload of a bzImage is the stripped vmlinux, tens of MiB.
pub const MAX_VMLINUX_SIZE: usize = 256 << 20;
/// No kernel payload decompresses to more than this many times its size; the
/// appended size is only believed that far when space is reserved (found by the
/// `bzimage` fuzz target: an appended 4 GiB made kstack reserve 1 GiB up front).
const MAX_RATIO: usize = 16;

/// The section that holds `key=value\0` module information; `__MODULE_INFO` in
/// `include/linux/moduleparam.h`, filled by `scripts/mod/modpost.c`.
pub const MODINFO_SECTION: &str = ".modinfo";
/// The `struct module` of a `.ko`; `scripts/mod/modpost.c` emits it.
pub const THIS_MODULE_SECTION: &str = ".gnu.linkonce.this_module";
/// Offset of `name[MODULE_NAME_LEN]` in `struct module` on 64-bit kernels
/// (`include/linux/module.h`: `state` (4 + 4 padding), `list` (16)).
pub const THIS_MODULE_NAME_OFFSET: usize = 24;
/// `MODULE_NAME_LEN` on 64-bit kernels (`include/linux/module.h`).
pub const MODULE_NAME_LEN: usize = 56;

/// A kernel build ID: the descriptor of the GNU build-id note, written in hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildId(Vec<u8>);

/// Why an identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentError {
    #[error("bad build ID {text:?}: expected an even number of hex digits (2 to 128)")]
    BadBuildId { text: String },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: no GNU build-id note")]
    NoBuildId { what: String },
    #[error("{what}: not a kernel image (neither an ELF vmlinux nor an x86 bzImage)")]
    NotAKernel { what: String },
    #[error(
        "{what}: bzImage boot protocol {version:#06x} is too old (need 2.08 for the payload fields)"
    )]
    OldBootProtocol { what: String, version: u16 },
    #[error("{what}: payload at {offset}+{length} lies outside the {size}-byte image")]
    BadPayload {
        what: String,
        offset: usize,
        length: usize,
        size: usize,
    },
    #[error("{what}: unsupported kernel compression ({format})")]
    UnsupportedCompression { what: String, format: &'static str },
    #[error("{what}: cannot decompress the {format} payload: {message}")]
    Decompress {
        what: String,
        format: &'static str,
        message: String,
    },
    #[error("{what}: bad ELF: {message}")]
    BadElf { what: String, message: String },
    #[error("{what}: no {MODINFO_SECTION} section (not a kernel module?)")]
    NoModinfo { what: String },
    #[error("{what}: no vermagic in {MODINFO_SECTION}")]
    NoVermagic { what: String },
    #[error(
        "{what}: the module's name is neither in {MODINFO_SECTION} nor in {THIS_MODULE_SECTION}"
    )]
    NoModuleName { what: String },
}

impl BuildId {
    /// Wraps the raw descriptor bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentError> {
        if bytes.is_empty() || bytes.len() > 64 {
            return Err(IdentError::BadBuildId {
                text: hex::encode(bytes),
            });
        }
        Ok(BuildId(bytes.to_vec()))
    }

    /// The raw descriptor bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lowercase hex, as in ref names.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// The first 12 hex digits, for display.
    pub fn short(&self) -> String {
        let hex = self.to_hex();
        hex[..hex.len().min(12)].to_owned()
    }
}

impl FromStr for BuildId {
    type Err = IdentError;

    /// Accepts hex in either case; the canonical form is lowercase.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || IdentError::BadBuildId {
            text: text.to_owned(),
        };
        let bytes = hex::decode(text).map_err(|_| bad())?;
        BuildId::from_bytes(&bytes).map_err(|_| bad())
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BuildId({})", self.to_hex())
    }
}

impl Serialize for BuildId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for BuildId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let id: BuildId = text.parse().map_err(serde::de::Error::custom)?;
        if id.to_hex() != text {
            return Err(serde::de::Error::custom(format!(
                "build ID {text:?} is not in lowercase hex"
            )));
        }
        Ok(id)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, IdentError> {
    std::fs::read(path).map_err(|source| IdentError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The build ID of the running kernel.
pub fn running_kernel_build_id() -> Result<BuildId, IdentError> {
    let path = Path::new(SYS_KERNEL_NOTES);
    let notes = read_file(path)?;
    build_id_from_note_stream(&notes, cfg!(target_endian = "little")).ok_or_else(|| {
        IdentError::NoBuildId {
            what: SYS_KERNEL_NOTES.to_owned(),
        }
    })
}

/// The release of the running kernel (`uname -r`).
pub fn running_kernel_release() -> Result<String, IdentError> {
    let path = Path::new(PROC_OSRELEASE);
    let text = read_file(path)?;
    Ok(String::from_utf8_lossy(&text).trim().to_owned())
}

/// Finds the GNU build-id note in a raw stream of ELF notes (4-byte aligned, as the
/// kernel emits them).
pub fn build_id_from_note_stream(mut data: &[u8], little_endian: bool) -> Option<BuildId> {
    let word = |b: &[u8]| -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if little_endian {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    while data.len() >= 12 {
        let namesz = word(&data[0..4]) as usize;
        let descsz = word(&data[4..8]) as usize;
        let kind = word(&data[8..12]);
        let name_end = 12usize.checked_add(namesz)?;
        let desc_start = align4(name_end)?;
        let desc_end = desc_start.checked_add(descsz)?;
        if desc_end > data.len() {
            return None;
        }
        let name = &data[12..name_end];
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        if kind == NT_GNU_BUILD_ID && name == GNU_NOTE_NAME {
            return BuildId::from_bytes(&data[desc_start..desc_end]).ok();
        }
        let next = align4(desc_end)?.min(data.len());
        data = &data[next..];
    }
    None
}

/// A kernel: its build ID and, when it can be told, its release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelIdentity {
    pub build_id: BuildId,
    pub release: Option<String>,
}

/// The running kernel's identity.
pub fn running_kernel() -> Result<KernelIdentity, IdentError> {
    Ok(KernelIdentity {
        build_id: running_kernel_build_id()?,
        release: running_kernel_release().ok(),
    })
}

/// The identity of a kernel image file: the build ID of the vmlinux in it and the
/// release from the bzImage's `kernel_version` string (or the vmlinux's banner).
pub fn image_identity(path: &Path) -> Result<KernelIdentity, IdentError> {
    let bytes = read_file(path)?;
    let what = path.display().to_string();
    if bytes.starts_with(&object::elf::ELFMAG) {
        return Ok(KernelIdentity {
            build_id: elf_build_id(&bytes, &what)?,
            release: banner_release(&bytes),
        });
    }
    let vmlinux = bzimage_vmlinux(&bytes, &what)?;
    Ok(KernelIdentity {
        build_id: elf_build_id(&vmlinux, &format!("{what} (decompressed vmlinux)"))?,
        release: bzimage_release(&bytes).or_else(|| banner_release(&vmlinux)),
    })
}

/// The first word of a bzImage's `kernel_version` string.
pub fn bzimage_release(image: &[u8]) -> Option<String> {
    use bzimage::*;
    let field = image.get(KERNEL_VERSION..KERNEL_VERSION + 2)?;
    let offset = u16::from_le_bytes([field[0], field[1]]) as usize;
    if offset == 0 {
        return None;
    }
    first_word(image.get(offset + KERNEL_VERSION_BASE..)?)
}

/// The release in `linux_banner` ("Linux version 6.1.0-56-cloud-amd64 (...").
pub fn banner_release(vmlinux: &[u8]) -> Option<String> {
    const BANNER: &[u8] = b"Linux version ";
    let at = vmlinux.windows(BANNER.len()).position(|w| w == BANNER)?;
    first_word(&vmlinux[at + BANNER.len()..])
}

fn first_word(bytes: &[u8]) -> Option<String> {
    let end = bytes
        .iter()
        .position(|&b| b == 0 || b.is_ascii_whitespace())
        .unwrap_or(bytes.len().min(64));
    let word = std::str::from_utf8(&bytes[..end]).ok()?;
    (!word.is_empty() && word.len() <= 64).then(|| word.to_owned())
}

/// The build ID of a kernel image file: a bzImage or a raw vmlinux.
pub fn image_build_id(path: &Path) -> Result<BuildId, IdentError> {
    let bytes = read_file(path)?;
    image_build_id_of(&bytes, &path.display().to_string())
}

/// The build ID of kernel image bytes; `what` names them in errors.
pub fn image_build_id_of(bytes: &[u8], what: &str) -> Result<BuildId, IdentError> {
    if bytes.starts_with(&object::elf::ELFMAG) {
        return elf_build_id(bytes, what);
    }
    let vmlinux = bzimage_vmlinux(bytes, what)?;
    elf_build_id(&vmlinux, &format!("{what} (decompressed vmlinux)"))
}

/// The build ID note of an ELF file, from its note sections or its `PT_NOTE` segments.
pub fn elf_build_id(bytes: &[u8], what: &str) -> Result<BuildId, IdentError> {
    let bad = |e: object::Error| IdentError::BadElf {
        what: what.to_owned(),
        message: e.to_string(),
    };
    let found = match object::FileKind::parse(bytes).map_err(bad)? {
        object::FileKind::Elf64 => {
            elf_notes_build_id::<object::elf::FileHeader64<object::Endianness>>(bytes)
                .map_err(bad)?
        }
        object::FileKind::Elf32 => {
            elf_notes_build_id::<object::elf::FileHeader32<object::Endianness>>(bytes)
                .map_err(bad)?
        }
        _ => {
            return Err(IdentError::NotAKernel {
                what: what.to_owned(),
            });
        }
    };
    found.ok_or_else(|| IdentError::NoBuildId {
        what: what.to_owned(),
    })
}

fn elf_notes_build_id<Elf: FileHeader<Endian = object::Endianness>>(
    data: &[u8],
) -> object::Result<Option<BuildId>> {
    let header = Elf::parse(data)?;
    let endian = header.endian()?;
    let is_build_id = |note: &object::read::elf::Note<'_, Elf>| {
        note.n_type(endian) == object::elf::NT_GNU_BUILD_ID && note.name() == GNU_NOTE_NAME
    };
    for section in header.sections(endian, data)?.iter() {
        if let Some(mut notes) = section.notes(endian, data)? {
            while let Some(note) = notes.next()? {
                if is_build_id(&note) {
                    return Ok(BuildId::from_bytes(note.desc()).ok());
                }
            }
        }
    }
    for segment in header.program_headers(endian, data)? {
        if let Some(mut notes) = segment.notes(endian, data)? {
            while let Some(note) = notes.next()? {
                if is_build_id(&note) {
                    return Ok(BuildId::from_bytes(note.desc()).ok());
                }
            }
        }
    }
    Ok(None)
}

/// The compressions the kernel can use for its payload, by magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Lzma,
    Zstd,
    Lz4Legacy,
    Bzip2,
    Lzo,
    /// An uncompressed ELF (`CONFIG_KERNEL_UNCOMPRESSED`).
    None,
}

impl Compression {
    /// Recognises a payload by its first bytes (`scripts/Makefile.lib` picks the tool;
    /// the magics are each format's own).
    pub fn detect(payload: &[u8]) -> Option<Compression> {
        const TABLE: &[(&[u8], Compression)] = &[
            (&[0x1f, 0x8b], Compression::Gzip),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (&[0x02, 0x21, 0x4c, 0x18], Compression::Lz4Legacy),
            (b"BZh", Compression::Bzip2),
            (&[0x89, b'L', b'Z', b'O'], Compression::Lzo),
            (&[0x5d, 0x00, 0x00], Compression::Lzma),
            (&object::elf::ELFMAG, Compression::None),
        ];
        TABLE
            .iter()
            .find(|(magic, _)| payload.starts_with(magic))
            .map(|(_, c)| *c)
    }

    fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lzma => "lzma",
            Compression::Zstd => "zstd",
            Compression::Lz4Legacy => "lz4",
            Compression::Bzip2 => "bzip2",
            Compression::Lzo => "lzo",
            Compression::None => "none",
        }
    }
}

/// The compressed payload of a bzImage, located through its setup header.
pub fn bzimage_payload<'a>(image: &'a [u8], what: &str) -> Result<&'a [u8], IdentError> {
    use bzimage::*;
    let not_kernel = || IdentError::NotAKernel {
        what: what.to_owned(),
    };
    if image.len() < PAYLOAD_LENGTH + 4 || &image[HEADER..HEADER + 4] != HEADER_MAGIC {
        return Err(not_kernel());
    }
    let le16 = |at: usize| u16::from_le_bytes([image[at], image[at + 1]]);
    let le32 = |at: usize| {
        u32::from_le_bytes([image[at], image[at + 1], image[at + 2], image[at + 3]]) as usize
    };
    let version = le16(VERSION);
    if version < MIN_VERSION_WITH_PAYLOAD {
        return Err(IdentError::OldBootProtocol {
            what: what.to_owned(),
            version,
        });
    }
    let setup_sects = match image[SETUP_SECTS] as usize {
        0 => DEFAULT_SETUP_SECTS,
        n => n,
    };
    // The protected-mode code follows the boot sector and the setup sectors.
    let offset = (setup_sects + 1) * SECTOR + le32(PAYLOAD_OFFSET);
    let length = le32(PAYLOAD_LENGTH);
    let bad = || IdentError::BadPayload {
        what: what.to_owned(),
        offset,
        length,
        size: image.len(),
    };
    let end = offset.checked_add(length).ok_or_else(bad)?;
    image.get(offset..end).ok_or_else(bad)
}

/// Decompresses the vmlinux ELF inside a bzImage.
pub fn bzimage_vmlinux(image: &[u8], what: &str) -> Result<Vec<u8>, IdentError> {
    let payload = bzimage_payload(image, what)?;
    decompress_payload(payload, what)
}

/// Decompresses a kernel payload (the format is recognised by its magic).
pub fn decompress_payload(payload: &[u8], what: &str) -> Result<Vec<u8>, IdentError> {
    let format = Compression::detect(payload).ok_or_else(|| IdentError::NotAKernel {
        what: what.to_owned(),
    })?;
    let fail = |message: String| IdentError::Decompress {
        what: what.to_owned(),
        format: format.name(),
        message,
    };
    // `size_append` (scripts/Makefile.lib) puts the decompressed size, le32, after the
    // compressed stream; it bounds the output and ends the LZ4 legacy chunk list.
    let appended_size = payload
        .len()
        .checked_sub(4)
        .map(|at| {
            u32::from_le_bytes([
                payload[at],
                payload[at + 1],
                payload[at + 2],
                payload[at + 3],
            ]) as usize
        })
        .unwrap_or(0);
    let capacity = reserve_for(appended_size, payload.len());
    let limited = |reader: &mut dyn Read| -> Result<Vec<u8>, IdentError> {
        let mut out = Vec::with_capacity(capacity);
        reader
            .take(MAX_VMLINUX_SIZE as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| fail(e.to_string()))?;
        if out.len() > MAX_VMLINUX_SIZE {
            return Err(fail(format!("more than {MAX_VMLINUX_SIZE} bytes")));
        }
        Ok(out)
    };
    match format {
        Compression::None => Ok(payload.to_vec()),
        Compression::Gzip => limited(&mut flate2::read::GzDecoder::new(payload)),
        Compression::Zstd => {
            let mut decoder = ruzstd::decoding::StreamingDecoder::new(payload)
                .map_err(|e| fail(e.to_string()))?;
            limited(&mut decoder)
        }
        Compression::Xz | Compression::Lzma => {
            let mut input = std::io::BufReader::new(payload);
            let mut out = Vec::with_capacity(capacity);
            let options = lzma_rs::decompress::Options {
                memlimit: Some(MAX_VMLINUX_SIZE),
                ..Default::default()
            };
            // The generic kernel's xz has the x86 BCJ filter, which lzma-rs lacks.
            if format == Compression::Xz && crate::xz::needs_bcj(payload) {
                return crate::xz::decompress(payload, MAX_VMLINUX_SIZE).map_err(fail);
            }
            let result = if format == Compression::Xz {
                lzma_rs::xz_decompress(&mut input, &mut out)
            } else {
                lzma_rs::lzma_decompress_with_options(&mut input, &mut out, &options)
            };
            // The appended size trails the xz stream; lzma-rs reports it as garbage
            // after a complete stream, which is harmless when the output is whole.
            match result {
                Ok(()) => Ok(out),
                Err(_) if appended_size != 0 && out.len() == appended_size => Ok(out),
                Err(e) => Err(fail(e.to_string())),
            }
        }
        Compression::Lz4Legacy => lz4_legacy_decompress(payload, appended_size).map_err(fail),
        Compression::Bzip2 | Compression::Lzo => Err(IdentError::UnsupportedCompression {
            what: what.to_owned(),
            format: format.name(),
        }),
    }
}

/// How much to reserve for the output of `compressed` bytes that say they hold
/// `claimed`: what they can plausibly hold, within [`MAX_VMLINUX_SIZE`].
fn reserve_for(claimed: usize, compressed: usize) -> usize {
    claimed
        .min(compressed.saturating_mul(MAX_RATIO))
        .min(MAX_VMLINUX_SIZE)
}

/// Decompresses the LZ4 "legacy" format that `lz4 -l` writes and
/// `lib/decompress_unlz4.c` reads: a magic, then chunks of `le32 size` + LZ4 block,
/// each at most [`LZ4_LEGACY_CHUNK`] uncompressed; a repeated magic starts a new
/// archive. `expected` (the appended size, or 0) ends the chunk list.
fn lz4_legacy_decompress(data: &[u8], expected: usize) -> Result<Vec<u8>, String> {
    let le32 = |at: usize| -> Option<u32> {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut out = Vec::with_capacity(reserve_for(expected, data.len()));
    let mut at = 4; // after the first magic
    while at + 4 <= data.len() {
        if expected != 0 && out.len() >= expected {
            break;
        }
        let size = le32(at).ok_or("truncated chunk header")?;
        at += 4;
        if size == LZ4_LEGACY_MAGIC {
            continue;
        }
        let size = size as usize;
        let chunk = data
            .get(at..at + size)
            .ok_or_else(|| format!("chunk of {size} bytes at offset {} is truncated", at - 4))?;
        let start = out.len();
        if start + LZ4_LEGACY_CHUNK > MAX_VMLINUX_SIZE {
            return Err(format!("more than {MAX_VMLINUX_SIZE} bytes"));
        }
        out.resize(start + LZ4_LEGACY_CHUNK, 0);
        let n = lz4_flex::block::decompress_into(chunk, &mut out[start..])
            .map_err(|e| format!("chunk at offset {}: {e}", at - 4))?;
        out.truncate(start + n);
        at += size;
    }
    if expected != 0 && out.len() != expected {
        return Err(format!(
            "decompressed {} bytes, the image says {expected}",
            out.len()
        ));
    }
    Ok(out)
}

/// The `.modinfo` of a kernel module, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModInfo {
    pub entries: Vec<(String, String)>,
    /// The module's own name (`name=`, or the name in `struct module`).
    pub name: String,
}

impl ModInfo {
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The vermagic string, e.g. `6.1.0-56-cloud-amd64 SMP preempt mod_unload modversions `.
    pub fn vermagic(&self) -> Option<&str> {
        self.get("vermagic")
    }

    /// The kernel release the module was built for: the first word of vermagic.
    pub fn release(&self) -> Option<&str> {
        self.vermagic().and_then(|v| v.split_whitespace().next())
    }

    /// Whether modpost marked it a livepatch module (`MODULE_INFO(livepatch, "Y")`,
    /// checked by `check_modinfo_livepatch()` in `kernel/module/main.c`).
    pub fn is_livepatch(&self) -> bool {
        self.get("livepatch") == Some("Y")
    }
}

/// Reads the `.modinfo` of module bytes; `what` names them in errors.
pub fn modinfo(bytes: &[u8], what: &str) -> Result<ModInfo, IdentError> {
    let file = object::File::parse(bytes).map_err(|e| IdentError::BadElf {
        what: what.to_owned(),
        message: e.to_string(),
    })?;
    let section = file
        .section_by_name(MODINFO_SECTION)
        .ok_or_else(|| IdentError::NoModinfo {
            what: what.to_owned(),
        })?;
    let data = section.data().map_err(|e| IdentError::BadElf {
        what: what.to_owned(),
        message: e.to_string(),
    })?;
    let entries: Vec<(String, String)> = data
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let text = String::from_utf8_lossy(s);
            let (k, v) = text.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect();
    let name = entries
        .iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.clone())
        .or_else(|| this_module_name(&file))
        .ok_or_else(|| IdentError::NoModuleName {
            what: what.to_owned(),
        })?;
    let info = ModInfo { entries, name };
    if info.vermagic().is_none() {
        return Err(IdentError::NoVermagic {
            what: what.to_owned(),
        });
    }
    Ok(info)
}

/// The name in `struct module` (`.gnu.linkonce.this_module`), for modules whose
/// `.modinfo` lacks `name=`.
fn this_module_name(file: &object::File<'_>) -> Option<String> {
    let data = file.section_by_name(THIS_MODULE_SECTION)?.data().ok()?;
    let field = data.get(THIS_MODULE_NAME_OFFSET..THIS_MODULE_NAME_OFFSET + MODULE_NAME_LEN)?;
    let end = field.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(&field[..end]).ok()?;
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [u8; 20] = [
        0x4a, 0x5a, 0x9b, 0x0a, 0xff, 0xb6, 0x6c, 0x43, 0x7a, 0xbc, 0xd4, 0x55, 0xd2, 0x73, 0x8a,
        0xf8, 0x79, 0x98, 0x5f, 0xa9,
    ];

    /// What a payload claims is believed only as far as its size allows (the
    /// `bzimage` fuzz target's 4 GiB claim in 2,359 bytes reserved 1 GiB).
    #[test]
    fn the_reservation_is_bounded_by_the_payload() {
        assert_eq!(reserve_for(4 << 30, 2359), 2359 * MAX_RATIO);
        assert_eq!(reserve_for(40 << 20, 10 << 20), 40 << 20);
        assert_eq!(reserve_for(usize::MAX, usize::MAX), MAX_VMLINUX_SIZE);
    }

    #[test]
    fn build_id_text() {
        let id: BuildId = "4A5A9b0a".parse().unwrap();
        assert_eq!(id.to_string(), "4a5a9b0a");
        assert!("abc".parse::<BuildId>().is_err());
        assert!("".parse::<BuildId>().is_err());
        assert!("zz".parse::<BuildId>().is_err());
    }

    #[test]
    fn note_stream_like_sys_kernel_notes() {
        // The first 0x90 bytes of a real /sys/kernel/notes: Xen and Linux notes around
        // the build ID.
        let mut notes = Vec::new();
        let mut push = |name: &[u8], kind: u32, desc: &[u8]| {
            notes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            notes.extend_from_slice(&kind.to_le_bytes());
            notes.extend_from_slice(name);
            notes.resize(notes.len().next_multiple_of(4), 0);
            notes.extend_from_slice(desc);
            notes.resize(notes.len().next_multiple_of(4), 0);
        };
        push(b"Xen\0", 0x13, &[0; 4]);
        push(b"GNU\0", NT_GNU_BUILD_ID, &ID);
        push(b"Linux\0", 0x100, b"6.1\0");
        let id = build_id_from_note_stream(&notes, true).unwrap();
        assert_eq!(id.to_hex(), "4a5a9b0affb66c437abcd455d2738af879985fa9");
        assert!(build_id_from_note_stream(&notes[..20], true).is_none());
        assert!(build_id_from_note_stream(&[], true).is_none());
    }

    #[test]
    fn running_kernel_has_a_build_id() {
        // Every kernel this runs on (a VM, a container host) exposes its notes.
        if Path::new(SYS_KERNEL_NOTES).exists() {
            running_kernel_build_id().unwrap();
        }
    }
}
