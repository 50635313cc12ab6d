//! The xz container with the x86 BCJ filter, which lzma-rs does not decode: Debian's
//! generic `amd64` kernel images are compressed with `xz --x86 --lzma2`
//! (`CONFIG_KERNEL_XZ`; scripts/xz_wrap.sh picks the BCJ filter of the
//! architecture), the cloud images with zstd (6.12) or lz4 (6.1).
//!
//! Only what a kernel payload uses is read: blocks whose filter chain is LZMA2,
//! optionally after x86 BCJ (start offset 0). The container is the one of
//! <https://tukaani.org/xz/xz-file-format.txt>; the BCJ decoder follows
//! lib/xz/xz_dec_bcj.c in the kernel. Checks (CRC32, CRC64, SHA-256) are skipped,
//! not verified: the result is only ever parsed as ELF, which checks itself.

use std::io::Cursor;

/// `FD 37 7A 58 5A 00`: the stream header's magic.
const MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
const STREAM_HEADER: usize = 12;
const FILTER_X86: u64 = 0x04;
const FILTER_LZMA2: u64 = 0x21;

/// Whether the xz stream uses a filter lzma-rs cannot decode (so [`decompress`]
/// must).
pub fn needs_bcj(data: &[u8]) -> bool {
    block_header(data, STREAM_HEADER).is_ok_and(|h| h.bcj)
}

struct BlockHeader {
    /// Where the compressed data starts.
    data_start: usize,
    compressed_size: Option<u64>,
    bcj: bool,
}

fn varint(data: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for i in 0..9 {
        let b = *data.get(*at).ok_or("truncated number")?;
        *at += 1;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("number longer than 9 bytes".into())
}

fn block_header(data: &[u8], start: usize) -> Result<BlockHeader, String> {
    if data.get(..6) != Some(&MAGIC[..]) {
        return Err("not an xz stream".into());
    }
    let size_byte = *data.get(start).ok_or("truncated block header")?;
    if size_byte == 0 {
        return Err("no block (an empty stream)".into());
    }
    let size = (usize::from(size_byte) + 1) * 4;
    let end = start + size;
    if end > data.len() {
        return Err("truncated block header".into());
    }
    let flags = data[start + 1];
    let mut at = start + 2;
    let compressed_size = if flags & 0x40 != 0 {
        Some(varint(data, &mut at)?)
    } else {
        None
    };
    if flags & 0x80 != 0 {
        varint(data, &mut at)?;
    }
    let filters = usize::from(flags & 0x03) + 1;
    let mut ids = Vec::new();
    for _ in 0..filters {
        let id = varint(data, &mut at)?;
        let props = varint(data, &mut at)? as usize;
        let value = data.get(at..at + props).ok_or("truncated filter")?;
        if id == FILTER_X86 && value.iter().any(|&b| b != 0) {
            return Err("x86 BCJ filter with a start offset".into());
        }
        at += props;
        ids.push(id);
    }
    let bcj = match ids.as_slice() {
        [FILTER_LZMA2] => false,
        [FILTER_X86, FILTER_LZMA2] => true,
        other => {
            return Err(format!(
                "filter chain {other:x?} (kstack reads LZMA2, x86+LZMA2)"
            ));
        }
    };
    Ok(BlockHeader {
        data_start: end,
        compressed_size,
        bcj,
    })
}

/// Decompresses an xz stream (`limit`: the most output accepted).
pub fn decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let check_size = match data.get(7).ok_or("truncated stream header")? & 0x0f {
        0 => 0,
        1 => 4,
        4 => 8,
        10 => 32,
        other => return Err(format!("check type {other}")),
    };
    let mut out = Vec::new();
    let mut at = STREAM_HEADER;
    while data.get(at).is_some_and(|&b| b != 0) {
        let header = block_header(data, at)?;
        let mut input = Cursor::new(&data[header.data_start..]);
        let mut block = Vec::new();
        lzma_rs::lzma2_decompress(&mut input, &mut block).map_err(|e| e.to_string())?;
        let consumed = input.position() as usize;
        if header
            .compressed_size
            .is_some_and(|size| size != consumed as u64)
        {
            return Err("the block's size disagrees with its data".into());
        }
        if header.bcj {
            bcj_x86_decode(&mut block);
        }
        if out.len() + block.len() > limit {
            return Err(format!("more than {limit} bytes"));
        }
        out.extend_from_slice(&block);
        // Block padding to a multiple of four from the block's start, then the check.
        let end = header.data_start + consumed;
        at = end + (4 - (end - at) % 4) % 4 + check_size;
    }
    Ok(out)
}

/// Undoes the x86 BCJ filter on a whole buffer that starts at offset 0: the
/// absolute addresses the encoder wrote into `call`/`jmp rel32` become relative
/// again (lib/xz/xz_dec_bcj.c, `bcj_x86`).
pub fn bcj_x86_decode(buf: &mut [u8]) {
    const ALLOWED: [bool; 8] = [true, true, true, false, true, false, false, false];
    const BIT_NUM: [u32; 8] = [0, 1, 2, 2, 3, 3, 3, 3];
    let msbyte = |b: u8| b == 0x00 || b == 0xff;
    if buf.len() <= 4 {
        return;
    }
    let size = buf.len() - 4;
    let mut prev_pos = usize::MAX;
    let mut prev_mask: u32 = 0;
    let mut i = 0;
    while i < size {
        if buf[i] & 0xfe != 0xe8 {
            i += 1;
            continue;
        }
        let distance = i.wrapping_sub(prev_pos);
        if distance > 3 {
            prev_mask = 0;
        } else {
            prev_mask = (prev_mask << (distance - 1)) & 7;
            if prev_mask != 0 {
                let b = buf[i + 4 - BIT_NUM[prev_mask as usize] as usize];
                if !ALLOWED[prev_mask as usize] || msbyte(b) {
                    prev_pos = i;
                    prev_mask = (prev_mask << 1) | 1;
                    i += 1;
                    continue;
                }
            }
        }
        prev_pos = i;
        if msbyte(buf[i + 4]) {
            let mut src = u32::from_le_bytes([buf[i + 1], buf[i + 2], buf[i + 3], buf[i + 4]]);
            let mut dest;
            loop {
                dest = src.wrapping_sub((i as u32).wrapping_add(5));
                if prev_mask == 0 {
                    break;
                }
                let j = BIT_NUM[prev_mask as usize] * 8;
                let b = (dest >> (24 - j)) as u8;
                if !msbyte(b) {
                    break;
                }
                src = dest ^ ((1u32 << (32 - j)) - 1);
            }
            dest &= 0x01ff_ffff;
            dest |= 0u32.wrapping_sub(dest & 0x0100_0000);
            buf[i + 1..i + 5].copy_from_slice(&dest.to_le_bytes());
            i += 5;
        } else {
            prev_mask = (prev_mask << 1) | 1;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// x86 code with many calls and jumps: a real binary of the machine.
    fn some_x86_code() -> Vec<u8> {
        let code = std::fs::read("/bin/ls").expect("/bin/ls, x86-64 code to compress");
        assert!(code.len() > 100_000);
        code
    }

    fn xz(args: &[&str], input: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut child = std::process::Command::new("xz")
            .args(args)
            .args(["-c", "-q"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("xz (Debian package xz-utils; run `cargo xtask setup`)");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    #[test]
    fn a_stream_with_the_x86_filter_decodes_as_the_kernel_compresses_it() {
        let code = some_x86_code();
        // As scripts/xz_wrap.sh compresses an x86 kernel.
        let packed = xz(&["--check=crc32", "--x86", "--lzma2=dict=32MiB"], &code);
        assert!(needs_bcj(&packed));
        assert_eq!(decompress(&packed, 1 << 30).unwrap(), code);
        // Without the BCJ pass the calls' targets would be wrong: the filter did
        // change the stream.
        let mut plain = Vec::new();
        let header = block_header(&packed, STREAM_HEADER).unwrap();
        lzma_rs::lzma2_decompress(&mut Cursor::new(&packed[header.data_start..]), &mut plain)
            .unwrap();
        assert_ne!(plain, code);
        assert!(decompress(&packed, 1000).is_err());
    }

    #[test]
    fn plain_lzma2_streams_and_other_checks_decode_too() {
        let code = some_x86_code();
        let packed = xz(&["--check=crc64"], &code[..50_000]);
        assert!(!needs_bcj(&packed));
        assert_eq!(decompress(&packed, 1 << 30).unwrap(), &code[..50_000]);
        let packed = xz(&["--check=sha256", "--x86", "--lzma2"], &code[..70_001]);
        assert_eq!(decompress(&packed, 1 << 30).unwrap(), &code[..70_001]);
    }

    #[test]
    fn other_filters_are_refused_by_name() {
        let packed = xz(
            &["--delta=dist=4", "--lzma2"],
            b"0123456789abcdef0123456789abcdef",
        );
        let err = decompress(&packed, 1 << 20).unwrap_err();
        assert!(err.contains("filter chain"), "{err}");
        assert!(decompress(b"not xz at all", 10).is_err());
    }
}
