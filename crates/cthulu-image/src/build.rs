//! [`build`]: makes or refreshes an image directory.
//!
//! Every input is resolved first (package versions from apt, the agent's sha256, the
//! rootfs source's key) and hashed into the image version; an image already at that
//! version is left alone. Otherwise the image is assembled in a staging directory inside
//! the images directory, reusing (hard-linking) each artifact of the old image whose
//! inputs did not change, and swapped into place with one atomic rename, so a crash never
//! leaves a half image under the image's name.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::agent::check_agent;
use crate::apt::{self, Package};
use crate::error::ImageError;
use crate::image::{self, hex, sha256_file, validate_name, Image, DEFAULT_IMAGE};
use crate::initramfs::{self, Contents};
use crate::manifest::{
    FileRecord, Inputs, Manifest, RootfsRecord, INITRAMFS_FILE, KERNEL_FILE, MANIFEST_FILE,
    MANIFEST_FORMAT, ROOTFS_FILE, VMLINUX_FILE,
};
use crate::modules::{self, WANTED_MODULES};
use crate::rootfs::{self, RootfsSource};

/// The environment variable that overrides the download cache directory.
pub const CACHE_ENV: &str = "CTHULU_IMAGE_CACHE";
/// Hex digits of the image version id.
const VERSION_LEN: usize = 12;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Where images live (`$CTHULU_HOME/images`); the image goes to `<images_dir>/<name>`.
    pub images_dir: PathBuf,
    pub name: String,
    /// The static guest agent, the initramfs's `/init` (see [`crate::find_agent`]).
    pub agent: PathBuf,
    pub rootfs: Option<RootfsSource>,
    /// Size of `rootfs.ext4` [default: content + 50 %, at least 256 MiB].
    pub rootfs_size: Option<u64>,
    /// Rebuild every artifact even when the inputs are unchanged.
    pub force: bool,
    /// Where downloaded packages are kept [default: `<images_dir>/.cache`].
    pub cache_dir: Option<PathBuf>,
    /// Tests only: accept a `#!` script as the agent.
    pub allow_script_agent: bool,
}

impl BuildOptions {
    /// The default image `default`, no rootfs, downloads cached in the images directory.
    pub fn new(images_dir: impl Into<PathBuf>, agent: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            images_dir: images_dir.into(),
            name: DEFAULT_IMAGE.to_owned(),
            agent: agent.into(),
            rootfs: None,
            rootfs_size: None,
            force: false,
            cache_dir: None,
            allow_script_agent: false,
        }
    }

    fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| self.images_dir.join(".cache"))
    }
}

/// What [`build`] is doing, for a progress display. The library prints nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Started {
        label: String,
    },
    Finished {
        label: String,
        /// Bytes downloaded or written, when known.
        bytes: Option<u64>,
    },
    /// A step skipped because its result is already there (cached download, artifact
    /// unchanged since the last build).
    Reused {
        label: String,
    },
    /// The image is already at the version the inputs give; nothing was done.
    UpToDate {
        version: String,
    },
}

/// Runs `work` between `Started` and `Finished` events labelled `label`; `work` returns
/// its value and a byte count when it knows one.
fn step<T>(
    progress: &mut dyn FnMut(Progress),
    label: &str,
    work: impl FnOnce() -> Result<(T, Option<u64>), ImageError>,
) -> Result<T, ImageError> {
    progress(Progress::Started {
        label: label.to_owned(),
    });
    let (value, bytes) = work()?;
    progress(Progress::Finished {
        label: label.to_owned(),
        bytes,
    });
    Ok(value)
}

fn short_hash(text: &str) -> String {
    let mut digest = hex(&Sha256::digest(text.as_bytes()));
    digest.truncate(VERSION_LEN);
    digest
}

/// Everything the image is made from.
struct ResolvedInputs {
    kernel: Package,
    busybox: Package,
    agent_sha256: String,
    inputs: Inputs,
    version: String,
}

fn resolve_inputs(
    options: &BuildOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ResolvedInputs, ImageError> {
    let (kernel, busybox) = step(progress, "resolving packages", || {
        Ok((apt::resolve_packages()?, None))
    })?;
    let agent_sha256 = sha256_file(&options.agent)?;
    let rootfs = match &options.rootfs {
        None => None,
        Some(source) => Some(step(progress, "hashing the rootfs source", || {
            let key = source.input_key()?;
            let size = options
                .rootfs_size
                .map_or_else(|| "auto".to_owned(), |size| size.to_string());
            Ok((short_hash(&format!("{key}\nsize {size}")), None))
        })?),
    };
    // `+vmlinux`: images also carry the uncompressed kernel (built once per image).
    let kernel_key = format!("{}={} +vmlinux", kernel.name, kernel.version);
    let initramfs_key = short_hash(&format!(
        "layout {}\n{kernel_key}\n{}={}\nagent {agent_sha256}\nmodules {}",
        initramfs::LAYOUT_VERSION,
        busybox.name,
        busybox.version,
        WANTED_MODULES.join(",")
    ));
    let version = short_hash(&format!(
        "format {MANIFEST_FORMAT}\n{kernel_key}\n{initramfs_key}\n{}",
        rootfs.as_deref().unwrap_or("no rootfs")
    ));
    Ok(ResolvedInputs {
        kernel,
        busybox,
        agent_sha256,
        inputs: Inputs {
            kernel: kernel_key,
            initramfs: initramfs_key,
            rootfs,
        },
        version,
    })
}

/// Builds image `options.name` in `options.images_dir`, or leaves it alone when it is up
/// to date (reporting [`Progress::UpToDate`]), and opens it.
pub fn build(
    options: &BuildOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Image, ImageError> {
    validate_name(&options.name)?;
    let images_dir = &options.images_dir;
    let name = &options.name;
    fs_err::create_dir_all(images_dir)
        .map_err(|source| ImageError::io("cannot create the images directory", source))?;
    let _lock = lock(images_dir, name)?;
    remove_leftovers(images_dir, name);
    check_agent(&options.agent, options.allow_script_agent)?;

    let resolved = resolve_inputs(options, progress)?;
    let existing = if options.force {
        None
    } else {
        image::open(images_dir, name).ok()
    };
    if let Some(image) = &existing {
        if image.version() == resolved.version {
            progress(Progress::UpToDate {
                version: resolved.version,
            });
            return Ok(image.clone());
        }
    }

    let temporary = |kind: &str| {
        tempfile::Builder::new()
            .prefix(&format!(".build+{name}+{kind}-"))
            .tempdir_in(images_dir)
            .map_err(|source| {
                ImageError::io(
                    format!("cannot create a directory in {}", images_dir.display()),
                    source,
                )
            })
    };
    let staging = temporary("image")?;
    let work = temporary("work")?;
    let same = |key: fn(&Inputs) -> Option<&str>| {
        existing
            .as_ref()
            .filter(|image| key(&image.manifest().inputs) == key(&resolved.inputs))
    };
    let kernel_unchanged = same(|inputs| Some(&inputs.kernel));
    let initramfs_unchanged = same(|inputs| Some(&inputs.initramfs));

    let (kernel_version, module_paths) = match initramfs_unchanged {
        Some(old) => {
            link_or_copy(old.kernel(), &staging.path().join(KERNEL_FILE))?;
            if let Some(vmlinux) = old.vmlinux() {
                link_or_copy(vmlinux, &staging.path().join(VMLINUX_FILE))?;
            }
            link_or_copy(old.initramfs(), &staging.path().join(INITRAMFS_FILE))?;
            progress(Progress::Reused {
                label: "kernel and initramfs (unchanged)".to_owned(),
            });
            let manifest = old.manifest();
            (manifest.kernel_version.clone(), manifest.modules.clone())
        }
        None => build_boot_files(
            options,
            &resolved,
            kernel_unchanged,
            staging.path(),
            work.path(),
            progress,
        )?,
    };

    let rootfs_record = match &options.rootfs {
        None => None,
        Some(source) => {
            let output = staging.path().join(ROOTFS_FILE);
            let unchanged = existing.as_ref().filter(|image| {
                image.rootfs().is_some() && image.manifest().inputs.rootfs == resolved.inputs.rootfs
            });
            match unchanged.and_then(Image::rootfs) {
                Some(old) => {
                    link_or_copy(old, &output)?;
                    progress(Progress::Reused {
                        label: "rootfs (unchanged)".to_owned(),
                    });
                }
                None => build_rootfs(source, options.rootfs_size, work.path(), &output, progress)?,
            }
            Some(RootfsRecord {
                source: source.describe(),
            })
        }
    };
    drop(work);

    let files = step(progress, "checksumming", || {
        let mut files = std::collections::BTreeMap::new();
        for file in [KERNEL_FILE, VMLINUX_FILE, INITRAMFS_FILE, ROOTFS_FILE] {
            let path = staging.path().join(file);
            if !path.exists() {
                continue;
            }
            let size = fs_err::metadata(&path)
                .map_err(|source| ImageError::io("cannot read an image file", source))?
                .len();
            let sha256 = sha256_file(&path)?;
            files.insert(file.to_owned(), FileRecord { size, sha256 });
        }
        Ok((files, None))
    })?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: name.clone(),
        version: resolved.version.clone(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        kernel_version,
        packages: [&resolved.kernel, &resolved.busybox]
            .into_iter()
            .map(|package| (package.name.clone(), package.version.clone()))
            .collect(),
        agent_sha256: resolved.agent_sha256.clone(),
        modules: module_paths,
        rootfs: rootfs_record,
        inputs: resolved.inputs.clone(),
        files,
    };
    write_manifest(&staging.path().join(MANIFEST_FILE), &manifest)?;
    install(staging, &images_dir.join(name), images_dir)?;
    image::open(images_dir, name)
}

/// Fetches and unpacks the kernel and busybox packages, writes `vmlinuz` (or links the
/// old one when the kernel is unchanged) and the initramfs into `staging`. Returns the
/// kernel version and the guest paths of the modules in load order.
fn build_boot_files(
    options: &BuildOptions,
    resolved: &ResolvedInputs,
    kernel_unchanged: Option<&Image>,
    staging: &Path,
    work: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(String, Vec<String>), ImageError> {
    let cache_dir = options.cache_dir();
    let mut unpack = |package: &Package| -> Result<PathBuf, ImageError> {
        let deb = if cache_dir.join(package.deb_file_name()).is_file() {
            progress(Progress::Reused {
                label: format!("{} {} (cached)", package.name, package.version),
            });
            cache_dir.join(package.deb_file_name())
        } else {
            let label = format!("downloading {} {}", package.name, package.version);
            step(progress, &label, || {
                let (deb, _) = apt::download(package, &cache_dir)?;
                let size = fs_err::metadata(&deb).ok().map(|metadata| metadata.len());
                Ok((deb, size))
            })?
        };
        let directory = work.join(&package.name);
        step(progress, &format!("unpacking {}", package.name), || {
            apt::extract(&deb, &directory).map(|()| ((), None))
        })?;
        Ok(directory)
    };
    let kernel_tree = unpack(&resolved.kernel)?;
    let busybox_tree = unpack(&resolved.busybox)?;

    let (vmlinuz, kernel_version) = find_kernel(&kernel_tree, &resolved.kernel)?;
    let kernel_output = staging.join(KERNEL_FILE);
    match kernel_unchanged {
        Some(old) => {
            link_or_copy(old.kernel(), &kernel_output)?;
            if let Some(vmlinux) = old.vmlinux() {
                link_or_copy(vmlinux, &staging.join(VMLINUX_FILE))?;
            }
            progress(Progress::Reused {
                label: "kernel (unchanged)".to_owned(),
            });
        }
        None => {
            step(
                progress,
                &format!("writing kernel {kernel_version}"),
                || {
                    let bytes = fs_err::copy(&vmlinuz, &kernel_output)
                        .map_err(|source| ImageError::io("cannot copy the kernel", source))?;
                    Ok(((), Some(bytes)))
                },
            )?;
            step(progress, "extracting vmlinux", || {
                let bzimage = fs_err::read(&kernel_output)
                    .map_err(|source| ImageError::io("cannot read the kernel", source))?;
                match bootable_vmlinux(&bzimage) {
                    Ok(vmlinux) => {
                        fs_err::write(staging.join(VMLINUX_FILE), &vmlinux)
                            .map_err(|source| ImageError::io("cannot write the vmlinux", source))?;
                        Ok(((), Some(vmlinux.len() as u64)))
                    }
                    Err(reason) => {
                        // The bzImage still boots, only slower under TCG.
                        tracing::warn!(%reason, "no vmlinux in the image; VMs boot the bzImage");
                        Ok(((), None))
                    }
                }
            })?;
        }
    }

    let module_dir = kernel_tree.join("lib/modules").join(&kernel_version);
    let modules = step(progress, "resolving kernel modules", || {
        Ok((modules::load_order(&module_dir, &kernel_version)?, None))
    })?;
    let busybox = busybox_tree.join("bin/busybox");
    if !busybox.is_file() {
        return Err(ImageError::PackageContent {
            package: resolved.busybox.name.clone(),
            what: "bin/busybox".to_owned(),
        });
    }
    let applets = initramfs::busybox_applets(&busybox)?;
    step(progress, &format!("writing {INITRAMFS_FILE}"), || {
        let contents = Contents {
            agent: &options.agent,
            busybox: &busybox,
            applets: &applets,
            kernel_version: &kernel_version,
            module_dir: &module_dir,
            modules: &modules,
        };
        let size = initramfs::write(&contents, &staging.join(INITRAMFS_FILE))?;
        Ok(((), Some(size)))
    })?;
    let module_paths = modules
        .iter()
        .map(|module| initramfs::module_guest_path(&kernel_version, module))
        .collect();
    Ok((kernel_version, module_paths))
}

/// The uncompressed kernel of `bzimage`, if it can be booted at a PVH entry.
fn bootable_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, String> {
    let vmlinux = crate::kernel::extract_vmlinux(bzimage).map_err(|problem| problem.0)?;
    match crate::elf::pvh_entry(&vmlinux) {
        Ok(Some(_)) => Ok(vmlinux),
        Ok(None) => Err("the kernel has no PVH entry note".into()),
        Err(problem) => Err(format!(
            "the uncompressed kernel is not a valid ELF: {}",
            problem.0
        )),
    }
}

/// `boot/vmlinuz-<version>` of an unpacked kernel package, and the version.
fn find_kernel(tree: &Path, package: &Package) -> Result<(PathBuf, String), ImageError> {
    let missing = || ImageError::PackageContent {
        package: package.name.clone(),
        what: "boot/vmlinuz-*".to_owned(),
    };
    let entries = fs_err::read_dir(tree.join("boot")).map_err(|_| missing())?;
    for entry in entries.filter_map(Result::ok) {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if let Some(version) = file_name.strip_prefix("vmlinuz-") {
            return Ok((entry.path(), version.to_owned()));
        }
    }
    Err(missing())
}

/// Makes `rootfs.ext4` at `output` from `source`.
fn build_rootfs(
    source: &RootfsSource,
    requested_size: Option<u64>,
    work: &Path,
    output: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), ImageError> {
    let staged = work.join("rootfs");
    let tree: &Path = match source {
        RootfsSource::Directory(directory) => directory,
        RootfsSource::Debootstrap => {
            step(progress, "running debootstrap (about a minute)", || {
                rootfs::debootstrap(&staged).map(|()| ((), None))
            })?;
            &staged
        }
        RootfsSource::OciArchive(archive) => {
            fs_err::create_dir(&staged)
                .map_err(|source| ImageError::io("cannot create the rootfs staging", source))?;
            step(
                progress,
                &format!("unpacking the layers of {}", archive.display()),
                || {
                    rootfs::oci::unpack(archive, &staged, &mut |_, _| {})?;
                    Ok(((), None))
                },
            )?;
            &staged
        }
    };
    let content = rootfs::content_bytes(tree)?;
    let size = rootfs::image_size(content, requested_size)?;
    step(progress, &format!("writing {ROOTFS_FILE}"), || {
        rootfs::make_ext4(tree, output, size)?;
        Ok(((), Some(size)))
    })
}

/// Hard-links `from` to `to`, or copies it where links are not possible.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), ImageError> {
    if fs_err::hard_link(from, to).is_ok() {
        return Ok(());
    }
    fs_err::copy(from, to)
        .map(drop)
        .map_err(|source| ImageError::io("cannot reuse an image file", source))
}

fn write_manifest(path: &Path, manifest: &Manifest) -> Result<(), ImageError> {
    let mut text = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
    text.push(b'\n');
    let file = fs_err::File::create(path)
        .map_err(|source| ImageError::io("cannot write the manifest", source))?;
    std::io::Write::write_all(&mut &file, &text)
        .and_then(|()| file.sync_all())
        .map_err(|source| ImageError::io(format!("cannot write {}", path.display()), source))
}

/// Puts the staged image at `target`: an atomic exchange with the old image (which the
/// staging directory then holds and removes), or a rename when there was none.
fn install(staging: tempfile::TempDir, target: &Path, images_dir: &Path) -> Result<(), ImageError> {
    let install_error = |source: std::io::Error| {
        ImageError::io(
            format!("cannot install the image at {}", target.display()),
            source,
        )
    };
    for file in [KERNEL_FILE, INITRAMFS_FILE, ROOTFS_FILE] {
        if let Ok(file) = std::fs::File::open(staging.path().join(file)) {
            file.sync_all().map_err(install_error)?;
        }
    }
    let exchanged = rustix::fs::renameat_with(
        rustix::fs::CWD,
        staging.path(),
        rustix::fs::CWD,
        target,
        rustix::fs::RenameFlags::EXCHANGE,
    );
    match exchanged {
        // The old image is now in the staging directory, removed when it drops.
        Ok(()) => drop(staging),
        Err(rustix::io::Errno::NOENT) => {
            fs_err::rename(staging.path(), target).map_err(install_error)?;
            let _ = staging.keep();
        }
        // A file system without RENAME_EXCHANGE: move the old image aside first.
        Err(_) => {
            let name = target.file_name().unwrap_or_default().to_string_lossy();
            let aside = tempfile::Builder::new()
                .prefix(&format!(".build+{name}+old-"))
                .tempdir_in(images_dir)
                .map_err(install_error)?;
            fs_err::rename(target, aside.path().join("image")).map_err(install_error)?;
            fs_err::rename(staging.path(), target).map_err(install_error)?;
            let _ = staging.keep();
        }
    }
    if let Ok(directory) = std::fs::File::open(images_dir) {
        let _ = directory.sync_all();
    }
    Ok(())
}

/// Holds `<images_dir>/.lock+<name>` exclusively while building.
fn lock(images_dir: &Path, name: &str) -> Result<OwnedFd, ImageError> {
    let path = images_dir.join(format!(".lock+{name}"));
    let file = fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| ImageError::io("cannot create the build lock", source))?;
    let fd = OwnedFd::from(file.into_file());
    match rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(fd),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(ImageError::Busy {
            name: name.to_owned(),
            lock: path,
        }),
        Err(errno) => Err(ImageError::io(
            format!("cannot lock {}", path.display()),
            errno.into(),
        )),
    }
}

/// Removes staging directories a crashed build of `name` left (the caller holds the lock).
fn remove_leftovers(images_dir: &Path, name: &str) {
    let prefix = format!(".build+{name}+");
    let Ok(entries) = fs_err::read_dir(images_dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            if let Err(error) = fs_err::remove_dir_all(entry.path()) {
                tracing::warn!("cannot remove a leftover build directory: {error}");
            }
        }
    }
}
