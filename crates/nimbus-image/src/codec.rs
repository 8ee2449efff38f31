//! The chunk file format: one header byte, then the payload.
//!
//! - `0x00`: the payload is the chunk's bytes as they are (compression did not help).
//! - `0x01`: the payload is one zstd frame (with its content size) of the chunk.
//!
//! The same bytes are what replication moves ([`crate::ImageStore::read_chunk_compressed`]).

use std::io::Cursor;

use crate::chunker::MAX_CHUNK_LEN;
use crate::id::ChunkId;

/// Header byte of a chunk stored as is.
pub const ENCODING_RAW: u8 = 0;
/// Header byte of a zstd-compressed chunk.
pub const ENCODING_ZSTD: u8 = 1;

/// Chunks at least this long are probed before being compressed.
const PROBE_MIN_LEN: usize = 64 * 1024;
/// The probe: this many samples of this many bytes, spread evenly over the chunk.
const PROBE_SAMPLES: usize = 8;
const PROBE_LEN: usize = 4096;
/// Store as is when the samples compress to more than this fraction.
const PROBE_MAX_RATIO: f64 = 0.97;

/// Per-thread compression and decompression contexts and buffers.
pub(crate) struct Codec {
    level: i32,
    cctx: Option<zstd::bulk::Compressor<'static>>,
    /// Level-1 context for probing compressibility.
    probe: Option<zstd::bulk::Compressor<'static>>,
    probe_out: Vec<u8>,
    dctx: Option<zstd::bulk::Decompressor<'static>>,
    /// Decompression output, reused.
    out: Vec<u8>,
}

impl Codec {
    pub(crate) fn new(level: i32) -> Codec {
        Codec {
            level,
            cctx: None,
            probe: None,
            probe_out: Vec::new(),
            dctx: None,
            out: Vec::new(),
        }
    }

    /// Encodes `data` into `out` (header + payload): compressed if that is smaller.
    pub(crate) fn encode(&mut self, data: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(data.len() + 1);
        if self.level != 0 && self.worth_compressing(data) {
            if self.cctx.is_none() {
                self.cctx = zstd::bulk::Compressor::new(self.level).ok();
            }
            if let Some(cctx) = self.cctx.as_mut() {
                out.push(ENCODING_ZSTD);
                let mut cursor = Cursor::new(&mut *out);
                cursor.set_position(1);
                // Fails when the output would not fit in `data.len()` bytes, i.e.
                // when compression does not help: then store as is.
                if let Ok(n) = cctx.compress_to_buffer(data, &mut cursor) {
                    if n < data.len() {
                        out.truncate(1 + n);
                        return;
                    }
                }
                out.clear();
            }
        }
        out.push(ENCODING_RAW);
        out.extend_from_slice(data);
    }

    /// Probes whether `data` is compressible: compresses a few small samples spread
    /// over it at level 1 (about 3% of the work of compressing it all). Already
    /// compressed or encrypted data (media, archives, random) fails the probe and is
    /// stored as is without spending a full zstd pass on it; if any part of the
    /// chunk looks compressible, the whole chunk is compressed.
    fn worth_compressing(&mut self, data: &[u8]) -> bool {
        if data.len() < PROBE_MIN_LEN {
            return true;
        }
        if self.probe.is_none() {
            self.probe = zstd::bulk::Compressor::new(1).ok();
        }
        let Some(probe) = self.probe.as_mut() else {
            return true;
        };
        let step = data.len() / PROBE_SAMPLES;
        for i in 0..PROBE_SAMPLES {
            let sample = &data[i * step..(i * step + PROBE_LEN).min(data.len())];
            self.probe_out.clear();
            self.probe_out
                .reserve(zstd::zstd_safe::compress_bound(sample.len()));
            match probe.compress_to_buffer(sample, &mut self.probe_out) {
                Ok(n) if (n as f64) < sample.len() as f64 * PROBE_MAX_RATIO => return true,
                Ok(_) => {}
                Err(_) => return true,
            }
        }
        false
    }

    /// Decodes a chunk file's bytes and checks them against `id`. Returns the
    /// chunk's content, or why it is corrupt.
    pub(crate) fn decode<'a>(
        &'a mut self,
        raw: &'a [u8],
        id: &ChunkId,
    ) -> Result<&'a [u8], String> {
        let content: &[u8] = match raw.split_first() {
            None => return Err("empty chunk file".into()),
            Some((&ENCODING_RAW, payload)) => payload,
            Some((&ENCODING_ZSTD, payload)) => {
                if self.dctx.is_none() {
                    self.dctx = Some(
                        zstd::bulk::Decompressor::new()
                            .map_err(|e| format!("zstd context: {e}"))?,
                    );
                }
                let dctx = self.dctx.as_mut().expect("created above");
                self.out.clear();
                self.out.reserve(MAX_CHUNK_LEN as usize);
                dctx.decompress_to_buffer(payload, &mut self.out)
                    .map_err(|e| format!("zstd: {e}"))?;
                &self.out
            }
            Some((other, _)) => return Err(format!("unknown chunk encoding {other:#04x}")),
        };
        if content.len() > MAX_CHUNK_LEN as usize {
            return Err(format!("{} bytes is longer than any chunk", content.len()));
        }
        let actual = ChunkId::of(content);
        if actual != *id {
            return Err(format!("content hashes to {actual}"));
        }
        Ok(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_and_incompressible() {
        let mut codec = Codec::new(3);
        let text = b"nimbus ".repeat(10_000);
        let mut out = Vec::new();
        codec.encode(&text, &mut out);
        assert_eq!(out[0], ENCODING_ZSTD);
        assert!(out.len() < text.len() / 10);
        let id = ChunkId::of(&text);
        let enc = out.clone();
        assert_eq!(codec.decode(&enc, &id).unwrap(), &text[..]);

        let mut x = 7u64;
        let random: Vec<u8> = (0..100_000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect();
        codec.encode(&random, &mut out);
        assert_eq!(out[0], ENCODING_RAW);
        assert_eq!(out.len(), random.len() + 1);
        let enc = out.clone();
        assert_eq!(
            codec.decode(&enc, &ChunkId::of(&random)).unwrap(),
            &random[..]
        );
    }

    #[test]
    fn mixed_chunks_are_compressed() {
        let mut x = 11u64;
        let mut data: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect();
        let mut codec = Codec::new(3);
        let mut out = Vec::new();
        codec.encode(&data, &mut out);
        assert_eq!(out[0], ENCODING_RAW, "random data is not worth compressing");
        // A quarter of text makes it worth it.
        let text = b"GNU General Public License, version 2. ".repeat(7000);
        data[300_000..300_000 + 262_144].copy_from_slice(&text[..262_144]);
        codec.encode(&data, &mut out);
        assert_eq!(out[0], ENCODING_ZSTD);
        assert!(out.len() < data.len() * 8 / 10);
    }

    #[test]
    fn corruption_is_reported() {
        let mut codec = Codec::new(3);
        let text = b"hello world ".repeat(1000);
        let id = ChunkId::of(&text);
        let mut out = Vec::new();
        codec.encode(&text, &mut out);
        let mut bad = out.clone();
        let last = bad.len() - 3;
        bad[last] ^= 1;
        assert!(codec.decode(&bad, &id).is_err());
        assert!(codec.decode(&[], &id).is_err());
        assert!(codec
            .decode(&[9, 1, 2], &id)
            .unwrap_err()
            .contains("encoding"));
        // The right bytes under the wrong id.
        assert!(codec
            .decode(&out, &ChunkId::of(b"x"))
            .unwrap_err()
            .contains("hashes to"));
    }
}
