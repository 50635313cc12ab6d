//! Kernel and module identity read from files: build IDs of raw and compressed
//! kernel images (synthetic ones in every compression, and the real Debian kernel
//! that set-up fetched), and the `.modinfo` of modules.

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

/// The Debian 6.1 cloud kernel (LZ4): `KSTACK_TEST_VMLINUZ`, or the image that
/// `cargo xtask setup` fetches into the cache. Fails when neither is there.
#[test]
fn real_debian_vmlinuz() {
    let path = kstack_fixtures::real_vmlinuz()
        .expect("no Debian vmlinuz: run `cargo xtask setup` (or set KSTACK_TEST_VMLINUZ)");
    let bytes = std::fs::read(&path).unwrap();
    let payload = bzimage_payload(&bytes, "vmlinuz").unwrap();
    assert_eq!(Compression::detect(payload), Some(Compression::Lz4Legacy));
    let id = image_build_id(&path).unwrap();
    // As `lz4 -d` + `readelf -n` report it for 6.1.0-56-cloud-amd64 (6.1.192-2).
    if path.ends_with("vmlinuz-6.1.0-56-cloud-amd64") {
        assert_eq!(id.to_hex(), "3b43fad5034874490492495d552c0af6a5fab235");
        let identity = image_identity(&path).unwrap();
        assert_eq!(identity.release.as_deref(), Some("6.1.0-56-cloud-amd64"));
    }
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
