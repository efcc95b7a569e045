//! A built image on disk: [`open`] one by name, [`list`] them all, [`Image::verify`] the
//! checksums.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::ImageError;
use crate::manifest::{
    Manifest, INITRAMFS_FILE, KERNEL_FILE, MANIFEST_FILE, MANIFEST_FORMAT, ROOTFS_FILE,
    VMLINUX_FILE,
};

/// The name of the image built when none is given.
pub const DEFAULT_IMAGE: &str = "default";
/// The longest image name.
const MAX_NAME_LEN: usize = 64;

/// An image whose manifest was read and whose files exist with the recorded sizes.
#[derive(Debug, Clone)]
pub struct Image {
    dir: PathBuf,
    manifest: Manifest,
    kernel: PathBuf,
    initramfs: PathBuf,
    rootfs: Option<PathBuf>,
    vmlinux: Option<PathBuf>,
}

impl Image {
    /// The image's directory, `<images_dir>/<name>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// The version id: a short hash of every input.
    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    /// The guest kernel (a bzImage).
    pub fn kernel(&self) -> &Path {
        &self.kernel
    }

    /// The uncompressed kernel (an ELF with a PVH entry), when the image has one: booting
    /// it skips the bzImage's self-decompression.
    pub fn vmlinux(&self) -> Option<&Path> {
        self.vmlinux.as_deref()
    }

    /// The gzipped newc initramfs whose `/init` is the agent.
    pub fn initramfs(&self) -> &Path {
        &self.initramfs
    }

    /// The ext4 root filesystem, if the image has one.
    pub fn rootfs(&self) -> Option<&Path> {
        self.rootfs.as_deref()
    }

    /// Checks every file's sha256 against the manifest (reads every byte).
    pub fn verify(&self) -> Result<(), ImageError> {
        for (file, record) in &self.manifest.files {
            let sha256 = sha256_file(&self.dir.join(file))?;
            if sha256 != record.sha256 {
                return Err(ImageError::Corrupt {
                    name: self.manifest.name.clone(),
                    problem: format!(
                        "{file} has sha256 {sha256}, the manifest says {}",
                        record.sha256
                    ),
                });
            }
        }
        Ok(())
    }
}

/// One line of [`list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    pub name: String,
    pub version: Option<String>,
    pub kernel_version: Option<String>,
    /// Total bytes of the image's files.
    pub size: Option<u64>,
    pub rootfs: bool,
    pub created: Option<String>,
    /// Why the image cannot be used, when it cannot.
    pub error: Option<String>,
}

/// Refuses names that are not a plain directory name of reasonable length.
pub fn validate_name(name: &str) -> Result<(), ImageError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(ImageError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// Opens image `name` in `images_dir`: reads and checks the manifest and that each file
/// has the recorded size (see [`Image::verify`] for the checksums).
pub fn open(images_dir: &Path, name: &str) -> Result<Image, ImageError> {
    validate_name(name)?;
    let dir = images_dir.join(name);
    let manifest_path = dir.join(MANIFEST_FILE);
    let corrupt = |problem: String| ImageError::Corrupt {
        name: name.to_owned(),
        problem,
    };
    let text = match fs_err::read_to_string(&manifest_path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(if dir.exists() {
                corrupt(format!("it has no {MANIFEST_FILE}"))
            } else {
                ImageError::NotFound {
                    name: name.to_owned(),
                    images_dir: images_dir.to_path_buf(),
                }
            });
        }
        Err(source) => return Err(ImageError::io("cannot read the image manifest", source)),
    };
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let format = serde_json::from_str::<Format>(&text)
        .map_err(|error| corrupt(format!("{MANIFEST_FILE} is not valid: {error}")))?;
    if format.format != MANIFEST_FORMAT {
        return Err(ImageError::ManifestFormat {
            name: name.to_owned(),
            found: format.format,
            expected: MANIFEST_FORMAT,
        });
    }
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|error| corrupt(format!("{MANIFEST_FILE} is not valid: {error}")))?;
    if let Some(problem) = manifest.problem(name) {
        return Err(corrupt(problem));
    }
    for (file, record) in &manifest.files {
        let path = dir.join(file);
        let size = match fs_err::metadata(&path) {
            Ok(metadata) => metadata.len(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt(format!("{file} is missing")));
            }
            Err(source) => return Err(ImageError::io("cannot read an image file", source)),
        };
        if size != record.size {
            return Err(corrupt(format!(
                "{file} is {size} bytes, the manifest says {}",
                record.size
            )));
        }
    }
    Ok(Image {
        kernel: dir.join(KERNEL_FILE),
        initramfs: dir.join(INITRAMFS_FILE),
        rootfs: manifest
            .files
            .contains_key(ROOTFS_FILE)
            .then(|| dir.join(ROOTFS_FILE)),
        vmlinux: manifest
            .files
            .contains_key(VMLINUX_FILE)
            .then(|| dir.join(VMLINUX_FILE)),
        dir,
        manifest,
    })
}

/// Every image in `images_dir` by name, broken ones with their `error`. An absent or
/// unreadable directory lists nothing.
pub fn list(images_dir: &Path) -> Vec<ImageSummary> {
    let Ok(entries) = fs_err::read_dir(images_dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| validate_name(name).is_ok())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| match open(images_dir, &name) {
            Ok(image) => {
                let manifest = image.manifest;
                ImageSummary {
                    version: Some(manifest.version.clone()),
                    kernel_version: Some(manifest.kernel_version.clone()),
                    size: Some(manifest.size()),
                    rootfs: manifest.rootfs.is_some(),
                    created: Some(manifest.created.clone()),
                    error: None,
                    name,
                }
            }
            Err(error) => ImageSummary {
                name,
                version: None,
                kernel_version: None,
                size: None,
                rootfs: false,
                created: None,
                error: Some(error.to_string()),
            },
        })
        .collect()
}

/// The lowercase hex sha256 of a file's contents.
pub(crate) fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut file =
        fs_err::File::open(path).map_err(|source| ImageError::io("cannot hash a file", source))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|source| ImageError::io("cannot hash a file", source))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["default", "py-3.12", "a_b"] {
            validate_name(good).unwrap();
        }
        for bad in ["", ".cache", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
