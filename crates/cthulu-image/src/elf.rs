//! The little of ELF this crate reads itself: whether an executable names an interpreter
//! (`PT_INTERP`, i.e. is dynamically linked) and a kernel module's `.modinfo` section.
//! Only 64-bit little-endian files are accepted; that is all x86-64 produces.

/// `EM_X86_64`.
const MACHINE_X86_64: u16 = 62;
/// `PT_INTERP`: the program header naming the dynamic loader.
const PT_INTERP: u32 = 3;
/// `PT_NOTE`: a program header holding notes.
const PT_NOTE: u32 = 4;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the note of a kernel's 32-bit PVH entry point, by which
/// QEMU (and Firecracker) start an uncompressed kernel without a bootloader.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// `ET_EXEC` and `ET_DYN` (static-pie executables are `ET_DYN` without `PT_INTERP`).
const EXECUTABLE_TYPES: [u16; 2] = [2, 3];

/// What the header of an executable says about how it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linkage {
    Static,
    Dynamic,
}

/// Why bytes are not a usable x86-64 ELF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfProblem(pub String);

fn problem(text: impl Into<String>) -> ElfProblem {
    ElfProblem(text.into())
}

/// Whether `bytes` start like an ELF file.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

/// `N` bytes at `offset`, or `truncated` (also when `offset + N` overflows).
fn bytes_at<const N: usize>(bytes: &[u8], offset: usize) -> Result<[u8; N], ElfProblem> {
    offset
        .checked_add(N)
        .and_then(|end| bytes.get(offset..end))
        .map(|raw| raw.try_into().expect("N bytes"))
        .ok_or_else(|| problem("truncated"))
}

fn u16_at(bytes: &[u8], offset: usize) -> Result<u16, ElfProblem> {
    bytes_at(bytes, offset).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], offset: usize) -> Result<u32, ElfProblem> {
    bytes_at(bytes, offset).map(u32::from_le_bytes)
}

fn u64_at(bytes: &[u8], offset: usize) -> Result<u64, ElfProblem> {
    bytes_at(bytes, offset).map(u64::from_le_bytes)
}

fn to_index(value: u64) -> Result<usize, ElfProblem> {
    usize::try_from(value).map_err(|_| problem("offset out of range"))
}

/// Checks the ELF identification: 64-bit, little-endian.
fn check_ident(bytes: &[u8]) -> Result<(), ElfProblem> {
    if !is_elf(bytes) {
        return Err(problem("no ELF magic"));
    }
    match (bytes.get(4), bytes.get(5)) {
        (Some(2), Some(1)) => Ok(()),
        (Some(_), Some(_)) => Err(problem("not a 64-bit little-endian ELF")),
        _ => Err(problem("truncated")),
    }
}

/// The linkage of an x86-64 executable, from its program headers.
pub fn executable_linkage(bytes: &[u8]) -> Result<Linkage, ElfProblem> {
    check_ident(bytes)?;
    let kind = u16_at(bytes, 0x10)?;
    if !EXECUTABLE_TYPES.contains(&kind) {
        return Err(problem(format!("ELF type {kind} is not an executable")));
    }
    let machine = u16_at(bytes, 0x12)?;
    if machine != MACHINE_X86_64 {
        return Err(problem(format!("machine {machine} is not x86-64")));
    }
    let header_offset = to_index(u64_at(bytes, 0x20)?)?;
    let entry_size = usize::from(u16_at(bytes, 0x36)?);
    let count = usize::from(u16_at(bytes, 0x38)?);
    if entry_size < 4 {
        return Err(problem("program header entries too small"));
    }
    for index in 0..count {
        let offset = index
            .checked_mul(entry_size)
            .and_then(|relative| relative.checked_add(header_offset))
            .ok_or_else(|| problem("offset out of range"))?;
        if u32_at(bytes, offset)? == PT_INTERP {
            return Ok(Linkage::Dynamic);
        }
    }
    Ok(Linkage::Static)
}

/// The PVH entry point of an uncompressed x86-64 kernel (`vmlinux`), from its Xen
/// `PHYS32_ENTRY` note; `None` when it has none (it cannot be booted that way).
pub fn pvh_entry(bytes: &[u8]) -> Result<Option<u32>, ElfProblem> {
    check_ident(bytes)?;
    let header_offset = to_index(u64_at(bytes, 0x20)?)?;
    let entry_size = usize::from(u16_at(bytes, 0x36)?);
    let count = usize::from(u16_at(bytes, 0x38)?);
    if entry_size < 0x38 {
        return Err(problem("program header entries too small"));
    }
    for index in 0..count {
        let base = index
            .checked_mul(entry_size)
            .and_then(|relative| relative.checked_add(header_offset))
            .ok_or_else(|| problem("offset out of range"))?;
        if u32_at(bytes, base)? != PT_NOTE {
            continue;
        }
        let offset = to_index(u64_at(bytes, base.saturating_add(0x08))?)?;
        let size = to_index(u64_at(bytes, base.saturating_add(0x20))?)?;
        let notes = offset
            .checked_add(size)
            .and_then(|end| bytes.get(offset..end))
            .ok_or_else(|| problem("notes out of range"))?;
        let mut at = 0usize;
        // Each note: name size, description size, type, then both padded to 4 bytes.
        while at.saturating_add(12) <= notes.len() {
            let name_size = to_index(u64::from(u32_at(notes, at)?))?;
            let desc_size = to_index(u64::from(u32_at(notes, at + 4)?))?;
            let kind = u32_at(notes, at + 8)?;
            let name_at = at + 12;
            let desc_at = name_at
                .checked_add(name_size.div_ceil(4) * 4)
                .ok_or_else(|| problem("note out of range"))?;
            let name = notes
                .get(name_at..name_at.saturating_add(name_size))
                .ok_or_else(|| problem("note out of range"))?;
            if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY && desc_size >= 4 {
                return Ok(Some(u32_at(notes, desc_at)?));
            }
            at = desc_at
                .checked_add(desc_size.div_ceil(4) * 4)
                .ok_or_else(|| problem("note out of range"))?;
        }
    }
    Ok(None)
}

/// The bytes of the section named `wanted` of a relocatable or executable ELF.
pub fn section<'a>(bytes: &'a [u8], wanted: &str) -> Result<Option<&'a [u8]>, ElfProblem> {
    check_ident(bytes)?;
    let table_offset = to_index(u64_at(bytes, 0x28)?)?;
    let entry_size = usize::from(u16_at(bytes, 0x3a)?);
    let count = usize::from(u16_at(bytes, 0x3c)?);
    let names_index = usize::from(u16_at(bytes, 0x3e)?);
    if entry_size < 0x28 {
        return Err(problem("section header entries too small"));
    }
    let header = |index: usize| -> Result<(u32, usize, usize), ElfProblem> {
        let base = index
            .checked_mul(entry_size)
            .and_then(|relative| relative.checked_add(table_offset))
            .ok_or_else(|| problem("offset out of range"))?;
        let name = u32_at(bytes, base)?;
        let offset = to_index(u64_at(bytes, base.saturating_add(0x18))?)?;
        let size = to_index(u64_at(bytes, base.saturating_add(0x20))?)?;
        Ok((name, offset, size))
    };
    let contents = |offset: usize, size: usize| -> Result<&'a [u8], ElfProblem> {
        offset
            .checked_add(size)
            .and_then(|end| bytes.get(offset..end))
            .ok_or_else(|| problem("section out of range"))
    };
    if names_index >= count {
        return Err(problem("no section name table"));
    }
    let (_, names_offset, names_size) = header(names_index)?;
    let names = contents(names_offset, names_size)?;
    for index in 0..count {
        let (name_offset, offset, size) = header(index)?;
        let name = names
            .get(name_offset as usize..)
            .and_then(|rest| rest.split(|byte| *byte == 0).next())
            .ok_or_else(|| problem("section name out of range"))?;
        if name == wanted.as_bytes() {
            return contents(offset, size).map(Some);
        }
    }
    Ok(None)
}

/// The `key=value` entries of a module's `.modinfo` section (NUL-separated).
pub fn modinfo(bytes: &[u8]) -> Result<Vec<(String, String)>, ElfProblem> {
    let section = section(bytes, ".modinfo")?.ok_or_else(|| problem("no .modinfo section"))?;
    Ok(section
        .split(|byte| *byte == 0)
        .filter_map(|entry| {
            let entry = std::str::from_utf8(entry).ok()?;
            let (key, value) = entry.split_once('=')?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 executable header with the given program header types.
    pub(crate) fn executable(program_headers: &[u32]) -> Vec<u8> {
        let mut bytes = vec![0u8; 64];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[6] = 1;
        bytes[0x10..0x12].copy_from_slice(&2u16.to_le_bytes());
        bytes[0x12..0x14].copy_from_slice(&MACHINE_X86_64.to_le_bytes());
        bytes[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&(program_headers.len() as u16).to_le_bytes());
        for kind in program_headers {
            let mut header = vec![0u8; 56];
            header[..4].copy_from_slice(&kind.to_le_bytes());
            bytes.extend_from_slice(&header);
        }
        bytes
    }

    /// A minimal ELF64 relocatable object with one `.modinfo` section holding `modinfo`.
    pub(crate) fn module(modinfo: &[u8]) -> Vec<u8> {
        let names = b"\0.modinfo\0.shstrtab\0";
        let mut bytes = vec![0u8; 64];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[0x10..0x12].copy_from_slice(&1u16.to_le_bytes());
        bytes[0x12..0x14].copy_from_slice(&MACHINE_X86_64.to_le_bytes());
        let modinfo_offset = bytes.len();
        bytes.extend_from_slice(modinfo);
        let names_offset = bytes.len();
        bytes.extend_from_slice(names);
        let table_offset = bytes.len();
        let section = |name: u32, offset: usize, size: usize| {
            let mut header = vec![0u8; 64];
            header[..4].copy_from_slice(&name.to_le_bytes());
            header[0x18..0x20].copy_from_slice(&(offset as u64).to_le_bytes());
            header[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            header
        };
        bytes.extend_from_slice(&section(0, 0, 0));
        bytes.extend_from_slice(&section(1, modinfo_offset, modinfo.len()));
        bytes.extend_from_slice(&section(10, names_offset, names.len()));
        bytes[0x28..0x30].copy_from_slice(&(table_offset as u64).to_le_bytes());
        bytes[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        bytes[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        bytes[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        bytes
    }

    #[test]
    fn static_and_dynamic_executables() {
        // PT_LOAD, PT_DYNAMIC, PT_NOTE: static-pie.
        assert_eq!(
            executable_linkage(&executable(&[1, 2, 4])),
            Ok(Linkage::Static)
        );
        assert_eq!(
            executable_linkage(&executable(&[6, PT_INTERP, 1])),
            Ok(Linkage::Dynamic)
        );
    }

    #[test]
    fn non_executables_are_refused() {
        assert!(executable_linkage(b"#!/bin/sh\n").is_err());
        let mut truncated = executable(&[1, 1]);
        truncated.truncate(100);
        assert_eq!(
            executable_linkage(&truncated),
            Err(ElfProblem("truncated".into()))
        );
        let mut arm = executable(&[1]);
        arm[0x12..0x14].copy_from_slice(&183u16.to_le_bytes());
        assert!(executable_linkage(&arm)
            .unwrap_err()
            .0
            .contains("not x86-64"));
        let mut thirty_two = executable(&[1]);
        thirty_two[4] = 1;
        assert!(executable_linkage(&thirty_two).is_err());
        let mut huge_offset = executable(&[1]);
        huge_offset[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(executable_linkage(&huge_offset).is_err());
    }

    #[test]
    fn modinfo_entries() {
        let bytes = module(b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_net\0\0");
        let entries = modinfo(&bytes).unwrap();
        assert!(entries.contains(&("depends".into(), "virtio,virtio_ring".into())));
        assert!(entries.contains(&("name".into(), "virtio_net".into())));
        assert!(modinfo(&executable(&[1])).is_err());
    }
}
