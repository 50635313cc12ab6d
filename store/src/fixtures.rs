//! Synthetic inputs for tests and benchmarks: small `.ko`-like ELF files with a
//! `.modinfo` and livepatch tables, and kernel images (a vmlinux ELF with a build-id
//! note, wrapped in a bzImage with any of the kernel's compressions).
//!
//! Not for production use: nothing here is loadable by a kernel. It lives in the
//! library so that the store's, the CLI's and the engine's tests share one generator.

use std::io::Write;

use object::write::{Object, Relocation, StandardSection, Symbol, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, RelocationEncoding, RelocationFlags, RelocationKind,
    SectionKind, SymbolFlags, SymbolKind, SymbolScope,
};

use crate::ident::{LZ4_LEGACY_CHUNK, LZ4_LEGACY_MAGIC, NT_GNU_BUILD_ID, bzimage};
use crate::klp::{KLP_FUNC_NEW_FUNC, KLP_FUNC_OLD_NAME, KLP_FUNC_OLD_SYMPOS, KLP_OBJECT_FUNCS};
use crate::model::{FunctionRef, VMLINUX};

/// The release of the Debian 6.1 cloud kernel that kstack targets.
pub const RELEASE: &str = "6.1.0-56-cloud-amd64";
/// Its vermagic, as modpost writes it (as in a module kbuild built for it).
pub const VERMAGIC: &str = "6.1.0-56-cloud-amd64 SMP preempt mod_unload modversions ";

/// What a synthetic module holds.
#[derive(Debug, Clone)]
pub struct FakeModule {
    /// Its own name (`name=` and `struct module`).
    pub name: String,
    pub vermagic: String,
    /// Adds `livepatch=Y`.
    pub livepatch: bool,
    /// Whether `.modinfo` has `name=` (else only `struct module` names it).
    pub name_in_modinfo: bool,
    /// The functions its `klp_func` tables replace.
    pub functions: Vec<FunctionRef>,
    /// Bytes of incompressible filler, to reach a realistic size.
    pub padding: usize,
    /// Varies the filler so two modules with the same fields differ.
    pub seed: u64,
}

impl FakeModule {
    /// A livepatch module for [`RELEASE`] replacing `functions` (in vmlinux).
    pub fn livepatch(name: &str, functions: &[&str]) -> FakeModule {
        FakeModule {
            name: name.to_owned(),
            vermagic: VERMAGIC.to_owned(),
            livepatch: true,
            name_in_modinfo: true,
            functions: functions
                .iter()
                .map(|f| f.parse().expect("fixture function names are valid"))
                .collect(),
            padding: 0,
            seed: 0,
        }
    }

    /// The ELF bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);

        let mut modinfo = format!("license=GPL\0vermagic={}\0", self.vermagic);
        if self.livepatch {
            modinfo.push_str("livepatch=Y\0");
        }
        if self.name_in_modinfo {
            modinfo.push_str(&format!("name={}\0", self.name));
        }
        let modinfo_id = obj.add_section(vec![], b".modinfo".to_vec(), SectionKind::ReadOnlyData);
        obj.append_section_data(modinfo_id, modinfo.as_bytes(), 1);

        let this_module = obj.add_section(
            vec![],
            b".gnu.linkonce.this_module".to_vec(),
            SectionKind::Data,
        );
        let mut module_struct = vec![0u8; 0x80];
        let name = self.name.as_bytes();
        let n = name.len().min(55);
        module_struct[24..24 + n].copy_from_slice(&name[..n]);
        obj.append_section_data(this_module, &module_struct, 64);
        let this_module_sym = obj.add_symbol(Symbol {
            name: b"__this_module".to_vec(),
            value: 0,
            size: module_struct.len() as u64,
            kind: SymbolKind::Data,
            scope: SymbolScope::Dynamic,
            weak: false,
            section: SymbolSection::Section(this_module),
            flags: SymbolFlags::None,
        });

        let text = obj.section_id(StandardSection::Text);
        let strings = obj.section_id(StandardSection::ReadOnlyString);
        let data = obj.section_id(StandardSection::Data);
        let strings_sym = obj.section_symbol(strings);
        let abs64 = RelocationFlags::Generic {
            kind: RelocationKind::Absolute,
            encoding: RelocationEncoding::Generic,
            size: 64,
        };

        // One klp_func array per object, then the klp_object array, then klp_patch.
        let mut objects: Vec<&str> = Vec::new();
        for f in &self.functions {
            if !objects.contains(&f.object.as_str()) {
                objects.push(&f.object);
            }
        }
        const FUNC_SIZE: usize = 0x98;
        const OBJECT_SIZE: usize = 0xa0;
        let mut func_arrays = Vec::new();
        for object in &objects {
            let funcs: Vec<&FunctionRef> = self
                .functions
                .iter()
                .filter(|f| f.object == *object)
                .collect();
            let mut array = vec![0u8; FUNC_SIZE * (funcs.len() + 1)];
            for (i, f) in funcs.iter().enumerate() {
                let at = i * FUNC_SIZE + KLP_FUNC_OLD_SYMPOS;
                array[at..at + 8].copy_from_slice(&f.sympos.to_le_bytes());
            }
            let base = obj.append_section_data(data, &array, 8);
            for (i, f) in funcs.iter().enumerate() {
                let name_at =
                    obj.append_section_data(strings, format!("{}\0", f.name).as_bytes(), 1);
                let code = obj.append_section_data(text, &[0xc3; 16], 16);
                let func_sym = obj.add_symbol(Symbol {
                    name: format!("livepatch_{}", f.name).into_bytes(),
                    value: code,
                    size: 16,
                    kind: SymbolKind::Text,
                    scope: SymbolScope::Compilation,
                    weak: false,
                    section: SymbolSection::Section(text),
                    flags: SymbolFlags::None,
                });
                let entry = base + (i * FUNC_SIZE) as u64;
                obj.add_relocation(
                    data,
                    Relocation {
                        offset: entry + KLP_FUNC_OLD_NAME as u64,
                        symbol: strings_sym,
                        addend: name_at as i64,
                        flags: abs64,
                    },
                )
                .expect("x86-64 ELF supports absolute 64-bit relocations");
                obj.add_relocation(
                    data,
                    Relocation {
                        offset: entry + KLP_FUNC_NEW_FUNC as u64,
                        symbol: func_sym,
                        addend: 0,
                        flags: abs64,
                    },
                )
                .expect("x86-64 ELF supports absolute 64-bit relocations");
            }
            func_arrays.push((*object, base));
        }
        let data_sym = obj.section_symbol(data);
        let objs_base =
            obj.append_section_data(data, &vec![0u8; OBJECT_SIZE * (objects.len() + 1)], 8);
        for (i, (object, funcs_at)) in func_arrays.iter().enumerate() {
            let entry = objs_base + (i * OBJECT_SIZE) as u64;
            if *object != VMLINUX {
                let name_at = obj.append_section_data(strings, format!("{object}\0").as_bytes(), 1);
                obj.add_relocation(
                    data,
                    Relocation {
                        offset: entry,
                        symbol: strings_sym,
                        addend: name_at as i64,
                        flags: abs64,
                    },
                )
                .expect("x86-64 ELF supports absolute 64-bit relocations");
            }
            obj.add_relocation(
                data,
                Relocation {
                    offset: entry + KLP_OBJECT_FUNCS as u64,
                    symbol: data_sym,
                    addend: *funcs_at as i64,
                    flags: abs64,
                },
            )
            .expect("x86-64 ELF supports absolute 64-bit relocations");
        }
        let patch_at = obj.append_section_data(data, &[0u8; 0x40], 8);
        for (offset, symbol, addend) in [
            (patch_at, this_module_sym, 0),
            (patch_at + 8, data_sym, objs_base as i64),
        ] {
            obj.add_relocation(
                data,
                Relocation {
                    offset,
                    symbol,
                    addend,
                    flags: abs64,
                },
            )
            .expect("x86-64 ELF supports absolute 64-bit relocations");
        }

        if self.padding > 0 {
            let pad = obj.add_section(
                vec![],
                b".kstack.padding".to_vec(),
                SectionKind::ReadOnlyData,
            );
            obj.append_section_data(pad, &filler(self.padding, self.seed), 1);
        } else if self.seed != 0 {
            let pad = obj.add_section(
                vec![],
                b".kstack.padding".to_vec(),
                SectionKind::ReadOnlyData,
            );
            obj.append_section_data(pad, &self.seed.to_le_bytes(), 1);
        }
        obj.write()
            .expect("writing an in-memory x86-64 ELF object cannot fail")
    }
}

/// `len` pseudo-random bytes (xorshift), reproducible from `seed`.
pub fn filler(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A vmlinux-like ELF with a `.notes` section holding the GNU build-id note
/// `build_id`, and `filler` bytes of compressible text.
pub fn fake_vmlinux(build_id: &[u8], filler_len: usize) -> Vec<u8> {
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let notes = obj.add_section(vec![], b".notes".to_vec(), SectionKind::Note);
    let mut note = Vec::new();
    // Another vendor's note first, as in the real kernel (Xen, Linux).
    for (name, kind, desc) in [
        (&b"Linux\0"[..], 6u32, &b"6.1.0\0"[..]),
        (&b"GNU\0"[..], NT_GNU_BUILD_ID, build_id),
    ] {
        note.extend_from_slice(&(name.len() as u32).to_le_bytes());
        note.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        note.extend_from_slice(&kind.to_le_bytes());
        note.extend_from_slice(name);
        note.resize(note.len().next_multiple_of(4), 0);
        note.extend_from_slice(desc);
        note.resize(note.len().next_multiple_of(4), 0);
    }
    obj.append_section_data(notes, &note, 4);
    let text = obj.section_id(StandardSection::Text);
    let body: Vec<u8> = b"kstack fake kernel text "
        .iter()
        .copied()
        .cycle()
        .take(filler_len)
        .collect();
    obj.append_section_data(text, &body, 16);
    obj.write()
        .expect("writing an in-memory x86-64 ELF object cannot fail")
}

/// The compressions [`fake_bzimage`] can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeCompression {
    Gzip,
    Xz,
    Zstd,
    Lz4Legacy,
    None,
}

/// Compresses `data` as the kernel's build does, with the decompressed size appended
/// (`size_append` in `scripts/Makefile.lib`).
pub fn compress_like_kbuild(data: &[u8], how: FakeCompression) -> Vec<u8> {
    let mut out = match how {
        FakeCompression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(data).expect("writing to a Vec cannot fail");
            enc.finish().expect("writing to a Vec cannot fail")
        }
        FakeCompression::Xz => {
            let mut out = Vec::new();
            lzma_rs::xz_compress(&mut std::io::BufReader::new(data), &mut out)
                .expect("compressing into a Vec cannot fail");
            out
        }
        FakeCompression::Zstd => {
            ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
        }
        FakeCompression::Lz4Legacy => {
            let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
            for chunk in data.chunks(LZ4_LEGACY_CHUNK) {
                let block = lz4_flex::block::compress(chunk);
                out.extend_from_slice(&(block.len() as u32).to_le_bytes());
                out.extend_from_slice(&block);
            }
            out
        }
        FakeCompression::None => data.to_vec(),
    };
    if how != FakeCompression::None {
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    }
    out
}

/// A bzImage around `vmlinux`: boot sector, one setup sector with the header, some
/// decompressor code, then the payload.
pub fn fake_bzimage(vmlinux: &[u8], how: FakeCompression) -> Vec<u8> {
    let payload = compress_like_kbuild(vmlinux, how);
    let setup_sects = 1usize;
    let mut image = vec![0u8; (setup_sects + 1) * bzimage::SECTOR];
    image[bzimage::SETUP_SECTS] = setup_sects as u8;
    image[bzimage::HEADER..bzimage::HEADER + 4].copy_from_slice(bzimage::HEADER_MAGIC);
    image[bzimage::VERSION..bzimage::VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
    let version = format!("{RELEASE} (fixture@kstack) #1 SMP\0");
    let version_at = 0x300;
    image[version_at..version_at + version.len()].copy_from_slice(version.as_bytes());
    image[bzimage::KERNEL_VERSION..bzimage::KERNEL_VERSION + 2]
        .copy_from_slice(&((version_at - bzimage::KERNEL_VERSION_BASE) as u16).to_le_bytes());
    let decompressor_len = 0x300u32;
    image[bzimage::PAYLOAD_OFFSET..bzimage::PAYLOAD_OFFSET + 4]
        .copy_from_slice(&decompressor_len.to_le_bytes());
    image[bzimage::PAYLOAD_LENGTH..bzimage::PAYLOAD_LENGTH + 4]
        .copy_from_slice(&(payload.len() as u32).to_le_bytes());
    image.extend(std::iter::repeat_n(0x90u8, decompressor_len as usize));
    image.extend_from_slice(&payload);
    image.extend_from_slice(&[0u8; 64]); // trailing setup data / padding
    image
}

/// The real Debian cloud kernel image, for tests that want one: `$KSTACK_TEST_VMLINUZ`,
/// else the one `cargo xtask setup` unpacks into the kstack cache (`$KSTACK_CACHE`,
/// else `~/.cache/kstack`), if present.
pub fn real_vmlinuz() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(p) = std::env::var_os("KSTACK_TEST_VMLINUZ") {
        return Some(PathBuf::from(p));
    }
    let cache = match std::env::var_os("KSTACK_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/kstack"),
    };
    // The kernel set-up resolved (`kernels/current`), else the one these fixtures
    // describe.
    let current = std::fs::read_to_string(cache.join("kernels/current"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| RELEASE.to_owned());
    [
        format!("kernels/{current}/root/boot/vmlinuz-{current}"),
        format!("kernels/{RELEASE}/root/boot/vmlinuz-{RELEASE}"),
    ]
    .iter()
    .map(|p| cache.join(p))
    .find(|p| p.is_file())
}
