//! Manifests: what an image or backup is made of, and their checksummed file format.
//!
//! A manifest file is a small JSON envelope around the manifest body:
//!
//! ```text
//! {"nimbus_image_manifest": 1, "blake3": "<hex of the body bytes>", "manifest": {..body..}}
//! ```
//!
//! The checksum covers the exact bytes of the body as written (not a re-serialization),
//! so floats and key order in free-form `meta` cannot cause false alarms, while any
//! changed, lost or added byte in the body is detected on load.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::chunker::{ChunkerConfig, MAX_CHUNK_LEN};
use crate::error::{ImageError, Result};
use crate::id::ChunkId;

/// The version written in the envelope; readers refuse other versions.
pub const MANIFEST_VERSION: u32 = 1;

/// Images are templates to boot from; backups are point-in-time copies of an
/// instance's disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Image,
    Backup,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Image => "image",
            Kind::Backup => "backup",
        })
    }
}

/// The name of a manifest: an image name, or an instance and a backup name.
///
/// Names are 1 to 128 characters of `[A-Za-z0-9._-]`, not starting with `.` or `-`
/// (they become file names).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ManifestName {
    Image { name: String },
    Backup { instance: String, name: String },
}

impl ManifestName {
    /// The image called `name`.
    pub fn image(name: impl Into<String>) -> Self {
        ManifestName::Image { name: name.into() }
    }

    /// The backup `name` of instance `instance`.
    pub fn backup(instance: impl Into<String>, name: impl Into<String>) -> Self {
        ManifestName::Backup {
            instance: instance.into(),
            name: name.into(),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            ManifestName::Image { .. } => Kind::Image,
            ManifestName::Backup { .. } => Kind::Backup,
        }
    }

    /// The image or backup name (without the instance).
    pub fn name(&self) -> &str {
        match self {
            ManifestName::Image { name } | ManifestName::Backup { name, .. } => name,
        }
    }

    /// The instance of a backup.
    pub fn instance(&self) -> Option<&str> {
        match self {
            ManifestName::Image { .. } => None,
            ManifestName::Backup { instance, .. } => Some(instance),
        }
    }

    /// Checks that every part is a valid name.
    pub fn validate(&self) -> Result<()> {
        if let Some(instance) = self.instance() {
            check_name("instance name", instance)?;
        }
        check_name(&format!("{} name", self.kind()), self.name())
    }
}

impl fmt::Display for ManifestName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestName::Image { name } => write!(f, "image {name}"),
            ManifestName::Backup { instance, name } => write!(f, "backup {instance}/{name}"),
        }
    }
}

/// Checks one name component (see [`ManifestName`]).
pub(crate) fn check_name(what: &str, s: &str) -> Result<()> {
    let reason = if s.is_empty() {
        Some("must not be empty".to_string())
    } else if s.len() > 128 {
        Some("must be at most 128 characters".to_string())
    } else if s.starts_with('.') || s.starts_with('-') {
        Some("must not start with '.' or '-'".to_string())
    } else {
        s.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| format!("character {c:?} is not allowed (use A-Z a-z 0-9 . _ -)"))
    };
    match reason {
        Some(reason) => Err(ImageError::invalid(what, format!("{s:?}: {reason}"))),
        None => Ok(()),
    }
}

/// Where the bytes came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatInfo {
    /// `"raw"`, `"qcow2"` (imported files) or `"stream"` (import_reader).
    pub source_format: String,
    /// The guest-visible disk size (equals the manifest's `size`).
    pub virtual_size: u64,
    /// Size of the source file on disk (allocated bytes), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_allocated: Option<u64>,
}

/// A byte range of the image: either a chunk's content or all zeros (`chunk: None`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub chunk: Option<ChunkId>,
}

/// An image or backup: its name, size, origin and ordered extents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub kind: Kind,
    pub name: String,
    /// The instance a backup belongs to (`None` for images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Creation time, unix milliseconds.
    pub created_at_ms: u64,
    /// Logical size in bytes.
    pub size: u64,
    pub format: FormatInfo,
    /// Free-form data stored with the manifest (for backups: the instance spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
    /// The chunker that cut it (informational: any chunking restores the same bytes).
    pub chunker: ChunkerConfig,
    /// Contiguous extents covering `[0, size)` in order.
    pub extents: Vec<Extent>,
}

impl Manifest {
    /// The manifest's name.
    pub fn id(&self) -> ManifestName {
        match (&self.kind, &self.instance) {
            (Kind::Backup, Some(instance)) => ManifestName::backup(instance, &self.name),
            _ => ManifestName::image(&self.name),
        }
    }

    /// The distinct chunks it references.
    pub fn chunk_ids(&self) -> BTreeSet<ChunkId> {
        self.extents.iter().filter_map(|e| e.chunk).collect()
    }

    /// Bytes held in chunks (the size minus zero extents).
    pub fn data_bytes(&self) -> u64 {
        self.extents
            .iter()
            .filter(|e| e.chunk.is_some())
            .map(|e| e.len)
            .sum()
    }

    /// Checks the internal consistency: names, kind, and extents covering
    /// `[0, size)` contiguously with chunk extents no longer than a chunk can be.
    pub fn validate(&self) -> std::result::Result<(), String> {
        match (self.kind, &self.instance) {
            (Kind::Image, Some(_)) => return Err("an image must not name an instance".into()),
            (Kind::Backup, None) => return Err("a backup must name its instance".into()),
            _ => {}
        }
        self.id().validate().map_err(|e| e.to_string())?;
        let mut pos = 0u64;
        for (i, e) in self.extents.iter().enumerate() {
            if e.offset != pos {
                return Err(format!(
                    "extent {i} starts at {} but the previous one ends at {pos}",
                    e.offset
                ));
            }
            if e.len == 0 {
                return Err(format!("extent {i} is empty"));
            }
            if e.chunk.is_some() && e.len > u64::from(MAX_CHUNK_LEN) {
                return Err(format!("extent {i} is longer than any chunk ({})", e.len));
            }
            pos = pos
                .checked_add(e.len)
                .ok_or_else(|| format!("extent {i} overflows"))?;
        }
        if pos != self.size {
            return Err(format!(
                "extents cover {pos} bytes but the size is {}",
                self.size
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    nimbus_image_manifest: u32,
    blake3: String,
    #[serde(borrow)]
    manifest: &'a RawValue,
}

/// Serializes a manifest into its checksummed file format.
pub(crate) fn encode(m: &Manifest) -> Result<Vec<u8>> {
    let body = serde_json::to_string_pretty(m)
        .map_err(|e| ImageError::invalid("manifest", format!("cannot serialize: {e}")))?;
    let sum = blake3::hash(body.as_bytes()).to_hex();
    Ok(format!(
        "{{\"nimbus_image_manifest\": {MANIFEST_VERSION}, \"blake3\": \"{sum}\", \"manifest\": {body}}}\n"
    )
    .into_bytes())
}

/// Parses and checks a manifest file's bytes; `path` is only used in errors.
pub(crate) fn decode(bytes: &[u8], path: &Path) -> Result<Manifest> {
    let bad = |reason: String| ImageError::ManifestCorrupt {
        path: path.to_path_buf(),
        reason,
    };
    let env: Envelope<'_> =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a manifest file: {e}")))?;
    if env.nimbus_image_manifest != MANIFEST_VERSION {
        return Err(bad(format!(
            "manifest version {} is not supported (this build reads {MANIFEST_VERSION})",
            env.nimbus_image_manifest
        )));
    }
    let body = env.manifest.get();
    let actual = blake3::hash(body.as_bytes()).to_hex();
    if actual.as_str() != env.blake3 {
        return Err(bad(format!(
            "checksum mismatch: recorded {}, content hashes to {actual}",
            env.blake3
        )));
    }
    let m: Manifest =
        serde_json::from_str(body).map_err(|e| bad(format!("invalid manifest body: {e}")))?;
    m.validate().map_err(bad)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            kind: Kind::Backup,
            name: "b1".into(),
            instance: Some("web".into()),
            created_at_ms: 1,
            size: 10,
            format: FormatInfo {
                source_format: "raw".into(),
                virtual_size: 10,
                source_allocated: None,
            },
            meta: Some(serde_json::json!({"cpu": 0.1, "memory": "64Mi"})),
            chunker: ChunkerConfig::default(),
            extents: vec![
                Extent {
                    offset: 0,
                    len: 4,
                    chunk: Some(ChunkId::of(b"abcd")),
                },
                Extent {
                    offset: 4,
                    len: 6,
                    chunk: None,
                },
            ],
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let m = sample();
        let bytes = encode(&m).unwrap();
        assert_eq!(decode(&bytes, Path::new("x")).unwrap(), m);
    }

    #[test]
    fn any_changed_body_byte_is_detected() {
        let bytes = encode(&sample()).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let tampered = text.replace("\"size\": 10", "\"size\": 11");
        assert_ne!(text, tampered);
        let err = decode(tampered.as_bytes(), Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        let truncated = &text.as_bytes()[..text.len() / 2];
        assert!(matches!(
            decode(truncated, Path::new("x")),
            Err(ImageError::ManifestCorrupt { .. })
        ));
    }

    #[test]
    fn validate_rejects_gaps_and_bad_sizes() {
        let mut m = sample();
        m.extents[1].offset = 5;
        assert!(m.validate().unwrap_err().contains("starts at 5"));
        let mut m = sample();
        m.size = 11;
        assert!(m.validate().unwrap_err().contains("size is 11"));
        let mut m = sample();
        m.instance = None;
        assert!(m.validate().is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(ManifestName::image("debian-12.raw_x").validate().is_ok());
        for bad in ["", ".hidden", "-x", "a/b", "a b", "..", &"x".repeat(129)] {
            assert!(ManifestName::image(bad).validate().is_err(), "{bad:?}");
        }
        assert!(ManifestName::backup("../etc", "x").validate().is_err());
    }
}
