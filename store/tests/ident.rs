//! Kernel and module identity read from files: build IDs of raw and compressed
//! kernel images (synthetic ones in every compression, and the real Debian kernel
//! that set-up fetched), and the `.modinfo` of modules.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a test failure

use std::path::Path;
use std::process::Command;

use kstack_fixtures::{FakeCompression, FakeModule, fake_bzimage, fake_vmlinux};
use kstack_store::ident::{
    Compression, LZ4_LEGACY_CHUNK, bzimage_payload, bzimage_vmlinux, image_build_id,
    image_build_id_of, image_identity, modinfo,
};

const ID: [u8; 20] = [
    0x4a, 0x5a, 0x9b, 0x0a, 0xff, 0xb6, 0x6c, 0x43, 0x7a, 0xbc, 0xd4, 0x55, 0xd2, 0x73, 0x8a, 0xf8,
    0x79, 0x98, 0x5f, 0xa9,
];

#[test]
fn raw_vmlinux() {
    let elf = fake_vmlinux(&ID, 1000);
    let id = image_build_id_of(&elf, "vmlinux").unwrap();
    assert_eq!(id.as_bytes(), ID);
}

#[test]
fn bzimage_every_compression() {
    let vmlinux = fake_vmlinux(&ID, 300_000);
    for how in [
        FakeCompression::Gzip,
        FakeCompression::Xz,
        FakeCompression::Zstd,
        FakeCompression::Lz4Legacy,
        FakeCompression::None,
    ] {
        let image = fake_bzimage(&vmlinux, how);
        let id = image_build_id_of(&image, "vmlinuz").unwrap_or_else(|e| panic!("{how:?}: {e}"));
        assert_eq!(id.as_bytes(), ID, "{how:?}");
        assert_eq!(
            bzimage_vmlinux(&image, "vmlinuz").unwrap(),
            vmlinux,
            "{how:?}"
        );
    }
}

#[test]
fn lz4_legacy_spanning_chunks() {
    let vmlinux = fake_vmlinux(&ID, LZ4_LEGACY_CHUNK + 12345);
    let image = fake_bzimage(&vmlinux, FakeCompression::Lz4Legacy);
    assert_eq!(bzimage_vmlinux(&image, "vmlinuz").unwrap(), vmlinux);
}

#[test]
fn bad_images_are_named() {
    let err = image_build_id_of(b"hello", "junk.img").unwrap_err();
    assert_eq!(
        err.to_string(),
        "junk.img: not a kernel image (neither an ELF vmlinux nor an x86 bzImage)"
    );
    let vmlinux = fake_vmlinux(&ID, 1000);
    let mut image = fake_bzimage(&vmlinux, FakeCompression::Gzip);
    image.truncate(image.len() - 200);
    let err = image_build_id_of(&image, "short.img").unwrap_err();
    assert!(
        err.to_string().starts_with("short.img: payload at"),
        "{err}"
    );
    let mut image = fake_bzimage(&vmlinux, FakeCompression::Gzip);
    let start = 1024 + 0x300 + 20;
    image[start..start + 50].fill(0xaa);
    let err = image_build_id_of(&image, "bad.img").unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot decompress the gzip payload"),
        "{err}"
    );
    let mut image = fake_bzimage(&vmlinux, FakeCompression::Gzip);
    image[1024 + 0x300..1024 + 0x303].copy_from_slice(b"BZh");
    let err = image_build_id_of(&image, "bz2.img").unwrap_err();
    assert!(
        err.to_string()
            .contains("unsupported kernel compression (bzip2)"),
        "{err}"
    );
    let no_note = fake_vmlinux(&[], 10);
    let err = image_build_id_of(&no_note, "v").unwrap_err();
    assert_eq!(err.to_string(), "v: no GNU build-id note");
}

/// The Debian cloud kernel that `cargo xtask setup` fetched (or
/// `KSTACK_TEST_VMLINUZ`), whichever release that is: kstack reads the build ID that
/// the kernel's own `scripts/extract-vmlinux` and binutils' `readelf -n` read, finds
/// the compression its `.config` chose, and the release its file is named after.
/// Fails, naming the set-up command, when no kernel is cached.
#[test]
fn real_debian_vmlinuz() {
    let kernel = kstack_fixtures::real_kernel().unwrap_or_else(|e| panic!("{e}"));
    let bytes = std::fs::read(&kernel.vmlinuz).unwrap();
    let payload = bzimage_payload(&bytes, "vmlinuz").unwrap();
    if let Some(config) = &kernel.config {
        assert_eq!(
            Compression::detect(payload),
            Some(configured_compression(config)),
            "{}",
            config.display()
        );
    }
    let extract_vmlinux = kernel.extract_vmlinux.as_deref().unwrap_or_else(|| {
        panic!(
            "no kernel source with scripts/extract-vmlinux in {}: run `{}`",
            kstack_fixtures::kstack_cache().display(),
            kstack_fixtures::SETUP
        )
    });
    let id = image_build_id(&kernel.vmlinuz).unwrap();
    assert_eq!(
        id.to_hex(),
        build_id_by_readelf(&kernel.vmlinuz, extract_vmlinux),
        "{}",
        kernel.vmlinuz.display()
    );
    if let Some(release) = &kernel.release {
        let identity = image_identity(&kernel.vmlinuz).unwrap();
        assert_eq!(identity.build_id, id);
        assert_eq!(identity.release.as_ref(), Some(release));
    }
}

/// The compression a kernel `.config` chose for its image (`CONFIG_KERNEL_<name>=y`,
/// the choice in `init/Kconfig`).
fn configured_compression(config: &Path) -> Compression {
    let text = std::fs::read_to_string(config).unwrap();
    let chosen = text
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_KERNEL_")?.strip_suffix("=y"))
        .unwrap_or_else(|| panic!("{}: no CONFIG_KERNEL_<compression>=y", config.display()));
    match chosen {
        "GZIP" => Compression::Gzip,
        "BZIP2" => Compression::Bzip2,
        "LZMA" => Compression::Lzma,
        "XZ" => Compression::Xz,
        "LZO" => Compression::Lzo,
        "LZ4" => Compression::Lz4Legacy,
        "ZSTD" => Compression::Zstd,
        "UNCOMPRESSED" => Compression::None,
        other => panic!("{}: unknown CONFIG_KERNEL_{other}", config.display()),
    }
}

/// The build ID of a bzImage found without kstack: the kernel source's
/// `scripts/extract-vmlinux` finds and decompresses the payload with the usual
/// command-line tools (`lz4`, `unxz`, ...), and `readelf -n` reads the GNU note.
fn build_id_by_readelf(vmlinuz: &Path, extract_vmlinux: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let vmlinux = dir.path().join("vmlinux");
    let extracted = Command::new("sh")
        .arg(extract_vmlinux)
        .arg(vmlinuz)
        .stdout(std::fs::File::create(&vmlinux).unwrap())
        .output()
        .unwrap();
    assert!(
        extracted.status.success(),
        "{} {}: {}",
        extract_vmlinux.display(),
        vmlinuz.display(),
        String::from_utf8_lossy(&extracted.stderr)
    );
    let notes = Command::new("readelf")
        .arg("-n")
        .arg(&vmlinux)
        .output()
        .expect("readelf (binutils) runs");
    assert!(notes.status.success(), "readelf -n");
    String::from_utf8_lossy(&notes.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("readelf -n shows a build ID")
        .to_owned()
}

#[test]
fn modinfo_of_a_module() {
    let module = FakeModule::livepatch("kstack_0123456789ab", &["f"]).build();
    let info = modinfo(&module, "m.ko").unwrap();
    assert_eq!(info.name, "kstack_0123456789ab");
    assert_eq!(info.release(), Some("6.1.0-56-cloud-amd64"));
    assert_eq!(
        info.vermagic(),
        Some("6.1.0-56-cloud-amd64 SMP preempt mod_unload modversions ")
    );
    assert!(info.is_livepatch());

    let mut plain = FakeModule::livepatch("other_name", &[]);
    plain.livepatch = false;
    plain.name_in_modinfo = false;
    let info = modinfo(&plain.build(), "p.ko").unwrap();
    assert!(!info.is_livepatch());
    assert_eq!(info.name, "other_name", "from struct module");

    let err = modinfo(&fake_vmlinux(&ID, 0), "v.ko").unwrap_err();
    assert_eq!(
        err.to_string(),
        "v.ko: no .modinfo section (not a kernel module?)"
    );
}
