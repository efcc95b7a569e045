//! The uncompressed kernel (`vmlinux`) inside a bzImage: a VMM that boots it directly at
//! its PVH entry (QEMU's `-kernel` with an ELF, Firecracker) skips the bzImage's
//! self-decompression, which under TCG costs most of a second; Firecracker boots nothing
//! else. [`extract_vmlinux`] reads the payload the boot protocol header locates
//! (`payload_offset`/`payload_length`, protocol 2.08+) and decompresses it.
//!
//! Debian's 6.1 kernels compress it with LZ4 in the legacy frame format (a magic, then
//! blocks of at most 8 MiB each preceded by their compressed size, then the kernel build's
//! appended uncompressed size); gzip is read too. Other compressions are reported, and the
//! image keeps only its bzImage.

use std::io::Read;

/// Why no `vmlinux` could be taken from a bzImage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KernelProblem(pub String);

fn problem(text: impl Into<String>) -> KernelProblem {
    KernelProblem(text.into())
}

/// The legacy LZ4 frame's magic number, as the bytes appear in the file.
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// The most one legacy LZ4 block decompresses to.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// Larger than any kernel we would boot: a hostile or broken payload stops here.
const MAX_VMLINUX: usize = 512 << 20;

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(offset..offset.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The compressed payload of a bzImage.
pub fn payload(bzimage: &[u8]) -> Result<&[u8], KernelProblem> {
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return Err(problem("not a bzImage (no HdrS header)"));
    }
    let protocol = u16::from_le_bytes([bzimage[0x206], bzimage[0x207]]);
    if protocol < 0x208 {
        return Err(problem(format!(
            "boot protocol {protocol:#x} predates payload fields (2.08)"
        )));
    }
    let setup_sectors = match bzimage.get(0x1f1) {
        Some(0) => 4,
        Some(count) => usize::from(*count),
        None => return Err(problem("truncated header")),
    };
    let offset = u32_at(bzimage, 0x248).ok_or_else(|| problem("truncated header"))? as usize;
    let length = u32_at(bzimage, 0x24c).ok_or_else(|| problem("truncated header"))? as usize;
    let start = (setup_sectors + 1) * 512 + offset;
    start
        .checked_add(length)
        .and_then(|end| bzimage.get(start..end))
        .ok_or_else(|| problem("the payload lies outside the file"))
}

/// The uncompressed kernel ELF of a bzImage.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, KernelProblem> {
    let compressed = payload(bzimage)?;
    let vmlinux = if compressed.starts_with(&LZ4_LEGACY_MAGIC) {
        lz4_legacy(compressed)?
    } else if compressed.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(compressed)
            .take(MAX_VMLINUX as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|error| problem(format!("the gzip payload is corrupt: {error}")))?;
        out
    } else {
        let kind = match compressed.get(..6) {
            Some([0xfd, b'7', b'z', b'X', b'Z', 0]) => "xz",
            Some([0x28, 0xb5, 0x2f, 0xfd, ..]) => "zstd",
            Some([0x5d, 0, 0, ..]) => "lzma",
            Some([b'B', b'Z', b'h', ..]) => "bzip2",
            _ => "an unknown format",
        };
        return Err(problem(format!(
            "the kernel is compressed with {kind}, which is not read here (LZ4 and gzip are)"
        )));
    };
    if vmlinux.len() > MAX_VMLINUX {
        return Err(problem("the payload decompresses to more than 512 MiB"));
    }
    if !crate::elf::is_elf(&vmlinux) {
        return Err(problem("the payload is not an ELF kernel"));
    }
    Ok(vmlinux)
}

/// Decompresses LZ4's legacy frame format (what `lz4 -l` and the kernel's build write).
fn lz4_legacy(mut input: &[u8]) -> Result<Vec<u8>, KernelProblem> {
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while let Some(size) = u32_at(input, 0) {
        input = &input[4..];
        if size.to_le_bytes() == LZ4_LEGACY_MAGIC {
            // Frames may be concatenated.
            continue;
        }
        let size = size as usize;
        // The kernel's build appends the uncompressed size: a "block" longer than what is
        // left ends the stream.
        let Some(compressed) = input.get(..size) else {
            break;
        };
        let written = lz4_flex::block::decompress_into(compressed, &mut block)
            .map_err(|error| problem(format!("the LZ4 payload is corrupt: {error}")))?;
        out.extend_from_slice(&block[..written]);
        if out.len() > MAX_VMLINUX {
            return Err(problem("the payload decompresses to more than 512 MiB"));
        }
        input = &input[size..];
    }
    if out.is_empty() {
        return Err(problem("the LZ4 payload holds no block"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage: a header of protocol 2.15 whose payload is `payload`.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let setup_sectors = 1u8;
        let mut image = vec![0u8; (usize::from(setup_sectors) + 1) * 512];
        image[0x1f1] = setup_sectors;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        let offset = 16u32;
        image[0x248..0x24c].copy_from_slice(&offset.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend(std::iter::repeat_n(0xaa, offset as usize));
        image.extend_from_slice(payload);
        image.extend_from_slice(&[0u8; 64]);
        image
    }

    fn fake_elf(len: usize) -> Vec<u8> {
        let mut elf = b"\x7fELF\x02\x01".to_vec();
        elf.extend((0..len).map(|index| (index % 251) as u8));
        elf
    }

    fn lz4_legacy_frame(data: &[u8]) -> Vec<u8> {
        let mut frame = LZ4_LEGACY_MAGIC.to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
            let block = lz4_flex::block::compress(chunk);
            frame.extend_from_slice(&(block.len() as u32).to_le_bytes());
            frame.extend_from_slice(&block);
        }
        // As the kernel's build does: the uncompressed size last.
        frame.extend_from_slice(&(data.len() as u32).to_le_bytes());
        frame
    }

    #[test]
    fn an_lz4_kernel_of_several_blocks_comes_out_whole() {
        let elf = fake_elf(LZ4_LEGACY_BLOCK + 12345);
        let image = bzimage(&lz4_legacy_frame(&elf));
        assert_eq!(extract_vmlinux(&image).unwrap(), elf);
    }

    #[test]
    fn a_gzip_kernel_comes_out_whole() {
        let elf = fake_elf(100_000);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut encoder, &elf).unwrap();
        let image = bzimage(&encoder.finish().unwrap());
        assert_eq!(extract_vmlinux(&image).unwrap(), elf);
    }

    #[test]
    fn other_formats_and_broken_images_are_reported() {
        let xz = bzimage(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2]);
        assert!(extract_vmlinux(&xz).unwrap_err().0.contains("xz"));
        assert!(extract_vmlinux(b"not a kernel")
            .unwrap_err()
            .0
            .contains("HdrS"));
        let mut outside = bzimage(&[1, 2, 3]);
        outside[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(extract_vmlinux(&outside).unwrap_err().0.contains("outside"));
        let mut corrupt = LZ4_LEGACY_MAGIC.to_vec();
        corrupt.extend_from_slice(&8u32.to_le_bytes());
        corrupt.extend_from_slice(&[0xff; 8]);
        assert!(extract_vmlinux(&bzimage(&corrupt))
            .unwrap_err()
            .0
            .contains("corrupt"));
        let not_elf = bzimage(&lz4_legacy_frame(b"plain bytes, no ELF"));
        assert!(extract_vmlinux(&not_elf).unwrap_err().0.contains("ELF"));
    }

    #[test]
    fn garbage_never_panics() {
        for seed in 0..200u32 {
            let mut payload = LZ4_LEGACY_MAGIC.to_vec();
            payload.extend((0..(seed * 7) as usize).map(|index| (index as u32 * seed) as u8));
            let _ = extract_vmlinux(&bzimage(&payload));
        }
    }
}
