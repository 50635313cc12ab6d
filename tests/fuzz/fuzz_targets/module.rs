//! A prebuilt livepatch module, as `kstack commit --module` reads it: `.modinfo`
//! (name, vermagic, livepatch=Y), the `klp_func` tables, the build ID.
#![no_main]

use kstack_store::{ident, klp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = ident::modinfo(data, "fuzz.ko") {
        let _ = (info.vermagic(), info.release(), info.is_livepatch());
    }
    let _ = klp::replaced_functions(data, "fuzz.ko");
    let _ = ident::elf_build_id(data, "fuzz.ko");
});
