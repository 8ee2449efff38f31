//! Helpers shared by the integration tests: deterministic data, sparse files, hashing.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nimbus_image::{ChunkerConfig, ImageStore, Progress, StoreOptions};

pub const MIB: u64 = 1 << 20;

/// A fast deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = words.into_remainder();
        let last = self.next().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

pub fn noop() -> impl FnMut(Progress) {
    |_| {}
}

pub fn store_at(root: &Path, avg: Option<u32>) -> ImageStore {
    let mut opts = StoreOptions::default();
    if let Some(avg) = avg {
        opts.chunker = ChunkerConfig::with_avg(avg);
    }
    ImageStore::open(root, opts).expect("open store")
}

/// A sparse file of `size` bytes with random data in `extents` (offset, len).
pub fn sparse_file(path: &Path, size: u64, extents: &[(u64, u64)], seed: u64) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut rng = Rng(seed);
    for &(off, len) in extents {
        let data = rng.bytes(len as usize);
        f.write_all_at(&data, off).unwrap();
    }
    f.sync_all().unwrap();
}

/// 64 MiB: random data with holes of about 1 MiB (three), 8 MiB and a 5 MiB zero
/// tail, and a 16 KiB gap inside data (too short for a zero extent).
pub fn mixed_file(path: &Path, seed: u64) -> u64 {
    let size = 64 * MIB;
    let extents = [
        (0, 5 * MIB),
        (6 * MIB, 10 * MIB),
        (24 * MIB + 4096, 15 * MIB),
        (40 * MIB, 6 * MIB + 123),
        (47 * MIB, 4 * MIB),
        (51 * MIB + 16384, 8 * MIB),
    ];
    sparse_file(path, size, &extents, seed);
    size
}

/// BLAKE3 of a file's content.
pub fn hash_file(path: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize()
}

/// Bytes allocated on disk for a file.
pub fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

/// Every chunk file in a store: (id hex, path).
pub fn chunk_files(root: &Path) -> Vec<(String, PathBuf)> {
    files_in_chunk_dirs(root)
        .into_iter()
        .filter(|(n, _)| !n.starts_with('.'))
        .collect()
}

/// Temporary files of interrupted chunk writes.
pub fn tmp_files_in_chunk_dirs(root: &Path) -> Vec<(String, PathBuf)> {
    files_in_chunk_dirs(root)
        .into_iter()
        .filter(|(n, _)| n.starts_with('.'))
        .collect()
}

fn files_in_chunk_dirs(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for dir in fs::read_dir(root.join("chunks")).unwrap() {
        let dir = dir.unwrap().path();
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries {
                let e = e.unwrap();
                out.push((e.file_name().to_string_lossy().to_string(), e.path()));
            }
        }
    }
    out.sort();
    out
}

pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A reader yielding `len` deterministic bytes derived from `seed` (each 1 MiB
/// block from its own seed, so a re-run yields the same stream).
pub struct GenReader {
    pub seed: u64,
    pub len: u64,
    pub pos: u64,
    block: Vec<u8>,
}

impl GenReader {
    pub fn new(seed: u64, len: u64) -> Self {
        GenReader {
            seed,
            len,
            pos: 0,
            block: Vec::new(),
        }
    }
}

impl Read for GenReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        let blk = self.pos / MIB;
        let within = (self.pos % MIB) as usize;
        if within == 0 || self.block.is_empty() {
            let mut rng = Rng(self.seed ^ (blk + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            self.block = rng.bytes(MIB as usize);
        }
        let n = buf
            .len()
            .min(MIB as usize - within)
            .min((self.len - self.pos) as usize);
        buf[..n].copy_from_slice(&self.block[within..within + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// BLAKE3 of a reader's content.
pub fn hash_reader(r: &mut dyn Read) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize()
}
