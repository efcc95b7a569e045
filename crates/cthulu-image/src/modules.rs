//! Which kernel modules go into the initramfs and in what order the agent loads them.
//!
//! Debian's kernel package ships no `modules.dep` (depmod runs at install time), so the
//! order is worked out here from each module's `.modinfo` `depends=` entry: a depth-first
//! walk from the wanted modules, dependencies first. Modules listed in `modules.builtin`
//! are part of the kernel image and skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::elf;
use crate::error::ImageError;

/// The drivers a microVM needs: the virtio-mmio transport, disk, console/serial ports,
/// network and vsock. Their dependencies are added by [`load_order`].
pub const WANTED_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "vmw_vsock_virtio_transport",
];

/// A module file to put into the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// The module's name (`virtio_ring`).
    pub name: String,
    /// Path relative to `/lib/modules/<kernel version>/` (`kernel/drivers/virtio/virtio_ring.ko`).
    pub relative_path: PathBuf,
}

/// What the kernel package says about one module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// Compiled into the kernel image: nothing to load.
    Builtin,
    /// A loadable module and the modules it depends on.
    Loadable {
        relative_path: PathBuf,
        depends: Vec<String>,
    },
    Missing,
}

/// Module names use `_` where file names may use `-` (`virtio-rng.ko` is `virtio_rng`).
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The load order of `wanted` and their dependencies, dependencies first, each once.
pub fn resolve(
    wanted: &[&str],
    kernel_version: &str,
    mut lookup: impl FnMut(&str) -> Result<Availability, ImageError>,
) -> Result<Vec<ModuleFile>, ImageError> {
    fn visit(
        name: &str,
        kernel_version: &str,
        lookup: &mut dyn FnMut(&str) -> Result<Availability, ImageError>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<ModuleFile>,
    ) -> Result<(), ImageError> {
        let name = normalize(name);
        // Marked before the dependencies are visited, so a (malformed) cycle ends.
        if !done.insert(name.clone()) {
            return Ok(());
        }
        match lookup(&name)? {
            Availability::Builtin => Ok(()),
            Availability::Missing => Err(ImageError::ModuleMissing {
                module: name,
                kernel_version: kernel_version.to_owned(),
            }),
            Availability::Loadable {
                relative_path,
                depends,
            } => {
                for dependency in &depends {
                    visit(dependency, kernel_version, lookup, done, order)?;
                }
                order.push(ModuleFile {
                    name,
                    relative_path,
                });
                Ok(())
            }
        }
    }
    let mut done = BTreeSet::new();
    let mut order = Vec::new();
    for name in wanted {
        visit(name, kernel_version, &mut lookup, &mut done, &mut order)?;
    }
    Ok(order)
}

/// The load order of [`WANTED_MODULES`] in an unpacked kernel package whose modules are
/// in `module_dir` (`…/lib/modules/<kernel version>`).
pub fn load_order(module_dir: &Path, kernel_version: &str) -> Result<Vec<ModuleFile>, ImageError> {
    let builtin = builtin_modules(module_dir)?;
    let files = module_files(module_dir)?;
    resolve(WANTED_MODULES, kernel_version, |name| {
        if builtin.contains(name) {
            return Ok(Availability::Builtin);
        }
        let Some(relative_path) = files.get(name) else {
            return Ok(Availability::Missing);
        };
        let path = module_dir.join(relative_path);
        if path.extension().is_some_and(|extension| extension != "ko") {
            return Err(ImageError::ModuleCompressed { path });
        }
        let bytes = fs_err::read(&path).map_err(|source| {
            ImageError::io(format!("cannot read kernel module {name}"), source)
        })?;
        let info = elf::modinfo(&bytes).map_err(|problem| ImageError::ModuleInfo {
            path: path.clone(),
            problem: problem.0,
        })?;
        let depends = info
            .iter()
            .filter(|(key, _)| key == "depends")
            .flat_map(|(_, value)| value.split(','))
            .filter(|name| !name.is_empty())
            .map(normalize)
            .collect();
        Ok(Availability::Loadable {
            relative_path: relative_path.clone(),
            depends,
        })
    })
}

/// Names of the modules built into the kernel, from `modules.builtin` (one path per line).
fn builtin_modules(module_dir: &Path) -> Result<BTreeSet<String>, ImageError> {
    let path = module_dir.join("modules.builtin");
    let text = match fs_err::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(ImageError::io("cannot read modules.builtin", source)),
    };
    Ok(text
        .lines()
        .filter_map(|line| module_name(Path::new(line.trim())))
        .collect())
}

/// `virtio_ring` for `…/virtio_ring.ko` (or `.ko.xz`, `.ko.zst`, `.ko.gz`).
fn module_name(path: &Path) -> Option<String> {
    let file_name = path.file_name()?.to_str()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| file_name.strip_suffix(suffix))?;
    Some(normalize(stem))
}

/// Every module file under `module_dir`, by module name, as a path relative to it.
fn module_files(module_dir: &Path) -> Result<BTreeMap<String, PathBuf>, ImageError> {
    let mut files = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let directory = module_dir.join(&relative);
        let entries = fs_err::read_dir(&directory)
            .map_err(|source| ImageError::io("cannot list the kernel modules", source))?;
        for entry in entries {
            let entry =
                entry.map_err(|source| ImageError::io("cannot list the kernel modules", source))?;
            let file_type = entry
                .file_type()
                .map_err(|source| ImageError::io("cannot list the kernel modules", source))?;
            let child = relative.join(entry.file_name());
            if file_type.is_dir() {
                pending.push(child);
            } else if let Some(name) = file_type.is_file().then(|| module_name(&child)).flatten() {
                files.insert(name, child);
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loadable(path: &str, depends: &[&str]) -> Availability {
        Availability::Loadable {
            relative_path: PathBuf::from(path),
            depends: depends.iter().map(|name| name.to_string()).collect(),
        }
    }

    fn table() -> BTreeMap<&'static str, Availability> {
        BTreeMap::from([
            ("virtio", loadable("virtio.ko", &[])),
            ("virtio_ring", loadable("virtio_ring.ko", &[])),
            (
                "virtio_mmio",
                loadable("virtio_mmio.ko", &["virtio", "virtio_ring"]),
            ),
            (
                "virtio_blk",
                loadable("virtio_blk.ko", &["virtio", "virtio_ring"]),
            ),
            ("failover", loadable("failover.ko", &[])),
            ("net_failover", loadable("net_failover.ko", &["failover"])),
            (
                "virtio_net",
                loadable("virtio_net.ko", &["net_failover", "virtio", "virtio_ring"]),
            ),
            ("ext4", Availability::Builtin),
        ])
    }

    fn names(order: &[ModuleFile]) -> Vec<&str> {
        order.iter().map(|module| module.name.as_str()).collect()
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let table = table();
        let order = resolve(&["virtio_mmio", "virtio_net", "virtio-blk"], "k", |name| {
            Ok(table.get(name).cloned().unwrap_or(Availability::Missing))
        })
        .unwrap();
        assert_eq!(
            names(&order),
            [
                "virtio",
                "virtio_ring",
                "virtio_mmio",
                "failover",
                "net_failover",
                "virtio_net",
                "virtio_blk"
            ]
        );
    }

    #[test]
    fn builtin_modules_are_skipped_and_missing_ones_named() {
        let table = table();
        let lookup = |name: &str| Ok(table.get(name).cloned().unwrap_or(Availability::Missing));
        assert_eq!(resolve(&["ext4"], "k", lookup).unwrap(), vec![]);
        let error = resolve(&["virtio_mmio", "nope"], "6.1.0-x", lookup).unwrap_err();
        assert_eq!(
            error.to_string(),
            "kernel module nope of 6.1.0-x is neither in the package nor built in"
        );
    }

    #[test]
    fn a_cycle_terminates() {
        let table = BTreeMap::from([
            ("a", loadable("a.ko", &["b"])),
            ("b", loadable("b.ko", &["a"])),
        ]);
        let order = resolve(&["a"], "k", |name| Ok(table[name].clone())).unwrap();
        assert_eq!(names(&order), ["b", "a"]);
    }

    #[test]
    fn load_order_reads_modinfo_and_modules_builtin() {
        let root = tempfile::tempdir().unwrap();
        let write_module = |path: &str, depends: &str| {
            let path = root.path().join(path);
            fs_err::create_dir_all(path.parent().unwrap()).unwrap();
            let modinfo = format!("license=GPL\0depends={depends}\0intree=Y\0");
            fs_err::write(path, crate::elf::tests::module(modinfo.as_bytes())).unwrap();
        };
        write_module("kernel/drivers/virtio/virtio.ko", "");
        write_module("kernel/drivers/virtio/virtio_ring.ko", "");
        write_module("kernel/drivers/virtio/virtio_mmio.ko", "virtio,virtio_ring");
        write_module("kernel/drivers/block/virtio_blk.ko", "virtio,virtio_ring");
        write_module(
            "kernel/drivers/char/virtio_console.ko",
            "virtio,virtio_ring",
        );
        write_module("kernel/net/core/failover.ko", "");
        write_module("kernel/drivers/net/net_failover.ko", "failover");
        write_module(
            "kernel/drivers/net/virtio_net.ko",
            "net_failover,virtio,virtio_ring",
        );
        write_module(
            "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
            "vsock,virtio,virtio_ring",
        );
        write_module(
            "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
            "vmw_vsock_virtio_transport_common,vsock,virtio,virtio_ring",
        );
        fs_err::write(
            root.path().join("modules.builtin"),
            "kernel/net/vmw_vsock/vsock.ko\nkernel/fs/ext4/ext4.ko\n",
        )
        .unwrap();
        let order = load_order(root.path(), "k").unwrap();
        assert_eq!(
            names(&order),
            [
                "virtio",
                "virtio_ring",
                "virtio_mmio",
                "virtio_blk",
                "virtio_console",
                "failover",
                "net_failover",
                "virtio_net",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport"
            ]
        );
        assert_eq!(
            order[2].relative_path,
            Path::new("kernel/drivers/virtio/virtio_mmio.ko")
        );

        fs_err::rename(
            root.path().join("kernel/drivers/virtio/virtio.ko"),
            root.path().join("kernel/drivers/virtio/virtio.ko.zst"),
        )
        .unwrap();
        let error = load_order(root.path(), "k").unwrap_err();
        assert!(
            matches!(error, ImageError::ModuleCompressed { .. }),
            "{error}"
        );
    }
}
