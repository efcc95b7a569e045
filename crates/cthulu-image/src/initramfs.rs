//! The initramfs: `/init` is the guest agent, which runs as PID 1, mounts `/proc`, `/sys`,
//! `/dev` itself and loads the modules listed in `/etc/cthulu/modules` in order; busybox
//! and its applets are there for commands and debugging.

use std::collections::BTreeSet;
use std::io::{BufWriter, Write as _};
use std::path::{Component, Path};
use std::process::Command;

use flate2::write::GzEncoder;

use crate::cpio;
use crate::error::ImageError;
use crate::modules::ModuleFile;
use crate::tool;

/// Where the module list is in the initramfs: absolute module paths, one per line, in load
/// order (dependencies first).
pub const MODULES_LIST: &str = "etc/cthulu/modules";
/// The hostname the initramfs names in `/etc/hostname`.
const HOSTNAME: &str = "cthulu";
/// Bumped whenever the initramfs layout changes, so existing images are rebuilt.
pub const LAYOUT_VERSION: u32 = 1;

/// What goes into the initramfs.
#[derive(Debug)]
pub struct Contents<'a> {
    pub agent: &'a Path,
    pub busybox: &'a Path,
    /// Applet paths relative to `/` (`bin/sh`, `sbin/insmod`, `usr/bin/wget`).
    pub applets: &'a [String],
    pub kernel_version: &'a str,
    /// The unpacked `lib/modules/<kernel version>` directory.
    pub module_dir: &'a Path,
    pub modules: &'a [ModuleFile],
}

/// The applets of a busybox binary, from `busybox --list-full` run on the host.
pub fn busybox_applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let output = tool::run(Command::new(busybox).arg("--list-full"), "busybox")?;
    Ok(parse_applets(&output))
}

/// Applet paths from `--list-full` output, keeping only plain relative paths.
fn parse_applets(output: &str) -> Vec<String> {
    output
        .lines()
        .map(|line| line.trim().trim_start_matches('/'))
        .filter(|line| !line.is_empty() && *line != "bin/busybox")
        .filter(|line| {
            Path::new(line)
                .components()
                .all(|component| matches!(component, Component::Normal(_)))
        })
        .map(str::to_owned)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The guest path of a module (`/lib/modules/<kernel version>/kernel/…/x.ko`).
pub fn module_guest_path(kernel_version: &str, module: &ModuleFile) -> String {
    format!(
        "/lib/modules/{kernel_version}/{}",
        module.relative_path.display()
    )
}

/// Every parent directory of `path` (relative), outermost first.
fn parents(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .map(move |(index, _)| &path[..index])
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    fs_err::read(path).map_err(|source| ImageError::io("cannot read an initramfs file", source))
}

/// Writes the gzipped initramfs to `output`; returns its size.
pub fn write(contents: &Contents<'_>, output: &Path) -> Result<u64, ImageError> {
    let write_error = |source| ImageError::io(format!("cannot write {}", output.display()), source);
    let modules: Vec<(String, Vec<u8>)> = contents
        .modules
        .iter()
        .map(|module| {
            let bytes = read(&contents.module_dir.join(&module.relative_path))?;
            Ok((module_guest_path(contents.kernel_version, module), bytes))
        })
        .collect::<Result<_, ImageError>>()?;
    let module_list: String = modules
        .iter()
        .map(|(path, _)| format!("{path}\n"))
        .collect();
    let mut files: Vec<(String, u32, Vec<u8>)> = vec![
        ("init".into(), 0o755, read(contents.agent)?),
        ("bin/busybox".into(), 0o755, read(contents.busybox)?),
        (MODULES_LIST.into(), 0o644, module_list.into_bytes()),
        (
            "etc/passwd".into(),
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        ),
        ("etc/group".into(), 0o644, b"root:x:0:\n".to_vec()),
        (
            "etc/hostname".into(),
            0o644,
            format!("{HOSTNAME}\n").into_bytes(),
        ),
    ];
    files.extend(
        modules
            .into_iter()
            .map(|(path, bytes)| (path.trim_start_matches('/').to_owned(), 0o644, bytes)),
    );

    // Directories first, parents before children (sorted), with their own modes.
    let mut directories: BTreeSet<String> = [
        "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root", "etc", "mnt",
        "run", "var",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let paths = files
        .iter()
        .map(|(path, _, _)| path.as_str())
        .chain(contents.applets.iter().map(String::as_str))
        .chain(directories.clone().iter().map(String::as_str))
        .flat_map(parents)
        .map(str::to_owned)
        .collect::<Vec<_>>();
    directories.extend(paths);

    let file = fs_err::File::create(output).map_err(write_error)?;
    let encoder = GzEncoder::new(BufWriter::new(file), flate2::Compression::default());
    let mut archive = cpio::Writer::new(encoder);
    (|| {
        for directory in &directories {
            let mode = match directory.as_str() {
                "tmp" => 0o1777,
                "root" => 0o700,
                _ => 0o755,
            };
            archive.directory(directory, mode)?;
        }
        archive.char_device("dev/console", 0o600, 5, 1)?;
        for (path, mode, bytes) in &files {
            archive.file(path, *mode, bytes)?;
        }
        for applet in contents.applets {
            archive.symlink(applet, "/bin/busybox")?;
        }
        let encoder = archive.finish()?;
        let mut writer = encoder.finish()?;
        writer.flush()?;
        writer.get_ref().sync_all()
    })()
    .map_err(write_error)?;
    let size = fs_err::metadata(output).map_err(write_error)?.len();
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applets_are_plain_relative_paths() {
        let output = "bin/sh\nsbin/insmod\n/usr/bin/wget\nbin/busybox\n../evil\nbin/sh\n\n";
        assert_eq!(
            parse_applets(output),
            ["bin/sh", "sbin/insmod", "usr/bin/wget"]
        );
    }

    #[test]
    fn parents_outermost_first() {
        assert_eq!(
            parents("lib/modules/6.1/x.ko").collect::<Vec<_>>(),
            ["lib", "lib/modules", "lib/modules/6.1"]
        );
        assert_eq!(parents("init").count(), 0);
    }
}
