//! x86-64 instruction decoding, through `iced-x86` only, and the few opcodes the
//! kernel writes when it patches its own text.
//!
//! The builder needs instruction boundaries for one question relocations alone do
//! not answer: the assembler turns a RIP-relative reference to a local symbol into
//! "section + addend", where the addend is the target's offset minus the distance
//! from the relocated field to the end of the instruction (4, or 4 plus an immediate
//! that follows the field: `cmpb $0, once(%rip)` is `80 3d <disp32> <imm8>`). The
//! matcher needs whole instructions to compare a built function with running code.

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Formatter, GasFormatter, Instruction, Mnemonic, OpKind,
    Register,
};

/// Opcodes the kernel writes when it patches text (arch/x86/include/asm/text-patching.h).
pub const CALL_REL32: u8 = 0xe8;
pub const JMP_REL32: u8 = 0xe9;
pub const INT3: u8 = 0xcc;
/// The `LOCK` prefix and the `DS` prefix that replaces it on a uniprocessor
/// (arch/x86/kernel/alternative.c, `alternatives_smp_unlock`).
pub const LOCK_PREFIX: u8 = 0xf0;
pub const DS_PREFIX: u8 = 0x3e;
/// The 5-byte no-op ftrace writes over `call __fentry__` (`BYTES_NOP5`,
/// arch/x86/include/asm/nops.h).
pub const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

/// `endbr64`, which `CONFIG_X86_KERNEL_IBT` (6.12, not 6.1) puts first in every
/// function that may be reached indirectly (arch/x86/include/asm/ibt.h,
/// `gen_endbr`); then comes the fentry call.
pub const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
/// What the kernel writes over an `endbr64` that nothing reaches indirectly, when
/// the CPU has IBT (`gen_endbr_poison`, "osp nopl (%rax)";
/// arch/x86/kernel/alternative.c `apply_seal_endbr`, from `.ibt_endbr_seal`).
pub const ENDBR_POISON: [u8; 4] = [0x66, 0x0f, 0x1f, 0x00];

/// The no-op padding `CONFIG_CALL_PADDING` puts before every function
/// (`-fpatchable-function-entry=16,16`, `CONFIG_FUNCTION_PADDING_BYTES`; 6.12, not
/// 6.1): call-depth tracking writes a function's call thunk there
/// (arch/x86/kernel/callthunks.c, `patch_dest`, which refuses padding that is not
/// no-ops).
pub const FUNCTION_PADDING: u64 = 16;
/// The one-byte no-op the padding is made of.
pub const NOP1: u8 = 0x90;

/// One decoded instruction and where it is (an offset or an address).
#[derive(Debug, Clone, Copy)]
pub struct Insn {
    pub offset: u32,
    pub len: u32,
    pub ins: Instruction,
}

/// Decodes one instruction of `bytes`, which start at `ip`; `None` when invalid or
/// truncated.
pub fn decode_one(bytes: &[u8], ip: u64) -> Option<Instruction> {
    let mut d = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
    let ins = d.decode();
    (!ins.is_invalid()).then_some(ins)
}

/// Decodes `bytes` linearly (code the assembler wrote holds no data in the kernel);
/// an undecodable byte becomes a one-byte entry compared as raw bytes.
pub fn decode_all(bytes: &[u8], ip: u64) -> Vec<Insn> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < bytes.len() {
        let ins = decode_one(&bytes[off..], ip + off as u64).unwrap_or_default();
        let len = ins.len().max(1);
        out.push(Insn {
            offset: off as u32,
            len: len as u32,
            ins,
        });
        off += len;
    }
    out
}

/// The instructions of `bytes` as `(offset, length)`, as far as they decode, and
/// where decoding stopped if it did not reach the end.
pub fn boundaries(bytes: &[u8]) -> (Vec<(u64, u8)>, Option<u64>) {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < bytes.len() {
        match decode_one(&bytes[off..], off as u64) {
            Some(ins) => {
                out.push((off as u64, ins.len() as u8));
                off += ins.len();
            }
            None => return (out, Some(off as u64)),
        }
    }
    (out, None)
}

/// The instruction (start, length) of `boundaries` that holds byte `offset`.
pub fn containing(boundaries: &[(u64, u8)], offset: u64) -> Option<(u64, u8)> {
    let index = boundaries.partition_point(|&(start, _)| start <= offset);
    index
        .checked_sub(1)
        .map(|i| boundaries[i])
        .filter(|&(start, len)| offset < start + u64::from(len))
}

/// Where the displacement of a `%rip`-relative memory operand is in the
/// instruction: `(offset, size)`.
pub fn displacement_field(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut d = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
    let ins = d.decode();
    if ins.is_invalid() || !ins.is_ip_rel_memory_operand() {
        return None;
    }
    let c = d.get_constant_offsets(&ins);
    c.has_displacement()
        .then(|| (c.displacement_offset(), c.displacement_size()))
}

/// The distance from a 4-byte PC-relative field at `field_offset` of the
/// instruction at the start of `bytes` to the end of that instruction, if a
/// PC-relative relocation can sit there: a RIP-relative displacement or a `rel32`
/// branch offset. That distance is what the assembler folded into the addend.
pub fn pc_relative_bias(bytes: &[u8], field_offset: usize) -> Option<i64> {
    let mut d = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
    let ins = d.decode();
    if ins.is_invalid() {
        return None;
    }
    let c = d.get_constant_offsets(&ins);
    let rip_disp = ins.is_ip_rel_memory_operand()
        && c.has_displacement()
        && c.displacement_offset() == field_offset
        && c.displacement_size() == 4;
    let rel32 = is_direct_branch(&ins)
        && c.has_immediate()
        && c.immediate_offset() == field_offset
        && c.immediate_size() == 4;
    (rip_disp || rel32).then(|| (ins.len() - field_offset) as i64)
}

/// Whether the 4-byte field at `field_offset` of the instruction at the start of
/// `bytes` is the target of a direct `call`, `jmp` or `jcc`: what it refers to is
/// called or jumped to, not read.
pub fn is_branch_operand(bytes: &[u8], field_offset: usize) -> bool {
    let mut d = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
    let ins = d.decode();
    if ins.is_invalid() || !is_direct_branch(&ins) {
        return false;
    }
    let c = d.get_constant_offsets(&ins);
    c.has_immediate() && c.immediate_offset() == field_offset
}

/// A PC-relative field of an instruction: a `%rip`-relative displacement or the
/// offset of a direct branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcField {
    /// Where the field is, from the start of the bytes decoded.
    pub offset: u64,
    /// Its width: 4, or 1 for a short jump.
    pub size: u8,
    /// The end of its instruction, which the field is relative to.
    pub insn_end: u64,
    /// The place it refers to, from the start of the bytes decoded.
    pub target: i64,
    /// A direct `call`, `jmp` or `jcc`.
    pub branch: bool,
}

/// Every PC-relative field of the code in `bytes`, decoded linearly; `Err` with the
/// offset where decoding failed.
pub fn pc_relative_fields(bytes: &[u8]) -> Result<Vec<PcField>, u64> {
    let mut out = Vec::new();
    let mut d = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
    while d.can_decode() {
        let at = d.position() as u64;
        let ins = d.decode();
        if ins.is_invalid() {
            return Err(at);
        }
        let c = d.get_constant_offsets(&ins);
        let end = at + ins.len() as u64;
        if is_direct_branch(&ins) && c.has_immediate() {
            out.push(PcField {
                offset: at + c.immediate_offset() as u64,
                size: c.immediate_size() as u8,
                insn_end: end,
                target: ins.near_branch_target() as i64,
                branch: true,
            });
        } else if ins.is_ip_rel_memory_operand() && c.has_displacement() {
            out.push(PcField {
                offset: at + c.displacement_offset() as u64,
                size: c.displacement_size() as u8,
                insn_end: end,
                target: ins.ip_rel_memory_address() as i64,
                branch: false,
            });
        }
    }
    Ok(out)
}

/// Whether execution never falls through to the next instruction: a `jmp` (direct
/// or indirect), a return, `int3`, or an undefined-instruction trap (`ud0`, `ud1`,
/// `ud2`, which `BUG()` emits).
pub fn stops(ins: &Instruction) -> bool {
    match ins.flow_control() {
        FlowControl::UnconditionalBranch
        | FlowControl::IndirectBranch
        | FlowControl::Return
        | FlowControl::Exception => true,
        FlowControl::Interrupt => ins.mnemonic() == Mnemonic::Int3,
        _ => false,
    }
}

/// A no-op, whatever its length: padding, or a site the kernel turned off.
pub fn is_nop(ins: &Instruction) -> bool {
    ins.mnemonic() == Mnemonic::Nop
}

/// A direct near call or jump (conditional or not) with its target in the
/// instruction.
pub fn is_direct_branch(ins: &Instruction) -> bool {
    matches!(
        ins.op0_kind(),
        OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16
    )
}

/// The opposite condition of a conditional jump, `None` for anything else.
pub fn inverse_jcc(m: Mnemonic) -> Option<Mnemonic> {
    use Mnemonic::*;
    const PAIRS: [(Mnemonic, Mnemonic); 8] = [
        (Jo, Jno),
        (Jb, Jae),
        (Je, Jne),
        (Jbe, Ja),
        (Js, Jns),
        (Jp, Jnp),
        (Jl, Jge),
        (Jle, Jg),
    ];
    PAIRS
        .iter()
        .find_map(|&(a, b)| (m == a).then_some(b).or((m == b).then_some(a)))
}

/// The register of a `call *%reg` or `jmp *%reg`.
pub fn indirect_register(ins: &Instruction) -> Option<Register> {
    (matches!(ins.mnemonic(), Mnemonic::Call | Mnemonic::Jmp) && ins.op0_kind() == OpKind::Register)
        .then(|| ins.op0_register())
}

/// The registers retpoline thunks exist for, as their names end
/// (arch/x86/include/asm/GEN-for-each-reg.h: every general register but `rsp`).
pub const THUNK_REGISTERS: &[&str] = &[
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
    "r15",
];

/// The register a retpoline thunk is for, from its name
/// (`__x86_indirect_thunk_r11`, arch/x86/lib/retpoline.S).
pub fn thunk_register(thunk: &str) -> Option<Register> {
    let reg = thunk.rsplit('_').next()?;
    Some(match reg {
        "rax" => Register::RAX,
        "rbx" => Register::RBX,
        "rcx" => Register::RCX,
        "rdx" => Register::RDX,
        "rsi" => Register::RSI,
        "rdi" => Register::RDI,
        "rbp" => Register::RBP,
        "r8" => Register::R8,
        "r9" => Register::R9,
        "r10" => Register::R10,
        "r11" => Register::R11,
        "r12" => Register::R12,
        "r13" => Register::R13,
        "r14" => Register::R14,
        "r15" => Register::R15,
        _ => return None,
    })
}

/// AT&T syntax, as `objdump` prints it.
pub fn disassemble(ins: &Instruction) -> String {
    if ins.is_invalid() {
        return "(bad)".into();
    }
    let mut f = GasFormatter::new();
    f.options_mut().set_space_after_operand_separator(true);
    f.options_mut().set_uppercase_hex(false);
    f.options_mut().set_rip_relative_addresses(true);
    let mut out = String::new();
    f.format(ins, &mut out);
    out
}

/// Bytes as hex, `sep` between them.
pub fn hex(bytes: &[u8], sep: &str) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pc_relative_fields_are_found_with_their_targets() {
        // call .+0x10; jmp short .-2; mov 0x20(%rip),%eax; cmpb $0,0x8(%rip); ret
        let code = [
            0xe8, 0x0b, 0x00, 0x00, 0x00, // call: ends at 5, target 0x10
            0xeb, 0xfc, // jmp: ends at 7, target 3
            0x8b, 0x05, 0x20, 0x00, 0x00, 0x00, // mov: ends at 13, target 0x2d
            0x80, 0x3d, 0x08, 0x00, 0x00, 0x00, 0x00, // cmpb: ends at 20, target 0x1c
            0xc3,
        ];
        let fields = pc_relative_fields(&code).unwrap();
        let short = |f: &PcField| (f.offset, f.size, f.insn_end, f.target, f.branch);
        assert_eq!(
            fields.iter().map(short).collect::<Vec<_>>(),
            [
                (1, 4, 5, 0x10, true),
                (6, 1, 7, 3, true),
                (9, 4, 13, 0x2d, false),
                (15, 4, 20, 0x1c, false),
            ]
        );
        assert_eq!(pc_relative_fields(&[0x90, 0x0f, 0x0b, 0x06]), Err(3));
    }

    #[test]
    fn nops_of_every_length_are_nops() {
        for bytes in [
            &[0x90][..],
            &[0x66, 0x90],
            &[0x0f, 0x1f, 0x00],
            &NOP5,
            &[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0],
        ] {
            let ins = decode_one(bytes, 0).expect("decodes");
            assert!(is_nop(&ins), "{}", hex(bytes, " "));
            assert_eq!(ins.len(), bytes.len());
        }
        assert!(!is_nop(&decode_one(&[INT3], 0).expect("int3")));
    }

    #[test]
    fn branches_and_thunk_registers() {
        let jmp8 = decode_one(&[0xeb, 0x10], 0x1000).expect("jmp");
        assert!(is_direct_branch(&jmp8));
        assert_eq!(jmp8.near_branch_target(), 0x1012);
        let call = decode_one(&[0x41, 0xff, 0xd3], 0).expect("call *%r11");
        assert_eq!(indirect_register(&call), Some(Register::R11));
        assert_eq!(
            thunk_register("__x86_indirect_thunk_r11"),
            Some(Register::R11)
        );
        assert_eq!(disassemble(&call), "call *%r11");
    }

    #[test]
    fn pc_relative_fields_and_their_bias() {
        // cmpb $0x0, x(%rip): the displacement at 2, then an imm8.
        let cmpb = [0x80, 0x3d, 0, 0, 0, 0, 0x00];
        assert_eq!(pc_relative_bias(&cmpb, 2), Some(5));
        assert_eq!(pc_relative_bias(&cmpb, 6), None);
        // mov x(%rip), %rax
        let mov = [0x48, 0x8b, 0x05, 0, 0, 0, 0];
        assert_eq!(pc_relative_bias(&mov, 3), Some(4));
        // call rel32, jne rel32
        assert_eq!(pc_relative_bias(&[0xe8, 0, 0, 0, 0], 1), Some(4));
        assert_eq!(pc_relative_bias(&[0x0f, 0x85, 0, 0, 0, 0], 2), Some(4));
        // mov $imm32, %eax: not PC-relative
        assert_eq!(pc_relative_bias(&[0xb8, 0, 0, 0, 0], 1), None);
        assert!(is_branch_operand(&[0xe8, 0, 0, 0, 0], 1));
        assert!(is_branch_operand(&[0x0f, 0x85, 0, 0, 0, 0], 2));
        assert!(!is_branch_operand(&mov, 3));
    }

    #[test]
    fn what_does_not_fall_through() {
        let stop = |b: &[u8]| stops(&decode_one(b, 0).expect("decodes"));
        assert!(stop(&[0xeb, 0x10])); // jmp rel8
        assert!(stop(&[0xe9, 0, 0, 0, 0])); // jmp rel32
        assert!(stop(&[0xc3])); // ret
        assert!(stop(&[0xcc])); // int3
        assert!(stop(&[0x0f, 0x0b])); // ud2
        assert!(stop(&[0xff, 0xe0])); // jmp *%rax
        assert!(!stop(&[0xff, 0x50, 0x08])); // call *0x8(%rax)
        assert!(!stop(&[0xe8, 0, 0, 0, 0])); // call
        assert!(!stop(&[0x74, 0x02])); // je
        assert!(!stop(&[0xcd, 0x80])); // int $0x80
        let (b, stopped) = boundaries(&[0x90, 0x48, 0x8b, 0x05, 0, 0, 0, 0, 0xc3]);
        assert_eq!(b, [(0, 1), (1, 7), (8, 1)]);
        assert_eq!(stopped, None);
        assert_eq!(containing(&b, 4), Some((1, 7)));
        assert_eq!(containing(&b, 9), None);
    }
}
