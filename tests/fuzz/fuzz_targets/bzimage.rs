//! A kernel image: the bzImage setup header, the payload's decompression (gzip, xz,
//! lzma, zstd, LZ4 legacy), the ELF notes of the vmlinux inside, the release banner.
#![no_main]

use kstack_store::ident;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ident::bzimage_release(data);
    if let Ok(vmlinux) = ident::bzimage_vmlinux(data, "fuzz") {
        let _ = ident::elf_build_id(&vmlinux, "fuzz");
        let _ = ident::banner_release(&vmlinux);
    }
    // The payload alone, as if a setup header had pointed at it.
    let _ = ident::decompress_payload(data, "fuzz");
    let _ = ident::image_build_id_of(data, "fuzz");
});
