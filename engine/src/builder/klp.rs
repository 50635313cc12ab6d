//! The livepatch output object, and the post-link step that finishes the module.
//!
//! [`extract`] takes the "post" object of one translation unit (compiled with the
//! kernel's flags plus `-ffunction-sections -fdata-sections`) and the functions the
//! differ chose, and writes a new relocatable object with only what those functions
//! need: their code (and `.cold` parts), the read-only data that belongs to them,
//! the special-section entries that describe them (bug table, exception table, jump
//! labels, alternatives, paravirt sites, static calls, return and retpoline sites,
//! ORC unwind entries, `__mcount_loc`) and a relocation for every reference. A
//! reference to something the object does not carry becomes, through the
//! [`SymbolResolver`], either a plain undefined symbol (exported: the module loader
//! resolves it) or a livepatch symbol `.klp.sym.<object>.<name>,<sympos>` (resolved
//! by the livepatch core from kallsyms). kbuild links that object with the template.
//!
//! [`post_link`] then rewrites the linked `.ko`: relocations against livepatch
//! symbols move into `.klp.rela.<object>.<section>` sections flagged
//! `SHF_RELA_LIVEPATCH`, and the symbols get `SHN_LIVEPATCH`, as
//! `Documentation/livepatch/module-elf-format.rst` specifies. The linker cannot keep
//! those flags, so this happens after kbuild (kpatch's `create-klp-module` and
//! upstream's `objtool klp post-link` do the same).
//!
//! Not here: deciding which functions changed (`diff`), resolving names against the
//! target kernel (the resolver), generating and building the template (the pipeline).
//! Only x86-64 is supported, with the layouts of Linux 6.1's special sections.

pub mod insn;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use object::Endianness;
use object::build::Id as _;
use object::build::elf as out;
use object::elf;
use object::read::elf::{FileHeader as _, Rela as _, SectionHeader as _, Sym as _};

use super::{Resolution, ResolveError, SymbolResolver};

/// Section index of livepatch symbols: the module loader leaves them alone and the
/// livepatch core resolves them (`include/uapi/linux/elf.h`: `#define SHN_LIVEPATCH 0xff20`).
pub const SHN_LIVEPATCH: u16 = 0xff20;

/// Flag of livepatch relocation sections: the module loader does not apply them as
/// ordinary relocations (`include/uapi/linux/elf.h`:
/// `#define SHF_RELA_LIVEPATCH 0x00100000`).
pub const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;

/// Prefix of livepatch symbol names, `.klp.sym.<object>.<name>,<sympos>`
/// (`Documentation/livepatch/module-elf-format.rst` §4.2; parsed by
/// `klp_resolve_symbols()` in `kernel/livepatch/core.c`).
pub const KLP_SYM_PREFIX: &str = ".klp.sym.";

/// Prefix of livepatch relocation section names, `.klp.rela.<object>.<section>`
/// (`Documentation/livepatch/module-elf-format.rst` §3.1; parsed by
/// `klp_apply_section_relocs()` in `kernel/livepatch/core.c`).
pub const KLP_RELA_PREFIX: &str = ".klp.rela.";

/// The object name of the kernel image in livepatch names (`klp_resolve_symbols()`
/// compares against `"vmlinux"`).
pub const VMLINUX: &str = "vmlinux";

/// Longest object name the kernel parses: `%55[^.]` in `klp_resolve_symbols()`,
/// `MODULE_NAME_LEN - 1`.
const KLP_OBJNAME_MAX: usize = 55;

/// Longest symbol name the kernel parses: `%511[^,]`, `KSYM_NAME_LEN - 1` (6.1).
const KLP_SYMNAME_MAX: usize = 511;

/// Prefix of the global symbol a changed function gets in the output object, which
/// the generated template names in `.new_func`.
pub const NEW_SYMBOL_PREFIX: &str = "__kstack_new_";

/// One function to carry into the output object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSpec {
    /// Its symbol in the post object (`foo`, `foo.isra.0`).
    pub post_name: String,
    /// Its name in the running kernel, which the `klp_func` table patches; for a new
    /// function, usually the same as `post_name`.
    pub old_name: String,
    /// A function that the running kernel does not have: carried, not patched.
    pub new: bool,
}

/// What [`extract`] needs.
#[derive(Debug, Clone)]
pub struct ExtractRequest<'a> {
    /// The post object's bytes.
    pub object: &'a [u8],
    /// The object's path in the tree (`fs/proc/cmdline.o`): names it in errors and
    /// tells the resolver which file's statics are meant.
    pub tu: &'a str,
    /// The patched object: `vmlinux` or a module name (`ext4`).
    pub objname: &'a str,
    pub functions: &'a [FunctionSpec],
}

/// One function of the output object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractedFunction {
    pub post_name: String,
    pub old_name: String,
    /// Its symbol in the output object: `__kstack_new_<old name>` (dots made `__`),
    /// global, for a changed function; for a new one, its post name and binding (a
    /// new global function can be called from the patch's other files).
    pub symbol: String,
    pub new: bool,
    /// The position of the old function among same-named kallsyms entries
    /// (`klp_func.old_sympos`); `None` for a new function.
    pub old_sympos: Option<u64>,
}

/// A symbol that the output object leaves undefined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalReference {
    /// The symbol's name in the output object (the plain name, or the `.klp.sym` name).
    pub symbol: String,
    /// The name it has in the target kernel.
    pub name: String,
    pub resolution: Resolution,
}

/// The output object and what the template needs to know about it.
#[derive(Debug, Clone)]
pub struct Extracted {
    /// A relocatable x86-64 ELF object.
    pub object: Vec<u8>,
    pub functions: Vec<ExtractedFunction>,
    /// Every undefined symbol, sorted by name.
    pub references: Vec<ExternalReference>,
    /// Names of the post object's sections that the output carries, whole or in part
    /// (special sections: some of their entries), sorted.
    pub sections: Vec<String>,
}

/// One livepatch relocation section that [`post_link`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KlpRelaSection {
    pub name: String,
    /// The section its relocations apply to.
    pub target: String,
    pub relocations: usize,
}

/// The rewritten module.
#[derive(Debug, Clone)]
pub struct PostLinked {
    pub ko: Vec<u8>,
    pub sections: Vec<KlpRelaSection>,
    /// The livepatch symbols, now `SHN_LIVEPATCH`.
    pub symbols: Vec<String>,
}

/// Why the output object or the post-link rewrite could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KlpError {
    #[error("{what}: cannot read the ELF file: {source}")]
    Read {
        what: String,
        #[source]
        source: object::read::Error,
    },
    #[error("{what}: {detail}")]
    Malformed { what: String, detail: String },
    #[error("{tu}: no function symbol {name}")]
    NoSuchFunction { tu: String, name: String },
    #[error(
        "{tu}: function {name} shares section {section} with other code; kstack needs one \
         function per section (-ffunction-sections), and sections such as .sched.text or \
         .noinstr.text are not supported yet"
    )]
    NotBundled {
        tu: String,
        name: String,
        section: String,
    },
    #[error("{tu}: {place} refers to {symbol}, which the target kernel does not resolve: {source}")]
    Resolve {
        tu: String,
        place: String,
        symbol: String,
        #[source]
        source: Box<ResolveError>,
    },
    #[error("{tu}: {place} refers to {section}+{offset:#x}, where no symbol is defined")]
    NoSymbol {
        tu: String,
        place: String,
        section: String,
        offset: i64,
    },
    #[error(
        "{tu}: {place} refers into {section}, and kstack cannot tell which object is meant \
         (the instruction could not be decoded: {detail})"
    )]
    Ambiguous {
        tu: String,
        place: String,
        section: String,
        detail: String,
    },
    #[error("{tu}: {place} refers to {symbol} in {section}, which the kernel frees after boot")]
    InitReference {
        tu: String,
        place: String,
        symbol: String,
        section: String,
    },
    #[error("{tu}: {place}: relocation type {r_type} is not supported")]
    UnsupportedRelocation {
        tu: String,
        place: String,
        r_type: u32,
    },
    #[error(
        "{tu}: section {section} has entries for the carried function {function}, and kstack \
         does not know how to carry them; refusing rather than dropping them"
    )]
    UnknownSpecialSection {
        tu: String,
        section: String,
        function: String,
    },
    #[error(
        "{tu}: {place} needs a livepatch relocation ({symbol}), but {objname} is a module: \
         those are applied after the patch module's alternatives, jump labels and static \
         calls were set up, so they cannot appear in {what}"
    )]
    ModuleSpecialRelocation {
        tu: String,
        place: String,
        symbol: String,
        objname: String,
        what: &'static str,
    },
    #[error("livepatch name {name:?} would be refused by the kernel: {reason}")]
    BadKlpName { name: String, reason: String },
    #[error("cannot name the new version of {old_name} {symbol:?}: {reason}")]
    BadNewName {
        old_name: String,
        symbol: String,
        reason: String,
    },
    #[error(
        "the module already has livepatch relocation sections ({section}); post_link runs \
         once, on the module kbuild linked"
    )]
    AlreadyPostLinked { section: String },
    #[error(
        "two relocations apply to {section}+{offset:#x}; the kernel refuses to relocate a \
         location twice (x86 apply_relocate_add wants it zero)"
    )]
    DuplicateRelocation { section: String, offset: u64 },
    #[error("livepatch relocations against {section}, which is not loaded into memory")]
    NonAllocTarget { section: String },
    #[error("cannot write the ELF file: {0}")]
    Write(#[source] object::build::Error),
}

type Result<T, E = KlpError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------
// Input: the post object, read once into plain structures.

#[derive(Debug)]
struct InSection<'d> {
    name: String,
    sh_type: u32,
    flags: u64,
    align: u64,
    entsize: u64,
    size: u64,
    /// Empty for `SHT_NOBITS`.
    data: &'d [u8],
    /// The relocations that apply to this section, by offset.
    relocs: Vec<InReloc>,
    /// Named symbols (not section or file symbols) defined here, by value.
    symbols: Vec<usize>,
}

impl InSection<'_> {
    fn has(&self, flag: elf::SectionFlags) -> bool {
        self.flags & flag.0 != 0
    }
    fn is_text(&self) -> bool {
        self.has(elf::SHF_EXECINSTR)
    }
}

#[derive(Debug, Clone, Copy)]
struct InReloc {
    offset: u64,
    sym: usize,
    r_type: u32,
    addend: i64,
}

#[derive(Debug, Clone)]
struct InSymbol {
    name: String,
    /// The defining section, for symbols defined in one.
    section: Option<usize>,
    shndx: u16,
    value: u64,
    size: u64,
    bind: u8,
    kind: u8,
}

impl InSymbol {
    fn is_local(&self) -> bool {
        self.bind == elf::STB_LOCAL.0
    }
    fn is_section(&self) -> bool {
        self.kind == elf::STT_SECTION.0
    }
    fn is_func(&self) -> bool {
        self.kind == elf::STT_FUNC.0
    }
}

#[derive(Debug)]
struct Input<'d> {
    tu: String,
    /// Indexed by ELF section index; 0 is the null section.
    sections: Vec<InSection<'d>>,
    /// Indexed by ELF symbol index; 0 is the null symbol.
    symbols: Vec<InSymbol>,
}

fn read_err(what: &str) -> impl FnOnce(object::read::Error) -> KlpError + '_ {
    move |source| KlpError::Read {
        what: what.to_owned(),
        source,
    }
}

fn malformed(what: &str, detail: impl Into<String>) -> KlpError {
    KlpError::Malformed {
        what: what.to_owned(),
        detail: detail.into(),
    }
}

impl<'d> Input<'d> {
    fn parse(data: &'d [u8], tu: &str) -> Result<Self> {
        let err = read_err(tu);
        let header = elf::FileHeader64::<Endianness>::parse(data).map_err(err)?;
        let endian = header.endian().map_err(read_err(tu))?;
        if header.e_type(endian) != elf::ET_REL || header.e_machine(endian) != elf::EM_X86_64 {
            return Err(malformed(tu, "not an x86-64 relocatable object"));
        }
        let table = header.sections(endian, data).map_err(read_err(tu))?;
        let symtab = table
            .symbols(endian, data, elf::SHT_SYMTAB)
            .map_err(read_err(tu))?;

        let mut sections = Vec::with_capacity(table.len());
        for header in table.iter() {
            let name = table.section_name(endian, header).map_err(read_err(tu))?;
            let sh_type = header.sh_type(endian).0;
            let section_data = if sh_type == elf::SHT_NOBITS.0 {
                &[][..]
            } else {
                header.data(endian, data).map_err(read_err(tu))?
            };
            sections.push(InSection {
                name: String::from_utf8_lossy(name).into_owned(),
                sh_type,
                flags: header.sh_flags(endian).0,
                align: header.sh_addralign(endian),
                entsize: header.sh_entsize(endian),
                size: header.sh_size(endian),
                data: section_data,
                relocs: Vec::new(),
                symbols: Vec::new(),
            });
        }

        let mut symbols = Vec::with_capacity(symtab.len());
        for (index, sym) in symtab.enumerate() {
            let name = symtab.symbol_name(endian, sym).map_err(read_err(tu))?;
            let section = symtab
                .symbol_section(endian, sym, index)
                .map_err(read_err(tu))?
                .map(|s| s.0);
            if let Some(s) = section
                && s >= sections.len()
            {
                return Err(malformed(tu, format!("symbol {index} in section {s}")));
            }
            symbols.push(InSymbol {
                name: String::from_utf8_lossy(name).into_owned(),
                section,
                shndx: sym.st_shndx(endian).0,
                value: sym.st_value(endian),
                size: sym.st_size(endian),
                bind: sym.st_bind().0,
                kind: sym.st_type().0,
            });
        }
        for (index, sym) in symbols.iter().enumerate().skip(1) {
            if let Some(s) = sym.section
                && !sym.is_section()
                && sym.kind != elf::STT_FILE.0
            {
                sections[s].symbols.push(index);
            }
        }

        for header in table.iter() {
            let Some((relas, link)) = header.rela(endian, data).map_err(read_err(tu))? else {
                continue;
            };
            if link != symtab.section() {
                return Err(malformed(tu, "relocations against another symbol table"));
            }
            let target = header.sh_info(endian) as usize;
            if target == 0 || target >= sections.len() {
                return Err(malformed(
                    tu,
                    format!("relocation section for section {target}"),
                ));
            }
            for rela in relas {
                let sym = rela.r_sym(endian, false) as usize;
                if sym >= symbols.len() {
                    return Err(malformed(tu, format!("relocation against symbol {sym}")));
                }
                sections[target].relocs.push(InReloc {
                    offset: rela.r_offset(endian),
                    sym,
                    r_type: rela.r_type(endian, false).0,
                    addend: rela.r_addend(endian),
                });
            }
        }
        for section in &mut sections {
            section.relocs.sort_by_key(|r| r.offset);
            section
                .symbols
                .sort_by(|a, b| symbols[*a].value.cmp(&symbols[*b].value).then(a.cmp(b)));
        }
        Ok(Input {
            tu: tu.to_owned(),
            sections,
            symbols,
        })
    }

    fn function(&self, name: &str) -> Option<usize> {
        self.symbols
            .iter()
            .position(|s| s.is_func() && s.section.is_some() && s.name == name)
    }

    /// The named symbol that `offset` in section `sec` belongs to: the one that
    /// contains it, else a zero-sized one there, else the one that ends there (a
    /// pointer one past an array, which compilers form for loop bounds).
    fn symbol_at(&self, sec: usize, offset: i64) -> Option<usize> {
        let syms = &self.sections[sec].symbols;
        let start = |s: usize| self.symbols[s].value as i64;
        let end = |s: usize| start(s) + self.symbols[s].size as i64;
        let pick = |f: &dyn Fn(usize) -> bool| {
            // Among aliases, prefer a sized, then a global symbol.
            syms.iter().copied().filter(|&s| f(s)).min_by_key(|&s| {
                let sym = &self.symbols[s];
                (sym.size == 0, sym.is_local(), s)
            })
        };
        pick(&|s| start(s) <= offset && offset < end(s))
            .or_else(|| pick(&|s| self.symbols[s].size == 0 && start(s) == offset))
            .or_else(|| pick(&|s| end(s) == offset))
    }

    fn place(&self, sec: usize, offset: u64) -> String {
        let section = &self.sections[sec];
        let func = section
            .symbols
            .iter()
            .rev()
            .find(|&&s| self.symbols[s].is_func() && self.symbols[s].value <= offset);
        match func {
            Some(&f) => format!(
                "{}+{:#x}",
                self.symbols[f].name,
                offset - self.symbols[f].value
            ),
            None => format!("{}+{offset:#x}", section.name),
        }
    }
}

// ---------------------------------------------------------------------------------
// Special sections: fixed-size entries, each owned by the code its first field
// points to. Sizes are those of Linux 6.1 on x86-64 with Debian's configuration.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpecialKind {
    Plain,
    /// `.altinstructions`: entries also point into `.altinstr_replacement`.
    Alternatives,
    /// `.parainstructions`: entries cover a range of the original code.
    Paravirt,
    /// `.orc_unwind_ip`, with `.orc_unwind` as a parallel array.
    OrcIp,
}

#[derive(Debug, Clone, Copy)]
struct Special {
    name: &'static str,
    stride: u64,
    kind: SpecialKind,
}

const SPECIAL_SECTIONS: &[Special] = &[
    // struct bug_entry, GENERIC_BUG_RELATIVE_POINTERS + DEBUG_BUGVERBOSE:
    // bug_addr_disp, file_disp, line, flags (include/asm-generic/bug.h).
    Special {
        name: "__bug_table",
        stride: 12,
        kind: SpecialKind::Plain,
    },
    // struct exception_table_entry { int insn, fixup, data; } (asm/extable.h).
    Special {
        name: "__ex_table",
        stride: 12,
        kind: SpecialKind::Plain,
    },
    // struct jump_entry { s32 code; s32 target; long key; } (linux/jump_label.h).
    Special {
        name: "__jump_table",
        stride: 16,
        kind: SpecialKind::Plain,
    },
    // struct alt_instr, packed: instr_offset, repl_offset, cpuid, instrlen,
    // replacementlen (asm/alternative.h).
    Special {
        name: ".altinstructions",
        stride: 12,
        kind: SpecialKind::Alternatives,
    },
    // struct paravirt_patch_site { u8 *instr; u8 type; u8 len; }, 8-aligned
    // (asm/paravirt_types.h).
    Special {
        name: ".parainstructions",
        stride: 16,
        kind: SpecialKind::Paravirt,
    },
    // struct static_call_site { s32 addr; s32 key; } (linux/static_call_types.h).
    Special {
        name: ".static_call_sites",
        stride: 8,
        kind: SpecialKind::Plain,
    },
    // s32 offsets of `ret` / thunk calls (objtool), of `lock` prefixes (asm/alternative.h).
    Special {
        name: ".return_sites",
        stride: 4,
        kind: SpecialKind::Plain,
    },
    Special {
        name: ".retpoline_sites",
        stride: 4,
        kind: SpecialKind::Plain,
    },
    Special {
        name: ".smp_locks",
        stride: 4,
        kind: SpecialKind::Plain,
    },
    // Addresses of the `call __fentry__` sites, for ftrace.
    Special {
        name: "__mcount_loc",
        stride: 8,
        kind: SpecialKind::Plain,
    },
    // s32 IPs, parallel to `.orc_unwind`'s struct orc_entry (asm/orc_types.h).
    Special {
        name: ".orc_unwind_ip",
        stride: 4,
        kind: SpecialKind::OrcIp,
    },
];

/// `sizeof(struct orc_entry)` (asm/orc_types.h).
const ORC_ENTRY_SIZE: u64 = 6;
const ORC_UNWIND: &str = ".orc_unwind";
const ALTINSTR_REPLACEMENT: &str = ".altinstr_replacement";
/// Code that `static_cpu_has()` jumps to (asm/cpufeature.h), shared by every user in
/// the file: carried snippet by snippet.
const ALTINSTR_AUX: &str = ".altinstr_aux";
/// Offsets of `alt_instr.instrlen` and `.replacementlen`.
const ALT_INSTRLEN: u64 = 10;
const ALT_REPLACEMENTLEN: u64 = 11;
/// Offset of `paravirt_patch_site.len`.
const PARAVIRT_LEN: u64 = 9;

/// Sections whose references to a function say nothing the patch must carry: other
/// code, data (function pointers keep pointing at the old function, which livepatch
/// redirects), exports, debug information, objtool's annotations.
fn is_unrelated_section(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        ".text",
        ".init.",
        ".exit.",
        ".ref.",
        ".meminit.",
        ".data",
        ".rodata",
        ".bss",
        ".debug",
        ".discard",
        ".comment",
        ".note",
        ".noinstr.text",
        ".entry.text",
        ".sched.text",
        ".spinlock.text",
        ".cpuidle.text",
        ".kprobes.text",
        ".head.text",
        ".static_call.text",
        ".initcall",
        ".con_initcall",
        ".security_initcall",
        "__ksymtab",
        "___ksymtab",
        "___kcrctab",
        "__kcrctab",
        ".export_symbol",
        "__param",
        "__tracepoints",
        "_ftrace_events",
        "_ftrace_eval_map",
        "__bpf_raw_tp_map",
        "__dyndbg",
        "__syscalls_metadata",
        "_kprobe_blacklist",
        ".printk_index",
        ".ibt_endbr_seal",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

fn is_init_section(name: &str) -> bool {
    name.starts_with(".init.") || name.starts_with(".exit.")
}

fn is_pc_relative(r_type: u32) -> bool {
    r_type == elf::R_X86_64_PC32.0
        || r_type == elf::R_X86_64_PLT32.0
        || r_type == elf::R_X86_64_PC64.0
}

fn is_supported_relocation(r_type: u32) -> bool {
    [
        elf::R_X86_64_64,
        elf::R_X86_64_PC32,
        elf::R_X86_64_PLT32,
        elf::R_X86_64_32,
        elf::R_X86_64_32S,
        elf::R_X86_64_PC64,
    ]
    .iter()
    .any(|t| t.0 == r_type)
}

// ---------------------------------------------------------------------------------
// Livepatch names.

/// The livepatch symbol for `name` in `objname`: `.klp.sym.<objname>.<name>,<sympos>`,
/// checked against what the kernel's `sscanf(".klp.sym.%55[^.].%511[^,],%lu")`
/// accepts.
pub fn klp_symbol_name(objname: &str, name: &str, sympos: u64) -> Result<String> {
    let full = format!("{KLP_SYM_PREFIX}{objname}.{name},{sympos}");
    let bad = |reason: String| KlpError::BadKlpName {
        name: full.clone(),
        reason,
    };
    check_objname(objname).map_err(bad)?;
    if name.is_empty() {
        return Err(bad("empty symbol name".into()));
    }
    if name.contains(',') {
        return Err(bad(
            "the symbol name contains ',', which ends %511[^,] early".into(),
        ));
    }
    if name.len() > KLP_SYMNAME_MAX {
        return Err(bad(format!(
            "the symbol name is longer than {KLP_SYMNAME_MAX} bytes (KSYM_NAME_LEN)"
        )));
    }
    if name.bytes().any(|b| b.is_ascii_whitespace() || b == 0) {
        return Err(bad("the symbol name contains white space".into()));
    }
    Ok(full)
}

/// Splits a livepatch symbol name into object, symbol and position, accepting what
/// the kernel accepts (a symbol name may contain dots: `foo.isra.0`).
pub fn parse_klp_symbol_name(full: &str) -> Result<(String, String, u64)> {
    let bad = |reason: &str| KlpError::BadKlpName {
        name: full.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = full
        .strip_prefix(KLP_SYM_PREFIX)
        .ok_or_else(|| bad("no .klp.sym. prefix"))?;
    let (objname, rest) = rest
        .split_once('.')
        .ok_or_else(|| bad("no '.' after the object name"))?;
    let (name, pos) = rest
        .split_once(',')
        .ok_or_else(|| bad("no ',' before the symbol position"))?;
    if pos.is_empty() || !pos.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the symbol position is not a decimal number"));
    }
    let sympos = pos
        .parse()
        .map_err(|_| bad("the symbol position does not fit in 64 bits"))?;
    let canonical = klp_symbol_name(objname, name, sympos)?;
    if canonical != full {
        return Err(bad("not in canonical form"));
    }
    Ok((objname.to_owned(), name.to_owned(), sympos))
}

fn check_objname(objname: &str) -> Result<(), String> {
    if objname.is_empty() {
        return Err("empty object name".into());
    }
    if objname.len() > KLP_OBJNAME_MAX {
        return Err(format!(
            "the object name is longer than {KLP_OBJNAME_MAX} bytes (MODULE_NAME_LEN)"
        ));
    }
    if !objname
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(
            "the object name may hold only letters, digits, '_' and '-' ('.' ends %55[^.])".into(),
        );
    }
    Ok(())
}

/// The global symbol for the new version of `old_name`: `__kstack_new_<old_name>`,
/// with each `.` of a compiler suffix made `__` so that C can name it.
pub fn new_symbol_name(old_name: &str) -> Result<String> {
    let symbol = format!("{NEW_SYMBOL_PREFIX}{}", old_name.replace('.', "__"));
    if old_name.is_empty()
        || !symbol
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(KlpError::BadNewName {
            old_name: old_name.to_owned(),
            symbol,
            reason: "not a C identifier".into(),
        });
    }
    Ok(symbol)
}

// ---------------------------------------------------------------------------------
// extract

/// How an included section is carried.
#[derive(Debug, Clone)]
enum Carried {
    /// The whole section: a function (with the symbol it gets), its `.cold` part, or
    /// data.
    Whole,
    /// Byte ranges of it (`.altinstr_replacement`, `.altinstr_aux`), sorted, disjoint.
    Slices(Vec<(u64, u64)>),
}

/// The instructions of one code section, as far as they could be decoded.
#[derive(Debug)]
struct Decoded {
    /// (start, length) of each instruction, in order.
    insns: Vec<(u64, u8)>,
    /// Where decoding stopped, if it did not reach the end, and why.
    failure: Option<(u64, insn::DecodeError)>,
}

/// A relocation's target after translation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// An output section (by index), addend adjusted.
    Internal(usize, i64),
    /// An input symbol the object does not carry, addend relative to it.
    Named(usize, i64),
}

struct Extractor<'a, 'd> {
    input: Input<'d>,
    request: &'a ExtractRequest<'a>,
    resolver: &'a dyn SymbolResolver,
    decoded: HashMap<usize, Decoded>,
    carried: BTreeMap<usize, Carried>,
    /// Input section of each requested function → index into `request.functions`.
    function_sections: BTreeMap<usize, usize>,
    /// Post names of the carried functions, for finding their `.cold` parts.
    function_names: BTreeSet<String>,
    /// Every relocation source, per target section: (source section, offset).
    referrers: HashMap<usize, Vec<(usize, u64)>>,
    resolved: BTreeMap<(String, bool), Resolution>,
}

/// Writes the output object for `request.functions` of one translation unit.
///
/// References the object does not carry are resolved with `resolver`; the old
/// function of each changed function too, for its `sympos`.
pub fn extract(request: &ExtractRequest<'_>, resolver: &dyn SymbolResolver) -> Result<Extracted> {
    let input = Input::parse(request.object, request.tu)?;
    check_objname(request.objname).map_err(|reason| KlpError::BadKlpName {
        name: request.objname.to_owned(),
        reason,
    })?;
    let mut ex = Extractor {
        input,
        request,
        resolver,
        decoded: HashMap::new(),
        carried: BTreeMap::new(),
        function_sections: BTreeMap::new(),
        function_names: BTreeSet::new(),
        referrers: HashMap::new(),
        resolved: BTreeMap::new(),
    };
    ex.index_referrers();
    ex.seed()?;
    ex.discover()?;
    ex.emit()
}

impl Extractor<'_, '_> {
    fn tu(&self) -> String {
        self.input.tu.clone()
    }

    fn index_referrers(&mut self) {
        for (src, section) in self.input.sections.iter().enumerate() {
            if section.name.starts_with(".debug") || section.name.starts_with(".discard") {
                continue;
            }
            for rel in &section.relocs {
                if let Some(t) = self.input.symbols[rel.sym].section
                    && t != src
                {
                    self.referrers.entry(t).or_default().push((src, rel.offset));
                }
            }
        }
    }

    fn seed(&mut self) -> Result<()> {
        let mut names = BTreeSet::new();
        for (i, f) in self.request.functions.iter().enumerate() {
            let sym =
                self.input
                    .function(&f.post_name)
                    .ok_or_else(|| KlpError::NoSuchFunction {
                        tu: self.tu(),
                        name: f.post_name.clone(),
                    })?;
            let s = &self.input.symbols[sym];
            let sec = s.section.expect("functions() only returns defined symbols");
            let section = &self.input.sections[sec];
            // Aliases (SYSCALL_DEFINE's `__x64_sys_*` for `__do_sys_*`) are the same code.
            let others = section.symbols.iter().any(|&o| {
                let other = &self.input.symbols[o];
                o != sym && other.is_func() && (other.value, other.size) != (s.value, s.size)
            });
            if s.value != 0 || others || !section.is_text() {
                return Err(KlpError::NotBundled {
                    tu: self.tu(),
                    name: f.post_name.clone(),
                    section: section.name.clone(),
                });
            }
            if !f.new {
                let symbol = new_symbol_name(&f.old_name)?;
                if !names.insert(symbol.clone()) {
                    return Err(KlpError::BadNewName {
                        old_name: f.old_name.clone(),
                        symbol,
                        reason: "another function of the patch has the same name".into(),
                    });
                }
            }
            self.function_sections.insert(sec, i);
            self.function_names.insert(f.post_name.clone());
            self.carried.insert(sec, Carried::Whole);
        }
        Ok(())
    }

    /// Includes, until nothing changes, everything the carried code needs: `.cold`
    /// parts, strings, read-only data of its own, `static_cpu_has()` snippets, and the
    /// replacement code of its alternatives.
    fn discover(&mut self) -> Result<()> {
        loop {
            let mut changed = false;
            let sources: Vec<(usize, Vec<InReloc>)> = self
                .carried
                .keys()
                .map(|&s| (s, self.carried_relocs(s)))
                .collect();
            for (sec, relocs) in sources {
                for rel in relocs {
                    changed |= self.discover_reference(sec, rel)?;
                }
            }
            for special in SPECIAL_SECTIONS {
                let Some(sec) = self.section_named(special.name) else {
                    continue;
                };
                for (start, _) in self.kept_groups(sec, special)? {
                    let relocs = self.group_relocs(sec, start, special.stride);
                    for rel in &relocs {
                        changed |= self.discover_reference(sec, *rel)?;
                    }
                    if special.kind == SpecialKind::Alternatives {
                        changed |= self.include_replacement(sec, start)?;
                    }
                }
            }
            if !changed {
                return Ok(());
            }
        }
    }

    fn section_named(&self, name: &str) -> Option<usize> {
        self.input.sections.iter().position(|s| s.name == name)
    }

    /// The relocations inside what is carried of `sec`.
    fn carried_relocs(&self, sec: usize) -> Vec<InReloc> {
        let relocs = &self.input.sections[sec].relocs;
        match self.carried.get(&sec) {
            Some(Carried::Whole) => relocs.clone(),
            Some(Carried::Slices(slices)) => relocs
                .iter()
                .filter(|r| slices.iter().any(|&(a, b)| a <= r.offset && r.offset < b))
                .copied()
                .collect(),
            None => Vec::new(),
        }
    }

    fn group_relocs(&self, sec: usize, start: u64, stride: u64) -> Vec<InReloc> {
        self.input.sections[sec]
            .relocs
            .iter()
            .filter(|r| start <= r.offset && r.offset < start + stride)
            .copied()
            .collect()
    }

    /// Whether `offset` of input section `sec` lies in what is carried. The end of a
    /// whole function counts (objtool's ORC terminator sits there); the end of a
    /// snippet does not, since what is there belongs to the next snippet.
    fn is_carried(&self, sec: usize, offset: i64) -> bool {
        match self.carried.get(&sec) {
            Some(Carried::Whole) => 0 <= offset && offset <= self.input.sections[sec].size as i64,
            Some(Carried::Slices(slices)) => slices
                .iter()
                .any(|&(a, b)| a as i64 <= offset && offset < b as i64),
            None => false,
        }
    }

    /// The groups (entries) of a special section whose owner, the code its first field
    /// points to, is carried: (offset, length).
    fn kept_groups(&mut self, sec: usize, special: &Special) -> Result<Vec<(u64, u64)>> {
        let section = &self.input.sections[sec];
        let what = format!("{}: {}", self.input.tu, section.name);
        if section.entsize != 0 && section.entsize != special.stride {
            return Err(malformed(
                &what,
                format!(
                    "entries of {} bytes, kstack expects {} (a different kernel configuration?)",
                    section.entsize, special.stride
                ),
            ));
        }
        let size = section.size;
        let mut kept = Vec::new();
        let mut start = 0;
        while start < size {
            let len = special.stride.min(size - start);
            let owner = section
                .relocs
                .iter()
                .find(|r| r.offset == start)
                .copied()
                .ok_or_else(|| {
                    malformed(
                        &what,
                        format!(
                            "no relocation at entry offset {start:#x}: the entries are not \
                             {} bytes long (a different kernel configuration?)",
                            special.stride
                        ),
                    )
                })?;
            if let Some(t) = self.input.symbols[owner.sym].section {
                let position = self.input.symbols[owner.sym].value as i64 + owner.addend;
                if self.input.sections[t].is_text() && self.is_carried(t, position) {
                    kept.push((start, len));
                }
            }
            start += special.stride;
        }
        Ok(kept)
    }

    /// Carries the replacement code of the alternative at `start` of `.altinstructions`.
    fn include_replacement(&mut self, sec: usize, start: u64) -> Result<bool> {
        let section = &self.input.sections[sec];
        let what = format!("{}: {}", self.input.tu, section.name);
        let repl = section
            .relocs
            .iter()
            .find(|r| r.offset == start + 4)
            .copied()
            .ok_or_else(|| malformed(&what, format!("entry {start:#x} has no replacement")))?;
        let len = u64::from(
            *section
                .data
                .get((start + ALT_REPLACEMENTLEN) as usize)
                .ok_or_else(|| malformed(&what, "truncated entry"))?,
        );
        let sym = &self.input.symbols[repl.sym];
        let Some(t) = sym.section else {
            return Err(malformed(&what, "replacement outside the object"));
        };
        let begin = sym.value as i64 + repl.addend;
        if begin < 0 || (begin as u64 + len) > self.input.sections[t].size {
            return Err(malformed(
                &what,
                format!("replacement at {begin:#x} out of range"),
            ));
        }
        Ok(self.add_slice(t, begin as u64, begin as u64 + len))
    }

    fn add_slice(&mut self, sec: usize, start: u64, end: u64) -> bool {
        let entry = self
            .carried
            .entry(sec)
            .or_insert_with(|| Carried::Slices(Vec::new()));
        let Carried::Slices(slices) = entry else {
            return false;
        };
        if slices.iter().any(|&(a, b)| a <= start && end <= b) {
            return false;
        }
        slices.push((start, end));
        slices.sort_unstable();
        // Merge overlapping (not merely adjacent) ranges, so each byte is copied once.
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for &(a, b) in slices.iter() {
            match merged.last_mut() {
                Some(last) if a < last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *slices = merged;
        true
    }

    /// Follows one relocation of carried code or data, including what it needs.
    fn discover_reference(&mut self, sec: usize, rel: InReloc) -> Result<bool> {
        let sym = self.input.symbols[rel.sym].clone();
        let Some(t) = sym.section else {
            return Ok(false);
        };
        if self
            .carried
            .get(&t)
            .is_some_and(|c| matches!(c, Carried::Whole))
        {
            return Ok(false);
        }
        let target = &self.input.sections[t];
        if target.is_text() {
            if target.name == ALTINSTR_AUX {
                let anchor = self.exact_anchor(sec, rel, t)?;
                let end = self.snippet_end(t, anchor)?;
                return Ok(self.add_slice(t, anchor as u64, end));
            }
            if self.is_cold_part(t) {
                self.carried.insert(t, Carried::Whole);
                return Ok(true);
            }
            return Ok(false);
        }
        let read_only = target.has(elf::SHF_ALLOC) && !target.has(elf::SHF_WRITE);
        if !read_only || is_init_section(&target.name) {
            return Ok(false);
        }
        if target.has(elf::SHF_MERGE) || self.owns_read_only(t) {
            self.carried.insert(t, Carried::Whole);
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether code section `t` is the `.cold` part of a carried function.
    fn is_cold_part(&self, t: usize) -> bool {
        let funcs: Vec<&InSymbol> = self.input.sections[t]
            .symbols
            .iter()
            .map(|&s| &self.input.symbols[s])
            .filter(|s| s.is_func())
            .collect();
        !funcs.is_empty()
            && funcs.iter().all(|f| {
                f.name.split_once(".cold").is_some_and(|(parent, rest)| {
                    (rest.is_empty() || rest.starts_with('.'))
                        && self.function_names.contains(parent)
                })
            })
    }

    /// Whether the read-only data section `t` may be copied into the patch: all its
    /// symbols are local, and either only carried code refers to it or it holds only
    /// compiler-made constants (`CSWTCH.12`, `__func__.3`), whose address nobody
    /// compares. Data shared with code that stays in the kernel is referred to, not
    /// copied, so that its address stays the same.
    fn owns_read_only(&self, t: usize) -> bool {
        let section = &self.input.sections[t];
        if section.sh_type != elf::SHT_PROGBITS.0 || section.is_text() {
            return false;
        }
        let syms: Vec<&InSymbol> = section
            .symbols
            .iter()
            .map(|&s| &self.input.symbols[s])
            .collect();
        if syms.iter().any(|s| !s.is_local()) {
            return false;
        }
        if syms
            .iter()
            .all(|s| s.name.is_empty() || s.name.contains('.'))
        {
            return true;
        }
        self.referrers
            .get(&t)
            .into_iter()
            .flatten()
            .all(|&(src, offset)| {
                let name = &self.input.sections[src].name;
                SPECIAL_SECTIONS.iter().any(|s| s.name == name)
                    || match self.carried.get(&src) {
                        Some(Carried::Whole) => true,
                        Some(Carried::Slices(slices)) => {
                            slices.iter().any(|&(a, b)| a <= offset && offset < b)
                        }
                        None => false,
                    }
            })
    }

    /// The end of the `static_cpu_has()` snippet at `start` of `.altinstr_aux`: after
    /// the first instruction that does not fall through.
    fn snippet_end(&self, sec: usize, start: i64) -> Result<u64> {
        let section = &self.input.sections[sec];
        let mut pos = usize::try_from(start).unwrap_or(usize::MAX);
        while pos < section.data.len() {
            let decoded = insn::decode(&section.data[pos..]).map_err(|e| KlpError::Ambiguous {
                tu: self.tu(),
                place: self.input.place(sec, pos as u64),
                section: section.name.clone(),
                detail: e.to_string(),
            })?;
            pos += usize::from(decoded.len);
            if decoded.flow == insn::Flow::Stop {
                return Ok(pos as u64);
            }
        }
        Err(malformed(
            &format!("{}: {}", self.input.tu, section.name),
            format!("snippet at {start:#x} does not end"),
        ))
    }

    fn decoded(&mut self, sec: usize) -> &Decoded {
        let data = self.input.sections[sec].data;
        self.decoded.entry(sec).or_insert_with(|| {
            let mut insns = Vec::new();
            let mut pos = 0usize;
            let mut failure = None;
            while pos < data.len() {
                match insn::decode(&data[pos..]) {
                    Ok(i) => {
                        insns.push((pos as u64, i.len));
                        pos += usize::from(i.len);
                    }
                    Err(e) => {
                        failure = Some((pos as u64, e));
                        break;
                    }
                }
            }
            Decoded { insns, failure }
        })
    }

    /// The distance from a PC-relative relocation in code to the end of its
    /// instruction, which the assembler folded into the addend.
    fn pc_bias(&mut self, sec: usize, offset: u64) -> Result<i64, String> {
        let data = self.input.sections[sec].data;
        let decoded = self.decoded(sec);
        let index = decoded.insns.partition_point(|&(start, _)| start <= offset);
        let found = index
            .checked_sub(1)
            .map(|i| decoded.insns[i])
            .filter(|&(start, len)| offset < start + u64::from(len));
        let Some((start, _)) = found else {
            return Err(match decoded.failure {
                Some((at, e)) => format!("decoding stopped at {at:#x}: {e}"),
                None => format!("no instruction at {offset:#x}"),
            });
        };
        let i = insn::decode(&data[start as usize..]).map_err(|e| e.to_string())?;
        let field = (offset - start) as u8;
        i.pc_relative_bias(field).map(i64::from).ok_or_else(|| {
            format!("the relocated field at {offset:#x} is not a RIP-relative operand")
        })
    }

    /// The possible offsets in the target section that a relocation refers to. One,
    /// unless it is PC-relative in code that could not be decoded: then the
    /// candidates for every immediate size.
    fn anchors(&mut self, sec: usize, rel: InReloc) -> (Vec<i64>, Option<String>) {
        let base = self.input.symbols[rel.sym].value as i64 + rel.addend;
        if !is_pc_relative(rel.r_type) || !self.input.sections[sec].is_text() {
            return (vec![base], None);
        }
        match self.pc_bias(sec, rel.offset) {
            Ok(bias) => (vec![base + bias], None),
            Err(why) => ([4, 5, 6, 8].iter().map(|b| base + b).collect(), Some(why)),
        }
    }

    fn exact_anchor(&mut self, sec: usize, rel: InReloc, target: usize) -> Result<i64> {
        let (anchors, why) = self.anchors(sec, rel);
        match anchors.as_slice() {
            [one] => Ok(*one),
            _ => Err(KlpError::Ambiguous {
                tu: self.tu(),
                place: self.input.place(sec, rel.offset),
                section: self.input.sections[target].name.clone(),
                detail: why.unwrap_or_default(),
            }),
        }
    }

    /// Where a relocation of carried code or data points after extraction.
    fn target(&mut self, sec: usize, rel: InReloc, layout: &Layout) -> Result<Target> {
        let sym = self.input.symbols[rel.sym].clone();
        let Some(t) = sym.section else {
            return Ok(Target::Named(rel.sym, rel.addend));
        };
        if !sym.is_section() {
            if let Some((out, shift)) = layout.locate(t, sym.value as i64) {
                return Ok(Target::Internal(out, sym.value as i64 + rel.addend + shift));
            }
            return Ok(Target::Named(rel.sym, rel.addend));
        }
        // A section symbol: find the object that the reference means.
        let (anchors, why) = self.anchors(sec, rel);
        let mut outcomes = BTreeSet::new();
        for anchor in anchors {
            let outcome = if let Some((out, shift)) = layout.locate(t, anchor) {
                Target::Internal(out, sym.value as i64 + rel.addend + shift)
            } else if let Some(named) = self.input.symbol_at(t, anchor) {
                let named_value = self.input.symbols[named].value as i64;
                Target::Named(named, sym.value as i64 + rel.addend - named_value)
            } else {
                if why.is_some() {
                    continue;
                }
                return Err(KlpError::NoSymbol {
                    tu: self.tu(),
                    place: self.input.place(sec, rel.offset),
                    section: self.input.sections[t].name.clone(),
                    offset: anchor,
                });
            };
            outcomes.insert(outcome);
        }
        let mut outcomes = outcomes.into_iter();
        match (outcomes.next(), outcomes.next()) {
            (Some(one), None) => Ok(one),
            _ => Err(KlpError::Ambiguous {
                tu: self.tu(),
                place: self.input.place(sec, rel.offset),
                section: self.input.sections[t].name.clone(),
                detail: why.unwrap_or_default(),
            }),
        }
    }

    fn resolve(&mut self, name: &str, local: bool, place: &str) -> Result<Resolution> {
        let key = (name.to_owned(), local);
        if let Some(r) = self.resolved.get(&key) {
            return Ok(r.clone());
        }
        let r = self
            .resolver
            .resolve(name, self.request.tu, local)
            .map_err(|source| KlpError::Resolve {
                tu: self.tu(),
                place: place.to_owned(),
                symbol: name.to_owned(),
                source: Box::new(source),
            })?;
        self.resolved.insert(key, r.clone());
        Ok(r)
    }

    fn emit(mut self) -> Result<Extracted> {
        let layout = self.layout()?;
        let mut outs: Vec<OutSection> = layout.sections.clone();
        // (output section, offset, input section, relocation) of every carried relocation.
        let mut work: Vec<(usize, u64, usize, InReloc, RelocContext)> = Vec::new();
        for &sec in self.carried.keys() {
            let name = self.input.sections[sec].name.as_str();
            let context = if name == ALTINSTR_REPLACEMENT || name == ALTINSTR_AUX {
                RelocContext::Replacement
            } else {
                RelocContext::Code
            };
            for rel in self.carried_relocs(sec) {
                let (out_index, shift) = layout
                    .locate(sec, rel.offset as i64)
                    .expect("carried relocations lie in carried bytes");
                work.push((
                    out_index,
                    (rel.offset as i64 + shift) as u64,
                    sec,
                    rel,
                    context,
                ));
            }
        }

        // Special sections: the kept entries, concatenated.
        let mut guarded = Vec::new();
        let mut special_names = Vec::new();
        for special in SPECIAL_SECTIONS {
            let Some(sec) = self.section_named(special.name) else {
                continue;
            };
            let groups = self.kept_groups(sec, special)?;
            if groups.is_empty() {
                continue;
            }
            let section = &self.input.sections[sec];
            let mut data = Vec::new();
            let out_index = outs.len();
            for &(start, len) in &groups {
                let new_start = data.len() as u64;
                data.extend_from_slice(&section.data[start as usize..(start + len) as usize]);
                // Pad a short last entry to a full one, so that entries can be appended.
                data.resize((new_start + special.stride) as usize, 0);
                for rel in self.group_relocs(sec, start, special.stride) {
                    work.push((
                        out_index,
                        new_start + rel.offset - start,
                        sec,
                        rel,
                        RelocContext::Special,
                    ));
                }
                let owner = section.relocs.iter().find(|r| r.offset == start).copied();
                match (special.kind, owner) {
                    (SpecialKind::Alternatives, Some(o)) => {
                        let len = section.data[(start + ALT_INSTRLEN) as usize];
                        guarded.push((o, u64::from(len)));
                    }
                    (SpecialKind::Paravirt, Some(o)) => {
                        let len = section.data[(start + PARAVIRT_LEN) as usize];
                        guarded.push((o, u64::from(len)));
                    }
                    _ => {}
                }
            }
            special_names.push(section.name.clone());
            outs.push(OutSection::copy_of(section, data));
            if special.kind == SpecialKind::OrcIp {
                outs.push(self.orc_entries(sec, &groups)?);
                special_names.push(ORC_UNWIND.to_owned());
            }
        }
        self.check_unknown_special_sections(&layout)?;

        // Ranges of carried code that alternatives and paravirt patching rewrite.
        let guarded: Vec<(usize, i64, i64)> = guarded
            .into_iter()
            .filter_map(|(owner, len)| {
                let sym = &self.input.symbols[owner.sym];
                let t = sym.section?;
                let start = sym.value as i64 + owner.addend;
                let (out, shift) = layout.locate(t, start)?;
                Some((out, start + shift, start + shift + len as i64))
            })
            .collect();

        // Translate.
        let mut externals: BTreeMap<String, ExternalReference> = BTreeMap::new();
        for (out_index, offset, sec, rel, context) in work {
            if rel.r_type == elf::R_X86_64_NONE.0 {
                continue;
            }
            let place = self.input.place(sec, rel.offset);
            if !is_supported_relocation(rel.r_type) {
                return Err(KlpError::UnsupportedRelocation {
                    tu: self.tu(),
                    place,
                    r_type: rel.r_type,
                });
            }
            let target = match self.target(sec, rel, &layout)? {
                Target::Internal(out, addend) => OutTarget::Section(out, addend),
                Target::Named(s, addend) => {
                    let sym = self.input.symbols[s].clone();
                    if let Some(t) = sym.section {
                        let tname = &self.input.sections[t].name;
                        if is_init_section(tname) {
                            return Err(KlpError::InitReference {
                                tu: self.tu(),
                                place,
                                symbol: sym.name,
                                section: tname.clone(),
                            });
                        }
                    } else if sym.shndx != elf::SHN_UNDEF.0 {
                        return Err(malformed(
                            &self.input.tu,
                            format!("{place}: reference to {} (absolute or common)", sym.name),
                        ));
                    }
                    if sym.name.is_empty() {
                        return Err(KlpError::NoSymbol {
                            tu: self.tu(),
                            place,
                            section: String::new(),
                            offset: addend,
                        });
                    }
                    let local = sym.is_local();
                    let resolution = self.resolve(&sym.name, local, &place)?;
                    let symbol = match resolution {
                        Resolution::Exported => sym.name.clone(),
                        Resolution::Livepatch { sympos } => {
                            let klp = klp_symbol_name(self.request.objname, &sym.name, sympos)?;
                            self.check_module_klp(
                                &klp, &place, context, out_index, offset, &guarded,
                            )?;
                            klp
                        }
                    };
                    externals
                        .entry(symbol.clone())
                        .or_insert_with(|| ExternalReference {
                            symbol: symbol.clone(),
                            name: sym.name.clone(),
                            resolution,
                        });
                    OutTarget::External(symbol, addend)
                }
            };
            outs[out_index].relocs.push(OutReloc {
                offset,
                r_type: rel.r_type,
                target,
            });
        }

        // Functions and their old positions.
        let mut functions = Vec::new();
        for f in self.request.functions {
            let (symbol, old_sympos) = if f.new {
                (f.post_name.clone(), None)
            } else {
                let sym = self
                    .input
                    .function(&f.post_name)
                    .expect("seed() found every function");
                let local = self.input.symbols[sym].is_local();
                let place = format!("the old version of {}", f.post_name);
                let sympos = match self.resolve(&f.old_name, local, &place)? {
                    Resolution::Exported => 0,
                    Resolution::Livepatch { sympos } => sympos,
                };
                (new_symbol_name(&f.old_name)?, Some(sympos))
            };
            functions.push(ExtractedFunction {
                post_name: f.post_name.clone(),
                old_name: f.old_name.clone(),
                symbol,
                new: f.new,
                old_sympos,
            });
        }

        let object = write_object(outs, &externals)?;
        let mut sections: Vec<String> = self
            .carried
            .keys()
            .map(|&s| self.input.sections[s].name.clone())
            .chain(special_names)
            .collect();
        sections.sort();
        Ok(Extracted {
            object,
            functions,
            references: externals.into_values().collect(),
            sections,
        })
    }

    /// Refuses livepatch relocations that a module target would apply too late.
    fn check_module_klp(
        &self,
        klp: &str,
        place: &str,
        context: RelocContext,
        out_index: usize,
        offset: u64,
        guarded: &[(usize, i64, i64)],
    ) -> Result<()> {
        if self.request.objname == VMLINUX {
            // vmlinux relocations are applied while the patch module loads, before its
            // alternatives, jump labels and static calls (kernel/module/main.c,
            // apply_relocations() → klp_apply_section_relocs()).
            return Ok(());
        }
        let what = match context {
            RelocContext::Special => Some("special sections"),
            RelocContext::Replacement => Some("alternative replacement code"),
            RelocContext::Code => guarded
                .iter()
                .any(|&(o, a, b)| o == out_index && a <= offset as i64 && (offset as i64) < b)
                .then_some("code that alternatives or paravirt patching rewrite"),
        };
        match what {
            Some(what) => Err(KlpError::ModuleSpecialRelocation {
                tu: self.tu(),
                place: place.to_owned(),
                symbol: klp.to_owned(),
                objname: self.request.objname.to_owned(),
                what,
            }),
            None => Ok(()),
        }
    }

    /// The `.orc_unwind` entries parallel to the kept `.orc_unwind_ip` entries.
    fn orc_entries(&self, ip_sec: usize, groups: &[(u64, u64)]) -> Result<OutSection> {
        let what = format!("{}: {ORC_UNWIND}", self.input.tu);
        let sec = self
            .section_named(ORC_UNWIND)
            .ok_or_else(|| malformed(&what, "missing, but .orc_unwind_ip is there"))?;
        let orc = &self.input.sections[sec];
        let entries = self.input.sections[ip_sec].size / 4;
        if orc.size != entries * ORC_ENTRY_SIZE {
            return Err(malformed(
                &what,
                format!("{} bytes for {entries} .orc_unwind_ip entries", orc.size),
            ));
        }
        let mut data = Vec::new();
        for &(start, _) in groups {
            let i = (start / 4 * ORC_ENTRY_SIZE) as usize;
            data.extend_from_slice(&orc.data[i..i + ORC_ENTRY_SIZE as usize]);
        }
        Ok(OutSection::copy_of(orc, data))
    }

    /// Refuses sections the builder does not know that describe carried functions.
    fn check_unknown_special_sections(&self, layout: &Layout) -> Result<()> {
        for (src, section) in self.input.sections.iter().enumerate() {
            if section.relocs.is_empty()
                || is_unrelated_section(&section.name)
                || self.carried.contains_key(&src)
                || section.name == ORC_UNWIND
                || SPECIAL_SECTIONS.iter().any(|s| s.name == section.name)
            {
                continue;
            }
            for rel in &section.relocs {
                let sym = &self.input.symbols[rel.sym];
                let Some(t) = sym.section else { continue };
                if !self.function_sections.contains_key(&t) {
                    continue;
                }
                if layout.locate(t, sym.value as i64 + rel.addend).is_some() {
                    let f = self.function_sections[&t];
                    return Err(KlpError::UnknownSpecialSection {
                        tu: self.tu(),
                        section: section.name.clone(),
                        function: self.request.functions[f].post_name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Assigns an output section to every carried input section.
    fn layout(&self) -> Result<Layout> {
        let mut sections = Vec::new();
        let mut placement = BTreeMap::new();
        let mut slices = BTreeMap::new();
        for (&sec, carried) in &self.carried {
            let section = &self.input.sections[sec];
            let out_index = sections.len();
            let mut out = match carried {
                Carried::Whole => OutSection::copy_of(section, section.data.to_vec()),
                Carried::Slices(ranges) => {
                    let mut data = Vec::new();
                    let mut placed = Vec::new();
                    for &(a, b) in ranges {
                        placed.push((a, b, data.len() as i64 - a as i64));
                        data.extend_from_slice(&section.data[a as usize..b as usize]);
                    }
                    slices.insert(sec, placed);
                    OutSection::copy_of(section, data)
                }
            };
            if let Some(&f) = self.function_sections.get(&sec) {
                let spec = &self.request.functions[f];
                let sym = self
                    .input
                    .function(&spec.post_name)
                    .expect("seed() found every function");
                let size = self.input.symbols[sym].size;
                if spec.new {
                    // A new global function keeps its binding, so that the objects of
                    // other files of the patch, linked into the same module, reach it.
                    let local = self.input.symbols[sym].is_local();
                    out.symbols
                        .push(OutSymbol::function(&spec.post_name, size, local));
                } else {
                    let name = new_symbol_name(&spec.old_name)?;
                    out.name = format!(".text.{name}");
                    out.symbols.push(OutSymbol::function(&name, size, false));
                }
            } else if matches!(carried, Carried::Whole) {
                // Keep the local names of `.cold` parts and copied data, for kallsyms
                // and for whoever reads the module.
                for &s in &section.symbols {
                    let sym = &self.input.symbols[s];
                    if sym.is_local() && !sym.name.is_empty() {
                        out.symbols.push(OutSymbol {
                            name: sym.name.clone(),
                            value: sym.value,
                            size: sym.size,
                            kind: sym.kind,
                            global: false,
                        });
                    }
                }
            }
            placement.insert(sec, (out_index, 0));
            sections.push(out);
        }
        Ok(Layout {
            sections,
            placement,
            slices,
        })
    }
}

/// Writes the output object: the sections, one symbol per section (which the
/// relocations use), the carried functions and data, the undefined references.
fn write_object(
    outs: Vec<OutSection>,
    externals: &BTreeMap<String, ExternalReference>,
) -> Result<Vec<u8>> {
    let mut builder = out::Builder::new(Endianness::Little, true);
    builder.header.e_type = elf::ET_REL;
    builder.header.e_machine = elf::EM_X86_64;

    let mut ids = Vec::new();
    for o in &outs {
        let s = builder.sections.add();
        s.name = o.name.clone().into_bytes().into();
        s.sh_type = elf::SectionType(o.sh_type);
        s.sh_flags = elf::SectionFlags(o.flags);
        s.sh_addralign = o.align.max(1);
        s.sh_entsize = o.entsize;
        s.data = if o.sh_type == elf::SHT_NOBITS.0 {
            out::SectionData::UninitializedData(o.size)
        } else {
            out::SectionData::Data(o.data.clone().into())
        };
        ids.push(s.id());
    }
    // ld warns about, and newer binutils refuse, objects without this note.
    let note = builder.sections.add();
    note.name = b".note.GNU-stack"[..].into();
    note.sh_type = elf::SHT_PROGBITS;
    note.sh_addralign = 1;
    let symtab = builder.sections.add();
    symtab.name = b".symtab"[..].into();
    symtab.sh_type = elf::SHT_SYMTAB;
    symtab.sh_addralign = 8;
    symtab.sh_entsize = 24;
    symtab.data = out::SectionData::Symbol;
    let symtab_id = symtab.id();
    let strtab = builder.sections.add();
    strtab.name = b".strtab"[..].into();
    strtab.sh_type = elf::SHT_STRTAB;
    strtab.sh_addralign = 1;
    strtab.data = out::SectionData::String;
    let shstrtab = builder.sections.add();
    shstrtab.name = b".shstrtab"[..].into();
    shstrtab.sh_type = elf::SHT_STRTAB;
    shstrtab.sh_addralign = 1;
    shstrtab.data = out::SectionData::SectionString;

    // Symbols: one per output section (relocations use them), the carried
    // functions and data, and the undefined references.
    let mut section_syms = Vec::new();
    for &id in &ids {
        let sym = builder.symbols.add();
        sym.section = Some(id);
        sym.set_st_info(elf::STB_LOCAL, elf::STT_SECTION);
        section_syms.push(sym.id());
    }
    for (o, &id) in outs.iter().zip(&ids) {
        for s in &o.symbols {
            let sym = builder.symbols.add();
            sym.name = s.name.clone().into_bytes().into();
            sym.section = Some(id);
            sym.st_value = s.value;
            sym.st_size = s.size;
            let bind = if s.global {
                elf::STB_GLOBAL
            } else {
                elf::STB_LOCAL
            };
            sym.set_st_info(bind, elf::SymbolType(s.kind));
        }
    }
    let mut external_syms = HashMap::new();
    for name in externals.keys() {
        let sym = builder.symbols.add();
        sym.name = name.clone().into_bytes().into();
        sym.set_st_info(elf::STB_GLOBAL, elf::STT_NOTYPE);
        sym.st_shndx = elf::SHN_UNDEF;
        external_syms.insert(name.clone(), sym.id());
    }

    for (o, &id) in outs.iter().zip(&ids) {
        if o.relocs.is_empty() {
            continue;
        }
        let mut relocs: Vec<out::Relocation> = o
            .relocs
            .iter()
            .map(|r| {
                let (symbol, addend) = match &r.target {
                    OutTarget::Section(s, addend) => (section_syms[*s], *addend),
                    OutTarget::External(name, addend) => (external_syms[name], *addend),
                };
                out::Relocation {
                    r_offset: r.offset,
                    symbol: Some(symbol),
                    r_type: elf::RelocationType(r.r_type),
                    r_addend: addend,
                }
            })
            .collect();
        relocs.sort_by_key(|r| r.r_offset);
        let rela = builder.sections.add();
        rela.name = format!(".rela{}", o.name).into_bytes().into();
        rela.sh_type = elf::SHT_RELA;
        rela.sh_flags = elf::SHF_INFO_LINK;
        rela.sh_addralign = 8;
        rela.sh_entsize = 24;
        rela.sh_link_section = Some(symtab_id);
        rela.sh_info_section = Some(id);
        rela.data = out::SectionData::Relocation(relocs);
    }

    let mut buffer = Vec::new();
    builder.write(&mut buffer).map_err(KlpError::Write)?;
    Ok(buffer)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelocContext {
    Code,
    Replacement,
    Special,
}

/// Where every carried input section went.
#[derive(Debug)]
struct Layout {
    sections: Vec<OutSection>,
    /// Input section → (output section, shift for whole sections).
    placement: BTreeMap<usize, (usize, i64)>,
    /// Input section → its carried slices: (start, end, shift).
    slices: BTreeMap<usize, Vec<(u64, u64, i64)>>,
}

impl Layout {
    /// The output section and offset shift for `offset` of input section `sec`, if
    /// that byte is carried (or it is the end of a carried range).
    fn locate(&self, sec: usize, offset: i64) -> Option<(usize, i64)> {
        let &(out_index, shift) = self.placement.get(&sec)?;
        match self.slices.get(&sec) {
            None => {
                let size = self.sections[out_index].size as i64;
                (0 <= offset && offset <= size).then_some((out_index, shift))
            }
            Some(slices) => slices
                .iter()
                .find(|&&(a, _, _)| a as i64 == offset)
                .or_else(|| {
                    slices
                        .iter()
                        .find(|&&(a, b, _)| a as i64 <= offset && offset <= b as i64)
                })
                .map(|&(_, _, shift)| (out_index, shift)),
        }
    }
}

#[derive(Debug, Clone)]
struct OutSection {
    name: String,
    sh_type: u32,
    flags: u64,
    align: u64,
    entsize: u64,
    size: u64,
    data: Vec<u8>,
    symbols: Vec<OutSymbol>,
    relocs: Vec<OutReloc>,
}

impl OutSection {
    fn copy_of(section: &InSection<'_>, data: Vec<u8>) -> Self {
        let size = if section.sh_type == elf::SHT_NOBITS.0 {
            section.size
        } else {
            data.len() as u64
        };
        OutSection {
            name: section.name.clone(),
            sh_type: section.sh_type,
            flags: section.flags & !elf::SHF_GROUP.0,
            align: section.align,
            entsize: section.entsize,
            size,
            data,
            symbols: Vec::new(),
            relocs: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct OutSymbol {
    name: String,
    value: u64,
    size: u64,
    kind: u8,
    global: bool,
}

impl OutSymbol {
    fn function(name: &str, size: u64, local: bool) -> Self {
        OutSymbol {
            name: name.to_owned(),
            value: 0,
            size,
            kind: elf::STT_FUNC.0,
            global: !local,
        }
    }
}

#[derive(Debug, Clone)]
struct OutReloc {
    offset: u64,
    r_type: u32,
    target: OutTarget,
}

#[derive(Debug, Clone)]
enum OutTarget {
    /// An output section's symbol, plus addend.
    Section(usize, i64),
    /// An undefined symbol, plus addend.
    External(String, i64),
}

// ---------------------------------------------------------------------------------
// post_link

/// Moves every relocation against a `.klp.sym.*` symbol of the linked module `ko`
/// into `.klp.rela.<object>.<section>` sections and marks those symbols
/// `SHN_LIVEPATCH`, as the kernel's livepatch ELF format requires.
pub fn post_link(ko: &[u8]) -> Result<PostLinked> {
    const WHAT: &str = "module";
    // A livepatch relocation section is SHF_ALLOC and links the symbol table, which the
    // builder's reader takes for dynamic relocations; check with the plain reader first.
    {
        let header = elf::FileHeader64::<Endianness>::parse(ko).map_err(read_err(WHAT))?;
        let endian = header.endian().map_err(read_err(WHAT))?;
        let sections = header.sections(endian, ko).map_err(read_err(WHAT))?;
        for s in sections.iter() {
            if s.sh_flags(endian).0 & SHF_RELA_LIVEPATCH != 0 {
                let name = sections.section_name(endian, s).map_err(read_err(WHAT))?;
                return Err(KlpError::AlreadyPostLinked {
                    section: String::from_utf8_lossy(name).into_owned(),
                });
            }
        }
    }
    let mut builder = out::Builder::read(ko).map_err(|e| malformed(WHAT, e.to_string()))?;
    if builder.header.e_type != elf::ET_REL || builder.header.e_machine != elf::EM_X86_64 {
        return Err(malformed(WHAT, "not an x86-64 relocatable object"));
    }

    // The livepatch symbols and their objects.
    let mut klp_objects = HashMap::new();
    let mut klp_names = Vec::new();
    for sym in builder.symbols.iter_mut() {
        let name = String::from_utf8_lossy(sym.name.as_slice()).into_owned();
        if !name.starts_with(KLP_SYM_PREFIX) {
            continue;
        }
        let (objname, _, _) = parse_klp_symbol_name(&name)?;
        if sym.section.is_some()
            || (sym.st_shndx != elf::SHN_UNDEF && sym.st_shndx.0 != SHN_LIVEPATCH)
        {
            return Err(malformed(
                WHAT,
                format!("livepatch symbol {name} is defined"),
            ));
        }
        sym.section = None;
        sym.st_shndx = elf::SymbolSection(SHN_LIVEPATCH);
        klp_objects.insert(sym.id().index(), objname);
        klp_names.push(name);
    }

    let symtab = builder
        .sections
        .iter()
        .find(|s| matches!(s.data, out::SectionData::Symbol))
        .map(|s| s.id())
        .ok_or_else(|| malformed(WHAT, "no symbol table"))?;

    // Every relocation section must name the section it applies to (SHF_INFO_LINK),
    // or its livepatch relocations could not be moved and would reach the loader.
    for s in builder.sections.iter() {
        if let out::SectionData::Relocation(relocs) = &s.data {
            let klp = relocs.iter().any(|r| {
                r.symbol
                    .is_some_and(|id| klp_objects.contains_key(&id.index()))
            });
            if klp && s.sh_info_section.is_none() {
                return Err(malformed(
                    WHAT,
                    format!(
                        "relocation section {} has livepatch relocations but no target section",
                        String::from_utf8_lossy(s.name.as_slice())
                    ),
                ));
            }
        }
    }

    // The kernel refuses to apply two relocations to one location.
    let mut seen = BTreeSet::new();
    for s in builder.sections.iter() {
        let (out::SectionData::Relocation(relocs), Some(target)) = (&s.data, s.sh_info_section)
        else {
            continue;
        };
        for r in relocs {
            if !seen.insert((target.index(), r.r_offset)) {
                return Err(KlpError::DuplicateRelocation {
                    section: String::from_utf8_lossy(builder.sections.get(target).name.as_slice())
                        .into_owned(),
                    offset: r.r_offset,
                });
            }
        }
    }

    // Split: (object, target) → relocations.
    let mut moved: BTreeMap<(String, usize), Vec<out::Relocation>> = BTreeMap::new();
    let mut targets = HashMap::new();
    let mut emptied = Vec::new();
    for s in builder.sections.iter_mut() {
        let Some(target) = s.sh_info_section else {
            continue;
        };
        let out::SectionData::Relocation(relocs) = &mut s.data else {
            continue;
        };
        let (klp, kept): (Vec<_>, Vec<_>) = relocs.drain(..).partition(|r| {
            r.symbol
                .is_some_and(|id| klp_objects.contains_key(&id.index()))
        });
        *relocs = kept;
        if relocs.is_empty() && !klp.is_empty() {
            emptied.push(s.id());
        }
        for r in klp {
            let id = r.symbol.expect("partitioned on a symbol");
            moved
                .entry((klp_objects[&id.index()].clone(), target.index()))
                .or_default()
                .push(r);
            targets.insert(target.index(), target);
        }
    }
    for id in emptied {
        builder.sections.get_mut(id).delete = true;
    }

    let mut sections = Vec::new();
    for ((objname, target), mut relocs) in moved {
        let target = targets[&target];
        let target_section = builder.sections.get(target);
        let target_name = String::from_utf8_lossy(target_section.name.as_slice()).into_owned();
        if !target_section.is_alloc() {
            return Err(KlpError::NonAllocTarget {
                section: target_name,
            });
        }
        let name = format!("{KLP_RELA_PREFIX}{objname}.{target_name}");
        relocs.sort_by_key(|r| r.r_offset);
        sections.push(KlpRelaSection {
            name: name.clone(),
            target: target_name,
            relocations: relocs.len(),
        });
        let rela = builder.sections.add();
        rela.name = name.into_bytes().into();
        rela.sh_type = elf::SHT_RELA;
        // SHF_ALLOC: the livepatch core applies relocations for a module target when
        // that module loads, long after the patch module's ELF copy was freed, so the
        // section must be in the module's memory (module-elf-format.rst §3.1).
        rela.sh_flags =
            elf::SectionFlags(SHF_RELA_LIVEPATCH | elf::SHF_ALLOC.0 | elf::SHF_INFO_LINK.0);
        rela.sh_addralign = 8;
        rela.sh_entsize = 24;
        rela.sh_link_section = Some(symtab);
        rela.sh_info_section = Some(target);
        rela.data = out::SectionData::Relocation(relocs);
    }

    let mut buffer = Vec::new();
    builder.write(&mut buffer).map_err(KlpError::Write)?;
    klp_names.sort();
    Ok(PostLinked {
        ko: buffer,
        sections,
        symbols: klp_names,
    })
}

#[cfg(test)]
mod tests_support {
    //! Helpers of the unit tests: gcc with kernel-like flags, a resolver from a table.

    use std::cell::RefCell;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use object::read::elf::ElfFile64;
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

    use super::*;

    /// The kernel's code generation flags that matter for the object's shape.
    pub(super) const KERNEL_LIKE_FLAGS: &[&str] = &[
        "-O2",
        "-ffunction-sections",
        "-fdata-sections",
        "-mcmodel=kernel",
        "-fno-pic",
        "-mfentry",
        "-pg",
        "-mrecord-mcount",
        "-mno-red-zone",
        "-fno-asynchronous-unwind-tables",
        "-fno-jump-tables",
        "-fno-common",
        "-c",
    ];

    pub(super) fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/klp")
            .join(name)
    }

    /// Compiles `engine/tests/klp/<name>` with gcc and kernel-like flags.
    pub(super) fn compile(name: &str, extra: &[&str]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let obj = dir.path().join("out.o");
        let out = Command::new("gcc")
            .args(KERNEL_LIKE_FLAGS)
            .args(extra)
            .arg(fixture(name))
            .arg("-o")
            .arg(&obj)
            .output()
            .expect("gcc runs");
        assert!(
            out.status.success(),
            "gcc {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(obj).unwrap()
    }

    /// Assembles or compiles `engine/tests/klp/<name>` with plain flags.
    pub(super) fn compile_plain(name: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let obj = dir.path().join("out.o");
        let out = Command::new("gcc")
            .args(["-O2", "-c"])
            .arg(fixture(name))
            .arg("-o")
            .arg(&obj)
            .output()
            .expect("gcc runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(obj).unwrap()
    }

    /// Links relocatable objects into one with `ld -r`, as kbuild links a module.
    pub(super) fn link(objects: &[&[u8]]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("ld");
        cmd.args(["-r", "-m", "elf_x86_64", "-o"])
            .arg(dir.path().join("linked.o"));
        for (i, o) in objects.iter().enumerate() {
            let path = dir.path().join(format!("{i}.o"));
            std::fs::write(&path, o).unwrap();
            cmd.arg(path);
        }
        let out = cmd.output().expect("ld runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(dir.path().join("linked.o")).unwrap()
    }

    /// A resolver from a table; records every question.
    #[derive(Debug, Default)]
    pub(super) struct FakeResolver {
        table: HashMap<&'static str, Resolution>,
        asked: RefCell<Vec<(String, bool)>>,
    }

    impl FakeResolver {
        pub(super) fn new(entries: &[(&'static str, Option<u64>)]) -> Self {
            FakeResolver {
                table: entries
                    .iter()
                    .map(|&(n, pos)| {
                        let r = match pos {
                            None => Resolution::Exported,
                            Some(sympos) => Resolution::Livepatch { sympos },
                        };
                        (n, r)
                    })
                    .collect(),
                asked: RefCell::default(),
            }
        }
        pub(super) fn asked_local(&self, name: &str) -> Option<bool> {
            self.asked
                .borrow()
                .iter()
                .find(|(n, _)| n == name)
                .map(|&(_, l)| l)
        }
    }

    impl SymbolResolver for FakeResolver {
        fn resolve(&self, name: &str, _tu: &str, local: bool) -> Result<Resolution, ResolveError> {
            self.asked.borrow_mut().push((name.to_owned(), local));
            self.table
                .get(name)
                .cloned()
                .ok_or_else(|| ResolveError::Missing { name: name.into() })
        }
    }

    pub(super) fn changed(name: &str) -> FunctionSpec {
        FunctionSpec {
            post_name: name.into(),
            old_name: name.into(),
            new: false,
        }
    }

    pub(super) fn basic_resolver() -> FakeResolver {
        FakeResolver::new(&[
            ("__fentry__", None),
            ("printk", None),
            ("report_failure", None),
            ("jiffies", None),
            ("saved_command_line", Some(0)),
            ("counter", Some(0)),
            ("helper", Some(1)),
            ("shared_table", Some(0)),
            ("once_a", Some(0)),
            ("once_b", Some(0)),
            ("patched", Some(2)),
            ("callee", Some(0)),
        ])
    }

    pub(super) fn extract_basic(functions: &[FunctionSpec]) -> (Extracted, FakeResolver) {
        let object = compile("basic.c", &[]);
        let resolver = basic_resolver();
        let request = ExtractRequest {
            object: &object,
            tu: "test/basic.o",
            objname: VMLINUX,
            functions,
        };
        let extracted = extract(&request, &resolver).unwrap();
        (extracted, resolver)
    }

    /// Every relocation of section `name` as (offset, target name, addend), where a
    /// section symbol is named by its section.
    pub(super) fn relocs(elf: &ElfFile64<'_>, name: &str) -> Vec<(u64, String, i64)> {
        let section = elf
            .section_by_name(name)
            .unwrap_or_else(|| panic!("no {name}"));
        let mut out: Vec<_> = section
            .relocations()
            .map(|(offset, r)| {
                let target = match r.target() {
                    RelocationTarget::Symbol(i) => {
                        let sym = elf.symbol_by_index(i).unwrap();
                        if sym.kind() == object::SymbolKind::Section {
                            let s = elf.section_by_index(sym.section_index().unwrap()).unwrap();
                            s.name().unwrap().to_owned()
                        } else {
                            sym.name().unwrap().to_owned()
                        }
                    }
                    other => panic!("{other:?}"),
                };
                (offset, target, r.addend())
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use object::read::elf::ElfFile64;
    use object::{Object, ObjectSection, ObjectSymbol};

    use super::tests_support::*;
    use super::*;

    #[test]
    fn extract_carries_the_function_and_what_belongs_to_it() {
        let (ex, resolver) = extract_basic(&[changed("patched")]);
        assert_eq!(
            ex.sections,
            [
                ".rodata.names",
                ".rodata.own_table",
                ".rodata.patched.str1.1",
                ".rodata.str1.1",
                ".text.patched",
                ".text.unlikely.patched",
                "__mcount_loc",
            ]
        );
        assert_eq!(
            ex.functions,
            [ExtractedFunction {
                post_name: "patched".into(),
                old_name: "patched".into(),
                symbol: "__kstack_new_patched".into(),
                new: false,
                old_sympos: Some(2),
            }]
        );
        let references: Vec<(&str, &Resolution)> = ex
            .references
            .iter()
            .map(|r| (r.symbol.as_str(), &r.resolution))
            .collect();
        let lp = |sympos| Resolution::Livepatch { sympos };
        assert_eq!(
            references,
            [
                (".klp.sym.vmlinux.callee,0", &lp(0)),
                (".klp.sym.vmlinux.counter,0", &lp(0)),
                (".klp.sym.vmlinux.helper,1", &lp(1)),
                (".klp.sym.vmlinux.once_a,0", &lp(0)),
                (".klp.sym.vmlinux.saved_command_line,0", &lp(0)),
                (".klp.sym.vmlinux.shared_table,0", &lp(0)),
                ("__fentry__", &Resolution::Exported),
                ("printk", &Resolution::Exported),
                ("report_failure", &Resolution::Exported),
            ]
        );
        // Statics are asked for as local, so the resolver picks this file's.
        assert_eq!(resolver.asked_local("counter"), Some(true));
        assert_eq!(resolver.asked_local("once_a"), Some(true));
        assert_eq!(resolver.asked_local("saved_command_line"), Some(false));
        // once_b sits right before once_a: only decoding `cmpb $0, once_a(%rip)`
        // (an immediate after the displacement) tells them apart.
        assert_eq!(resolver.asked_local("once_b"), None);

        let elf = ElfFile64::<Endianness>::parse(&*ex.object).unwrap();
        let sym = elf
            .symbols()
            .find(|s| s.name() == Ok("__kstack_new_patched"))
            .unwrap();
        assert!(sym.is_global() && sym.kind() == object::SymbolKind::Text);
        let text = elf.section_by_name(".text.__kstack_new_patched").unwrap();
        assert_eq!(sym.section_index(), Some(text.index()));
        assert!(elf.symbols().any(|s| s.name() == Ok("patched.cold")));
        let r = relocs(&elf, ".text.__kstack_new_patched");
        let at = |o: u64| r.iter().find(|x| x.0 == o).unwrap().clone();
        assert_eq!(at(0x1), (0x1, "__fentry__".into(), -4));
        assert_eq!(
            at(0x1b),
            (0x1b, ".klp.sym.vmlinux.saved_command_line,0".into(), -4)
        );
        // `addl $1, counter(%rip)`: addend -5 stays, now relative to the symbol.
        assert_eq!(at(0x21), (0x21, ".klp.sym.vmlinux.counter,0".into(), -5));
        assert_eq!(at(0x33), (0x33, ".text.unlikely.patched".into(), -4));
        assert_eq!(at(0x39), (0x39, ".klp.sym.vmlinux.once_a,0".into(), -5));
        assert_eq!(
            at(0x6f),
            (0x6f, ".klp.sym.vmlinux.shared_table,0".into(), 0)
        );
        assert_eq!(at(0x76), (0x76, ".rodata.own_table".into(), 0));
        assert_eq!(at(0x7b), (0x7b, ".klp.sym.vmlinux.helper,1".into(), -4));
        assert_eq!(at(0x91), (0x91, ".rodata.names".into(), 0));
        // The copied table of string pointers points at the copied strings.
        assert_eq!(
            relocs(&elf, ".rodata.names"),
            [
                (0, ".rodata.str1.1".into(), 0),
                (8, ".rodata.str1.1".into(), 5)
            ]
        );
        // The cold part jumps back into the new function.
        assert!(relocs(&elf, ".text.unlikely.patched").contains(&(
            0x41,
            ".text.__kstack_new_patched".into(),
            0x98
        )));
        // ftrace's list of call sites: the new function only.
        assert_eq!(
            relocs(&elf, "__mcount_loc"),
            [(0, ".text.__kstack_new_patched".into(), 0)]
        );
        assert!(elf.section_by_name(".text.helper").is_none());
        assert!(elf.section_by_name(".rodata.shared_table").is_none());
        assert!(elf.section_by_name(".data.once").is_none());
    }

    #[test]
    fn calls_between_carried_functions_stay_inside_the_object() {
        let (ex, _) = extract_basic(&[changed("patched"), changed("callee")]);
        let elf = ElfFile64::<Endianness>::parse(&*ex.object).unwrap();
        let r = relocs(&elf, ".text.__kstack_new_patched");
        assert!(
            r.contains(&(0x87, ".text.__kstack_new_callee".into(), -4)),
            "{r:?}"
        );
        assert!(!ex.references.iter().any(|r| r.name == "callee"));
        assert_eq!(relocs(&elf, "__mcount_loc").len(), 2);
    }

    #[test]
    fn new_functions_are_carried_under_their_own_name() {
        let callee_new = FunctionSpec {
            new: true,
            ..changed("callee")
        };
        let (ex, resolver) = extract_basic(&[changed("patched"), callee_new]);
        assert_eq!(
            ex.functions[1],
            ExtractedFunction {
                post_name: "callee".into(),
                old_name: "callee".into(),
                symbol: "callee".into(),
                new: true,
                old_sympos: None,
            }
        );
        // Nothing asked about an old version that does not exist.
        assert_eq!(resolver.asked_local("callee"), None);
        let elf = ElfFile64::<Endianness>::parse(&*ex.object).unwrap();
        let sym = elf.symbols().find(|s| s.name() == Ok("callee")).unwrap();
        assert!(sym.is_global(), "a new global function stays global");
        let r = relocs(&elf, ".text.__kstack_new_patched");
        assert!(r.contains(&(0x87, ".text.callee".into(), -4)), "{r:?}");
    }

    #[test]
    fn missing_symbols_and_functions_are_errors_with_context() {
        let object = compile("basic.c", &[]);
        let resolver = FakeResolver::new(&[("__fentry__", None), ("printk", None)]);
        let request = ExtractRequest {
            object: &object,
            tu: "test/basic.o",
            objname: VMLINUX,
            functions: &[changed("patched")],
        };
        let err = extract(&request, &resolver).unwrap_err().to_string();
        assert!(err.starts_with("test/basic.o: patched"), "{err}");
        assert!(err.contains("is not in the target kernel"), "{err}");

        let request = ExtractRequest {
            functions: &[changed("nonexistent")],
            ..request
        };
        assert!(matches!(
            extract(&request, &resolver),
            Err(KlpError::NoSuchFunction { .. })
        ));
    }

    #[test]
    fn klp_names_follow_what_the_kernel_parses() {
        assert_eq!(
            klp_symbol_name("vmlinux", "foo.isra.0", 2).unwrap(),
            ".klp.sym.vmlinux.foo.isra.0,2"
        );
        assert_eq!(
            parse_klp_symbol_name(".klp.sym.ext4.ext4_attr_show.cold,1").unwrap(),
            ("ext4".into(), "ext4_attr_show.cold".into(), 1)
        );
        assert!(klp_symbol_name("my.mod", "foo", 0).is_err());
        assert!(klp_symbol_name("vmlinux", "a,b", 0).is_err());
        assert!(klp_symbol_name("vmlinux", &"x".repeat(512), 0).is_err());
        assert!(klp_symbol_name(&"m".repeat(56), "x", 0).is_err());
        assert!(parse_klp_symbol_name(".klp.sym.vmlinux.foo,").is_err());
        assert!(parse_klp_symbol_name(".klp.sym.vmlinux.foo,01").is_err());
        assert_eq!(
            new_symbol_name("foo.constprop.0").unwrap(),
            "__kstack_new_foo__constprop__0"
        );
    }
}

#[cfg(test)]
mod special_tests {
    use object::read::elf::ElfFile64;
    use object::{Object, ObjectSection};

    use super::tests_support::*;
    use super::*;

    fn special_resolver() -> FakeResolver {
        FakeResolver::new(&[
            ("__fentry__", None),
            ("printk", None),
            ("orig_insn", None),
            ("repl_insn", None),
            ("boot_cpu_data", None),
            ("__x86_indirect_thunk_rax", None),
            ("__SCK__my_call", Some(0)),
            ("my_key", Some(0)),
            ("patched", Some(0)),
        ])
    }

    fn extract_special(extra: &[&str], objname: &str) -> Result<Extracted> {
        let object = compile("special.c", extra);
        let request = ExtractRequest {
            object: &object,
            tu: "test/special.o",
            objname,
            functions: &[changed("patched")],
        };
        extract(&request, &special_resolver())
    }

    #[test]
    fn special_section_entries_of_the_function_come_along() {
        let ex = extract_special(&[], VMLINUX).unwrap();
        let elf = ElfFile64::<Endianness>::parse(&*ex.object).unwrap();
        let size = |name: &str| elf.section_by_name(name).map(|s| s.size());
        let new = ".text.__kstack_new_patched";
        // One entry each: `other`'s are left behind.
        for (section, bytes) in [
            ("__bug_table", 12),
            ("__ex_table", 12),
            ("__jump_table", 16),
            (".altinstructions", 24),
            (".static_call_sites", 8),
            (".retpoline_sites", 4),
            (".return_sites", 4),
            (".smp_locks", 4),
            (".parainstructions", 16),
            (".orc_unwind_ip", 8),
            (".orc_unwind", 12),
            ("__mcount_loc", 8),
            // `jmp %l[t_no]` and `call repl_insn`, not `other`'s replacements.
            (".altinstr_replacement", 10),
        ] {
            assert_eq!(size(section), Some(bytes), "{section}");
        }
        let r = relocs(&elf, "__bug_table");
        assert_eq!(r[0], (0, new.into(), 0x14));
        // bug_entry::file: the file name, in whichever string section gcc put it.
        let strings = elf.section_by_name(&r[1].1).unwrap().data().unwrap();
        let file = &strings[r[1].2 as usize..];
        assert!(file.starts_with(fixture("special.c").to_str().unwrap().as_bytes()));
        assert_eq!(
            relocs(&elf, "__jump_table"),
            [
                (0, new.into(), 0x1f),
                (4, new.into(), 0x50),
                (8, ".klp.sym.vmlinux.my_key,0".into(), 1)
            ]
        );
        assert_eq!(
            relocs(&elf, ".altinstructions"),
            [
                (0, new.into(), 0x24),
                (4, ".altinstr_replacement".into(), 0),
                (12, new.into(), 0x2c),
                (16, ".altinstr_replacement".into(), 5)
            ]
        );
        assert_eq!(
            relocs(&elf, ".altinstr_replacement"),
            [(1, new.into(), 0x28), (6, "repl_insn".into(), -4)]
        );
        // The static_cpu_has() snippet: test, jnz back, jmp back.
        let aux = relocs(&elf, ".altinstr_aux");
        assert_eq!(
            aux,
            [
                (2, "boot_cpu_data".into(), 7),
                (9, new.into(), 0x25),
                (14, new.into(), 0x28)
            ]
        );
        let jmp = relocs(&elf, new);
        assert!(jmp.contains(&(0x25, ".altinstr_aux".into(), -4)), "{jmp:?}");
        assert_eq!(
            relocs(&elf, ".static_call_sites"),
            [
                (0, new.into(), 0x31),
                (4, ".klp.sym.vmlinux.__SCK__my_call,0".into(), 0)
            ]
        );
        assert_eq!(
            relocs(&elf, ".orc_unwind_ip"),
            [(0, new.into(), 0x31), (4, new.into(), 0x3f)]
        );
        assert_eq!(relocs(&elf, ".parainstructions"), [(0, new.into(), 0x3f)]);
        assert_eq!(relocs(&elf, ".return_sites"), [(0, new.into(), 0x41)]);
    }

    #[test]
    fn unknown_special_sections_are_refused() {
        let err = extract_special(&["-DWEIRD"], VMLINUX).unwrap_err();
        assert!(
            matches!(&err, KlpError::UnknownSpecialSection { section, .. } if section == ".weird_table"),
            "{err}"
        );
    }

    #[test]
    fn module_targets_refuse_livepatch_relocations_in_special_sections() {
        let err = extract_special(&[], "ext4").unwrap_err();
        assert!(
            matches!(&err, KlpError::ModuleSpecialRelocation { symbol, .. } if symbol == ".klp.sym.ext4.my_key,0"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod post_link_tests {
    use object::read::elf::{ElfFile64, SectionHeader as _};
    use object::{Object, ObjectSection, ObjectSymbol};

    use super::tests_support::*;
    use super::*;

    /// The raw entries of relocation section `name`: (offset, symbol name, addend).
    fn relas_of(elf: &ElfFile64<'_>, data: &[u8], name: &str) -> Vec<(u64, String, i64)> {
        let endian = Endianness::Little;
        let section = elf.section_by_name(name).unwrap();
        let (relas, _) = section
            .elf_section_header()
            .rela(endian, data)
            .unwrap()
            .unwrap();
        let symbols = elf.elf_symbol_table();
        relas
            .iter()
            .map(|r| {
                let index = object::SymbolIndex(r.r_sym(endian, false) as usize);
                let sym = symbols.symbol(index).unwrap();
                let sym_name = symbols.symbol_name(endian, sym).unwrap();
                (
                    r.r_offset(endian),
                    String::from_utf8_lossy(sym_name).into_owned(),
                    r.r_addend(endian),
                )
            })
            .collect()
    }

    fn linked_module() -> Vec<u8> {
        let object = compile("basic.c", &[]);
        let request = ExtractRequest {
            object: &object,
            tu: "test/basic.o",
            objname: VMLINUX,
            functions: &[changed("patched")],
        };
        let resolver = FakeResolver::new(&[
            ("__fentry__", None),
            ("printk", None),
            ("report_failure", None),
            ("saved_command_line", Some(0)),
            ("counter", Some(0)),
            ("helper", Some(1)),
            ("shared_table", Some(0)),
            ("once_a", Some(0)),
            ("callee", Some(0)),
            ("patched", Some(0)),
        ]);
        let extracted = extract(&request, &resolver).unwrap();
        link(&[&compile_plain("template.c"), &extracted.object])
    }

    #[test]
    fn post_link_moves_livepatch_relocations_into_klp_rela_sections() {
        let ko = linked_module();
        let before = ElfFile64::<Endianness>::parse(&*ko).unwrap();
        // Counted from the raw tables: the reader's own view of relocations treats
        // allocated relocation sections differently.
        let count = |elf: &ElfFile64<'_>| -> usize {
            elf.sections()
                .filter(|s| s.elf_section_header().sh_type(Endianness::Little) == elf::SHT_RELA)
                .map(|s| s.size() as usize / 24)
                .sum()
        };
        let total_before = count(&before);

        let done = post_link(&ko).unwrap();
        let text = ".text.__kstack_new_patched";
        let klp_text = format!(".klp.rela.vmlinux.{text}");
        let mut names: Vec<(&str, &str)> = done
            .sections
            .iter()
            .map(|s| (s.name.as_str(), s.target.as_str()))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                (klp_text.as_str(), text),
                (
                    ".klp.rela.vmlinux..text.unlikely.patched",
                    ".text.unlikely.patched"
                )
            ]
        );
        assert_eq!(
            done.symbols,
            [
                ".klp.sym.vmlinux.callee,0",
                ".klp.sym.vmlinux.counter,0",
                ".klp.sym.vmlinux.helper,1",
                ".klp.sym.vmlinux.once_a,0",
                ".klp.sym.vmlinux.saved_command_line,0",
                ".klp.sym.vmlinux.shared_table,0",
            ]
        );

        let elf = ElfFile64::<Endianness>::parse(&*done.ko).unwrap();
        let endian = Endianness::Little;
        assert_eq!(count(&elf), total_before, "no relocation lost or added");
        let klp = elf.section_by_name(&klp_text).unwrap();
        let header = klp.elf_section_header();
        assert_eq!(header.sh_type(endian), elf::SHT_RELA);
        let flags = header.sh_flags(endian).0;
        assert_eq!(
            flags,
            SHF_RELA_LIVEPATCH | elf::SHF_ALLOC.0 | elf::SHF_INFO_LINK.0
        );
        let target = elf.section_by_name(text).unwrap();
        assert_eq!(header.sh_info(endian) as usize, target.index().0);
        let symtab = elf.section_by_name(".symtab").unwrap();
        assert_eq!(header.sh_link(endian) as usize, symtab.index().0);

        // Every livepatch symbol is SHN_LIVEPATCH; nothing else is.
        for sym in elf.symbols() {
            let name = sym.name().unwrap();
            let shndx = sym.elf_symbol().st_shndx(endian).0;
            assert_eq!(
                name.starts_with(KLP_SYM_PREFIX),
                shndx == SHN_LIVEPATCH,
                "{name}: {shndx:#x}"
            );
        }
        // The ordinary relocations stay where they were, the livepatch ones moved.
        for section in elf.sections() {
            let name = section.name().unwrap();
            if name.starts_with(".rela") {
                assert!(
                    relas_of(&elf, &done.ko, name)
                        .iter()
                        .all(|r| !r.1.starts_with(KLP_SYM_PREFIX)),
                    "{name} kept a livepatch relocation"
                );
            }
        }
        let relas = |name: &str| relas_of(&elf, &done.ko, name);
        let moved = relas(&klp_text);
        assert!(moved.contains(&(0x1b, ".klp.sym.vmlinux.saved_command_line,0".into(), -4)));
        assert!(moved.contains(&(0x39, ".klp.sym.vmlinux.once_a,0".into(), -5)));
        assert!(moved.iter().all(|r| r.1.starts_with(KLP_SYM_PREFIX)));
        assert!(relas(&format!(".rela{text}")).contains(&(1, "__fentry__".into(), -4)));

        // Once only.
        assert!(matches!(
            post_link(&done.ko),
            Err(KlpError::AlreadyPostLinked { .. })
        ));
    }

    #[test]
    fn post_link_refuses_what_the_kernel_would_refuse() {
        let twice = compile_plain("twice.s");
        assert!(matches!(
            post_link(&twice),
            Err(KlpError::DuplicateRelocation { offset: 0, .. })
        ));
        let bad = compile_plain("badname.c");
        let err = post_link(&bad).unwrap_err();
        assert!(
            matches!(&err, KlpError::BadKlpName { name, .. } if name == ".klp.sym.vmlinux.no_position"),
            "{err}"
        );
    }

    #[test]
    fn post_link_without_livepatch_symbols_changes_nothing_that_matters() {
        let plain = compile_plain("template.c");
        let done = post_link(&plain).unwrap();
        assert!(done.sections.is_empty() && done.symbols.is_empty());
        let before = ElfFile64::<Endianness>::parse(&*plain).unwrap();
        let after = ElfFile64::<Endianness>::parse(&*done.ko).unwrap();
        let names = |elf: &ElfFile64<'_>| -> Vec<String> {
            elf.sections()
                .map(|s| s.name().unwrap().to_owned())
                .collect()
        };
        assert_eq!(names(&before), names(&after));
    }
}
