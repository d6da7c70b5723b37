//! `vlm index`: keep a search index of image embeddings up to date.
//!
//! A run lists the files under its paths, compares each with what the index holds (size and
//! modification time), embeds only new and changed files, and removes files that disappeared from
//! under the folders it was given. An unchanged library is checked without loading the model at
//! all. Results are committed batch by batch, so an interrupted run keeps all but its last batch.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{display_path, show_progress, InputSpec, Outcome};
use crate::engine::images::{self, BatchOptions};
use crate::engine::{plan_model, ModelOptions, ModelPlan, Precision};
use crate::index::choose::{self, ModelWanted};
use crate::index::{self, bytes_path, path_bytes, Db, Known, ModelRow, NewRow, Stamp};
use crate::inputs::Input;
use crate::model::Towers;
use crate::output::{self, Progress};
use crate::score;
use crate::Error;

/// The model `vlm index` uses for a new index when none is named.
pub const DEFAULT_MODEL: &str = "openai/clip-vit-base-patch32";

/// Which index file, and which model's index in it.
#[derive(Debug, Clone, Default)]
pub struct IndexSpec {
    /// `--db`; `None`: the default file in the data folder.
    pub db: Option<PathBuf>,
    pub model: ModelWanted,
    /// Where to run the model when one is needed.
    pub device: String,
}

impl IndexSpec {
    pub fn path(&self) -> Result<PathBuf> {
        index::db_path(self.db.as_deref())
    }
}

/// Everything `vlm index` needs.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    pub inputs: InputSpec,
    pub index: IndexSpec,
    pub batch: BatchOptions,
    /// Also remove every file of the index that no longer exists, wherever it was.
    pub prune: bool,
    /// Index files to copy into this one first.
    pub merge: Vec<PathBuf>,
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

pub fn run(opts: &IndexOptions) -> Result<Outcome> {
    let path = opts.index.path()?;
    let db = Db::open(&path, true)?;
    for source in &opts.merge {
        merge(&db, source, opts.quiet)?;
    }
    let has_inputs = !opts.inputs.paths.is_empty() || !opts.inputs.options.files_from.is_empty();
    if !has_inputs && !opts.prune {
        return Ok(Outcome::Success);
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
            let row = db.model_row(&key, p.spec.family())?;
            plan = Some(p);
            row
        }
    };

    let mut counts = Counts::default();
    let mut outcome_failed = false;
    let report = output::report_error;
    let known = db.known(row.id)?;
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
    Ok(if outcome_failed {
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
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
    let other = Db::open(source, false)?;
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
