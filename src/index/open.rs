//! Opening an index file: creating it, or reading only what is ours (the application id, the
//! schema version), refusing anything else untouched; the write transaction; SQLite's errors as
//! one line naming the file.

use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::*;
use crate::Error;

/// The smallest file SQLite writes (one 512-byte page): a shorter non-empty file is someone's
/// data, however SQLite would read it (it reads a 1-byte file as an empty database).
const SMALLEST_DATABASE: u64 = 512;

/// `path` as an SQLite URI (`file:` and the absolute path, percent-encoded), for `immutable=1`.
fn file_uri(path: &Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut uri = String::from("file:");
    for &b in path_bytes(&absolute) {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri
}

/// What the first look at a file found.
enum Kind {
    Empty,
    Ours(i32),
    Foreign,
}

impl Db {
    /// Opens the index at `path`. [`Access::Write`]: a missing file (and its folder) is created
    /// and given the schema, an empty one too; [`Access::Read`]: a missing or empty file is a usage
    /// error, and nothing is written. A file that is not a vlm index, is damaged, or has a newer
    /// schema is refused with one line naming it, and left as it was.
    pub fn open(path: &Path, access: Access) -> Result<Db> {
        let create = access == Access::Write;
        if !create && !path.exists() {
            return Err(Error::Usage(format!(
                "no index at {}: build one with `vlm index PATH...`{}",
                path.display(),
                if path.file_name() == Some(std::ffi::OsStr::new(DEFAULT_FILE)) {
                    ""
                } else {
                    " --db FILE"
                }
            ))
            .into());
        }
        if path.is_dir() {
            return Err(Error::Usage(format!(
                "--db {}: is a folder, expected an index file",
                path.display()
            ))
            .into());
        }
        let len = std::fs::metadata(path).map_or(0, |m| m.len());
        if (1..SMALLEST_DATABASE).contains(&len) {
            return Err(Error::Usage(format!(
                "{}: a {len}-byte file that is not a vlm index; refusing to touch it (give another --db)",
                path.display()
            ))
            .into());
        }
        match access {
            Access::Read => Db::open_read(path),
            Access::Write => Db::open_write(path),
        }
    }

    fn connect(path: &Path, target: &str, flags: OpenFlags) -> Result<Db> {
        let conn = Connection::open_with_flags(target, flags)
            .map_err(|e| db_error(path, e, "cannot open"))?;
        let db = Db {
            conn,
            path: path.to_path_buf(),
            version: SCHEMA_VERSION,
        };
        db.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| db.err(e, "cannot set up"))?;
        Ok(db)
    }

    /// The schema version of a file of ours, or the refusal of one this vlm cannot read.
    fn readable(&self, kind: Kind) -> Result<i32> {
        match kind {
            Kind::Foreign => Err(self.foreign()),
            Kind::Empty => Err(Error::Usage(format!(
                "{}: an empty file, not an index: build one with `vlm index PATH... --db {}`",
                self.path.display(),
                self.path.display()
            ))
            .into()),
            Kind::Ours(v) if (OLDEST_VERSION..=SCHEMA_VERSION).contains(&v) => Ok(v),
            Kind::Ours(v) => Err(Error::Usage(format!(
                "{}: index schema version {v}, but this vlm reads version {SCHEMA_VERSION}{}",
                self.path.display(),
                if v > SCHEMA_VERSION {
                    " (made by a newer vlm: upgrade vlm)"
                } else {
                    ""
                }
            ))
            .into()),
        }
    }

    /// Read-only (issue 20.3). A WAL reader needs the `-shm` file beside the index; where the
    /// folder is not writable SQLite cannot create it and answers SQLITE_READONLY_DIRECTORY on the
    /// first read (20.12). The file is then read with `immutable=1`: as it stands, without locks
    /// or the `-wal` file, which is right for an index nobody is writing (a reader that cannot
    /// write the folder is not the one indexing into it; an index being written there meanwhile
    /// may be read without its latest batches).
    fn open_read(path: &Path) -> Result<Db> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let target = path.to_str().map(str::to_owned);
        let mut db = match &target {
            Some(t) => Db::connect(path, t, flags)?,
            // A non-UTF-8 path can only be named through the URI.
            None => Db::connect(path, &file_uri(path), flags | OpenFlags::SQLITE_OPEN_URI)?,
        };
        let kind = match db.kind_raw() {
            Ok(kind) => kind,
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen)
                ) =>
            {
                let uri = format!("{}?immutable=1", file_uri(path));
                db = Db::connect(path, &uri, flags | OpenFlags::SQLITE_OPEN_URI)?;
                db.kind()?
            }
            Err(e) => return Err(db.err(e, "cannot read")),
        };
        db.version = db.readable(kind)?;
        Ok(db)
    }

    fn open_write(path: &Path) -> Result<Db> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the index folder {}", dir.display()))?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI;
        // Through a URI, so that a path that is not UTF-8 (or looks like a URI) is named exactly.
        let mut db = Db::connect(path, &file_uri(path), flags)?;
        match db.kind()? {
            Kind::Empty => {}
            kind => {
                db.readable(kind)?;
            }
        }
        // Only now, knowing the file is ours (or empty), is anything written to it. A new file
        // gets 16 KiB pages: a 512-float embedding (2 KiB) fits a 4 KiB page only once, leaving
        // half of it empty, where 16 KiB pages hold seven.
        if let Kind::Empty = db.kind()? {
            db.conn
                .pragma_update(None, "page_size", PAGE_SIZE)
                .map_err(|e| db.err(e, "cannot set up"))?;
        }
        // Switching to WAL needs an exclusive lock, and SQLite may answer SQLITE_BUSY at once,
        // without calling the busy handler, while another process is setting the same new file
        // up (seen with three `vlm index` runs started together on one file): retry here, within
        // the same timeout.
        let started = std::time::Instant::now();
        loop {
            match db.conn.pragma_update(None, "journal_mode", "WAL") {
                Ok(()) => break,
                Err(e)
                    if matches!(
                        e.sqlite_error_code(),
                        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                    ) && started.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(db.err(e, "cannot switch to WAL mode")),
            }
        }
        db.conn
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(|e| db.err(e, "cannot set up"))?;
        match db.kind()? {
            Kind::Empty => db.init()?,
            Kind::Ours(v) if v < SCHEMA_VERSION => db.upgrade()?,
            _ => {}
        }
        db.version = SCHEMA_VERSION;
        Ok(db)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// An SQLite error as one line naming the file; damage gets a hint instead of SQLite's text.
    pub(super) fn err(&self, e: rusqlite::Error, doing: &str) -> anyhow::Error {
        db_error(&self.path, e, doing)
    }

    fn foreign(&self) -> anyhow::Error {
        Error::Usage(format!(
            "{}: an SQLite database that is not a vlm index; refusing to touch it (give another --db)",
            self.path.display()
        ))
        .into()
    }

    fn kind(&self) -> Result<Kind> {
        self.kind_raw().map_err(|e| self.err(e, "cannot read"))
    }

    fn kind_raw(&self) -> rusqlite::Result<Kind> {
        // One statement, so one snapshot: read one by one, a run that was creating the schema
        // meanwhile could be seen half before and half after (no application id yet, but
        // tables), which looks like someone else's database.
        let read = || -> rusqlite::Result<(i32, i32, i64)> {
            self.conn.query_row(
                "SELECT (SELECT application_id FROM pragma_application_id()), \
                        (SELECT user_version FROM pragma_user_version()), \
                        (SELECT count(*) FROM sqlite_master)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
        };
        let (app, version, objects) = read()?;
        Ok(match (app, objects) {
            (APPLICATION_ID, _) => Kind::Ours(version),
            (0, 0) if version == 0 => Kind::Empty,
            _ => Kind::Foreign,
        })
    }

    /// Gives an empty file the schema; a run that raced us there finds it done.
    fn init(&self) -> Result<()> {
        let tx = self.immediate()?;
        match self.kind()? {
            Kind::Empty => {
                self.conn
                    .execute_batch(SCHEMA)
                    .map_err(|e| self.err(e, "cannot create the schema"))?;
                self.conn
                    .pragma_update(None, "application_id", APPLICATION_ID)
                    .map_err(|e| self.err(e, "cannot create the schema"))?;
                self.conn
                    .pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(|e| self.err(e, "cannot create the schema"))?;
            }
            Kind::Ours(_) => {}
            Kind::Foreign => return Err(self.foreign()),
        }
        tx.commit()
    }

    /// Schema 1 to 2: the models' fingerprint column (issue 20.2). A run that raced us there
    /// finds it done.
    fn upgrade(&self) -> Result<()> {
        let tx = self.immediate()?;
        if let Kind::Ours(1) = self.kind()? {
            self.conn
                .execute_batch(
                    "ALTER TABLE models ADD COLUMN fingerprint TEXT;
                     ALTER TABLE models ADD COLUMN head TEXT;",
                )
                .map_err(|e| self.err(e, "cannot upgrade the schema"))?;
            self.conn
                .pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(|e| self.err(e, "cannot upgrade the schema"))?;
        }
        tx.commit()
    }

    /// The file's schema version.
    pub(crate) fn version(&self) -> i32 {
        self.version
    }

    /// Bytes the index takes on disk: the file and its `-wal`.
    pub(crate) fn bytes(&self) -> u64 {
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        [self.path.as_os_str(), wal.as_os_str()]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// `BEGIN IMMEDIATE`: takes the write lock now (waiting up to the busy timeout), so a write
    /// transaction never fails halfway on a lock another run holds.
    pub(super) fn immediate(&self) -> Result<Tx<'_>> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.err(e, "cannot start a write"))?;
        Ok(Tx {
            db: self,
            done: false,
        })
    }
}

/// An open write transaction: rolled back when dropped without [`Tx::commit`].
pub(super) struct Tx<'a> {
    db: &'a Db,
    done: bool,
}

impl Tx<'_> {
    pub(super) fn commit(mut self) -> Result<()> {
        self.db
            .conn
            .execute_batch("COMMIT")
            .map_err(|e| self.db.err(e, "cannot commit"))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.db.conn.execute_batch("ROLLBACK");
        }
    }
}

/// An SQLite error on `path` as one line. A file that is not a database, or a damaged one, says so
/// and what to do; other errors keep SQLite's message.
pub(super) fn db_error(path: &Path, e: rusqlite::Error, doing: &str) -> anyhow::Error {
    let code = e.sqlite_error_code();
    match code {
        Some(ErrorCode::NotADatabase) => Error::Usage(format!(
            "{}: not a vlm index (not an SQLite database); refusing to touch it (give another --db)",
            path.display()
        ))
        .into(),
        Some(ErrorCode::DatabaseCorrupt) => Error::Usage(format!(
            "{}: damaged index ({}); remove the file and run vlm index again",
            path.display(),
            crate::error::single_line(&e.to_string())
        ))
        .into(),
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => anyhow::anyhow!(
            "{}: {doing}: the index stayed locked by another run for {} s",
            path.display(),
            BUSY_TIMEOUT.as_secs()
        ),
        _ => anyhow::anyhow!(
            "{}: {doing}: {}",
            path.display(),
            crate::error::single_line(&e.to_string())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_escape_what_sqlite_would_read() {
        assert_eq!(
            file_uri(Path::new("/a b/x?y#z%.db")),
            "file:/a%20b/x%3Fy%23z%25.db"
        );
    }
}
