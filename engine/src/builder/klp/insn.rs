//! Just enough of an x86-64 instruction decoder to find where each instruction
//! ends and where its displacement and immediate fields are.
//!
//! The builder needs this for one question the relocations alone cannot answer.
//! The assembler turns a RIP-relative reference to a local symbol into "section +
//! addend", and the addend is the target's offset minus the distance from the
//! relocated field to the end of the instruction: 4, or 4 plus an immediate that
//! follows the displacement (`cmpb $0, once_flag(%rip)` is `80 3d <disp32> <imm8>`).
//! In a section holding many small objects (`.data.once`, `__read_mostly`), only
//! the instruction length says which object is meant. kpatch uses the kernel's
//! own decoder for the same reason.
//!
//! It is not a disassembler: it knows lengths, operand fields and the few control
//! transfers the builder cares about, for the instructions that compiled kernel C
//! contains (general purpose, x87, SSE/AVX through the VEX and EVEX prefixes, system
//! instructions). Anything else is an error, and callers fall back to refusing.

/// A field inside an instruction: its offset from the instruction's first byte and
/// its size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u8,
    pub size: u8,
}

/// What the builder needs to know about how an instruction transfers control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Falls through to the next instruction (or is a call that returns).
    Next,
    /// Never falls through: `jmp`, `ret`, `ud2`, `int3`, an indirect `jmp`.
    Stop,
}

/// One decoded instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub len: u8,
    /// The memory operand's displacement, if any.
    pub disp: Option<Field>,
    /// Whether the memory operand is RIP-relative (then `disp` is 4 bytes).
    pub rip_relative: bool,
    /// The immediate, or the relative branch offset (`rel8`/`rel32`).
    pub imm: Option<Field>,
    /// Whether `imm` is a branch offset relative to the next instruction.
    pub relative_branch: bool,
    pub flow: Flow,
}

impl Insn {
    /// The distance from a 4-byte relocated field at `field_offset` (from the
    /// instruction's start) to the end of the instruction, if a PC-relative
    /// relocation can sit there: a RIP-relative displacement or a `rel32`.
    pub fn pc_relative_bias(&self, field_offset: u8) -> Option<u8> {
        let fits = |f: Option<Field>| f.is_some_and(|f| f.offset == field_offset && f.size == 4);
        if (self.rip_relative && fits(self.disp)) || (self.relative_branch && fits(self.imm)) {
            Some(self.len - field_offset)
        } else {
            None
        }
    }
}

/// Why an instruction could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("instruction runs past the end of the code")]
    Truncated,
    #[error("opcode {0:#04x} is not valid in 64-bit mode or not known to kstack's decoder")]
    Unknown(u8),
    #[error("instruction longer than 15 bytes")]
    TooLong,
}

/// The kind of immediate an opcode takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Imm {
    None,
    /// 1 byte.
    B,
    /// 2 bytes.
    W,
    /// 4 bytes, 2 with an operand-size prefix (`iz`).
    Z,
    /// 8 bytes with REX.W, else like `Z` (`mov r, imm`, B8..BF).
    V,
    /// A 32-bit branch offset.
    Rel32,
    /// An 8-bit branch offset.
    Rel8,
    /// `enter`: a word and a byte.
    Enter,
    /// A memory offset (`mov al, moffs`): 8 bytes, 4 with an address-size prefix.
    Moffs,
}

/// Decodes the instruction at the start of `code`.
pub fn decode(code: &[u8]) -> Result<Insn, DecodeError> {
    let byte = |i: usize| code.get(i).copied().ok_or(DecodeError::Truncated);
    let mut pos = 0;
    let mut opsize16 = false;
    let mut addr32 = false;
    let mut rex_w = false;
    // Legacy prefixes, in any order, then at most one REX right before the opcode.
    loop {
        match byte(pos)? {
            0x66 => opsize16 = true,
            0x67 => addr32 = true,
            0xf0 | 0xf2 | 0xf3 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => {}
            _ => break,
        }
        pos += 1;
    }
    if let b @ 0x40..=0x4f = byte(pos)? {
        rex_w = b & 0x08 != 0;
        pos += 1;
    }
    let op = byte(pos)?;
    pos += 1;

    let (has_modrm, mut imm, flow, relative);
    let mut one_byte_op = None;
    match op {
        0x0f => {
            let op2 = byte(pos)?;
            pos += 1;
            match op2 {
                0x38 => {
                    pos += 1; // the third opcode byte
                    (has_modrm, imm) = (true, Imm::None);
                }
                0x3a => {
                    pos += 1;
                    (has_modrm, imm) = (true, Imm::B);
                }
                _ => (has_modrm, imm) = two_byte(op2)?,
            }
            flow = match op2 {
                0x0b | 0xff | 0xb9 => Flow::Stop, // ud2, ud0, ud1
                _ => Flow::Next,
            };
            relative = (0x80..=0x8f).contains(&op2);
        }
        // VEX (2 and 3 bytes) and EVEX: always so in 64-bit mode.
        0xc4 | 0xc5 | 0x62 => {
            let map = match op {
                0xc5 => {
                    pos += 1;
                    1
                }
                0xc4 => {
                    let m = byte(pos)? & 0x1f;
                    pos += 2;
                    m
                }
                _ => {
                    let m = byte(pos)? & 0x07;
                    pos += 3;
                    m
                }
            };
            let vop = byte(pos)?;
            pos += 1;
            imm = match map {
                3 => Imm::B,
                1 if matches!(vop, 0x70..=0x73 | 0xc2 | 0xc4..=0xc6) => Imm::B,
                1..=3 => Imm::None,
                _ => return Err(DecodeError::Unknown(op)),
            };
            // vzeroupper / vzeroall are the only VEX instructions without ModRM.
            has_modrm = op == 0x62 || !(map == 1 && vop == 0x77);
            flow = Flow::Next;
            relative = false;
        }
        _ => {
            (has_modrm, imm, flow) = one_byte(op, byte(pos).ok())?;
            relative = matches!(op, 0x70..=0x7f | 0xe0..=0xe3 | 0xe8 | 0xe9 | 0xeb);
            one_byte_op = Some(op);
        }
    }

    let mut disp = None;
    let mut rip_relative = false;
    if has_modrm {
        let modrm = byte(pos)?;
        pos += 1;
        let (md, reg, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
        // F6/F7 take an immediate only in their `test` forms (ModRM.reg 0 and 1).
        if matches!(one_byte_op, Some(0xf6 | 0xf7)) && reg >= 2 {
            imm = Imm::None;
        }
        if md != 3 {
            let mut disp_size = match md {
                1 => 1,
                2 => 4,
                _ => 0,
            };
            if rm == 4 {
                let sib = byte(pos)?;
                pos += 1;
                if md == 0 && sib & 7 == 5 {
                    disp_size = 4;
                }
            } else if md == 0 && rm == 5 {
                disp_size = 4;
                rip_relative = true;
            }
            if disp_size > 0 {
                disp = Some(field(pos, disp_size)?);
                pos += usize::from(disp_size);
            }
        }
    }
    let imm_size: u8 = match imm {
        Imm::None => 0,
        Imm::B | Imm::Rel8 => 1,
        Imm::W => 2,
        Imm::Z if opsize16 => 2,
        Imm::Z | Imm::Rel32 => 4,
        Imm::V if rex_w => 8,
        Imm::V if opsize16 => 2,
        Imm::V => 4,
        Imm::Enter => 3,
        Imm::Moffs if addr32 => 4,
        Imm::Moffs => 8,
    };
    let imm = if imm_size > 0 {
        let f = field(pos, imm_size)?;
        pos += usize::from(imm_size);
        Some(f)
    } else {
        None
    };
    if pos > 15 {
        return Err(DecodeError::TooLong);
    }
    if pos > code.len() {
        return Err(DecodeError::Truncated);
    }
    Ok(Insn {
        len: pos as u8,
        disp,
        rip_relative,
        imm,
        relative_branch: relative,
        flow,
    })
}

fn field(pos: usize, size: u8) -> Result<Field, DecodeError> {
    let offset = u8::try_from(pos).map_err(|_| DecodeError::TooLong)?;
    Ok(Field { offset, size })
}

/// ModRM presence, immediate and flow of a one-byte opcode. `next` is the byte
/// after the opcode (the ModRM, where there is one).
fn one_byte(op: u8, next: Option<u8>) -> Result<(bool, Imm, Flow), DecodeError> {
    use Imm::*;
    let next_reg = next.map(|b| (b >> 3) & 7);
    Ok(match op {
        // The eight ALU groups: r/m forms, then AL/eAX with an immediate.
        0x00..=0x3f if op & 7 < 4 => (true, None, Flow::Next),
        0x04 | 0x0c | 0x14 | 0x1c | 0x24 | 0x2c | 0x34 | 0x3c => (false, B, Flow::Next),
        0x05 | 0x0d | 0x15 | 0x1d | 0x25 | 0x2d | 0x35 | 0x3d => (false, Z, Flow::Next),
        0x50..=0x5f => (false, None, Flow::Next),
        0x63 => (true, None, Flow::Next),
        0x68 => (false, Z, Flow::Next),
        0x69 => (true, Z, Flow::Next),
        0x6a => (false, B, Flow::Next),
        0x6b => (true, B, Flow::Next),
        0x6c..=0x6f => (false, None, Flow::Next),
        0x70..=0x7f => (false, Rel8, Flow::Next),
        0x80 | 0x83 => (true, B, Flow::Next),
        0x81 => (true, Z, Flow::Next),
        0x84..=0x8f => (true, None, Flow::Next),
        0x90..=0x99 | 0x9b..=0x9f => (false, None, Flow::Next),
        0xa0..=0xa3 => (false, Moffs, Flow::Next),
        0xa4..=0xa7 | 0xaa..=0xaf => (false, None, Flow::Next),
        0xa8 => (false, B, Flow::Next),
        0xa9 => (false, Z, Flow::Next),
        0xb0..=0xb7 => (false, B, Flow::Next),
        0xb8..=0xbf => (false, V, Flow::Next),
        0xc0 | 0xc1 => (true, B, Flow::Next),
        0xc2 => (false, W, Flow::Stop),
        0xc3 => (false, None, Flow::Stop),
        0xc6 => (true, B, Flow::Next),
        0xc7 => (true, Z, Flow::Next),
        0xc8 => (false, Enter, Flow::Next),
        0xc9 => (false, None, Flow::Next),
        0xca => (false, W, Flow::Stop),
        0xcb | 0xcf => (false, None, Flow::Stop),
        0xcc => (false, None, Flow::Stop),
        0xcd => (false, B, Flow::Next),
        0xd0..=0xd3 => (true, None, Flow::Next),
        0xd7 => (false, None, Flow::Next),
        0xd8..=0xdf => (true, None, Flow::Next),
        0xe0..=0xe3 => (false, Rel8, Flow::Next),
        0xe4..=0xe7 => (false, B, Flow::Next),
        0xe8 => (false, Rel32, Flow::Next),
        0xe9 => (false, Rel32, Flow::Stop),
        0xeb => (false, Rel8, Flow::Stop),
        0xec..=0xef => (false, None, Flow::Next),
        0xf1 | 0xf4 | 0xf5 | 0xf8..=0xfd => (false, None, Flow::Next),
        // `test` (reg 0, 1) has an immediate; `decode` drops it for the others.
        0xf6 => (true, B, Flow::Next),
        0xf7 => (true, Z, Flow::Next),
        0xfe => (true, None, Flow::Next),
        // FF /4 and /5 are indirect jumps.
        0xff => (
            true,
            None,
            if matches!(next_reg, Some(4 | 5)) {
                Flow::Stop
            } else {
                Flow::Next
            },
        ),
        _ => return Err(DecodeError::Unknown(op)),
    })
}

/// ModRM presence and immediate of a two-byte (0F xx) opcode.
fn two_byte(op: u8) -> Result<(bool, Imm), DecodeError> {
    use Imm::*;
    Ok(match op {
        0x00..=0x03 | 0x0d | 0x10..=0x23 | 0x28..=0x2f => (true, None),
        0x05..=0x09 | 0x0b | 0x0e | 0x30..=0x37 | 0x77 | 0xa0..=0xa2 | 0xa8..=0xaa => (false, None),
        0xc8..=0xcf => (false, None),
        0x0f => (true, B), // 3DNow!: the opcode is a trailing byte
        0x40..=0x6f | 0x74..=0x76 | 0x78..=0x7f | 0x90..=0x9f => (true, None),
        0x70..=0x73 => (true, B),
        0x80..=0x8f => (false, Rel32),
        0xa3 | 0xa5 | 0xab | 0xad..=0xb9 | 0xbb..=0xc1 | 0xc3 | 0xc7 => (true, None),
        0xa4 | 0xac | 0xba | 0xc2 | 0xc4..=0xc6 => (true, B),
        0xd0..=0xff => (true, None),
        _ => return Err(DecodeError::Unknown(op)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(bytes: &[u8]) -> Insn {
        decode(bytes).unwrap_or_else(|e| panic!("{bytes:02x?}: {e}"))
    }

    #[test]
    fn lengths_and_fields_of_common_kernel_instructions() {
        // call rel32 (__fentry__)
        let i = d(&[0xe8, 0, 0, 0, 0]);
        assert_eq!((i.len, i.pc_relative_bias(1)), (5, Some(4)));
        // mov saved_command_line(%rip), %rsi
        let i = d(&[0x48, 0x8b, 0x35, 0, 0, 0, 0]);
        assert_eq!(
            (i.len, i.rip_relative, i.pc_relative_bias(3)),
            (7, true, Some(4))
        );
        // cmpb $0x0, x(%rip): the immediate after the displacement
        let i = d(&[0x80, 0x3d, 0, 0, 0, 0, 0]);
        assert_eq!((i.len, i.pc_relative_bias(2)), (7, Some(5)));
        // movl $1, x(%rip)
        let i = d(&[0xc7, 0x05, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!((i.len, i.pc_relative_bias(2)), (10, Some(8)));
        // movw $1, x(%rip)
        let i = d(&[0x66, 0xc7, 0x05, 0, 0, 0, 0, 1, 0]);
        assert_eq!((i.len, i.pc_relative_bias(3)), (9, Some(6)));
        // testb $0x4, x(%rip) and notl x(%rip) (F6/F7: immediate only for test)
        assert_eq!(d(&[0xf6, 0x05, 0, 0, 0, 0, 4]).len, 7);
        assert_eq!(d(&[0xf7, 0x15, 0, 0, 0, 0]).len, 6);
        assert_eq!(d(&[0xf7, 0xd8]).len, 2); // neg %eax
        assert_eq!(d(&[0xf6, 0xc2, 0x01]).len, 3); // test $1, %dl
        // movabs $imm64, %rax; mov $imm32, %eax
        assert_eq!(d(&[0x48, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0]).len, 10);
        assert_eq!(d(&[0xb8, 0, 0, 0, 0]).len, 5);
        // jne rel32, jmp rel8, ret, int3, ud2
        let i = d(&[0x0f, 0x85, 0, 0, 0, 0]);
        assert_eq!((i.len, i.pc_relative_bias(2)), (6, Some(4)));
        assert_eq!(d(&[0xeb, 0x10]).flow, Flow::Stop);
        assert_eq!(d(&[0xc3]).flow, Flow::Stop);
        assert_eq!(d(&[0xcc]).flow, Flow::Stop);
        assert_eq!(d(&[0x0f, 0x0b]).flow, Flow::Stop);
        // nopw 0x0(%rax,%rax,1) with a cs prefix; endbr64; nopl 0x0(%rax,%rax,1)
        assert_eq!(d(&[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0]).len, 10);
        assert_eq!(d(&[0xf3, 0x0f, 0x1e, 0xfa]).len, 4);
        assert_eq!(d(&[0x0f, 0x1f, 0x44, 0, 0]).len, 5);
        // mov %gs:0x0(,%rax,8)... : SIB with no base
        assert_eq!(d(&[0x65, 0x48, 0x8b, 0x04, 0xc5, 0, 0, 0, 0]).len, 9);
        // jmp *%rax (indirect): stops
        assert_eq!(d(&[0xff, 0xe0]).flow, Flow::Stop);
        // call *0x8(%rax): falls through
        assert_eq!(d(&[0xff, 0x50, 0x08]).flow, Flow::Next);
        // bt $3, x(%rip)
        let i = d(&[0x0f, 0xba, 0x25, 0, 0, 0, 0, 3]);
        assert_eq!((i.len, i.pc_relative_bias(3)), (8, Some(5)));
        // vpxor %xmm0, %xmm0, %xmm0 (VEX2); vzeroupper
        assert_eq!(d(&[0xc5, 0xf9, 0xef, 0xc0]).len, 4);
        assert_eq!(d(&[0xc5, 0xf8, 0x77]).len, 3);
        // pshufd $0x1b, %xmm1, %xmm0
        assert_eq!(d(&[0x66, 0x0f, 0x70, 0xc1, 0x1b]).len, 5);
    }

    #[test]
    fn truncated_and_invalid_are_errors() {
        assert_eq!(decode(&[0xe8, 0, 0]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x06]), Err(DecodeError::Unknown(0x06)));
        assert_eq!(decode(&[]), Err(DecodeError::Truncated));
    }
}
