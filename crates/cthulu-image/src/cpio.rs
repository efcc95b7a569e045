//! The "newc" cpio format the kernel unpacks an initramfs from, written (and read back,
//! for tests and inspection) here: it is a tiny format — a 110-byte ASCII header of
//! thirteen 8-digit hex fields, the NUL-terminated name and the data, each padded to 4
//! bytes, closed by an entry named `TRAILER!!!` — so no crate or `cpio` binary is needed.
//!
//! Entries are written with uid/gid 0 and mtime 0 so the same contents give the same bytes.

use std::io::{self, Write};

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
const S_IFMT: u32 = 0o170000;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File(Vec<u8>),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, without a leading `/`.
    pub name: String,
    /// Permission bits (the file type is in `kind`).
    pub permissions: u32,
    pub kind: EntryKind,
}

/// Writes newc entries to `output`; call [`Writer::finish`] to write the trailer.
#[derive(Debug)]
pub struct Writer<W: Write> {
    output: W,
    next_inode: u32,
}

impl<W: Write> Writer<W> {
    pub fn new(output: W) -> Self {
        Writer {
            output,
            next_inode: 1,
        }
    }

    pub fn directory(&mut self, name: &str, permissions: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | permissions, 2, (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, permissions: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | permissions, 1, (0, 0), data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    pub fn char_device(
        &mut self,
        name: &str,
        permissions: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.entry(name, S_IFCHR | permissions, 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(TRAILER, 0, 1, (0, 0), &[])?;
        Ok(self.output)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        links: u32,
        (device_major, device_minor): (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid cpio entry name {name:?}"),
            ));
        }
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} is too large for a newc cpio entry"),
            )
        })?;
        let inode = if name == TRAILER { 0 } else { self.next_inode };
        self.next_inode += 1;
        let fields = [
            inode,
            mode,
            0, // uid
            0, // gid
            links,
            0, // mtime
            size,
            0, // device major of the file system
            0, // device minor
            device_major,
            device_minor,
            name.len() as u32 + 1,
            0, // checksum (only for the "070702" variant)
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        header.extend_from_slice(MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        pad(&mut header, 0);
        self.output.write_all(&header)?;
        self.output.write_all(data)?;
        let mut padding = Vec::new();
        pad(&mut padding, data.len());
        self.output.write_all(&padding)?;
        Ok(())
    }
}

/// Appends zeros to `buffer` until `offset + buffer.len()` is a multiple of 4.
fn pad(buffer: &mut Vec<u8>, offset: usize) {
    while (offset + buffer.len()) % 4 != 0 {
        buffer.push(0);
    }
}

fn invalid(text: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, text.into())
}

/// Parses a whole (uncompressed) newc archive.
pub fn read_archive(bytes: &[u8]) -> io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    loop {
        let header = bytes
            .get(offset..offset + HEADER_LEN)
            .ok_or_else(|| invalid(format!("truncated header at byte {offset}")))?;
        if &header[..6] != MAGIC {
            return Err(invalid(format!("bad magic at byte {offset}")));
        }
        let field = |index: usize| -> io::Result<u32> {
            let start = 6 + index * 8;
            let text = std::str::from_utf8(&header[start..start + 8])
                .map_err(|_| invalid("non-ASCII header field"))?;
            u32::from_str_radix(text, 16).map_err(|_| invalid("non-hex header field"))
        };
        let mode = field(1)?;
        let size = field(6)? as usize;
        let (device_major, device_minor) = (field(9)?, field(10)?);
        let name_len = field(11)? as usize;
        let name_start = offset + HEADER_LEN;
        let name_bytes = bytes
            .get(name_start..name_start + name_len)
            .ok_or_else(|| invalid("truncated name"))?;
        let name = std::str::from_utf8(name_bytes.strip_suffix(&[0]).unwrap_or(name_bytes))
            .map_err(|_| invalid("non-UTF-8 name"))?
            .to_owned();
        let mut data_start = name_start + name_len;
        data_start += (4 - data_start % 4) % 4;
        let data = bytes
            .get(data_start..data_start + size)
            .ok_or_else(|| invalid(format!("truncated data of {name}")))?;
        offset = data_start + size;
        offset += (4 - offset % 4) % 4;
        if name == TRAILER {
            return Ok(entries);
        }
        let kind = match mode & S_IFMT {
            S_IFDIR => EntryKind::Directory,
            S_IFREG => EntryKind::File(data.to_vec()),
            S_IFLNK => EntryKind::Symlink(
                String::from_utf8(data.to_vec()).map_err(|_| invalid("non-UTF-8 symlink"))?,
            ),
            S_IFCHR => EntryKind::CharDevice {
                major: device_major,
                minor: device_minor,
            },
            other => return Err(invalid(format!("{name}: unsupported file type {other:o}"))),
        };
        entries.push(Entry {
            name,
            permissions: mode & 0o7777,
            kind,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut writer = Writer::new(Vec::new());
        writer.directory("/bin", 0o755).unwrap();
        writer.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        writer.file("empty", 0o644, b"").unwrap();
        writer.symlink("bin/sh", "busybox").unwrap();
        writer.char_device("dev/console", 0o600, 5, 1).unwrap();
        let bytes = writer.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let entries = read_archive(&bytes).unwrap();
        assert_eq!(
            entries,
            vec![
                Entry {
                    name: "bin".into(),
                    permissions: 0o755,
                    kind: EntryKind::Directory
                },
                Entry {
                    name: "init".into(),
                    permissions: 0o755,
                    kind: EntryKind::File(b"#!/bin/sh\n".to_vec())
                },
                Entry {
                    name: "empty".into(),
                    permissions: 0o644,
                    kind: EntryKind::File(Vec::new())
                },
                Entry {
                    name: "bin/sh".into(),
                    permissions: 0o777,
                    kind: EntryKind::Symlink("busybox".into())
                },
                Entry {
                    name: "dev/console".into(),
                    permissions: 0o600,
                    kind: EntryKind::CharDevice { major: 5, minor: 1 }
                },
            ]
        );
    }

    #[test]
    fn the_header_layout_is_newc() {
        let mut writer = Writer::new(Vec::new());
        writer.file("ab", 0o644, b"xyz").unwrap();
        let bytes = writer.finish().unwrap();
        // magic, ino 1, mode 0100644, uid, gid, nlink 1, mtime, size 3, 4 device fields,
        // namesize 3 ("ab\0"), check; then the name padded so data starts at 4n.
        let fields = [1, 0o100644, 0, 0, 1, 0, 3, 0, 0, 0, 0, 3, 0];
        let expected: String = std::iter::once("070701".to_owned())
            .chain(fields.iter().map(|field: &u32| format!("{field:08x}")))
            .collect();
        assert_eq!(std::str::from_utf8(&bytes[..110]).unwrap(), expected);
        assert_eq!(&bytes[110..113], b"ab\0");
        assert_eq!(&bytes[113..116], b"\0\0\0");
        assert_eq!(&bytes[116..119], b"xyz");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(read_archive(b"").is_err());
        assert!(read_archive(b"070701zzzz").is_err());
        let mut writer = Writer::new(Vec::new());
        writer.file("a", 0o644, b"hello").unwrap();
        let bytes = writer.finish().unwrap();
        for cut in [1, 50, 111, 115, bytes.len() - 1] {
            assert!(read_archive(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
