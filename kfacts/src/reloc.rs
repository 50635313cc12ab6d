//! x86-64 relocations as the kernel's objects use them (`S` the target, `A` the
//! addend, `P` the relocated field's own address; System V x86-64 psABI, and
//! arch/x86/kernel/module.c for what the module loader applies).

use object::elf;
use serde::{Deserialize, Serialize};

/// A relocation type kstack understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelocKind {
    /// `R_X86_64_64`: `S + A`, 8 bytes.
    Abs64,
    /// `R_X86_64_32`: `S + A`, zero-extended 4 bytes.
    Abs32,
    /// `R_X86_64_32S`: `S + A`, sign-extended 4 bytes (`-mcmodel=kernel`).
    Abs32s,
    /// `R_X86_64_PC32`: `S + A - P`, 4 bytes.
    Pc32,
    /// `R_X86_64_PLT32`: the same as `Pc32` in the kernel, which has no PLT.
    Plt32,
    /// `R_X86_64_PC64`: `S + A - P`, 8 bytes.
    Pc64,
    /// `R_X86_64_PC8`: `S + A - P`, 1 byte (a short branch the assembler resolved
    /// within a section that holds several functions).
    Pc8,
}

impl RelocKind {
    /// The kind of an ELF relocation type; `None` for a type kstack does not know.
    pub fn from_elf(r_type: elf::RelocationType) -> Option<RelocKind> {
        Some(match r_type {
            elf::R_X86_64_64 => RelocKind::Abs64,
            elf::R_X86_64_32 => RelocKind::Abs32,
            elf::R_X86_64_32S => RelocKind::Abs32s,
            elf::R_X86_64_PC32 => RelocKind::Pc32,
            elf::R_X86_64_PLT32 => RelocKind::Plt32,
            elf::R_X86_64_PC64 => RelocKind::Pc64,
            elf::R_X86_64_PC8 => RelocKind::Pc8,
            _ => return None,
        })
    }

    /// The ELF relocation type.
    pub fn elf_type(self) -> elf::RelocationType {
        match self {
            RelocKind::Abs64 => elf::R_X86_64_64,
            RelocKind::Abs32 => elf::R_X86_64_32,
            RelocKind::Abs32s => elf::R_X86_64_32S,
            RelocKind::Pc32 => elf::R_X86_64_PC32,
            RelocKind::Plt32 => elf::R_X86_64_PLT32,
            RelocKind::Pc64 => elf::R_X86_64_PC64,
            RelocKind::Pc8 => elf::R_X86_64_PC8,
        }
    }

    /// The ELF name, for reports.
    pub fn elf_name(self) -> &'static str {
        match self {
            RelocKind::Abs64 => "R_X86_64_64",
            RelocKind::Abs32 => "R_X86_64_32",
            RelocKind::Abs32s => "R_X86_64_32S",
            RelocKind::Pc32 => "R_X86_64_PC32",
            RelocKind::Plt32 => "R_X86_64_PLT32",
            RelocKind::Pc64 => "R_X86_64_PC64",
            RelocKind::Pc8 => "R_X86_64_PC8",
        }
    }

    /// Bytes the field takes.
    pub fn width(self) -> usize {
        match self {
            RelocKind::Abs64 | RelocKind::Pc64 => 8,
            RelocKind::Pc8 => 1,
            _ => 4,
        }
    }

    /// Whether the field is relative to its own address (`- P`).
    pub fn is_pc_relative(self) -> bool {
        matches!(
            self,
            RelocKind::Pc32 | RelocKind::Plt32 | RelocKind::Pc64 | RelocKind::Pc8
        )
    }

    /// Whether the x86-64 module loader applies it (arch/x86/kernel/module.c,
    /// `__write_relocate_add`: `R_X86_64_64`, `32`, `32S`, `PC32`, `PLT32`, `PC64`).
    /// Livepatch relocations go through the same function.
    pub fn module_loader_applies(self) -> bool {
        self != RelocKind::Pc8
    }

    /// The value `S + A` that the field encodes, given the field as found at
    /// address `place`.
    pub fn decode(self, field: &[u8], place: u64) -> Option<u64> {
        let v = match self.width() {
            8 => u64::from_le_bytes(field.try_into().ok()?),
            1 => *field.first()? as i8 as i64 as u64,
            _ => {
                let raw = u32::from_le_bytes(field.try_into().ok()?);
                match self {
                    RelocKind::Abs32 => u64::from(raw),
                    _ => raw as i32 as i64 as u64,
                }
            }
        };
        Some(if self.is_pc_relative() {
            v.wrapping_add(place)
        } else {
            v
        })
    }
}

/// Whether an ELF relocation type is relative to the field's own address; the one
/// answer everywhere (`R_X86_64_PC8`, `PC16`, `PC32`, `PLT32`, `PC64`).
pub fn is_pc_relative(r_type: elf::RelocationType) -> bool {
    matches!(
        r_type,
        elf::R_X86_64_PC8
            | elf::R_X86_64_PC16
            | elf::R_X86_64_PC32
            | elf::R_X86_64_PLT32
            | elf::R_X86_64_PC64
    )
}

/// Bytes that a relocation of this ELF type overwrites; 0 for a type kstack does
/// not know (nothing is masked, so the raw bytes take part in comparisons).
pub fn field_size(r_type: elf::RelocationType) -> u64 {
    match r_type {
        elf::R_X86_64_64 | elf::R_X86_64_PC64 => 8,
        elf::R_X86_64_PC32
        | elf::R_X86_64_PLT32
        | elf::R_X86_64_32
        | elf::R_X86_64_32S
        | elf::R_X86_64_GOTPCREL
        | elf::R_X86_64_GOTPCRELX
        | elf::R_X86_64_REX_GOTPCRELX => 4,
        elf::R_X86_64_16 | elf::R_X86_64_PC16 => 2,
        elf::R_X86_64_8 | elf::R_X86_64_PC8 => 1,
        _ => 0,
    }
}

/// How far the place a PC-relative field in code means lies beyond the addend:
/// the assembler writes `target - (end of field)`, so at least the field's width
/// (more when an immediate follows it, which only decoding the instruction says).
/// `None` for a field that is not PC-relative.
pub fn pc_relative_slack(r_type: elf::RelocationType) -> Option<i64> {
    is_pc_relative(r_type).then(|| field_size(r_type) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_answer_for_pc_relative() {
        for kind in [
            RelocKind::Abs64,
            RelocKind::Abs32,
            RelocKind::Abs32s,
            RelocKind::Pc32,
            RelocKind::Plt32,
            RelocKind::Pc64,
            RelocKind::Pc8,
        ] {
            assert_eq!(RelocKind::from_elf(kind.elf_type()), Some(kind));
            assert_eq!(
                kind.is_pc_relative(),
                is_pc_relative(kind.elf_type()),
                "{kind:?}"
            );
            assert_eq!(kind.width() as u64, field_size(kind.elf_type()), "{kind:?}");
        }
        assert_eq!(pc_relative_slack(elf::R_X86_64_PLT32), Some(4));
        assert_eq!(pc_relative_slack(elf::R_X86_64_32S), None);
        assert!(!RelocKind::Pc8.module_loader_applies());
    }

    #[test]
    fn fields_decode_to_their_target() {
        let place = 0xffff_ffff_8100_0010;
        let field = (-0x10i32).to_le_bytes();
        assert_eq!(
            RelocKind::Pc32.decode(&field, place),
            Some(0xffff_ffff_8100_0000)
        );
        let abs = 0x8200_0000u32.to_le_bytes();
        assert_eq!(
            RelocKind::Abs32s.decode(&abs, 0),
            Some(0xffff_ffff_8200_0000)
        );
        assert_eq!(RelocKind::Abs32.decode(&abs, 0), Some(0x8200_0000));
    }
}
