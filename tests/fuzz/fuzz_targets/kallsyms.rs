//! A kallsyms text (`/proc/kallsyms`, or `kstack verify --kallsyms FILE`), parsed
//! and queried as the builder and the run-pre matcher query it.
#![no_main]

use kstack_kfacts::kallsyms::KallsymsIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(index) = KallsymsIndex::parse(text) else {
        return;
    };
    for sym in index.entries().iter().take(64) {
        let _ = index.sympos(sym.object(), &sym.name, sym.addr);
        let _ = index.symbolize(sym.addr.wrapping_add(1));
        let _ = index.describe(sym.addr);
        let _ = index.next_above(sym.addr);
        let _ = index.in_kernel_text(sym.addr);
        let _ = index.seen_from(sym.object(), &sym.name);
    }
    let _ = index.ambiguous_names("vmlinux").count();
});
