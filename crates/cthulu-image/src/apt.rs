//! Debian packages through the host's apt: which version is the candidate, fetching the
//! `.deb` into a cache directory, unpacking it with `dpkg-deb -x`. Nothing is installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::ImageError;
use crate::tool;

/// The metapackage whose dependency is the current cloud kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// Busybox linked statically, so it runs in an initramfs without libc.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// A package at a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
}

impl Package {
    /// The file name `apt-get download` gives the package (`:` of an epoch as `%3a`).
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_amd64.deb",
            self.name,
            self.version.replace(':', "%3a")
        )
    }
}

/// The kernel package the metapackage's candidate depends on
/// (`linux-image-6.1.0-56-cloud-amd64`) and busybox-static, both at their candidate
/// versions. One `apt-cache show` for both: each apt-cache run parses every package list
/// (over a second here), and the metapackage pins its kernel with `(= version)`.
pub fn resolve_packages() -> Result<(Package, Package), ImageError> {
    let output = tool::run(
        Command::new("apt-cache").args([
            "show",
            "--no-all-versions",
            KERNEL_METAPACKAGE,
            BUSYBOX_PACKAGE,
        ]),
        "apt-cache",
    )
    .map_err(|error| unknown_package(error, KERNEL_METAPACKAGE))?;
    let paragraph = |name: &str| {
        output
            .split("\n\n")
            .find(|paragraph| field(paragraph, "Package").as_deref() == Some(name))
            .ok_or_else(|| ImageError::PackageUnknown {
                package: name.to_owned(),
            })
    };
    let busybox = Package {
        name: BUSYBOX_PACKAGE.to_owned(),
        version: field(paragraph(BUSYBOX_PACKAGE)?, "Version").ok_or_else(|| {
            ImageError::PackageUnknown {
                package: BUSYBOX_PACKAGE.to_owned(),
            }
        })?,
    };
    let depends = field(paragraph(KERNEL_METAPACKAGE)?, "Depends").unwrap_or_default();
    let kernel = match kernel_dependency(&depends) {
        Some((name, Some(version))) => Package { name, version },
        Some((name, None)) => candidate(&name)?,
        None => {
            return Err(ImageError::PackageContent {
                package: KERNEL_METAPACKAGE.to_owned(),
                what: "a linux-image dependency".to_owned(),
            })
        }
    };
    Ok((kernel, busybox))
}

/// The `linux-image-…` package of a `Depends:` value and its version when pinned with `=`.
fn kernel_dependency(depends: &str) -> Option<(String, Option<String>)> {
    depends.split([',', '|']).find_map(|item| {
        let item = item.trim();
        let (name, constraint) = match item.split_once('(') {
            Some((name, constraint)) => (name.trim(), Some(constraint.trim_end_matches(')'))),
            None => (item, None),
        };
        if !name.starts_with("linux-image-") {
            return None;
        }
        let version = constraint
            .and_then(|constraint| constraint.trim().strip_prefix('='))
            .filter(|rest| !rest.starts_with('='))
            .map(|version| version.trim().to_owned());
        Some((name.to_owned(), version))
    })
}

/// The candidate version of `name`.
pub fn candidate(name: &str) -> Result<Package, ImageError> {
    let output = tool::run(
        Command::new("apt-cache").args(["show", "--no-all-versions", name]),
        "apt-cache",
    )
    .map_err(|error| unknown_package(error, name))?;
    let version = field(&output, "Version").ok_or_else(|| ImageError::PackageUnknown {
        package: name.to_owned(),
    })?;
    Ok(Package {
        name: name.to_owned(),
        version,
    })
}

fn unknown_package(error: ImageError, name: &str) -> ImageError {
    match error {
        ImageError::CommandFailed { stderr, .. }
            if stderr.contains("No packages found") || stderr.contains("Unable to locate") =>
        {
            ImageError::PackageUnknown {
                package: name.to_owned(),
            }
        }
        other => other,
    }
}

/// The value of the first `Key: value` line.
fn field(output: &str, key: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == key).then(|| value.trim().to_owned())
    })
}

/// The package's `.deb` in `cache_dir`, downloaded unless already there. Returns the path
/// and whether it was downloaded now.
pub fn download(package: &Package, cache_dir: &Path) -> Result<(PathBuf, bool), ImageError> {
    let target = cache_dir.join(package.deb_file_name());
    if target.is_file() {
        return Ok((target, false));
    }
    fs_err::create_dir_all(cache_dir)
        .map_err(|source| ImageError::io("cannot create the download cache", source))?;
    // A private directory per download, so concurrent builds and a crash mid-download
    // never leave a partial .deb under the final name.
    let staging = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache_dir)
        .map_err(|source| {
            ImageError::io(
                format!("cannot create a directory in {}", cache_dir.display()),
                source,
            )
        })?;
    let spec = format!("{}={}", package.name, package.version);
    tool::run(
        Command::new("apt-get")
            // Root downloading into a directory apt's sandbox user cannot write to.
            .args(["-q", "-o", "APT::Sandbox::User=root", "download", &spec])
            .current_dir(staging.path()),
        "apt-get",
    )
    .map_err(|error| match error {
        ImageError::CommandFailed { stderr, .. } => ImageError::CommandFailed {
            command: format!("apt-get download {}", package.name),
            stderr,
        },
        other => other,
    })?;
    let downloaded = fs_err::read_dir(staging.path())
        .map_err(|source| ImageError::io("cannot find the downloaded package", source))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|extension| extension == "deb"))
        .ok_or_else(|| ImageError::CommandFailed {
            command: format!("apt-get download {}", package.name),
            stderr: "it wrote no .deb file".to_owned(),
        })?;
    fs_err::rename(&downloaded, &target)
        .map_err(|source| ImageError::io("cannot store the downloaded package", source))?;
    Ok((target, true))
}

/// Unpacks the files of a `.deb` into `directory`.
pub fn extract(deb: &Path, directory: &Path) -> Result<(), ImageError> {
    tool::run(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(directory),
        "dpkg-deb",
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_cache_output() {
        assert_eq!(
            kernel_dependency("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"),
            Some((
                "linux-image-6.1.0-56-cloud-amd64".into(),
                Some("6.1.192-2".into())
            ))
        );
        assert_eq!(
            kernel_dependency("initramfs-tools, linux-image-6.1.0-9-cloud-amd64 (>= 6.1)"),
            Some(("linux-image-6.1.0-9-cloud-amd64".into(), None))
        );
        assert_eq!(kernel_dependency("something-else"), None);
        let show = "Package: busybox-static\nSource: busybox (1:1.35.0-4+deb12u1)\nVersion: 1:1.35.0-4+deb12u1+b1\n";
        assert_eq!(
            field(show, "Version").as_deref(),
            Some("1:1.35.0-4+deb12u1+b1")
        );
    }

    #[test]
    fn deb_file_names_escape_the_epoch() {
        let package = Package {
            name: "busybox-static".into(),
            version: "1:1.35.0-4+deb12u1+b1".into(),
        };
        assert_eq!(
            package.deb_file_name(),
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
        );
    }
}
