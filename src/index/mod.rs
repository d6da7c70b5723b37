//! The search index: one SQLite file holding the L2-normalised image embeddings of one or more
//! models, read by `vlm search` and `vlm dupes` and kept up to date by `vlm index`.
//!
//! Schema (version [`SCHEMA_VERSION`], in `PRAGMA user_version`; `PRAGMA application_id` is
//! [`APPLICATION_ID`], so a vlm index is recognised without guessing from table names):
//!
//! ```sql
//! models   (id INTEGER PRIMARY KEY, model TEXT, revision TEXT, dtype TEXT, family TEXT,
//!           dimension INTEGER NULL, created INTEGER, fingerprint TEXT NULL,
//!           head TEXT NULL ("softmax" or "sigmoid"; NULL in files from before it was stored),
//!           UNIQUE (model, revision, dtype))
//! images   (model -> models.id, path TEXT, size INTEGER, mtime_ns INTEGER,
//!           embedding BLOB (dimension little-endian f32), indexed INTEGER,  UNIQUE (model, path))
//! failures (model -> models.id, path TEXT, size INTEGER, mtime_ns INTEGER, error TEXT,
//!           UNIQUE (model, path))
//! ```
//!
//! One index per model: rows belong to a `models` row keyed by the model (a Hub id, or a local
//! folder's absolute path), its revision (the Hub commit; empty for a folder) and the dtype, so
//! embeddings of different models never mix, and `search` finds the model to encode a query with in
//! the file itself. Paths are absolute, stored as their bytes (a file name need not be UTF-8).
//!
//! A model is trusted by more than its path (issue 20.2): `fingerprint` holds
//! `ModelPlan::index_fingerprint` (the Hub commit, or a local folder's config, preprocessor and
//! weight files by path, size and modification time, as the text cache keys them), and
//! `dimension` the embedding size. `vlm index` finds a changed fingerprint before it embeds
//! anything, drops the model's old embeddings and embeds the files again; `search` refuses to
//! encode a query with a changed model; every write and `--merge` checks each vector's length.
//! Schema version 1 had no fingerprint: `vlm index` adds the column and takes the model as it is
//! then (the trust version 1 gave it); readers read version 1 as it is.
//!
//! Readers (`search`, `dupes`, a `--merge` source, `vlm index` without paths) open the file
//! read-only and never change it (issue 20.3); where SQLite cannot create the WAL's shared-memory
//! file beside it (a folder the reader cannot write) they read it immutable (20.12).
//!
//! Concurrency: the file is in WAL mode with a busy timeout, every write is one short transaction
//! (`BEGIN IMMEDIATE`), so several `vlm index` runs, and searches, can use one file at once.

pub(crate) mod choose;
pub mod matrix;
mod open;

use open::db_error;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, ToSql};

use crate::model::HeadKind;
use crate::Error;

/// `PRAGMA user_version` of the files this vlm writes and reads.
pub(crate) const SCHEMA_VERSION: i32 = 2;
/// The oldest schema this vlm reads (and `vlm index` upgrades).
const OLDEST_VERSION: i32 = 1;
/// `PRAGMA application_id` of a vlm index: "vlmi" in ASCII.
pub(crate) const APPLICATION_ID: i32 = 0x766c_6d69;
/// How long a run waits for another one's write transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(120);
/// Page size of new index files.
const PAGE_SIZE: i64 = 16_384;
/// The file name of the default index in the data folder.
pub(crate) const DEFAULT_FILE: &str = "index.sqlite";

const SCHEMA: &str = "
CREATE TABLE models (
    id        INTEGER PRIMARY KEY,
    model     TEXT NOT NULL,
    revision  TEXT NOT NULL,
    dtype     TEXT NOT NULL,
    family    TEXT NOT NULL,
    dimension INTEGER,
    created   INTEGER NOT NULL,
    fingerprint TEXT,
    head      TEXT,
    UNIQUE (model, revision, dtype)
);
CREATE TABLE images (
    model     INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    path      TEXT NOT NULL,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    embedding BLOB NOT NULL,
    indexed   INTEGER NOT NULL,
    UNIQUE (model, path)
);
CREATE TABLE failures (
    model     INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    path      TEXT NOT NULL,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    error     TEXT NOT NULL,
    UNIQUE (model, path)
);
";

/// The folder of the default index: `$VLM_DATA_DIR`, else `$XDG_DATA_HOME/vlm`, else
/// `~/.local/share/vlm`.
pub(crate) fn data_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("VLM_DATA_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_DATA_HOME") {
        return Some(PathBuf::from(dir).join("vlm"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".local/share/vlm"))
}

/// `--db`, else the default index in [`data_dir`].
pub(crate) fn db_path(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    data_dir()
        .map(|d| d.join(DEFAULT_FILE))
        .ok_or_else(|| {
            Error::Usage(
                "no data folder for the index: set VLM_DATA_DIR, XDG_DATA_HOME or HOME, or pass --db FILE"
                    .into(),
            )
            .into()
        })
}

/// What identifies one index in the file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelKey {
    /// A Hub id, or a local folder's absolute path.
    pub model: String,
    /// The Hub commit; empty for a local folder.
    pub revision: String,
    /// `f32`, `f16` or `bf16`.
    pub dtype: String,
}

impl std::fmt::Display for ModelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.model)?;
        if !self.revision.is_empty() {
            let short: String = self.revision.chars().take(12).collect();
            write!(f, "@{short}")?;
        }
        write!(f, " ({})", self.dtype)
    }
}

/// One model's index in the file.
#[derive(Debug, Clone)]
pub struct ModelRow {
    pub id: i64,
    pub key: ModelKey,
    pub family: String,
    /// Unknown until the first image is stored.
    pub dimension: Option<usize>,
    pub images: usize,
    /// Files that failed, remembered so that unchanged ones are not tried again.
    pub failures: usize,
    /// `ModelPlan::index_fingerprint` of the model the embeddings were made with; `None` in an
    /// index made before fingerprints (schema 1) until `vlm index` records it.
    pub fingerprint: Option<String>,
    /// The score head of the model (softmax or sigmoid); `None` in an index made before it was
    /// stored, where the family tells it (`model::head_of_family`).
    pub head: Option<HeadKind>,
    /// Unix seconds.
    pub created: i64,
    /// When the last embedding was stored (Unix seconds); `None` with no images.
    pub last_indexed: Option<i64>,
}

/// What the index knows of one file: enough to tell whether it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
}

impl Stamp {
    pub(crate) fn of(meta: &std::fs::Metadata) -> Stamp {
        let mtime_ns = meta
            .modified()
            .ok()
            .map(|t| match t.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
                Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
            })
            .unwrap_or(0);
        Stamp {
            size: meta.len(),
            mtime_ns,
        }
    }
}

/// A stored row's state, as `vlm index` compares it with the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Known {
    Embedded(Stamp),
    Failed(Stamp),
}

/// One image to store.
pub struct NewRow<'a> {
    pub path: &'a [u8],
    pub stamp: Stamp,
    pub result: std::result::Result<&'a [f32], &'a str>,
}

/// A path's bytes bound as SQL TEXT (SQLite stores them as they are; names need not be UTF-8).
struct PathText<'a>(&'a [u8]);

impl ToSql for PathText<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(self.0)))
    }
}

/// A path's bytes, as stored.
pub(crate) fn path_bytes(path: &Path) -> &[u8] {
    path.as_os_str().as_encoded_bytes()
}

/// Stored bytes back to a path.
pub(crate) fn bytes_path(bytes: &[u8]) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
    }
    #[cfg(not(unix))]
    {
        PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
    }
}

fn embedding_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// An open index file.
pub struct Db {
    conn: Connection,
    path: PathBuf,
    /// The file's schema version (version 1 has no `fingerprint` column).
    version: i32,
}

/// How a command uses an index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `vlm index`: a missing or empty (0-byte) file becomes an index; an older schema is
    /// upgraded.
    Write,
    /// `search`, `dupes`, a `--merge` source, the status: read-only, the file is never changed.
    Read,
}

impl Db {
    /// Every model's index in the file, oldest first.
    pub fn models(&self) -> Result<Vec<ModelRow>> {
        let run = || -> rusqlite::Result<Vec<ModelRow>> {
            let (fingerprint, head) = if self.version >= 2 {
                ("m.fingerprint", "m.head")
            } else {
                ("NULL", "NULL")
            };
            let mut stmt = self.conn.prepare(&format!(
                "SELECT m.id, m.model, m.revision, m.dtype, m.family, m.dimension,
                        (SELECT count(*) FROM images i WHERE i.model = m.id),
                        (SELECT count(*) FROM failures f WHERE f.model = m.id),
                        {fingerprint}, m.created,
                        (SELECT max(indexed) FROM images i WHERE i.model = m.id),
                        {head}
                 FROM models m ORDER BY m.id"
            ))?;
            let rows = stmt.query_map([], |r| {
                Ok(ModelRow {
                    id: r.get(0)?,
                    key: ModelKey {
                        model: r.get(1)?,
                        revision: r.get(2)?,
                        dtype: r.get(3)?,
                    },
                    family: r.get(4)?,
                    dimension: r.get::<_, Option<i64>>(5)?.map(|d| d.max(0) as usize),
                    images: r.get::<_, i64>(6)?.max(0) as usize,
                    failures: r.get::<_, i64>(7)?.max(0) as usize,
                    fingerprint: r.get(8)?,
                    created: r.get(9)?,
                    last_indexed: r.get(10)?,
                    head: r
                        .get::<_, Option<String>>(11)?
                        .and_then(|h| match h.as_str() {
                            "softmax" => Some(HeadKind::Softmax),
                            "sigmoid" => Some(HeadKind::Sigmoid),
                            _ => None,
                        }),
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e, "cannot read the models"))
    }

    /// The index of `key`, created if the file has none yet.
    pub fn model_row(
        &self,
        key: &ModelKey,
        family: &str,
        head: Option<HeadKind>,
    ) -> Result<ModelRow> {
        let tx = self.immediate()?;
        let head = head.map(|h| h.to_string());
        self.conn
            .execute(
                "INSERT OR IGNORE INTO models (model, revision, dtype, family, created, head)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![key.model, key.revision, key.dtype, family, now_secs(), head],
            )
            .map_err(|e| self.err(e, "cannot add the model"))?;
        // An index made before the head was stored learns it from the model now in hand.
        self.conn
            .execute(
                "UPDATE models SET head = ?4
                 WHERE model = ?1 AND revision = ?2 AND dtype = ?3 AND head IS NULL",
                params![key.model, key.revision, key.dtype, head],
            )
            .map_err(|e| self.err(e, "cannot record the model's head"))?;
        tx.commit()?;
        self.models()?
            .into_iter()
            .find(|m| &m.key == key)
            .context("the model just added is missing")
    }

    /// Records the embedding size of a model's index; an index keeps one size for good.
    pub fn set_dimension(&self, model: &ModelRow, dimension: usize) -> Result<()> {
        let stored: Option<i64> = self
            .conn
            .query_row(
                "SELECT dimension FROM models WHERE id = ?1",
                [model.id],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e, "cannot read the model"))?;
        match stored {
            Some(d) if d as usize == dimension => Ok(()),
            Some(d) => Err(Error::Model {
                model: model.key.to_string(),
                reason: format!(
                    "gives {dimension}-dimensional embeddings, but its index in {} holds {d}-dimensional ones",
                    self.path.display()
                ),
            }
            .into()),
            None => {
                self.conn
                    .execute(
                        "UPDATE models SET dimension = ?1 WHERE id = ?2 AND dimension IS NULL",
                        params![dimension as i64, model.id],
                    )
                    .map_err(|e| self.err(e, "cannot write the model"))?;
                Ok(())
            }
        }
    }

    /// Records the fingerprint of the model a model's index is made with, where none is recorded
    /// yet (a new index, or one made before fingerprints).
    pub(crate) fn set_fingerprint(&self, model: i64, fingerprint: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE models SET fingerprint = ?1 WHERE id = ?2 AND fingerprint IS NULL",
                params![fingerprint, model],
            )
            .map_err(|e| self.err(e, "cannot write the model"))?;
        Ok(())
    }

    /// The model changed (issue 20.2): in one transaction, drops every embedding and failure of
    /// its index and records the new fingerprint, the embedding size to be learnt again. Returns
    /// the embeddings dropped.
    pub(crate) fn reset_model(&self, model: i64, fingerprint: &str) -> Result<usize> {
        let tx = self.immediate()?;
        let run = || -> rusqlite::Result<usize> {
            let dropped = self
                .conn
                .execute("DELETE FROM images WHERE model = ?1", [model])?;
            self.conn
                .execute("DELETE FROM failures WHERE model = ?1", [model])?;
            self.conn.execute(
                "UPDATE models SET fingerprint = ?1, dimension = NULL WHERE id = ?2",
                params![fingerprint, model],
            )?;
            Ok(dropped)
        };
        let dropped = run().map_err(|e| self.err(e, "cannot reset the model's index"))?;
        tx.commit()?;
        Ok(dropped)
    }

    /// The embedding size recorded for a model's index.
    fn dimension_of(&self, model: i64) -> Result<Option<usize>> {
        let d: Option<i64> = self
            .conn
            .query_row("SELECT dimension FROM models WHERE id = ?1", [model], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e, "cannot read the model"))?;
        Ok(d.map(|d| d.max(0) as usize))
    }

    /// What the index knows of every file of a model, by path bytes.
    pub(crate) fn known(&self, model: i64) -> Result<HashMap<Vec<u8>, Known>> {
        let run = || -> rusqlite::Result<HashMap<Vec<u8>, Known>> {
            let mut out = HashMap::new();
            for (table, embedded) in [("failures", false), ("images", true)] {
                let mut stmt = self.conn.prepare(&format!(
                    "SELECT path, size, mtime_ns FROM {table} WHERE model = ?1"
                ))?;
                let mut rows = stmt.query([model])?;
                while let Some(r) = rows.next()? {
                    let path = r.get_ref(0)?.as_bytes()?.to_vec();
                    let stamp = Stamp {
                        size: r.get::<_, i64>(1)?.max(0) as u64,
                        mtime_ns: r.get(2)?,
                    };
                    let known = if embedded {
                        Known::Embedded(stamp)
                    } else {
                        Known::Failed(stamp)
                    };
                    out.insert(path, known);
                }
            }
            Ok(out)
        };
        run().map_err(|e| self.err(e, "cannot read the index"))
    }

    /// Stores one batch of results in one transaction: an embedding replaces the file's earlier
    /// row (and any failure), a failure is remembered with the file's stamp so that an unchanged
    /// broken file is not tried again.
    pub fn write_batch(&self, model: i64, rows: &[NewRow<'_>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let tx = self.immediate()?;
        // Every vector is as long as the index's (issue 20.2); the first sets the length.
        let mut dimension = self.dimension_of(model)?;
        for row in rows {
            if let Ok(embedding) = row.result {
                match dimension {
                    Some(d) if d != embedding.len() => {
                        return Err(Error::Usage(format!(
                            "{}: a {}-float embedding for {}, but the index holds {d}-float ones",
                            self.path.display(),
                            embedding.len(),
                            bytes_path(row.path).display()
                        ))
                        .into())
                    }
                    Some(_) => {}
                    None => {
                        self.conn
                            .execute(
                                "UPDATE models SET dimension = ?1 WHERE id = ?2",
                                params![embedding.len() as i64, model],
                            )
                            .map_err(|e| self.err(e, "cannot write the model"))?;
                        dimension = Some(embedding.len());
                    }
                }
            }
        }
        let now = now_secs();
        let run = || -> rusqlite::Result<()> {
            let mut put = self.conn.prepare_cached(
                "INSERT INTO images (model, path, size, mtime_ns, embedding, indexed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (model, path) DO UPDATE SET size = excluded.size,
                   mtime_ns = excluded.mtime_ns, embedding = excluded.embedding,
                   indexed = excluded.indexed",
            )?;
            let mut unfail = self
                .conn
                .prepare_cached("DELETE FROM failures WHERE model = ?1 AND path = ?2")?;
            let mut fail = self.conn.prepare_cached(
                "INSERT INTO failures (model, path, size, mtime_ns, error) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (model, path) DO UPDATE SET size = excluded.size,
                   mtime_ns = excluded.mtime_ns, error = excluded.error",
            )?;
            let mut unput = self
                .conn
                .prepare_cached("DELETE FROM images WHERE model = ?1 AND path = ?2")?;
            for row in rows {
                let path = PathText(row.path);
                let size = i64::try_from(row.stamp.size).unwrap_or(i64::MAX);
                match row.result {
                    Ok(embedding) => {
                        put.execute(params![
                            model,
                            path,
                            size,
                            row.stamp.mtime_ns,
                            embedding_blob(embedding),
                            now
                        ])?;
                        unfail.execute(params![model, path])?;
                    }
                    Err(error) => {
                        fail.execute(params![model, path, size, row.stamp.mtime_ns, error])?;
                        unput.execute(params![model, path])?;
                    }
                }
            }
            Ok(())
        };
        run().map_err(|e| self.err(e, "cannot write"))?;
        tx.commit()
    }

    /// Removes files from a model's index (rows and remembered failures), in one transaction.
    pub(crate) fn remove(&self, model: i64, paths: &[Vec<u8>]) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let tx = self.immediate()?;
        let run = || -> rusqlite::Result<()> {
            let mut images = self
                .conn
                .prepare_cached("DELETE FROM images WHERE model = ?1 AND path = ?2")?;
            let mut failures = self
                .conn
                .prepare_cached("DELETE FROM failures WHERE model = ?1 AND path = ?2")?;
            for p in paths {
                images.execute(params![model, PathText(p)])?;
                failures.execute(params![model, PathText(p)])?;
            }
            Ok(())
        };
        run().map_err(|e| self.err(e, "cannot remove files"))?;
        tx.commit()
    }

    /// One file's stored embedding and stamp.
    pub(crate) fn lookup(
        &self,
        model: &ModelRow,
        path: &Path,
    ) -> Result<Option<(Stamp, Vec<f32>)>> {
        let row = self
            .conn
            .query_row(
                "SELECT size, mtime_ns, embedding FROM images WHERE model = ?1 AND path = ?2",
                params![model.id, PathText(path_bytes(path))],
                |r| {
                    Ok((
                        Stamp {
                            size: r.get::<_, i64>(0)?.max(0) as u64,
                            mtime_ns: r.get(1)?,
                        },
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.err(e, "cannot read the index"))?;
        let Some((stamp, blob)) = row else {
            return Ok(None);
        };
        let dim = model.dimension.unwrap_or(blob.len() / 4);
        Ok(Some((stamp, self.decode(&blob, dim)?)))
    }

    fn decode(&self, blob: &[u8], dim: usize) -> Result<Vec<f32>> {
        if blob.len() != dim * 4 {
            return Err(Error::Usage(format!(
                "{}: damaged index: an embedding of {} bytes where {dim} floats were expected; remove the file and run vlm index again",
                self.path.display(),
                blob.len()
            ))
            .into());
        }
        Ok(blob
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// A model's embeddings as one contiguous matrix, in path order. `like`: only paths matching
    /// this SQL LIKE pattern (bound as a parameter, `\` escapes `%` and `_`); `keep`: a further
    /// filter on the path bytes.
    pub fn matrix(
        &self,
        model: &ModelRow,
        like: Option<&str>,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<matrix::Matrix> {
        let Some(dim) = model.dimension else {
            return Ok(matrix::Matrix::new(0));
        };
        let mut out = matrix::Matrix::new(dim);
        let mut run = || -> Result<()> {
            let sql = match like {
                Some(_) => {
                    "SELECT path, size, embedding FROM images
                     WHERE model = ?1 AND path LIKE ?2 ESCAPE '\\' ORDER BY path"
                }
                None => "SELECT path, size, embedding FROM images WHERE model = ?1 ORDER BY path",
            };
            let mut stmt = self
                .conn
                .prepare(sql)
                .map_err(|e| self.err(e, "cannot read the index"))?;
            let mut rows = match like {
                Some(pattern) => stmt.query(params![model.id, pattern]),
                None => stmt.query(params![model.id]),
            }
            .map_err(|e| self.err(e, "cannot read the index"))?;
            while let Some(r) = rows
                .next()
                .map_err(|e| self.err(e, "cannot read the index"))?
            {
                let read = || -> rusqlite::Result<(Vec<u8>, i64, &[u8])> {
                    Ok((
                        r.get_ref(0)?.as_bytes()?.to_vec(),
                        r.get(1)?,
                        r.get_ref(2)?.as_blob()?,
                    ))
                };
                let (path, size, blob) =
                    read().map_err(|e| self.err(e, "cannot read the index"))?;
                if !keep(&path) {
                    continue;
                }
                if blob.len() != dim * 4 {
                    self.decode(blob, dim)?;
                }
                out.push_le(&path, size.max(0) as u64, blob);
            }
            Ok(())
        };
        run()?;
        Ok(out)
    }

    /// Copies every model's rows from `other` into this file (a row already here is replaced
    /// when `other`'s copy was indexed later), one transaction per model. Returns the rows
    /// copied.
    pub(crate) fn merge_from(&self, other: &Db) -> Result<usize> {
        let mut copied = 0usize;
        for model in other.models()? {
            let mine = self.model_row(&model.key, &model.family, model.head)?;
            // Rows of two different models never mix (issue 20.2): a fingerprint that differs
            // is refused; an index without one (schema 1, or empty) takes the other's.
            match (&mine.fingerprint, &model.fingerprint) {
                (Some(a), Some(b)) if a != b => {
                    return Err(Error::Usage(format!(
                        "--merge {}: its index of {} was made with other model files than the one in {} (the model changed between the runs); index those images again instead",
                        other.path.display(),
                        model.key,
                        self.path.display()
                    ))
                    .into())
                }
                (None, Some(b)) => {
                    self.set_fingerprint(mine.id, b)?
                }
                _ => {}
            }
            if let Some(dim) = model.dimension {
                self.set_dimension(&mine, dim)?;
            }
            let dim = self.dimension_of(mine.id)?;
            let tx = self.immediate()?;
            let run = || -> rusqlite::Result<std::result::Result<usize, usize>> {
                let mut put = self.conn.prepare_cached(
                    "INSERT INTO images (model, path, size, mtime_ns, embedding, indexed)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (model, path) DO UPDATE SET size = excluded.size,
                       mtime_ns = excluded.mtime_ns, embedding = excluded.embedding,
                       indexed = excluded.indexed
                     WHERE excluded.indexed >= images.indexed",
                )?;
                let mut unfail = self
                    .conn
                    .prepare_cached("DELETE FROM failures WHERE model = ?1 AND path = ?2")?;
                let mut stmt = other.conn.prepare(
                    "SELECT path, size, mtime_ns, embedding, indexed FROM images WHERE model = ?1",
                )?;
                let mut rows = stmt.query([model.id])?;
                let mut n = 0usize;
                while let Some(r) = rows.next()? {
                    let path = PathText(r.get_ref(0)?.as_bytes()?);
                    let size: i64 = r.get(1)?;
                    let mtime: i64 = r.get(2)?;
                    let blob = r.get_ref(3)?.as_blob()?;
                    let indexed: i64 = r.get(4)?;
                    if dim.is_none_or(|d| blob.len() != d * 4) {
                        return Ok(Err(blob.len()));
                    }
                    n += put.execute(params![mine.id, path, size, mtime, blob, indexed])?;
                    unfail.execute(params![mine.id, path])?;
                }
                Ok(Ok(n))
            };
            let result = run().map_err(|e| {
                db_error(
                    &self.path,
                    e,
                    &format!("cannot merge {} into", other.path.display()),
                )
            })?;
            match result {
                Ok(n) => copied += n,
                // Dropping the transaction rolls this model's rows back.
                Err(bytes) => {
                    return Err(Error::Usage(format!(
                        "--merge {}: an embedding of {bytes} bytes in its index of {}, where {} floats were expected; nothing of it was merged",
                        other.path.display(),
                        model.key,
                        dim.map_or("no".into(), |d| d.to_string())
                    ))
                    .into())
                }
            }
            tx.commit()?;
        }
        Ok(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ModelKey {
        ModelKey {
            model: "org/model".into(),
            revision: "abc".into(),
            dtype: "f32".into(),
        }
    }

    #[test]
    fn rows_round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("sub/i.sqlite"), Access::Write).unwrap();
        let m = db
            .model_row(&key(), "clip", Some(HeadKind::Softmax))
            .unwrap();
        db.set_dimension(&m, 2).unwrap();
        assert!(db.set_dimension(&m, 3).is_err());
        let stamp = Stamp {
            size: 5,
            mtime_ns: 7,
        };
        let bad_name: &[u8] = b"/x/\xffname.jpg";
        db.write_batch(
            m.id,
            &[
                NewRow {
                    path: b"/x/b.jpg",
                    stamp,
                    result: Ok(&[0.6, 0.8]),
                },
                NewRow {
                    path: bad_name,
                    stamp,
                    result: Ok(&[1.0, 0.0]),
                },
                NewRow {
                    path: b"/x/c.jpg",
                    stamp,
                    result: Err("broken"),
                },
            ],
        )
        .unwrap();
        let known = db.known(m.id).unwrap();
        assert_eq!(known[&b"/x/b.jpg"[..]], Known::Embedded(stamp));
        assert_eq!(known[bad_name], Known::Embedded(stamp));
        assert_eq!(known[&b"/x/c.jpg"[..]], Known::Failed(stamp));
        let m = db.models().unwrap().remove(0);
        assert_eq!((m.dimension, m.images), (Some(2), 2));
        let all = db.matrix(&m, None, |_| true).unwrap();
        assert_eq!(all.len(), 2);
        let only = db.matrix(&m, Some("%b.jpg"), |_| true).unwrap();
        assert_eq!(only.paths, vec![b"/x/b.jpg".to_vec()]);
        assert_eq!(only.row(0), &[0.6, 0.8]);
        // A repaired file replaces its failure.
        db.write_batch(
            m.id,
            &[NewRow {
                path: b"/x/c.jpg",
                stamp,
                result: Ok(&[0.0, 1.0]),
            }],
        )
        .unwrap();
        assert_eq!(
            db.known(m.id).unwrap()[&b"/x/c.jpg"[..]],
            Known::Embedded(stamp)
        );
        db.remove(m.id, &[b"/x/c.jpg".to_vec()]).unwrap();
        assert_eq!(db.known(m.id).unwrap().len(), 2);
    }

    #[test]
    fn foreign_and_garbage_files_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("notes.db");
        std::fs::write(&garbage, vec![b'x'; 4096]).unwrap();
        let err = Db::open(&garbage, Access::Write).err().unwrap();
        assert!(format!("{err:#}").contains("not a vlm index"), "{err:#}");
        assert_eq!(std::fs::read(&garbage).unwrap(), vec![b'x'; 4096]);

        let other = dir.path().join("other.db");
        let conn = Connection::open(&other).unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        drop(conn);
        let before = std::fs::read(&other).unwrap();
        let err = Db::open(&other, Access::Write).err().unwrap();
        assert!(format!("{err:#}").contains("not a vlm index"), "{err:#}");
        assert_eq!(std::fs::read(&other).unwrap(), before);

        let missing = dir.path().join("missing.sqlite");
        assert!(Db::open(&missing, Access::Read).is_err());
        assert!(!missing.exists());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.sqlite");
        drop(Db::open(&path, Access::Write).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Db::open(&path, Access::Read).err().unwrap();
        assert!(format!("{err:#}").contains("upgrade vlm"), "{err:#}");
    }

    #[test]
    fn every_vector_must_have_the_index_length() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("i.sqlite"), Access::Write).unwrap();
        let m = db
            .model_row(&key(), "clip", Some(HeadKind::Softmax))
            .unwrap();
        let stamp = Stamp {
            size: 1,
            mtime_ns: 1,
        };
        let row = |path: &'static [u8], v: &'static [f32]| NewRow {
            path,
            stamp,
            result: Ok(v),
        };
        db.write_batch(m.id, &[row(b"/a", &[1.0, 0.0])]).unwrap();
        let err = db
            .write_batch(
                m.id,
                &[row(b"/b", &[0.0, 1.0]), row(b"/c", &[1.0, 0.0, 0.0])],
            )
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("a 3-float embedding for /c"),
            "{err:#}"
        );
        // Nothing of the refused batch was stored.
        assert_eq!(db.known(m.id).unwrap().len(), 1);

        // A changed model: its rows go, its size is learnt again.
        db.set_fingerprint(m.id, "old").unwrap();
        assert_eq!(db.reset_model(m.id, "new").unwrap(), 1);
        let m = db.models().unwrap().remove(0);
        assert_eq!(
            (m.images, m.dimension, m.fingerprint.as_deref()),
            (0, None, Some("new"))
        );
        db.write_batch(m.id, &[row(b"/c", &[1.0, 0.0, 0.0])])
            .unwrap();
    }

    #[test]
    fn readers_leave_short_files_alone_and_index_takes_only_empty_ones() {
        let dir = tempfile::tempdir().unwrap();
        for content in [&b""[..], b"x", &[0u8; 511]] {
            let path = dir.path().join("f.db");
            std::fs::write(&path, content).unwrap();
            assert!(Db::open(&path, Access::Read).is_err());
            if !content.is_empty() {
                assert!(Db::open(&path, Access::Write).is_err());
            }
            assert_eq!(std::fs::read(&path).unwrap(), content);
        }
        let path = dir.path().join("f.db");
        std::fs::write(&path, b"").unwrap();
        drop(Db::open(&path, Access::Write).unwrap());
        assert_eq!(
            Db::open(&path, Access::Read).unwrap().version(),
            SCHEMA_VERSION
        );
    }

    #[test]
    fn a_version_1_index_is_read_as_it_is_and_upgraded_by_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&SCHEMA.replace("    fingerprint TEXT,\n    head      TEXT,\n", ""))
            .unwrap();
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO models (model, revision, dtype, family, dimension, created)
             VALUES ('m', '', 'f32', 'clip', 2, 5)",
            [],
        )
        .unwrap();
        drop(conn);
        let before = std::fs::read(&path).unwrap();
        let db = Db::open(&path, Access::Read).unwrap();
        assert_eq!(db.version(), 1);
        let m = db.models().unwrap().remove(0);
        assert_eq!((m.fingerprint, m.dimension, m.created), (None, Some(2), 5));
        drop(db);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let db = Db::open(&path, Access::Write).unwrap();
        assert_eq!(db.version(), 2);
        let m = db.models().unwrap().remove(0);
        db.set_fingerprint(m.id, "f").unwrap();
        assert_eq!(db.models().unwrap()[0].fingerprint.as_deref(), Some("f"));
    }
}
