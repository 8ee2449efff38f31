//! SQLite backend: one file in the data directory, WAL journal, `synchronous = FULL`,
//! so every write is on disk before the call returns.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::{EventRecord, Record, Result, Store, StoreError};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0);
"#;

/// Keep at most this many events; older ones are trimmed on append.
const MAX_EVENTS: u64 = 100_000;

/// One queued write and where its result goes.
struct Job {
    f: Box<WriteFn>,
    slot: Slot,
}

/// Where a queued write's outcome lands: (value, revision).
type Slot = Arc<Mutex<Option<Result<(u64, u64)>>>>;

type WriteFn = dyn FnOnce(&rusqlite::Transaction<'_>, u64) -> Result<u64> + Send;

/// The embedded store.
pub struct SqliteStore {
    /// The writer connection (held by the current group-commit leader).
    conn: Mutex<Connection>,
    /// A second connection for reads, which WAL lets run beside writes.
    reader: Mutex<Connection>,
    pending: Mutex<Vec<Job>>,
    revision_tx: tokio::sync::watch::Sender<u64>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the store file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        let rev: i64 = conn
            .query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| {
                r.get(0)
            })
            .map_err(backend)?;
        let (revision_tx, _) = tokio::sync::watch::channel(rev as u64);
        let reader = Connection::open(path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        reader
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
            pending: Mutex::new(Vec::new()),
            revision_tx,
        })
    }

    /// Runs `f` as one atomic write that bumps the global revision, durable on return.
    ///
    /// Group commit: writers queue their work; whoever holds the connection runs every
    /// queued write in one transaction (each in its own savepoint, so one failing write
    /// does not affect the others) and pays one fsync for all of them.
    fn write(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, u64) -> Result<u64> + Send + 'static,
    ) -> Result<(u64, u64)> {
        let slot: Slot = Arc::new(Mutex::new(None));
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Job {
                f: Box::new(f),
                slot: slot.clone(),
            });
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(done) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return done;
        }
        let jobs = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let last = Self::run_batch(&mut conn, jobs);
        drop(conn);
        if let Some(rev) = last {
            self.revision_tx.send_replace(rev);
        }
        let done = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        done.unwrap_or_else(|| Err(StoreError::Backend("write was lost".into())))
    }

    /// Runs queued writes in one transaction; fills every job's slot. Returns the last
    /// committed revision, if any write succeeded.
    fn run_batch(conn: &mut Connection, jobs: Vec<Job>) -> Option<u64> {
        let fail_all = |jobs: Vec<Job>, e: String| {
            for j in jobs {
                *j.slot.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Err(StoreError::Backend(e.clone())));
            }
            None
        };
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => return fail_all(jobs, e.to_string()),
        };
        let mut results = Vec::with_capacity(jobs.len());
        let mut last = None;
        for job in jobs {
            let res = (|| {
                tx.execute_batch("SAVEPOINT job").map_err(backend)?;
                let run = tx
                    .query_row(
                        "UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                    .map_err(backend)
                    .and_then(|rev| (job.f)(&tx, rev as u64).map(|v| (v, rev as u64)));
                match run {
                    Ok(v) => {
                        tx.execute_batch("RELEASE job").map_err(backend)?;
                        Ok(v)
                    }
                    Err(e) => {
                        tx.execute_batch("ROLLBACK TO job; RELEASE job")
                            .map_err(backend)?;
                        Err(e)
                    }
                }
            })();
            if let Ok((_, rev)) = &res {
                last = Some(*rev);
            }
            results.push((job.slot, res));
        }
        if let Err(e) = tx.commit() {
            let msg = e.to_string();
            for (slot, _) in results {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Err(StoreError::Backend(msg.clone())));
            }
            return None;
        }
        for (slot, res) in results {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(res);
        }
        last
    }

    /// Compare-and-swap guard: the object exists at revision `expected`.
    fn expect_revision(
        tx: &rusqlite::Transaction<'_>,
        kind: &str,
        key: &str,
        expected: u64,
    ) -> Result<()> {
        match Self::current(tx, kind, key)? {
            None => Err(StoreError::NotFound {
                kind: kind.into(),
                key: key.into(),
            }),
            Some(found) if found != expected => Err(StoreError::Conflict {
                kind: kind.into(),
                key: key.into(),
                expected,
                found,
            }),
            Some(_) => Ok(()),
        }
    }

    fn current(tx: &rusqlite::Transaction<'_>, kind: &str, key: &str) -> Result<Option<u64>> {
        tx.query_row(
            "SELECT revision FROM objects WHERE kind = ?1 AND key = ?2",
            params![kind, key],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map(|o| o.map(|v| v as u64))
        .map_err(backend)
    }
}

impl Store for SqliteStore {
    fn revision(&self) -> Result<u64> {
        Ok(*self.revision_tx.borrow())
    }

    fn get(&self, kind: &str, key: &str) -> Result<Option<Record>> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row(
            "SELECT value, revision FROM objects WHERE kind = ?1 AND key = ?2",
            params![kind, key],
            |r| {
                Ok(Record {
                    key: key.to_string(),
                    value: r.get(0)?,
                    revision: r.get::<_, i64>(1)? as u64,
                })
            },
        )
        .optional()
        .map_err(backend)
    }

    fn list(&self, kind: &str, after: Option<&str>, limit: usize) -> Result<Vec<Record>> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare_cached(
                "SELECT key, value, revision FROM objects WHERE kind = ?1 AND key > ?2 \
                 ORDER BY key LIMIT ?3",
            )
            .map_err(backend)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![kind, after.unwrap_or(""), limit], |r| {
                Ok(Record {
                    key: r.get(0)?,
                    value: r.get(1)?,
                    revision: r.get::<_, i64>(2)? as u64,
                })
            })
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
    }

    fn create(&self, kind: &str, key: &str, value: &str) -> Result<u64> {
        let (kind, key, value) = (kind.to_string(), key.to_string(), value.to_string());
        self.write(move |tx, rev| {
            let (kind, key) = (kind.as_str(), key.as_str());
            if Self::current(tx, kind, key)?.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: kind.into(),
                    key: key.into(),
                });
            }
            tx.execute(
                "INSERT INTO objects (kind, key, value, revision) VALUES (?1, ?2, ?3, ?4)",
                params![kind, key, value, rev as i64],
            )
            .map_err(backend)?;
            Ok(0)
        })
        .map(|(_, rev)| rev)
    }

    fn update(&self, kind: &str, key: &str, value: &str, expected: u64) -> Result<u64> {
        let (kind, key, value) = (kind.to_string(), key.to_string(), value.to_string());
        self.write(move |tx, rev| {
            let (kind, key) = (kind.as_str(), key.as_str());
            Self::expect_revision(tx, kind, key, expected)?;
            tx.execute(
                "UPDATE objects SET value = ?3, revision = ?4 WHERE kind = ?1 AND key = ?2",
                params![kind, key, value, rev as i64],
            )
            .map_err(backend)?;
            Ok(0)
        })
        .map(|(_, rev)| rev)
    }

    fn delete(&self, kind: &str, key: &str, expected: u64) -> Result<u64> {
        let (kind, key) = (kind.to_string(), key.to_string());
        self.write(move |tx, _| {
            let (kind, key) = (kind.as_str(), key.as_str());
            Self::expect_revision(tx, kind, key, expected)?;
            tx.execute(
                "DELETE FROM objects WHERE kind = ?1 AND key = ?2",
                params![kind, key],
            )
            .map_err(backend)?;
            Ok(0)
        })
        .map(|(_, rev)| rev)
    }

    fn next_sequence(&self, name: &str) -> Result<u64> {
        let meta_name = format!("seq:{name}");
        self.write(move |tx, _| {
            tx.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES (?1, 0)",
                params![meta_name],
            )
            .map_err(backend)?;
            tx.query_row(
                "UPDATE meta SET value = value + 1 WHERE name = ?1 RETURNING value",
                params![meta_name],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v as u64)
            .map_err(backend)
        })
        .map(|(v, _)| v)
    }

    fn append_event(&self, value: &str) -> Result<u64> {
        let value = value.to_string();
        self.write(move |tx, _| {
            tx.execute("INSERT INTO events (value) VALUES (?1)", params![value])
                .map_err(backend)?;
            let seq = tx.last_insert_rowid() as u64;
            if seq > MAX_EVENTS && seq.is_multiple_of(1000) {
                tx.execute(
                    "DELETE FROM events WHERE seq <= ?1",
                    params![(seq - MAX_EVENTS) as i64],
                )
                .map_err(backend)?;
            }
            Ok(seq)
        })
        .map(|(seq, _)| seq)
    }

    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare_cached("SELECT seq, value FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .map_err(backend)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![after as i64, limit], |r| {
                Ok(EventRecord {
                    seq: r.get::<_, i64>(0)? as u64,
                    value: r.get(1)?,
                })
            })
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revision_tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn create_get_update_delete_with_cas() {
        let (_d, s) = open();
        let r1 = s.create("instance", "a", "{\"v\":1}").unwrap();
        assert!(matches!(
            s.create("instance", "a", "{}"),
            Err(StoreError::AlreadyExists { .. })
        ));
        let got = s.get("instance", "a").unwrap().unwrap();
        assert_eq!(got.revision, r1);
        let r2 = s.update("instance", "a", "{\"v\":2}", r1).unwrap();
        assert!(r2 > r1);
        assert!(matches!(
            s.update("instance", "a", "{\"v\":3}", r1),
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(s.get("instance", "a").unwrap().unwrap().value, "{\"v\":2}");
        assert!(matches!(
            s.delete("instance", "a", r1),
            Err(StoreError::Conflict { .. })
        ));
        s.delete("instance", "a", r2).unwrap();
        assert!(s.get("instance", "a").unwrap().is_none());
    }

    #[test]
    fn list_paginates_in_key_order() {
        let (_d, s) = open();
        for k in ["c", "a", "b", "d"] {
            s.create("node", k, "{}").unwrap();
        }
        s.create("instance", "z", "{}").unwrap();
        let p1 = s.list("node", None, 2).unwrap();
        assert_eq!(
            p1.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let p2 = s.list("node", Some("b"), 10).unwrap();
        assert_eq!(
            p2.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["c", "d"]
        );
    }

    #[test]
    fn survives_reopen_and_publishes_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            let rx = s.subscribe();
            s.create("instance", "a", "1").unwrap();
            assert_eq!(*rx.borrow(), s.revision().unwrap());
            assert_eq!(s.next_sequence("queue").unwrap(), 1);
            assert_eq!(s.next_sequence("queue").unwrap(), 2);
            s.append_event("e1").unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert!(s.get("instance", "a").unwrap().is_some());
        assert_eq!(s.next_sequence("queue").unwrap(), 3);
        assert_eq!(s.revision().unwrap(), 5);
        assert_eq!(s.events_after(0, 10).unwrap()[0].value, "e1");
    }

    #[test]
    fn concurrent_writers_share_commits_and_keep_failures_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let s = Arc::new(SqliteStore::open(&path).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut revs = Vec::new();
                    for i in 0..50 {
                        revs.push(s.create("obj", &format!("{t}-{i}"), "{}").unwrap());
                        // Every thread also tries one duplicate: it must fail alone.
                        assert!(matches!(
                            s.create("obj", &format!("{t}-{i}"), "{}"),
                            Err(StoreError::AlreadyExists { .. })
                        ));
                    }
                    revs
                })
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 400, "each write has its own revision");
        assert_eq!(
            s.revision().unwrap(),
            400,
            "failed writes do not consume revisions"
        );
        drop(s);
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.list("obj", None, 1000).unwrap().len(), 400);
    }
}
