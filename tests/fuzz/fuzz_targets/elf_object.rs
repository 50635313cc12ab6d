//! A relocatable object as the differ and the run-pre matcher read it.
#![no_main]

use kstack_kfacts::elf::RelObject;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(object) = RelObject::parse(data) else {
        return;
    };
    for (i, sym) in object.symbols.iter().enumerate().take(256) {
        let _ = object.display_name(i);
        let _ = sym.end();
        if let Some(sec) = sym.section {
            let _ = object.symbol_at(sec, sym.value as i64);
            let _ = object.place(sec, sym.value);
        }
        let _ = object.function(&sym.name);
    }
    for section in object.sections.iter().take(256) {
        let _ = section.relocs_in(0, section.size);
    }
    let _ = kstack_kfacts::kallsyms::module_symbols(&object);
    let _ = kstack_engine::runpre::before_image(data, "f");
});
