//! Checking one image or backup: every chunk it references is present and hashes to
//! its id (what a restore needs before it trusts the data).

use crate::codec::Codec;
use crate::error::{ImageError, Result};
use crate::manifest::ManifestName;
use crate::store::ImageStore;

impl ImageStore {
    /// Reads and re-hashes every chunk of `name`. A damaged chunk is
    /// [`ImageError::Corrupt`], an absent one [`ImageError::MissingChunks`].
    pub fn verify_manifest(&self, name: &ManifestName) -> Result<()> {
        name.validate()?;
        let _lock = self.lock_shared()?;
        let m = self.get(name)?;
        let missing = self.missing_chunks(&m)?;
        if !missing.is_empty() {
            return Err(ImageError::MissingChunks {
                name: name.clone(),
                chunks: missing,
            });
        }
        let mut codec = Codec::new(0);
        for id in m.chunk_ids() {
            let raw = self.read_chunk_compressed(&id)?;
            codec
                .decode(&raw, &id)
                .map_err(|reason| ImageError::Corrupt {
                    chunk: id,
                    affected: vec![name.clone()],
                    reason,
                })?;
        }
        Ok(())
    }
}
