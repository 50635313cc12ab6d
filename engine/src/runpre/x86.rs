//! The little x86-64 knowledge the matcher needs, on top of `iced-x86`'s decoder.

use iced_x86::{
    Decoder, DecoderOptions, Formatter, GasFormatter, Instruction, Mnemonic, OpKind, Register,
};

/// Opcodes the kernel writes when it patches text (arch/x86/include/asm/text-patching.h).
pub const CALL_REL32: u8 = 0xe8;
pub const JMP_REL32: u8 = 0xe9;
pub const INT3: u8 = 0xcc;
/// The `LOCK` prefix and the `DS` prefix that replaces it on a uniprocessor
/// (arch/x86/kernel/alternative.c, `alternatives_smp_unlock`).
pub const LOCK_PREFIX: u8 = 0xf0;
pub const DS_PREFIX: u8 = 0x3e;

/// One decoded instruction and where it is (an offset or an address).
#[derive(Debug, Clone, Copy)]
pub struct Insn {
    pub offset: u32,
    pub len: u32,
    pub ins: Instruction,
}

/// Decodes one instruction of `bytes`, which start at `ip`; `None` when invalid.
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
    fn nops_of_every_length_are_nops() {
        for bytes in [
            &[0x90][..],
            &[0x66, 0x90],
            &[0x0f, 0x1f, 0x00],
            &[0x0f, 0x1f, 0x44, 0x00, 0x00],
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
}
