//! The layers of an image tarball, in order: an OCI image layout (`index.json` →
//! manifest → `layers`, the linux/amd64 manifest of an index) or a `docker save` archive
//! (`manifest.json` with `Layers`). Layers may be plain or gzipped tar; each is applied by
//! [`super::layer::apply`]. The outer tarball is read in place: one pass indexes its
//! members, then each layer is read from its offset.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read, Seek as _, SeekFrom};
use std::path::Path;

use serde::Deserialize;

use super::layer::{self, LayerName};
use crate::error::ImageError;

/// How deep an OCI index may nest before the archive is refused.
const MAX_INDEX_DEPTH: usize = 4;
/// The largest JSON document read from the archive.
const MAX_JSON_BYTES: u64 = 16 << 20;

/// A regular file of the outer tarball, or a link to another member.
#[derive(Debug, Clone)]
enum Member {
    File { offset: u64, size: u64 },
    Link(String),
}

/// The outer tarball with its members indexed.
struct Archive<'a> {
    path: &'a Path,
    members: BTreeMap<String, Member>,
}

fn normalize(name: &str) -> String {
    name.split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl<'a> Archive<'a> {
    fn index(path: &'a Path) -> Result<Archive<'a>, ImageError> {
        let read_error = |source| ImageError::io(format!("cannot read {}", path.display()), source);
        let file = fs_err::File::open(path).map_err(read_error)?;
        let mut archive = tar::Archive::new(BufReader::new(file));
        let mut members = BTreeMap::new();
        for entry in archive.entries().map_err(read_error)? {
            let entry = entry.map_err(read_error)?;
            let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
            let member = match entry.header().entry_type() {
                kind if kind.is_file() => Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                kind if kind.is_symlink() || kind.is_hard_link() => {
                    let target = entry
                        .link_name_bytes()
                        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                        .unwrap_or_default();
                    // `docker save` links duplicate layers relative to the link's directory.
                    let joined = match (kind.is_symlink(), name.rsplit_once('/')) {
                        (true, Some((directory, _))) => format!("{directory}/{target}"),
                        _ => target,
                    };
                    Member::Link(resolve_dots(&joined))
                }
                _ => continue,
            };
            members.insert(name, member);
        }
        Ok(Archive { path, members })
    }

    fn problem(&self, problem: impl Into<String>) -> ImageError {
        ImageError::OciFormat {
            path: self.path.to_path_buf(),
            problem: problem.into(),
        }
    }

    /// Offset and size of member `name`, following links (a few hops).
    fn locate(&self, name: &str) -> Option<(u64, u64)> {
        let mut name = normalize(name);
        for _ in 0..8 {
            match self.members.get(&name)? {
                Member::File { offset, size } => return Some((*offset, *size)),
                Member::Link(target) => name = target.clone(),
            }
        }
        None
    }

    fn open(&self, name: &str) -> Result<impl std::io::BufRead, ImageError> {
        let (offset, size) = self
            .locate(name)
            .ok_or_else(|| self.problem(format!("it has no {name}")))?;
        let mut file = fs_err::File::open(self.path)
            .map_err(|source| ImageError::io("cannot read the image archive", source))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|source| ImageError::io("cannot read the image archive", source))?;
        Ok(BufReader::new(file.take(size)))
    }

    fn json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T, ImageError> {
        let (_, size) = self
            .locate(name)
            .ok_or_else(|| self.problem(format!("it has no {name}")))?;
        if size > MAX_JSON_BYTES {
            return Err(self.problem(format!("{name} is {size} bytes")));
        }
        let mut text = Vec::new();
        self.open(name)?
            .read_to_end(&mut text)
            .map_err(|source| ImageError::io("cannot read the image archive", source))?;
        serde_json::from_slice(&text).map_err(|error| self.problem(format!("{name}: {error}")))
    }

    fn has(&self, name: &str) -> bool {
        self.locate(name).is_some()
    }
}

/// `a/b/../c` → `a/c` (never above the top).
fn resolve_dots(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct OciDocument {
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// `blobs/sha256/<hex>` for `sha256:<hex>`.
fn blob_path(archive: &Archive<'_>, digest: &str) -> Result<String, ImageError> {
    let (algorithm, hash) = digest
        .split_once(':')
        .filter(|(algorithm, hash)| {
            !algorithm.is_empty()
                && algorithm.chars().all(|c| c.is_ascii_alphanumeric())
                && !hash.is_empty()
                && hash.chars().all(|c| c.is_ascii_hexdigit())
        })
        .ok_or_else(|| archive.problem(format!("invalid digest {digest:?}")))?;
    Ok(format!("blobs/{algorithm}/{hash}"))
}

/// The member names of the layers, bottom first.
fn layer_members(archive: &Archive<'_>) -> Result<Vec<String>, ImageError> {
    if archive.has("index.json") {
        let mut document: OciDocument = archive.json("index.json")?;
        for _ in 0..MAX_INDEX_DEPTH {
            if let Some(layers) = document.layers {
                return layers
                    .iter()
                    .map(|layer| blob_path(archive, &layer.digest))
                    .collect();
            }
            let chosen = document
                .manifests
                .iter()
                .find(|descriptor| {
                    descriptor.platform.as_ref().is_none_or(|platform| {
                        platform.os == "linux" && platform.architecture == "amd64"
                    })
                })
                .ok_or_else(|| archive.problem("no linux/amd64 manifest in its index"))?;
            document = archive.json(&blob_path(archive, &chosen.digest)?)?;
        }
        return Err(archive.problem("its image indexes nest too deep"));
    }
    if archive.has("manifest.json") {
        let manifests: Vec<DockerManifest> = archive.json("manifest.json")?;
        let manifest = manifests
            .into_iter()
            .next()
            .ok_or_else(|| archive.problem("manifest.json lists no image"))?;
        return Ok(manifest.layers);
    }
    Err(archive.problem("it has neither index.json nor manifest.json"))
}

/// Applies every layer of the image tarball `path`, bottom first, to `staging`. Reports
/// `(layer number, layer count)` before each.
pub fn unpack(
    path: &Path,
    staging: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), ImageError> {
    let archive = Archive::index(path)?;
    let layers = layer_members(&archive)?;
    let root = layer::open_root(staging)?;
    for (index, member) in layers.iter().enumerate() {
        progress(index + 1, layers.len());
        let mut reader = archive.open(member)?;
        let magic = reader
            .fill_buf()
            .map_err(|source| ImageError::io("cannot read the image archive", source))?;
        let name = LayerName {
            archive: path,
            layer: member,
        };
        if magic.starts_with(&[0x1f, 0x8b]) {
            layer::apply(flate2::read::GzDecoder::new(reader), &root, name)?;
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            return Err(archive.problem(format!(
                "layer {member} is zstd-compressed; only plain and gzipped layers are supported"
            )));
        } else {
            layer::apply(reader, &root, name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_resolve_inside_the_archive() {
        assert_eq!(resolve_dots("abc/../def/layer.tar"), "def/layer.tar");
        assert_eq!(resolve_dots("../../x"), "x");
        assert_eq!(normalize("./blobs//sha256/ab"), "blobs/sha256/ab");
    }
}
