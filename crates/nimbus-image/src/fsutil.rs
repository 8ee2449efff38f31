//! File system helpers: durable writes, temporary files, locks and hole detection.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{ImageError, IoContext, Result};

/// A file under construction; removed on drop unless [`TmpFile::persist`]ed.
pub(crate) struct TmpFile {
    pub path: PathBuf,
    pub file: Option<File>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other process or thread uses: `<prefix>.<pid>.<nanos>.<counter>`.
pub(crate) fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}.{}.{nanos}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl TmpFile {
    /// Creates a new file in `dir` (exclusively).
    pub(crate) fn create(dir: &Path, prefix: &str) -> Result<TmpFile> {
        let path = dir.join(unique_name(prefix));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        Ok(TmpFile {
            path,
            file: Some(file),
        })
    }

    /// Reserves a unique path in `dir` without creating it (for a tool to create).
    pub(crate) fn reserve(dir: &Path, prefix: &str) -> TmpFile {
        TmpFile {
            path: dir.join(unique_name(prefix)),
            file: None,
        }
    }

    pub(crate) fn file(&self) -> &File {
        self.file
            .as_ref()
            .expect("tmp file is open until persisted")
    }

    /// fsyncs the file, closes it and renames it to `dest`. With `no_clobber` an
    /// existing `dest` is an `AlreadyExists` error (hard link + unlink, atomic).
    /// The caller fsyncs `dest`'s directory.
    pub(crate) fn persist(self, dest: &Path, no_clobber: bool) -> Result<()> {
        self.persist_with(dest, no_clobber, false)
    }

    /// [`TmpFile::persist`], optionally dropping the file's pages from the page
    /// cache once they are on disk (for chunk files, which are rarely read back
    /// soon: a backup should not push a host's useful cache out).
    pub(crate) fn persist_with(
        mut self,
        dest: &Path,
        no_clobber: bool,
        drop_cache: bool,
    ) -> Result<()> {
        let file = match self.file.take() {
            Some(f) => f,
            None => File::open(&self.path).ctx(|| format!("opening {}", self.path.display()))?,
        };
        file.sync_all()
            .ctx(|| format!("syncing {}", self.path.display()))?;
        if drop_cache {
            // SAFETY: advice on our own descriptor; failure is harmless.
            unsafe {
                libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
        drop(file);
        if no_clobber {
            match fs::hard_link(&self.path, dest) {
                Ok(()) => {
                    let _ = fs::remove_file(&self.path);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(ImageError::AlreadyExists {
                        what: "file",
                        name: dest.display().to_string(),
                    })
                }
                Err(e) => return Err(ImageError::io(format!("linking {}", dest.display()), e)),
            }
        } else {
            fs::rename(&self.path, dest)
                .ctx(|| format!("renaming {} to {}", self.path.display(), dest.display()))?;
        }
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        self.file.take();
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Writes `data` to a new temporary file in `tmp_dir`, fsyncs it and renames it to
/// `dest`. The caller fsyncs `dest`'s directory.
pub(crate) fn write_durably(
    tmp_dir: &Path,
    dest: &Path,
    data: &[u8],
    no_clobber: bool,
) -> Result<()> {
    let tmp = TmpFile::create(tmp_dir, "w")?;
    tmp.file()
        .write_all(data)
        .ctx(|| format!("writing {}", tmp.path.display()))?;
    tmp.persist(dest, no_clobber)
}

/// fsyncs a directory so that renames into it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing directory {}", dir.display()))
}

/// Creates a directory (and parents) and makes its entry durable.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// Asks ext2/3/4 to spread the subdirectories of `dir` over block groups
/// (`chattr +T`, the Orlov allocator's "top directory" hint). Chunk files are created
/// in their fan-out directory, so their inodes spread too, instead of all competing
/// for one group's inode bitmap (which gets slow to search after many deletions).
/// Best effort: other file systems ignore or refuse it.
pub(crate) fn set_topdir(dir: &Path) {
    const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;
    let Ok(d) = File::open(dir) else { return };
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read and write one int through the pointer
    // (the kernel uses int despite the ioctl's declared long).
    unsafe {
        if libc::ioctl(d.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) == 0
            && flags & FS_TOPDIR_FL == 0
        {
            flags |= FS_TOPDIR_FL;
            let _ = libc::ioctl(d.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags);
        }
    }
}

/// Prefix of temporary files in chunk directories (never a valid chunk id).
pub(crate) const TMP_PREFIX: &str = ".tmp";

/// A held `flock` on the store's lock file; released on drop (or process death).
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
}

/// Takes a shared or exclusive `flock`, waiting for it.
pub(crate) fn lock(path: &Path, exclusive: bool) -> Result<FileLock> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .ctx(|| format!("opening lock file {}", path.display()))?;
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    loop {
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(FileLock { _file: file });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(ImageError::io(format!("locking {}", path.display()), err));
        }
    }
}

/// One range of a file: data to read, or a hole known to read as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Range {
    Data { offset: u64, len: u64 },
    Hole { offset: u64, len: u64 },
}

/// The data and hole ranges of `file` (of length `size`), from SEEK_DATA/SEEK_HOLE.
/// Holes are shrunk to 4 KiB alignment (the unaligned rims are read as data); on
/// file systems without hole support the whole file is one data range.
pub(crate) fn file_ranges(file: &File, size: u64) -> Result<Vec<Range>> {
    const ALIGN: u64 = crate::chunker::BLOCK as u64;
    let fd = file.as_raw_fd();
    let mut holes: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek on our own descriptor; reads go through pread so the
        // file position is irrelevant.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        let data = if data < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENXIO) => size,
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) if holes.is_empty() && pos == 0 => {
                    return Ok(vec![Range::Data {
                        offset: 0,
                        len: size,
                    }])
                }
                _ => return Err(ImageError::io("finding data ranges (SEEK_DATA)", err)),
            }
        } else {
            (data as u64).min(size)
        };
        if data > pos {
            holes.push((pos, data));
        }
        if data >= size {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(ImageError::io(
                "finding holes (SEEK_HOLE)",
                io::Error::last_os_error(),
            ));
        }
        pos = (hole as u64).min(size).max(data + 1);
    }
    let mut out = Vec::new();
    let mut cursor = 0u64;
    for (start, end) in holes {
        let a = start.div_ceil(ALIGN) * ALIGN;
        let b = if end == size {
            size
        } else {
            end / ALIGN * ALIGN
        };
        if b <= a {
            continue;
        }
        if a > cursor {
            out.push(Range::Data {
                offset: cursor,
                len: a - cursor,
            });
        }
        out.push(Range::Hole {
            offset: a,
            len: b - a,
        });
        cursor = b;
    }
    if cursor < size {
        out.push(Range::Data {
            offset: cursor,
            len: size - cursor,
        });
    }
    Ok(out)
}

/// The length of a file or block device.
pub(crate) fn file_len(file: &File, path: &Path) -> Result<u64> {
    use std::io::Seek;
    let meta = file
        .metadata()
        .ctx(|| format!("reading metadata of {}", path.display()))?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut f = file;
    let len = f
        .seek(io::SeekFrom::End(0))
        .ctx(|| format!("finding the size of {}", path.display()))?;
    f.seek(io::SeekFrom::Start(0))
        .ctx(|| format!("seeking {}", path.display()))?;
    Ok(len)
}

/// Current time in unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn ranges_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = File::create(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 1 << 20).unwrap();
        f.write_all_at(&[2u8; 100], (4 << 20) + 10).unwrap();
        f.sync_all().unwrap();
        let ranges = file_ranges(&f, 8 << 20).unwrap();
        let total: u64 = ranges
            .iter()
            .map(|r| match r {
                Range::Data { len, .. } | Range::Hole { len, .. } => *len,
            })
            .sum();
        assert_eq!(total, 8 << 20);
        let data: u64 = ranges
            .iter()
            .map(|r| match r {
                Range::Data { len, .. } => *len,
                Range::Hole { .. } => 0,
            })
            .sum();
        // Every written byte is inside a data range, and most of the file is holes
        // (unless the file system does not report holes).
        let covered = |off: u64| {
            ranges.iter().any(|r| match r {
                Range::Data { offset, len } => (*offset..offset + len).contains(&off),
                Range::Hole { .. } => false,
            })
        };
        assert!(covered(1 << 20) && covered((4 << 20) + 10) && covered((4 << 20) + 109));
        assert!(data < (1 << 20) || ranges.len() == 1, "{ranges:?}");
    }
}
