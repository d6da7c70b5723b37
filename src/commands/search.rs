//! `vlm search`: the indexed images closest to a text or an image, by exact cosine over every row.
//!
//! A text query is encoded as typed (issue 23.2, as rclip and clip-retrieval do): a search phrase
//! is already a caption, and the label template would make "a red bicycle" into "a photo of a a
//! red bicycle.". `-t/--template(s)` put it through templates as classify puts a label.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{display_path, open_destination, Outcome, OutputOptions};
use crate::engine::images::{self, BatchOptions};
use crate::engine::text::{load_text_only, prompt_units, text_cache, TextReport};
use crate::engine::{plan_model, ModelPlan};
use crate::index::choose::{self, key_of, model_info, IndexSpec};
use crate::index::matrix;
use crate::index::Access;
use crate::index::{Db, ModelRow, Stamp};
use crate::inputs::Input;
use crate::model::Towers;
use crate::output::overlay::{check_montage, MONTAGE_TILE};
use crate::output::{self, Progress, ResultWriter, SearchHit, SearchInfo, SearchQuery};
use crate::score;
use crate::text::templates_from;
use crate::Error;

/// How many results a search gives when neither `-k` nor `--threshold` says.
pub(crate) const DEFAULT_TOP_K: usize = 10;

/// Everything `vlm search` needs.
#[derive(Debug, Clone)]
pub(crate) struct SearchOptions {
    /// A text query.
    pub text: Option<String>,
    /// An image query.
    pub image: Option<PathBuf>,
    /// `--template` values, for a text query.
    pub templates: Vec<String>,
    /// `--templates NAME|FILE`.
    pub template_set: Option<String>,
    /// At most this many results; `None`: [`DEFAULT_TOP_K`] unless a threshold is given.
    pub top_k: Option<usize>,
    /// Only results with at least this cosine (f64 as typed; compared in f32).
    pub threshold: Option<f64>,
    /// Only paths matching this SQL LIKE pattern.
    pub where_: Option<String>,
    /// `--montage FILE.png`: the hits on a contact sheet.
    pub montage: Option<PathBuf>,
    /// Overwrite the montage file.
    pub force: bool,
    pub index: IndexSpec,
    pub output: OutputOptions,
    /// Decoding of an image query.
    pub batch: BatchOptions,
    pub no_cache: bool,
    pub verbose: bool,
    pub quiet: bool,
}

pub(crate) fn run(opts: &SearchOptions) -> Result<Outcome> {
    if opts.text.is_none() && opts.image.is_none() {
        return Err(Error::Usage(
            "nothing to search for: give a text (vlm search \"a red bicycle\") or --image FILE"
                .into(),
        )
        .into());
    }
    if let Some(text) = &opts.text {
        if text.trim().is_empty() {
            return Err(Error::Usage(
                "the search text is empty: give words to search for, or --image FILE".into(),
            )
            .into());
        }
    }
    let path = opts.index.path()?;
    let db = Db::open(&path, Access::Read)?;
    let models = db.models()?;
    let row = choose::existing(&models, &opts.index.model, &path)?;
    let templates = templates_from(&opts.templates, opts.template_set.as_deref())?;
    if let Some(path) = &opts.montage {
        check_montage(path, 0, opts.force)?;
    }
    let dest = open_destination(&opts.output)?;

    let started = std::time::Instant::now();
    let (query, embedding) = match (&opts.text, &opts.image) {
        (Some(text), _) => {
            let plan = plan_model(&choose::load_options(row, &opts.index.device), opts.quiet)?;
            check_model(&plan, row, &path)?;
            // The query as typed unless templates are given (issue 23.2).
            let units = if templates.is_empty() {
                vec![vec![text.clone()]]
            } else {
                prompt_units(std::slice::from_ref(text), &templates)
            };
            let cache = text_cache(opts.no_cache);
            let report = TextReport {
                quiet: opts.quiet,
                verbose: opts.verbose,
            };
            let (_, mut embeds) = load_text_only(plan, &units, cache.as_ref(), report)?;
            let query = SearchQuery {
                text: Some(text.clone()),
                templates: (!templates.is_empty())
                    .then(|| templates.iter().map(|t| t.as_str().to_string()).collect()),
                image: None,
            };
            (query, embeds.pop().context("no text embedding")?)
        }
        (None, Some(image)) => {
            let query = SearchQuery {
                text: None,
                templates: None,
                image: Some(display_path(image)),
            };
            (query, image_query(&db, row, image, opts, &path)?)
        }
        (None, None) => {
            return Err(Error::Usage("give a text to search for, or --image FILE".into()).into())
        }
    };

    let loaded = std::time::Instant::now();
    let m = db.matrix(row, opts.where_.as_deref(), |_| true)?;
    if !m.is_empty() && m.dim != embedding.len() {
        return Err(Error::Model {
            model: row.key.to_string(),
            reason: format!(
                "gives {}-dimensional embeddings, but the index holds {}-dimensional ones",
                embedding.len(),
                m.dim
            ),
        }
        .into());
    }
    let read = std::time::Instant::now();
    let threads = opts.batch.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let top_k = opts
        .top_k
        .or(opts.threshold.is_none().then_some(DEFAULT_TOP_K));
    let scores = matrix::scores(&m, &embedding, threads);
    let hits = matrix::best(&scores, top_k, opts.threshold.map(|t| t as f32));
    if opts.verbose {
        output::info(&format!(
            "query embedded in {:.2} s, {} rows read in {:.2} s, searched in {:.1} ms",
            (loaded - started).as_secs_f64(),
            m.len(),
            (read - loaded).as_secs_f64(),
            read.elapsed().as_secs_f64() * 1000.0
        ));
    }

    let header = SearchInfo {
        model: model_info(row),
        dtype: row.key.dtype.clone(),
        db: display_path(&path),
        query,
        where_: opts.where_.clone(),
        searched: m.len(),
        top_k,
        threshold: opts.threshold,
    };
    let mut writer = ResultWriter::begin(dest.sink, dest.format, &header)?;
    let mut records = Vec::with_capacity(hits.len());
    for (rank, hit) in hits.iter().enumerate() {
        let record = SearchHit {
            rank: rank + 1,
            path: String::from_utf8_lossy(&m.paths[hit.row]).into_owned(),
            score: hit.score,
        };
        writer.record(&record)?;
        records.push(record);
    }
    writer.finish()?.commit()?;
    if let Some(path) = &opts.montage {
        write_montage(path, &records, opts)?;
    }
    Ok(Outcome::Success)
}

/// The most hits one `--montage` sheet shows (the best ones).
pub(crate) const MONTAGE_MAX_HITS: usize = 200;
/// Hits per row of the sheet.
pub(crate) const MONTAGE_COLUMNS: u32 = 5;

/// `--montage`: the hits as thumbnails, best first, each captioned with its rank, file name and
/// cosine (issue 23: a contact sheet is what people look at rather than read). A hit whose file
/// cannot be read now keeps its place as an empty square saying so.
fn write_montage(path: &std::path::Path, hits: &[SearchHit], opts: &SearchOptions) -> Result<()> {
    use crate::output::draw::{thumbnail, Sheet, SheetCell};
    if hits.is_empty() {
        if !opts.quiet {
            output::warn(&format!(
                "--montage {}: no hits; nothing written",
                path.display()
            ));
        }
        return Ok(());
    }
    if hits.len() > MONTAGE_MAX_HITS && !opts.quiet {
        output::warn(&format!(
            "--montage {}: the best {MONTAGE_MAX_HITS} of {} hits",
            path.display(),
            hits.len()
        ));
    }
    let tile = MONTAGE_TILE;
    let limits = crate::images::DecodeLimits {
        max_pixels: opts.batch.max_pixels,
    };
    let cells = hits
        .iter()
        .take(MONTAGE_MAX_HITS)
        .map(|hit| {
            let file = std::path::Path::new(&hit.path);
            let name = file
                .file_name()
                .map_or_else(|| hit.path.clone(), |n| n.to_string_lossy().into_owned());
            let (picture, note) = match crate::images::load_image(file, &limits) {
                Ok(photo) => (Some(thumbnail(&photo, tile)), None),
                Err(_) => (None, Some("cannot read it now".to_string())),
            };
            let mut caption = vec![
                format!("{}. {name}", hit.rank),
                format!("cos {}", crate::output::draw::number(hit.score)),
            ];
            caption.extend(note);
            SheetCell {
                picture,
                caption,
                range: None,
            }
        })
        .collect::<Vec<_>>();
    let columns = (cells.len() as u32).min(MONTAGE_COLUMNS);
    // A third line only when some hit says it cannot be read.
    let lines = cells.iter().map(|c| c.caption.len()).max().unwrap_or(2) as u32;
    let sheet = Sheet {
        tile,
        columns,
        lines,
        cells,
    };
    crate::output::overlay::write_png("--montage", path, &sheet.render(), opts.force)
        .map_err(|e| anyhow::anyhow!("--montage {}", crate::error::one_line(&e)))
}

/// The model a query is encoded with is the index's: the same key, and the same files as its
/// images were embedded with (issue 20.2: the fingerprint, where the index records one).
fn check_model(plan: &ModelPlan, row: &ModelRow, db: &std::path::Path) -> Result<()> {
    let key = key_of(&plan.files, plan.precision);
    if key != row.key {
        return Err(Error::Model {
            model: plan.files.id.clone(),
            reason: format!("resolved to {key}, not to the index's {}", row.key),
        }
        .into());
    }
    if row
        .fingerprint
        .as_ref()
        .is_some_and(|f| *f != plan.index_fingerprint())
    {
        return Err(Error::Usage(format!(
            "{}: the model {} changed since its images were indexed (its files differ); run `vlm index` on the indexed folders again to embed them with it",
            display_path(db),
            row.key
        ))
        .into());
    }
    Ok(())
}

/// An image query's embedding: the stored one when the file is indexed and unchanged (no model
/// is loaded), else encoded with the index's model.
fn image_query(
    db: &Db,
    row: &ModelRow,
    image: &std::path::Path,
    opts: &SearchOptions,
    db_path: &std::path::Path,
) -> Result<Vec<f32>> {
    let absolute =
        std::fs::canonicalize(image).with_context(|| format!("--image {}", image.display()))?;
    let meta =
        std::fs::metadata(&absolute).with_context(|| format!("--image {}", image.display()))?;
    if let Some((stamp, embedding)) = db.lookup(row, &absolute)? {
        if stamp == Stamp::of(&meta) {
            if opts.verbose {
                output::info("image query: its embedding is in the index (no model loaded)");
            }
            return Ok(embedding);
        }
    }
    let plan = plan_model(&choose::load_options(row, &opts.index.device), opts.quiet)?;
    check_model(&plan, row, db_path)?;
    let plan = plan.without_caches_if(opts.no_cache);
    let engine = plan.load(Towers {
        vision: true,
        text: false,
    })?;
    let input = Input {
        path: image.to_path_buf(),
        error: None,
    };
    let mut out: Option<Result<Vec<f32>, String>> = None;
    let progress = Progress::hidden().with_errors(false);
    images::encode_images(
        &engine,
        std::slice::from_ref(&input),
        &opts.batch,
        &progress,
        |_, _, r| {
            out = Some(r);
            Ok(())
        },
    )?;
    match out.context("no image embedding")? {
        Ok(mut e) => {
            score::normalize(&mut e);
            Ok(e)
        }
        Err(message) => Err(Error::Usage(format!("--image {message}")).into()),
    }
}
