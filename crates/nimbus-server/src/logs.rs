//! Instance output shipped by agents, kept in files under the server's data directory:
//! `logs/<instance>/<generation>.log`.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use crate::error::{Result, ServerError};

/// Largest chunk an agent may ship in one request.
pub const MAX_CHUNK: usize = 1024 * 1024;

pub struct LogStore {
    dir: PathBuf,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> ServerError {
    move |e| ServerError::Internal(format!("{context}: {e}"))
}

impl LogStore {
    pub fn new(dir: PathBuf) -> Self {
        LogStore { dir }
    }

    fn path(&self, name: &str, generation: u64) -> PathBuf {
        self.dir.join(name).join(format!("{generation}.log"))
    }

    /// Appends the bytes that start at `offset` of the node's log, skipping any part
    /// already stored (agents resend after a lost answer).
    pub fn append(&self, name: &str, generation: u64, offset: u64, data: &[u8]) -> Result<()> {
        let path = self.path(name, generation);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        let have = f
            .metadata()
            .map_err(io(format!("reading {}", path.display())))?
            .len();
        let skip = have.saturating_sub(offset) as usize;
        if skip < data.len() {
            f.write_all(&data[skip..])
                .map_err(io(format!("writing {}", path.display())))?;
        }
        Ok(())
    }

    /// Reads the last `tail_bytes` of the newest generation's log.
    pub fn read(&self, name: &str, generation: u64, tail_bytes: u64) -> Result<Vec<u8>> {
        let path = self.path(name, generation);
        let mut f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(format!("opening {}", path.display()))(e)),
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(tail_bytes);
        f.seek(SeekFrom::Start(start))
            .map_err(io(format!("seeking {}", path.display())))?;
        let mut out = Vec::new();
        f.read_to_end(&mut out)
            .map_err(io(format!("reading {}", path.display())))?;
        Ok(out)
    }

    /// Removes every log of an instance.
    pub fn remove(&self, name: &str) {
        let _ = fs::remove_dir_all(self.dir.join(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_skips_duplicates_and_tails() {
        let d = tempfile::tempdir().unwrap();
        let logs = LogStore::new(d.path().to_path_buf());
        logs.append("web", 1, 0, b"hello ").unwrap();
        logs.append("web", 1, 0, b"hello world\n").unwrap();
        logs.append("web", 1, 12, b"again\n").unwrap();
        assert_eq!(
            logs.read("web", 1, 1 << 20).unwrap(),
            b"hello world\nagain\n"
        );
        assert_eq!(logs.read("web", 1, 6).unwrap(), b"again\n");
        assert!(logs.read("web", 2, 10).unwrap().is_empty());
    }
}
