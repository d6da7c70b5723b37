//! `vlm dupes`: groups of indexed images that are copies of each other (byte copies, re-encoded or
//! resized ones), found from the index alone: every pair's cosine, no model loaded.

use std::path::PathBuf;

use anyhow::Result;

use super::{open_destination, Outcome, OutputOptions};
use crate::index::choose::{self, IndexSpec};
use crate::index::matrix::{self, Matrix};
use crate::index::{bytes_path, Access, Db};
use crate::output::{DupeGroup, DupeImage, DupesInfo, ResultWriter};

/// The cosine at or above which two images count as copies; see the README ("Finding duplicates")
/// for how it was chosen.
pub const DEFAULT_THRESHOLD: f64 = 0.97;

/// Everything `vlm dupes` needs.
#[derive(Debug, Clone)]
pub(crate) struct DupesOptions {
    /// Only images under these folders (or these files); empty: the whole index.
    pub paths: Vec<PathBuf>,
    /// (f64 as typed, so that the JSON header repeats it as typed; compared in f32.)
    pub threshold: f64,
    /// Only paths matching this SQL LIKE pattern.
    pub where_: Option<String>,
    pub index: IndexSpec,
    pub output: OutputOptions,
    pub quiet: bool,
}

/// The groups of `m`, biggest first, each led by its largest file (the likeliest original), with
/// every image's cosine to that first one.
pub(crate) fn dupe_groups(m: &Matrix, threshold: f32) -> Result<Vec<DupeGroup>> {
    let mut groups = matrix::groups(m, threshold)?;
    for g in &mut groups {
        g.sort_by(|&a, &b| m.sizes[b].cmp(&m.sizes[a]).then(a.cmp(&b)));
    }
    groups.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].cmp(&b[0])));
    Ok(groups
        .iter()
        .enumerate()
        .map(|(n, g)| {
            let first = m.row(g[0]);
            DupeGroup {
                group: n + 1,
                images: g
                    .iter()
                    .map(|&i| DupeImage {
                        path: String::from_utf8_lossy(&m.paths[i]).into_owned(),
                        size: m.sizes[i],
                        score: matrix::dot(first, m.row(i)),
                    })
                    .collect(),
            }
        })
        .collect())
}

pub(crate) fn run(opts: &DupesOptions) -> Result<Outcome> {
    let path = opts.index.path()?;
    let db = Db::open(&path, Access::Read)?;
    let models = db.models()?;
    let row = choose::existing(&models, &opts.index.model, &path)?;
    let dest = open_destination(&opts.output)?;
    // Paths given are compared with the stored (absolute, canonical-folder) paths.
    let under: Vec<PathBuf> = opts
        .paths
        .iter()
        .map(|p| {
            std::fs::canonicalize(p)
                .unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        })
        .collect();
    let m = db.matrix(row, opts.where_.as_deref(), |p| {
        under.is_empty() || {
            let p = bytes_path(p);
            under.iter().any(|u| p.starts_with(u))
        }
    })?;
    let groups = dupe_groups(&m, opts.threshold as f32)?;
    let header = DupesInfo {
        model: choose::model_info(row),
        dtype: row.key.dtype.clone(),
        db: super::display_path(&path),
        threshold: opts.threshold,
        images: m.len(),
        groups: groups.len(),
    };
    let mut writer = ResultWriter::begin(dest.sink, dest.format, &header)?;
    for g in &groups {
        writer.record(g)?;
    }
    writer.finish()?.commit()?;
    if !opts.quiet && groups.is_empty() {
        crate::output::info(&format!(
            "no copies among {} images at cosine >= {}",
            m.len(),
            opts.threshold
        ));
    }
    Ok(Outcome::Success)
}
