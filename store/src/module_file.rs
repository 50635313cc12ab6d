//! Kernel modules as `/lib/modules/<release>` holds them: plain `.ko`, or compressed
//! by kbuild's `modules_install` (`CONFIG_MODULE_COMPRESS_XZ`: `xz --check=crc32
//! --lzma2=dict=1MiB`, as Debian's 6.12 packages ship them; `CONFIG_MODULE_COMPRESS_ZSTD`;
//! `CONFIG_MODULE_COMPRESS_GZIP`). What kmod's `modprobe` loads is the decompressed
//! ELF, so that is what a proof of a module's code compares against.

use std::io::Read;
use std::path::Path;

/// The largest module accepted, decompressed (the biggest in-tree modules are tens of
/// MiB with debug info stripped).
pub const MAX_MODULE_SIZE: usize = 512 << 20;

/// The ELF bytes of module file `path`, decompressed according to its name.
pub fn read_module(path: &Path) -> std::io::Result<Vec<u8>> {
    let data = std::fs::read(path)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    decompress_module(name, &data).map_err(|detail| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("cannot decompress the module: {detail}"),
        )
    })
}

/// The ELF bytes of module file `name` whose contents are `data`.
pub fn decompress_module(name: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    let limited = |reader: &mut dyn Read| -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        reader
            .take(MAX_MODULE_SIZE as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        if out.len() > MAX_MODULE_SIZE {
            return Err(format!("more than {MAX_MODULE_SIZE} bytes"));
        }
        Ok(out)
    };
    if name.ends_with(".ko") {
        Ok(data.to_vec())
    } else if name.ends_with(".ko.xz") {
        crate::xz::decompress(data, MAX_MODULE_SIZE)
    } else if name.ends_with(".ko.zst") {
        let mut decoder =
            ruzstd::decoding::StreamingDecoder::new(data).map_err(|e| e.to_string())?;
        limited(&mut decoder)
    } else if name.ends_with(".ko.gz") {
        limited(&mut flate2::read::GzDecoder::new(data))
    } else {
        Err(format!(
            "{name} is not a module file kstack knows (.ko, .ko.xz, .ko.zst, .ko.gz)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each compression kbuild can install a module with, made by the tool kbuild
    /// runs, reads back as the plain bytes.
    #[test]
    fn compressed_modules_read_back_as_their_elf() {
        let dir = tempfile::tempdir().unwrap();
        let plain: Vec<u8> = b"\x7fELF"
            .iter()
            .copied()
            .chain((0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()))
            .collect();
        let ko = dir.path().join("m.ko");
        std::fs::write(&ko, &plain).unwrap();
        for (tool, args, suffix) in [
            (
                "xz",
                &["--check=crc32", "--lzma2=dict=1MiB", "-k"][..],
                "xz",
            ),
            ("zstd", &["-q", "-k", "-T0", "--ultra", "-22"][..], "zst"),
            ("gzip", &["-n", "-k", "-9"][..], "gz"),
        ] {
            let status = std::process::Command::new(tool)
                .args(args)
                .arg(&ko)
                .status()
                .unwrap_or_else(|e| panic!("{tool}: {e} (cargo xtask setup installs it)"));
            assert!(status.success(), "{tool} failed");
            let packed = dir.path().join(format!("m.ko.{suffix}"));
            assert_eq!(read_module(&packed).unwrap(), plain, "{suffix}");
        }
        assert_eq!(read_module(&ko).unwrap(), plain);
        std::fs::write(dir.path().join("bad.ko.xz"), b"not xz").unwrap();
        let err = read_module(&dir.path().join("bad.ko.xz")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(decompress_module("m.ko.bz2", b"").is_err());
    }
}
