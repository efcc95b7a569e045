//! [`ImageError`]: every way building or opening an image fails, each naming what failed
//! and, where there is one, what to run next.

use std::path::PathBuf;

/// An image could not be built, opened or verified.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no microVM image \"{name}\" in {}: run `cthulu image build`", images_dir.display())]
    NotFound { name: String, images_dir: PathBuf },

    #[error("image \"{name}\" is corrupt: {problem}: run `cthulu image build --force`")]
    Corrupt { name: String, problem: String },

    #[error("image \"{name}\" has manifest format {found}, this cthulu reads {expected}: run `cthulu image build --force`")]
    ManifestFormat {
        name: String,
        found: u32,
        expected: u32,
    },

    #[error(
        "invalid image name {name:?}: use letters, digits, '-', '_' and '.', not starting with '.'"
    )]
    InvalidName { name: String },

    #[error("{operation}")]
    Io {
        /// What was being done, naming the path.
        operation: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{program} is not installed: run `apt-get install {package}`")]
    ToolMissing {
        program: String,
        package: &'static str,
    },

    #[error("{command} failed: {stderr}")]
    CommandFailed { command: String, stderr: String },

    #[error("apt knows no package {package}: run `apt-get update`")]
    PackageUnknown { package: String },

    #[error("{package} does not contain {what}")]
    PackageContent { package: String, what: String },

    #[error("kernel module {module} of {kernel_version} is neither in the package nor built in")]
    ModuleMissing {
        module: String,
        kernel_version: String,
    },

    #[error("kernel module {} is compressed; only uncompressed .ko modules are supported (Debian's 6.1 cloud kernel)", path.display())]
    ModuleCompressed { path: PathBuf },

    #[error("kernel module {} has no readable .modinfo section: {problem}", path.display())]
    ModuleInfo { path: PathBuf, problem: String },

    #[error("no guest agent binary found (tried {}): build it with `scripts/build-agent` or pass --agent", list_paths(tried))]
    AgentNotFound { tried: Vec<PathBuf> },

    #[error("guest agent {} does not exist", path.display())]
    AgentMissing { path: PathBuf },

    #[error("guest agent {} is not an x86-64 ELF executable ({problem}): build it with `scripts/build-agent`", path.display())]
    AgentNotElf { path: PathBuf, problem: String },

    #[error("guest agent {} is dynamically linked (it names an ELF interpreter) and the guest has no libc: build it static with `scripts/build-agent`", path.display())]
    AgentDynamic { path: PathBuf },

    #[error("rootfs source {} is neither a directory nor a .tar file (nor `debootstrap`)", path.display())]
    RootfsSource { path: PathBuf },

    #[error("rootfs size {size} bytes is too small for {content} bytes of content")]
    RootfsTooSmall { size: u64, content: u64 },

    #[error("invalid size {text:?}: use a number of bytes with an optional K, M, G or T suffix (binary units)")]
    InvalidSize { text: String },

    #[error("{}: not an OCI or `docker save` image: {problem}", path.display())]
    OciFormat { path: PathBuf, problem: String },

    #[error("{}: layer {layer} has an unsafe entry {entry:?}: {problem}", path.display())]
    UnsafeEntry {
        path: PathBuf,
        layer: String,
        entry: String,
        problem: String,
    },

    #[error("another build of image \"{name}\" is running (lock {})", lock.display())]
    Busy { name: String, lock: PathBuf },
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl ImageError {
    /// An I/O error with what was being done (`operation` names the path).
    pub(crate) fn io(operation: impl Into<String>, source: std::io::Error) -> ImageError {
        ImageError::Io {
            operation: operation.into(),
            source,
        }
    }

    /// Whether the error means the image is absent (as opposed to broken).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ImageError::NotFound { .. })
    }
}
