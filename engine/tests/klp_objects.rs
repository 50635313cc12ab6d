//! The decoder and the extraction over every function of a few real kernel objects,
//! compiled from the prepared Debian source tree, so that what kernel code looks like
//! (alternatives, jump labels, static calls, ORC, WARN_ONCE flags) is exercised
//! beyond the fixtures. No VM: the loading end to end is `klp.rs` (`vm_klp`).
//!
//! The kernel, its headers and source tree come from `cargo xtask setup`; without
//! them this test fails, naming that command.

#![allow(clippy::unwrap_used)] // a test: any failure should stop it loudly

#[path = "klp/common.rs"]
mod common;

use kstack_engine::builder::klp::{self, ExtractRequest, FunctionSpec};
use kstack_kfacts::x86;
use object::read::elf::{ElfFile64, FileHeader as _, SectionHeader as _};
use object::{Endianness, Object, ObjectSection, ObjectSymbol, elf};

use common::{TestResolver, kernel, kernel_tree, make_object};

/// Every text section of a real kernel object decodes from end to end, and every
/// PC-relative relocation in it lands on a RIP-relative operand or a branch offset.
fn check_decoding(object: &[u8], name: &str) -> usize {
    let endian = Endianness::Little;
    let header = elf::FileHeader64::<Endianness>::parse(object).unwrap();
    let sections = header.sections(endian, object).unwrap();
    let mut checked = 0;
    for section in sections.iter() {
        if section.sh_flags(endian).0 & elf::SHF_EXECINSTR.0 == 0
            || section.sh_type(endian) != elf::SHT_PROGBITS
        {
            continue;
        }
        let sname = String::from_utf8_lossy(sections.section_name(endian, section).unwrap());
        let data = section.data(endian, object).unwrap();
        let (starts, stopped) = x86::boundaries(data);
        if let Some(pos) = stopped {
            let pos = pos as usize;
            panic!(
                "{name} {sname}+{pos:#x}: not a valid instruction: {:02x?}",
                &data[pos..data.len().min(pos + 15)]
            );
        }
        let file = ElfFile64::<Endianness>::parse(object).unwrap();
        let s = file.section_by_name(&sname).unwrap();
        for (offset, rel) in s.relocations() {
            let object::RelocationFlags::Elf { r_type } = rel.flags() else {
                unreachable!()
            };
            if r_type != elf::R_X86_64_PC32 && r_type != elf::R_X86_64_PLT32 {
                continue;
            }
            let (start, len) = x86::containing(&starts, offset).unwrap();
            let insn = &data[start as usize..(start + u64::from(len)) as usize];
            assert!(
                x86::pc_relative_bias(insn, (offset - start) as usize).is_some(),
                "{name} {sname}+{offset:#x}: not a PC-relative field of {insn:02x?}"
            );
            checked += 1;
        }
    }
    checked
}

#[test]
fn real_kernel_objects_decode_and_every_function_extracts() {
    let kernel = kernel();
    let tree = kernel_tree(&kernel);
    // Objects rich in what the builder must understand: alternatives, static_cpu_has,
    // jump labels, static calls, user accesses, WARN_ONCE, paravirt.
    let objects: Vec<(&str, Vec<u8>)> = [
        "fs/proc/base.o",
        "kernel/sys.o",
        "mm/mmap.o",
        "kernel/sched/core.o",
        "net/ipv4/tcp.o",
        "kernel/printk/printk.o",
    ]
    .iter()
    .map(|o| (*o, make_object(&tree, o)))
    .collect();
    let resolver = TestResolver::new(&kernel, &[], true);
    for (name, object) in &objects {
        let checked = check_decoding(object, name);
        assert!(checked > 10, "{name}: only {checked} relocations checked");
        let file = ElfFile64::<Endianness>::parse(&**object).unwrap();
        let mut extracted = 0;
        for sym in file.symbols() {
            if sym.kind() != object::SymbolKind::Text || sym.is_undefined() {
                continue;
            }
            let fname = sym.name().unwrap();
            let section = file.section_by_index(sym.section_index().unwrap()).unwrap();
            let sname = section.name().unwrap();
            // One function per section is what the builder supports; `.cold` parts
            // come with their function; init code is refused by the differ.
            if fname.contains(".cold")
                || !sname.starts_with(".text.")
                || sname.starts_with(".text.unlikely.")
            {
                continue;
            }
            let functions = [FunctionSpec {
                post_name: fname.into(),
                old_name: fname.into(),
                new: false,
            }];
            let request = ExtractRequest {
                object,
                tu: name,
                objname: klp::VMLINUX,
                functions: &functions,
                new_data: &[],
                provided: &[],
                kernel_names: &std::collections::BTreeMap::new(),
                indistinct: &std::collections::BTreeSet::new(),
                objtool_at_link: false,
            };
            let out = klp::extract(&request, &resolver)
                .unwrap_or_else(|e| panic!("{name}: {fname}: {e}"));
            // The output is a well-formed object that ld accepts.
            let elf = ElfFile64::<Endianness>::parse(&*out.object).unwrap();
            assert!(
                elf.section_by_name(&format!(".text.{}", out.functions[0].symbol))
                    .is_some()
            );
            extracted += 1;
        }
        assert!(extracted > 10, "{name}: only {extracted} functions");
    }
}
