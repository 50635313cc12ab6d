//! A kernel's `/proc/kallsyms`, as it prints it booted without KASLR and with no
//! module loaded, derived from the `System.map` of its build.
//!
//! Both lists come from `nm -n vmlinux`; they differ in what each leaves out and in
//! one letter. `scripts/mksysmap` drops the `a`, `N`, `U` and `w` types and the `$`,
//! `.L`, `__crc_`, `__kstrtab_`, `__kstrtabns_` and `L0` names. `scripts/kallsyms.c`
//! (6.1: `is_ignored_symbol`, `make_percpus_absolute`) also drops its own
//! `kallsyms_*` tables and every absolute symbol, and, with
//! `CONFIG_KALLSYMS_ABSOLUTE_PERCPU` (x86-64 SMP), prints the per-CPU variables
//! (`__per_cpu_start` to `__per_cpu_end`, both included) as `A`. The order is
//! nm's, by address, which is the order `sympos` counts in.
//!
//! Not here: symbols outside the text sections, which kallsyms drops without
//! `CONFIG_KALLSYMS_ALL`; a kernel that can be live-patched has it (`LIVEPATCH`
//! depends on it).

/// The tables `scripts/kallsyms.c` adds after its first pass (its `ignored_symbols`,
/// less other architectures' names): in `System.map`, not in kallsyms.
const KALLSYMS_TABLES: &[&str] = &[
    "kallsyms_addresses",
    "kallsyms_offsets",
    "kallsyms_relative_base",
    "kallsyms_num_syms",
    "kallsyms_names",
    "kallsyms_markers",
    "kallsyms_token_table",
    "kallsyms_token_index",
    "kallsyms_seqs_of_names",
];

/// Where the per-CPU section starts and ends (`include/asm-generic/vmlinux.lds.h`).
const PERCPU_START: &str = "__per_cpu_start";
const PERCPU_END: &str = "__per_cpu_end";

/// The kallsyms text of the kernel whose `System.map` this is (see the module
/// doc); `absolute_percpu` is its `CONFIG_KALLSYMS_ABSOLUTE_PERCPU`. Lines that are
/// not `address type name` are skipped.
pub fn to_kallsyms(system_map: &str, absolute_percpu: bool) -> String {
    let entries: Vec<(u64, char, &str)> = system_map
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let addr = u64::from_str_radix(fields.next()?, 16).ok()?;
            let mut kind = fields.next()?.chars();
            let (Some(kind), None) = (kind.next(), kind.next()) else {
                return None;
            };
            Some((addr, kind, fields.next()?))
        })
        .collect();
    let bound = |name: &str| {
        entries
            .iter()
            .find(|(_, _, n)| *n == name)
            .map(|(addr, _, _)| *addr)
    };
    let percpu = match (bound(PERCPU_START), bound(PERCPU_END)) {
        (Some(start), Some(end)) if absolute_percpu => Some(start..=end),
        _ => None,
    };
    let mut out = String::new();
    for (addr, kind, name) in entries {
        if KALLSYMS_TABLES.contains(&name) || matches!(kind, 'U' | 'u' | 'N' | 'n' | 'A' | 'a') {
            continue;
        }
        let kind = if percpu.as_ref().is_some_and(|r| r.contains(&addr)) {
            'A'
        } else {
            kind
        };
        out.push_str(&format!("{addr:016x} {kind} {name}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
0000000000000000 D __per_cpu_start
0000000000000000 D fixed_percpu_data
000000000001f000 d cached_stacks
000000000002a000 D __per_cpu_end
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81001000 t version_proc_show
ffffffff81002000 t version_proc_show
ffffffff81003000 A some_absolute
ffffffff81fe0000 R kallsyms_offsets
ffffffff81fe8000 R kallsyms_names
ffffffff82000000 D jiffies
";

    #[test]
    fn per_cpu_variables_become_absolute_and_the_kallsyms_tables_go() {
        assert_eq!(
            to_kallsyms(MAP, true),
            "\
0000000000000000 A __per_cpu_start
0000000000000000 A fixed_percpu_data
000000000001f000 A cached_stacks
000000000002a000 A __per_cpu_end
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81001000 t version_proc_show
ffffffff81002000 t version_proc_show
ffffffff82000000 D jiffies
"
        );
    }

    #[test]
    fn without_absolute_per_cpu_the_letters_stay() {
        let text = to_kallsyms(MAP, false);
        assert!(
            text.contains("000000000001f000 d cached_stacks\n"),
            "{text}"
        );
    }

    #[test]
    fn what_is_not_a_symbol_line_is_skipped() {
        assert_eq!(
            to_kallsyms("garbage\n\nffffffff81001000 t f extra\nzz t g\n", true),
            "ffffffff81001000 t f\n"
        );
    }
}
