//! Images: bootable guests kept by the server and fetched by nodes on demand.

use serde::{Deserialize, Serialize};

/// What an image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// A kernel (`vmlinuz`) and an initramfs (`initrd.img`) booted directly.
    Kernel,
    /// A whole disk (`disk`), raw or qcow2, booted by the firmware.
    Disk,
    /// A tar archive a process instance's data directory is unpacked from (a restored
    /// backup of a process).
    Archive,
}

/// One file of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageFile {
    pub name: String,
    pub size: u64,
    /// SHA-256 of the content, hex; nodes verify downloads against it.
    pub sha256: String,
}

/// An image as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Image {
    pub name: String,
    pub kind: ImageKind,
    /// Disk images: `raw` or `qcow2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Disk images: the size the guest sees, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_size: Option<u64>,
    /// Kernel images: the kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Kernel images: their files. Disk images keep their content in the chunk store
    /// (deduplicated, compressed); nodes copy the chunks they lack.
    pub files: Vec<ImageFile>,
    /// Where the image came from when it was not imported (e.g. `backup vm1@nightly`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub created_at_ms: u64,
    #[serde(default)]
    pub revision: u64,
}

impl Image {
    /// Size in bytes: the files of a kernel image, the virtual size of a disk.
    pub fn size(&self) -> u64 {
        match self.kind {
            ImageKind::Kernel => self.files.iter().map(|f| f.size).sum(),
            ImageKind::Disk | ImageKind::Archive => self.virtual_size.unwrap_or(0),
        }
    }
}

impl ImageKind {
    /// Whether the content lives in the chunk store (deduplicated; nodes copy the
    /// chunks they lack) rather than as plain files.
    pub fn in_chunk_store(self) -> bool {
        matches!(self, ImageKind::Disk | ImageKind::Archive)
    }
}

/// Body of `POST /v1/images/{name}/replicate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicateImage {
    /// The node that should hold a copy.
    pub node: String,
}

/// Body of `POST /v1/images`: registers files uploaded before with
/// `PUT /v1/images/{name}/files/{file}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterImage {
    pub name: String,
    pub kind: ImageKind,
    /// Kernel images: command line (default `console=ttyS0 panic=-1`).
    #[serde(default)]
    pub cmdline: Option<String>,
}

/// Files each kind of image consists of.
pub fn files_of(kind: ImageKind) -> &'static [&'static str] {
    match kind {
        ImageKind::Kernel => &["vmlinuz", "initrd.img"],
        ImageKind::Disk => &["disk"],
        ImageKind::Archive => &[],
    }
}

/// One page of `GET /v1/images`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageList {
    pub items: Vec<Image>,
}
