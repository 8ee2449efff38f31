//! Cutting a byte stream into zero runs and content-defined chunks.
//!
//! The stream is looked at in 4 KiB blocks aligned to offset 0. A run of all-zero
//! blocks of at least [`ZERO_RUN_MIN`] bytes becomes a zero extent (stored as nothing);
//! the data between zero runs is cut with FastCDC (2020) into chunks. Because the
//! decision depends only on the bytes, a file read with its holes skipped
//! (SEEK_HOLE) and the same bytes read as a plain stream produce the same extents
//! and chunk ids, so they deduplicate against each other.

use serde::{Deserialize, Serialize};

use fastcdc::v2020;

use crate::error::{ImageError, Result};

/// Block size of zero detection.
pub const BLOCK: usize = 4096;
/// Shortest run of zero blocks that becomes a zero extent; shorter runs stay inside
/// chunks (so small gaps in file system metadata do not fragment chunks).
pub const ZERO_RUN_MIN: u64 = 64 * 1024;
/// The longest chunk FastCDC can be configured for (16 MiB).
pub const MAX_CHUNK_LEN: u32 = v2020::MAXIMUM_MAX;

/// FastCDC chunk sizes in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerConfig {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkerConfig {
    /// 1 MiB average, 256 KiB minimum, 4 MiB maximum: suits multi-GiB disk images.
    fn default() -> Self {
        ChunkerConfig::with_avg(1024 * 1024)
    }
}

impl ChunkerConfig {
    /// `avg` with `min = avg / 4` and `max = avg * 4`.
    pub fn with_avg(avg: u32) -> Self {
        ChunkerConfig {
            min: avg / 4,
            avg,
            max: avg.saturating_mul(4),
        }
    }

    /// Checks the sizes against FastCDC's limits.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(ImageError::invalid("chunker configuration", reason));
        if !(v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&self.min) {
            return bad(format!(
                "min {} is outside {}..={}",
                self.min,
                v2020::MINIMUM_MIN,
                v2020::MINIMUM_MAX
            ));
        }
        if !(v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&self.avg) {
            return bad(format!(
                "avg {} is outside {}..={}",
                self.avg,
                v2020::AVERAGE_MIN,
                v2020::AVERAGE_MAX
            ));
        }
        if !(v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&self.max) {
            return bad(format!(
                "max {} is outside {}..={}",
                self.max,
                v2020::MAXIMUM_MIN,
                v2020::MAXIMUM_MAX
            ));
        }
        if !(self.min <= self.avg && self.avg <= self.max) {
            return bad(format!(
                "need min <= avg <= max, got {} / {} / {}",
                self.min, self.avg, self.max
            ));
        }
        Ok(())
    }
}

/// True if every byte is zero.
pub fn is_zero(data: &[u8]) -> bool {
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    data.chunks(BLOCK).all(|c| c == &ZEROS[..c.len()])
}

/// What the segmenter hands out, in stream order.
pub(crate) enum Piece {
    /// This many zero bytes.
    Zero(u64),
    /// One chunk's bytes.
    Data(Vec<u8>),
}

/// Turns a stream of data and known-zero ranges into [`Piece`]s.
///
/// Callers feed data in block-aligned pieces (only the final piece of the stream may
/// end with a partial block) and holes as [`Segmenter::push_zeros`].
pub(crate) struct Segmenter {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    /// Data of the current data segment; `pending[start..]` is not cut yet.
    pending: Vec<u8>,
    start: usize,
    /// Length of the zero run being accumulated (not yet decided).
    zero_run: u64,
}

impl Segmenter {
    /// A segmenter for a validated configuration.
    pub(crate) fn new(cfg: ChunkerConfig) -> Result<Self> {
        cfg.validate()?;
        // The same masks as `v2020::FastCDC::new` (normalization level 1).
        let bits = v2020::logarithm2(cfg.avg);
        let norm = v2020::Normalization::Level1.bits();
        Ok(Segmenter {
            min: cfg.min as usize,
            avg: cfg.avg as usize,
            max: cfg.max as usize,
            mask_s: v2020::MASKS[(bits + norm) as usize],
            mask_l: v2020::MASKS[(bits - norm) as usize],
            pending: Vec::with_capacity(cfg.max as usize * 4),
            start: 0,
            zero_run: 0,
        })
    }

    /// Adds data (block-aligned, see the type's doc).
    pub(crate) fn push_data(
        &mut self,
        buf: &[u8],
        emit: &mut dyn FnMut(Piece) -> Result<()>,
    ) -> Result<()> {
        let mut run_start: Option<usize> = None;
        let mut pos = 0;
        while pos < buf.len() {
            let end = (pos + BLOCK).min(buf.len());
            if is_zero(&buf[pos..end]) {
                if let Some(s) = run_start.take() {
                    self.pending.extend_from_slice(&buf[s..pos]);
                }
                self.zero_run += (end - pos) as u64;
            } else if run_start.is_none() {
                self.end_zero_run(emit)?;
                run_start = Some(pos);
            }
            pos = end;
        }
        if let Some(s) = run_start {
            self.pending.extend_from_slice(&buf[s..]);
        }
        self.cut(false, emit)
    }

    /// Adds `len` bytes known to be zero (a hole of the source file).
    pub(crate) fn push_zeros(&mut self, len: u64) {
        self.zero_run += len;
    }

    /// Flushes everything at the end of the stream.
    pub(crate) fn finish(&mut self, emit: &mut dyn FnMut(Piece) -> Result<()>) -> Result<()> {
        self.end_zero_run(emit)?;
        self.cut(true, emit)
    }

    fn end_zero_run(&mut self, emit: &mut dyn FnMut(Piece) -> Result<()>) -> Result<()> {
        let run = std::mem::take(&mut self.zero_run);
        if run == 0 {
            return Ok(());
        }
        if run >= ZERO_RUN_MIN {
            self.cut(true, emit)?;
            emit(Piece::Zero(run))
        } else {
            // Shorter than ZERO_RUN_MIN, so it fits in memory.
            self.pending.resize(self.pending.len() + run as usize, 0);
            self.cut(false, emit)
        }
    }

    /// Cuts chunks off `pending`. Without `flush` a chunk is only cut when at least
    /// `max` bytes are available, so the cut point does not depend on how the data
    /// was fed.
    fn cut(&mut self, flush: bool, emit: &mut dyn FnMut(Piece) -> Result<()>) -> Result<()> {
        loop {
            let avail = self.pending.len() - self.start;
            if avail == 0 || (!flush && avail < self.max) {
                break;
            }
            let (_, len) = v2020::cut(
                &self.pending[self.start..],
                self.min,
                self.avg,
                self.max,
                self.mask_s,
                self.mask_l,
                self.mask_s << 1,
                self.mask_l << 1,
            );
            let len = len.max(1).min(avail);
            let chunk = self.pending[self.start..self.start + len].to_vec();
            self.start += len;
            emit(Piece::Data(chunk))?;
        }
        if self.start == self.pending.len() {
            self.pending.clear();
            self.start = 0;
        } else if self.start >= self.max * 2 {
            self.pending.drain(..self.start);
            self.start = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Emit<'a> = &'a mut dyn FnMut(Piece) -> Result<()>;
    /// (is data, length, hash of the data) of each piece.
    type Pieces = Vec<(bool, u64, Option<blake3::Hash>)>;

    fn pieces(cfg: ChunkerConfig, feed: &dyn Fn(&mut Segmenter, Emit<'_>)) -> Pieces {
        let mut seg = Segmenter::new(cfg).unwrap();
        let mut out = Vec::new();
        let mut emit = |p: Piece| {
            match p {
                Piece::Zero(n) => out.push((false, n, None)),
                Piece::Data(d) => out.push((true, d.len() as u64, Some(blake3::hash(&d)))),
            }
            Ok(())
        };
        feed(&mut seg, &mut emit);
        seg.finish(&mut emit).unwrap();
        out
    }

    fn sample() -> Vec<u8> {
        let mut data = vec![0u8; 3 << 20];
        let mut x = 0x1234_5678_u64;
        for (i, b) in data.iter_mut().enumerate() {
            // Data, a 256 KiB zero run, data, an 8 KiB zero gap, data, zero tail.
            if (1 << 20..(1 << 20) + (256 << 10)).contains(&i)
                || (2 << 20..(2 << 20) + 8192).contains(&i)
                || i >= (3 << 20) - (128 << 10)
            {
                continue;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        data
    }

    #[test]
    fn feeding_pattern_does_not_change_the_cut() {
        let cfg = ChunkerConfig::with_avg(64 * 1024);
        let data = sample();
        let whole = pieces(cfg, &|s, e| s.push_data(&data, e).unwrap());
        let blocks = pieces(cfg, &|s, e| {
            for b in data.chunks(BLOCK * 3) {
                s.push_data(b, e).unwrap();
            }
        });
        // The zero run as a hole instead of zero bytes.
        let holes = pieces(cfg, &|s, e| {
            s.push_data(&data[..1 << 20], e).unwrap();
            s.push_zeros(256 << 10);
            s.push_data(&data[(1 << 20) + (256 << 10)..], e).unwrap();
        });
        assert_eq!(whole, blocks);
        assert_eq!(whole, holes);
        let total: u64 = whole.iter().map(|p| p.1).sum();
        assert_eq!(total, data.len() as u64);
        // The 256 KiB run and the 128 KiB tail are zero extents; the 8 KiB gap is not.
        let zeros: Vec<u64> = whole.iter().filter(|p| !p.0).map(|p| p.1).collect();
        assert_eq!(zeros, vec![256 << 10, 128 << 10]);
        assert!(whole.iter().all(|p| p.1 <= u64::from(cfg.max)));
    }

    #[test]
    fn bad_configs_are_errors_not_panics() {
        for cfg in [
            ChunkerConfig {
                min: 1,
                avg: 1024,
                max: 4096,
            },
            ChunkerConfig {
                min: 4096,
                avg: 1024,
                max: 8192,
            },
            ChunkerConfig {
                min: 1024,
                avg: 1 << 30,
                max: 1 << 30,
            },
            ChunkerConfig::with_avg(u32::MAX),
        ] {
            assert!(Segmenter::new(cfg).is_err(), "{cfg:?}");
        }
    }
}
