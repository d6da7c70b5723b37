//! `vlm index`: keep a search index of image embeddings up to date.
//!
//! A run lists the files under its paths, compares each with what the index holds (size and
//! modification time), embeds only new and changed files, and removes files that disappeared from
//! under the folders it was given. An unchanged library is checked without loading the model at
//! all. Results are committed batch by batch, so an interrupted run keeps all but its last batch.
//!
//! The model is known by its fingerprint as well as its name (issue 20.2): when a local model's
//! files changed since its images were indexed (new weights at the same path), the run drops the
//! old embeddings and embeds every file again, rather than mixing vectors of two models.
//!
//! `vlm index` without paths shows what the index holds (issue 23.10); `--export FILE.npy`
//! writes a model's embeddings as `vlm embed -f npy` does, bit for bit the stored vectors, so a
//! library is embedded once (issue 23.3).

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{display_path, show_progress, InputSpec, Outcome};
use crate::engine::images::{self, BatchOptions};
use crate::engine::{plan_model, ModelOptions, ModelPlan, Precision};
use crate::index::choose::{self, IndexSpec};
use crate::index::{bytes_path, path_bytes, Access, Db, Known, ModelRow, NewRow, Stamp};
use crate::inputs::Input;
use crate::model::Towers;
use crate::output::npy::{names_file, NpyWriter};
use crate::output::{self, Progress};
use crate::score;
use crate::Error;

/// The model `vlm index` uses for a new index when none is named.
pub(crate) const DEFAULT_MODEL: &str = "openai/clip-vit-base-patch32";

/// Everything `vlm index` needs.
#[derive(Debug, Clone)]
pub(crate) struct IndexOptions {
    pub inputs: InputSpec,
    pub index: IndexSpec,
    pub batch: BatchOptions,
    /// Also remove every file of the index that no longer exists, wherever it was.
    pub prune: bool,
    /// Index files to copy into this one first.
    pub merge: Vec<PathBuf>,
    /// Write the model's embeddings to this `.npy` (and its `.paths.txt`) at the end.
    pub export: Option<PathBuf>,
    /// Overwrite an existing `export` file.
    pub force: bool,
    pub verbose: bool,
    pub quiet: bool,
}

/// What a run did, for the summary line.
#[derive(Debug, Default)]
struct Counts {
    added: usize,
    updated: usize,
    unchanged: usize,
    removed: usize,
    failed: usize,
    failed_before: usize,
}

/// A path as the index stores it: absolute. Folders given on the command line are made canonical
/// before the walk, so paths found in them are already absolute; a relative path from a list is
/// made absolute through its canonical folder.
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(dir) = std::fs::canonicalize(parent) {
            return dir.join(name);
        }
    }
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A command-line path made canonical when it exists (a folder's files are then found under its
/// canonical path); a glob pattern or a missing file is only made absolute.
fn root(path: &Path) -> PathBuf {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::canonicalize(path).unwrap_or_else(|_| absolute(path)),
        _ => absolute(path),
    }
}

/// Whether the walk of `roots` would have listed `path` had it still been there: under a folder
/// given (directly in it without `--recursive`).
fn under_roots(path: &Path, roots: &[PathBuf], recursive: bool) -> bool {
    roots.iter().any(|r| {
        if recursive {
            path.starts_with(r) && path != r
        } else {
            path.parent() == Some(r.as_path())
        }
    })
}

pub(crate) fn run(opts: &IndexOptions) -> Result<Outcome> {
    let path = opts.index.path()?;
    let has_inputs = !opts.inputs.paths.is_empty() || !opts.inputs.options.files_from.is_empty();
    if !has_inputs && !opts.prune && opts.merge.is_empty() && opts.export.is_none() {
        return status(&path);
    }
    let db = Db::open(&path, Access::Write)?;
    for source in &opts.merge {
        merge(&db, source, opts.quiet)?;
    }
    if !has_inputs && !opts.prune {
        return match &opts.export {
            Some(target) => {
                let models = db.models()?;
                let row = choose::existing(&models, &opts.index.model, &path)?;
                export(&db, row, target, opts)
            }
            None => Ok(Outcome::Success),
        };
    }

    // The inputs, absolute; the folders among them are the roots whose vanished files leave.
    let roots: Vec<PathBuf> = opts.inputs.paths.iter().map(|p| root(p)).collect();
    let dir_roots: Vec<PathBuf> = roots.iter().filter(|r| r.is_dir()).cloned().collect();
    let spec = InputSpec {
        paths: roots,
        options: opts.inputs.options.clone(),
    };
    let inputs = super::collect_all_inputs(&spec)?;
    // Files only (no folder whose vanished files leave, no --prune): none usable is a usage
    // error before the model is planned (issue 23).
    if dir_roots.is_empty() && !opts.prune {
        super::require_usable(&inputs)?;
    }

    // The model's index: found in the file by name (no model needed), else made for the model.
    let models = db.models()?;
    let mut plan: Option<ModelPlan> = None;
    let row = match choose::choose(&models, &opts.index.model, &path)? {
        Some(row) => row.clone(),
        None if !has_inputs => {
            return Err(Error::Usage(format!(
                "--prune: {} holds no index for {}",
                path.display(),
                opts.index.model.model.as_deref().unwrap_or("any model")
            ))
            .into())
        }
        None => {
            let wanted = &opts.index.model;
            let model_opts = ModelOptions {
                model: wanted.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into()),
                revision: wanted.revision.clone(),
                device: opts.index.device.clone(),
                precision: wanted.dtype.unwrap_or(Precision::F32),
            };
            let p = plan_model(&model_opts, opts.quiet)?;
            let key = choose::key_of(&p.files, p.precision);
            let row = db.model_row(&key, p.spec.family(), Some(p.spec.head_kind()))?;
            plan = Some(p);
            row
        }
    };

    // The model's files against the fingerprint its embeddings were made with (issue 20.2).
    let mut row = row;
    let mut known = db.known(row.id)?;
    let mut again: Vec<PathBuf> = Vec::new();
    if let Some(fingerprint) = current_fingerprint(&row, &mut plan, opts) {
        match &row.fingerprint {
            None => db.set_fingerprint(row.id, &fingerprint)?,
            Some(old) if *old != fingerprint => {
                // Every file embedded with the old model is embedded again, those outside this
                // run's folders too (a shard run embeds only its part; the others re-add theirs).
                if opts.inputs.options.shard.is_none() {
                    again = known.keys().map(|p| bytes_path(p)).collect();
                    again.retain(|p| p.is_file());
                    again.sort();
                }
                let dropped = db.reset_model(row.id, &fingerprint)?;
                known.clear();
                if !opts.quiet {
                    output::warn(&format!(
                        "{}: the model {} changed since its images were indexed (its files differ): its {dropped} embeddings were dropped and every file is embedded again",
                        display_path(&path),
                        row.key
                    ));
                }
                row = db
                    .models()?
                    .into_iter()
                    .find(|m| m.id == row.id)
                    .unwrap_or(row);
            }
            Some(_) => {}
        }
    }

    let mut counts = Counts::default();
    let mut outcome_failed = false;
    let report = output::report_error;
    let mut listed: HashSet<Vec<u8>> = HashSet::new();
    let mut todo: Vec<(Input, Stamp, bool)> = Vec::new();
    for input in inputs {
        if let Some(message) = &input.error {
            // A folder given that is now empty is not an error for the index: its files left.
            if dir_roots.contains(&input.path) {
                continue;
            }
            report(message);
            counts.failed += 1;
            outcome_failed = true;
            continue;
        }
        let file = absolute(&input.path);
        let meta = match std::fs::metadata(&file) {
            Ok(m) => m,
            Err(e) => {
                report(&format!("{}: {e}", file.display()));
                counts.failed += 1;
                outcome_failed = true;
                continue;
            }
        };
        let stamp = Stamp::of(&meta);
        let bytes = path_bytes(&file).to_vec();
        let seen = known.get(&bytes).copied();
        listed.insert(bytes);
        match seen {
            Some(Known::Embedded(s)) if s == stamp => counts.unchanged += 1,
            Some(Known::Failed(s)) if s == stamp => counts.failed_before += 1,
            Some(Known::Embedded(_)) => todo.push((
                Input {
                    path: file,
                    error: None,
                },
                stamp,
                true,
            )),
            _ => todo.push((
                Input {
                    path: file,
                    error: None,
                },
                stamp,
                false,
            )),
        }
    }
    for file in again {
        let bytes = path_bytes(&file).to_vec();
        if listed.contains(&bytes) {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(&file) {
            listed.insert(bytes);
            todo.push((
                Input {
                    path: file,
                    error: None,
                },
                Stamp::of(&meta),
                false,
            ));
        }
    }

    // Files that left: under a folder of this run and not listed, or (--prune) gone anywhere.
    // Shard runs list only their part, so they remove nothing by the first rule.
    let recursive = opts.inputs.options.recursive;
    let gone: Vec<Vec<u8>> = known
        .keys()
        .filter(|p| !listed.contains(*p))
        .filter(|p| {
            let path = bytes_path(p);
            (opts.inputs.options.shard.is_none() && under_roots(&path, &dir_roots, recursive))
                || (opts.prune && matches!(std::fs::symlink_metadata(&path), Err(e) if e.kind() == std::io::ErrorKind::NotFound))
        })
        .cloned()
        .collect();
    db.remove(row.id, &gone)?;
    counts.removed = gone.len();

    if todo.is_empty() {
        if opts.verbose {
            output::info("model not loaded: no file is new or changed");
        }
    } else {
        let (added, updated, failed) = embed(&db, &row, plan, &todo, opts)?;
        counts.added = added;
        counts.updated = updated;
        counts.failed += failed;
        outcome_failed |= failed > 0;
    }
    if !opts.quiet {
        summary(&db, &row, &counts)?;
    }
    if let Some(target) = &opts.export {
        outcome_failed |= export(&db, &row, target, opts)? != Outcome::Success;
    }
    Ok(if outcome_failed {
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
}

/// The fingerprint of the model's files now (`ModelPlan::index_fingerprint`), where it can be
/// had without the network: a new index's model (planned already), or a local folder. `None`:
/// not checked, for a Hub model (the commit in the index's key fixes its files) or a folder that
/// is gone (nothing can be embedded with it; a file that needs it reports that).
fn current_fingerprint(
    row: &ModelRow,
    plan: &mut Option<ModelPlan>,
    opts: &IndexOptions,
) -> Option<String> {
    if plan.is_none() {
        if !row.key.revision.is_empty() {
            return None;
        }
        *plan = plan_model(&choose::load_options(row, &opts.index.device), true).ok();
    }
    plan.as_ref().map(ModelPlan::index_fingerprint)
}

/// `--export FILE.npy`: the model's stored embeddings, as `vlm embed -f npy` writes them (a
/// float32 N x D matrix and FILE.paths.txt), in path order; the vectors are the stored bytes.
fn export(db: &Db, row: &ModelRow, target: &Path, opts: &IndexOptions) -> Result<Outcome> {
    let quiet = opts.quiet;
    // As it stands now: this run may have set the embedding size.
    let row = db
        .models()?
        .into_iter()
        .find(|m| m.id == row.id)
        .unwrap_or_else(|| row.clone());
    let m = db.matrix(&row, None, |_| true)?;
    let mut npy = NpyWriter::create(
        target,
        false,
        crate::output::Existing::of(opts.force, false, false),
    )?;
    let mut left_out = 0usize;
    for i in 0..m.len() {
        let name = &m.paths[i];
        if name.contains(&b'\n') {
            left_out += 1;
            output::report_error(&format!(
                "{}: its name holds a line break, which a .paths.txt file cannot list; left out of --export",
                String::from_utf8_lossy(name)
            ));
            continue;
        }
        npy.push(name, m.row(i))?;
    }
    npy.finish()?;
    if !quiet {
        output::info(&format!(
            "exported {} embeddings of {} to {} (paths in {})",
            m.len() - left_out,
            row.key,
            display_path(target),
            display_path(&names_file(target, false))
        ));
    }
    Ok(if left_out == 0 {
        Outcome::Success
    } else {
        Outcome::SomeFailed
    })
}

/// One model's index in `vlm index` without paths (JSON when piped).
#[derive(Debug, serde::Serialize)]
struct ModelStatus {
    model: String,
    revision: Option<String>,
    dtype: String,
    family: String,
    /// Floats per embedding; `None` before the first image.
    dimension: Option<usize>,
    images: usize,
    /// Files that failed and are not tried again until they change.
    failures: usize,
    /// Unix seconds.
    created: i64,
    last_indexed: Option<i64>,
    /// Whether the model's files are fingerprinted (an index made before fingerprints is not
    /// until `vlm index` next runs on it).
    fingerprinted: bool,
}

/// `vlm index` without paths (issue 23.10): where the index lives, its size, and each model's.
#[derive(Debug, serde::Serialize)]
struct IndexStatus {
    db: String,
    /// The file and its `-wal`, in bytes.
    bytes: u64,
    schema_version: i32,
    models: Vec<ModelStatus>,
}

/// Shows the index read-only: a table on a terminal, JSON otherwise.
fn status(path: &Path) -> Result<Outcome> {
    let db = Db::open(path, Access::Read)?;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let status = IndexStatus {
        db: display_path(&absolute),
        bytes: db.bytes(),
        schema_version: db.version(),
        models: db
            .models()?
            .into_iter()
            .map(|m| ModelStatus {
                revision: (!m.key.revision.is_empty()).then_some(m.key.revision),
                model: m.key.model,
                dtype: m.key.dtype,
                family: m.family,
                dimension: m.dimension,
                images: m.images,
                failures: m.failures,
                created: m.created,
                last_indexed: m.last_indexed,
                fingerprinted: m.fingerprint.is_some(),
            })
            .collect(),
    };
    let text = if std::io::stdout().is_terminal() {
        status_table(&status)
    } else {
        let mut s = serde_json::to_string_pretty(&status)?;
        s.push('\n');
        s
    };
    let mut stdout = std::io::stdout().lock();
    std::io::Write::write_all(&mut stdout, text.as_bytes())
        .and_then(|()| std::io::Write::flush(&mut stdout))
        .context("stdout")?;
    Ok(Outcome::Success)
}

/// `bytes` as B, kB, MB or GB (powers of 1000, one decimal).
fn human_bytes(bytes: u64) -> String {
    let units = ["kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    if value < 1000.0 {
        return format!("{bytes} B");
    }
    let mut unit = "B";
    for u in units {
        if value < 1000.0 {
            break;
        }
        value /= 1000.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC` (the civil-from-days algorithm of H. Hinnant's
/// `chrono`-compatible date notes).
fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn status_table(s: &IndexStatus) -> String {
    let mut out = format!("index  {}  ({})\n", s.db, human_bytes(s.bytes));
    if s.models.is_empty() {
        out.push_str("no images yet: add some with `vlm index PATH...`\n");
        return out;
    }
    let header = [
        "model",
        "dtype",
        "family",
        "dim",
        "images",
        "failed",
        "last indexed",
    ];
    let rows: Vec<[String; 7]> = s
        .models
        .iter()
        .map(|m| {
            let mut name = m.model.clone();
            if let Some(rev) = &m.revision {
                name.push('@');
                name.extend(rev.chars().take(12));
            }
            [
                crate::error::escape_controls(&name).into_owned(),
                m.dtype.clone(),
                m.family.clone(),
                m.dimension.map_or("-".into(), |d| d.to_string()),
                m.images.to_string(),
                m.failures.to_string(),
                m.last_indexed.map_or("-".into(), utc),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                // Numbers right-aligned, text left-aligned.
                if (3..=5).contains(&i) {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    out.push_str(&line(header.to_vec()));
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn merge(db: &Db, source: &Path, quiet: bool) -> Result<()> {
    let same = match (
        std::fs::canonicalize(source),
        std::fs::canonicalize(db.path()),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(Error::Usage(format!(
            "--merge {}: is the index being merged into",
            source.display()
        ))
        .into());
    }
    let other = Db::open(source, Access::Read)?;
    let copied = db.merge_from(&other)?;
    if !quiet {
        output::info(&format!(
            "merged {copied} images from {} into {}",
            source.display(),
            db.path().display()
        ));
    }
    Ok(())
}

/// Embeds `todo` and stores each batch as it is done. Returns (added, updated, failed).
fn embed(
    db: &Db,
    row: &ModelRow,
    plan: Option<ModelPlan>,
    todo: &[(Input, Stamp, bool)],
    opts: &IndexOptions,
) -> Result<(usize, usize, usize)> {
    let started = std::time::Instant::now();
    let plan = match plan {
        Some(p) => p,
        None => plan_model(&choose::load_options(row, &opts.index.device), opts.quiet)?,
    };
    let key = choose::key_of(&plan.files, plan.precision);
    if key != row.key {
        return Err(Error::Model {
            model: plan.files.id.clone(),
            reason: format!("resolved to {key}, not to the index's {}", row.key),
        }
        .into());
    }
    let engine = plan.load(Towers {
        vision: true,
        text: false,
    })?;
    if opts.verbose {
        output::info(&format!(
            "model loaded in {:.2} s (vision tower): {} files to embed",
            started.elapsed().as_secs_f64(),
            todo.len()
        ));
    }
    let inputs: Vec<Input> = todo.iter().map(|(i, _, _)| i.clone()).collect();
    let progress = Progress::images(inputs.len(), show_progress(opts.quiet));
    let batch = opts.batch.batch_size.max(1);
    let mut pending: Vec<(usize, Result<Vec<f32>, String>)> = Vec::with_capacity(batch);
    let (mut added, mut updated, mut failed) = (0usize, 0usize, 0usize);
    let mut dimension_set = row.dimension.is_some();
    let mut next = 0usize;
    let flush = |pending: &mut Vec<(usize, Result<Vec<f32>, String>)>| -> Result<()> {
        let bytes: Vec<&[u8]> = pending
            .iter()
            .map(|(i, _)| path_bytes(&todo[*i].0.path))
            .collect();
        let rows: Vec<NewRow<'_>> = pending
            .iter()
            .zip(&bytes)
            .map(|((i, r), p)| NewRow {
                path: p,
                stamp: todo[*i].1,
                result: r.as_deref().map_err(String::as_str),
            })
            .collect();
        progress.suspend(|| db.write_batch(row.id, &rows))?;
        pending.clear();
        Ok(())
    };
    images::encode_images(&engine, &inputs, &opts.batch, &progress, |_, _, result| {
        let i = next;
        next += 1;
        let result = result.map(|mut e| {
            score::normalize(&mut e);
            e
        });
        match &result {
            Ok(e) => {
                if !dimension_set {
                    db.set_dimension(row, e.len())?;
                    dimension_set = true;
                }
                if todo[i].2 {
                    updated += 1;
                } else {
                    added += 1;
                }
            }
            Err(_) => failed += 1,
        }
        pending.push((i, result));
        if pending.len() >= batch {
            flush(&mut pending)?;
        }
        Ok(())
    })?;
    flush(&mut pending)?;
    progress.finish();
    Ok((added, updated, failed))
}

fn summary(db: &Db, row: &ModelRow, c: &Counts) -> Result<()> {
    let total = db
        .models()?
        .into_iter()
        .find(|m| m.id == row.id)
        .map_or(0, |m| m.images);
    let mut parts = vec![
        format!("{} added", c.added),
        format!("{} updated", c.updated),
        format!("{} removed", c.removed),
        format!("{} unchanged", c.unchanged),
    ];
    if c.failed > 0 {
        parts.push(format!("{} failed", c.failed));
    }
    output::info(&format!(
        "{}: {}: {}; {total} images indexed",
        display_path(db.path()),
        row.key,
        parts.join(", ")
    ));
    if c.failed_before > 0 {
        output::warn(&format!(
            "{} files failed in an earlier run and have not changed since; not tried again",
            c.failed_before
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_sizes_read_as_people_write_them() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_000_000_000), "2001-09-09 01:46 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_234_567), "1.2 MB");
    }

    #[test]
    fn the_status_table_has_a_row_per_model() {
        let s = IndexStatus {
            db: "/d/index.sqlite".into(),
            bytes: 2_000,
            schema_version: 2,
            models: vec![ModelStatus {
                model: "org/m".into(),
                revision: Some("0123456789abcdef".into()),
                dtype: "f32".into(),
                family: "clip".into(),
                dimension: Some(512),
                images: 240,
                failures: 2,
                created: 0,
                last_indexed: Some(1_000_000_000),
                fingerprinted: true,
            }],
        };
        let table = status_table(&s);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "index  /d/index.sqlite  (2.0 kB)");
        assert!(lines[1].starts_with("model"), "{table}");
        assert!(
            lines[2]
                .starts_with("org/m@0123456789ab  f32    clip    512     240       2  2001-09-09"),
            "{table}"
        );
    }
}
