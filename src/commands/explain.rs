//! `vlm explain`: where in the picture each label is seen. For every image, a grid of cosine
//! similarities between each patch's embedding and each label's text embedding (the model
//! family's dense method, no gradients: `ImageTextModel::patch_embeddings`), printed as records
//! and, with `-o DIR`, drawn over the photo as one PNG per image and label
//! ([`crate::output::overlay`]).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use super::RunOptions;
use super::{collect_inputs, display_path, open_destination, InputSpec, Outcome};
use crate::engine::patches::{explain_images, Explained};
use crate::engine::text::{
    load_with_text, prompt_units, templates_or_default, text_cache, TextReport,
};
use crate::engine::{model_error, plan_model, ModelOptions};
use crate::output::overlay::{self, check_montage, MapRange, Montage, OverlayFiles, MONTAGE_TILE};
use crate::output::{
    self, ExplainResult, Format, Grid, LabelMap, Progress, ResultWriter, RunInfo, Sink,
};
use crate::text::{labels_from, templates_from};
use crate::Error;

/// Everything `vlm explain` needs.
#[derive(Debug, Clone)]
pub(crate) struct ExplainOptions {
    /// `--labels` values, each comma-separated.
    pub labels: Vec<String>,
    pub labels_files: Vec<PathBuf>,
    /// `--template` values.
    pub templates: Vec<String>,
    /// `--templates NAME|FILE`.
    pub template_set: Option<String>,
    /// `-o DIR`: write `DIR/<stem>.<label>.png` overlays.
    pub overlay_dir: Option<PathBuf>,
    /// Write over existing overlay and montage files.
    pub force: bool,
    /// `--montage FILE.png`: every image's overlays on one contact sheet.
    pub montage: Option<PathBuf>,
    /// How cosines map to colours in the pictures.
    pub range: MapRange,
    pub inputs: InputSpec,
    pub model: ModelOptions,
    /// `run.output.output` and `run.output.resume` are not used: results go to stdout.
    pub run: RunOptions,
}

pub(crate) fn run(opts: &ExplainOptions) -> Result<Outcome> {
    // Everything the user typed is checked before the model is touched.
    let quiet = opts.run.quiet;
    let (labels, label_warnings) = labels_from(&opts.labels, &opts.labels_files)?;
    let templates = templates_from(&opts.templates, opts.template_set.as_deref())?;
    let inputs = collect_inputs(&opts.inputs)?;
    let images: Vec<&Path> = inputs
        .iter()
        .filter(|i| i.error.is_none())
        .map(|i| i.path.as_path())
        .collect();
    if let Some(path) = &opts.montage {
        check_montage(path, images.len(), opts.force)?;
    }
    let files = match &opts.overlay_dir {
        Some(dir) => {
            let files = OverlayFiles::new(dir, &labels, opts.force)
                .map_err(|e| Error::Usage(crate::error::one_line(&e)))?;
            files
                .check(&images)
                .map_err(|e| Error::Usage(crate::error::one_line(&e)))?;
            Some(files)
        }
        None => None,
    };
    let dest = open_destination(&opts.run.output)?;
    let plan = plan_model(&opts.model, quiet)?;
    if plan.spec.patch_grid().is_none() {
        return Err(model_error(
            &plan.files.id,
            anyhow!(
                "vlm explain has no patch-level method for {} models yet (it has one for CLIP ViT checkpoints)",
                plan.spec.family()
            ),
        ));
    }
    let templates = templates_or_default(&plan, templates)?;
    let units = prompt_units(&labels, &templates);
    let cache = text_cache(opts.run.no_cache);
    let report = TextReport {
        quiet,
        verbose: opts.run.verbose,
    };
    let (engine, embeddings) = load_with_text(plan, &units, cache.as_ref(), report)?;
    if !quiet {
        for w in &label_warnings {
            output::warn(w);
        }
    }
    let header = RunInfo {
        model: engine.info(),
        labels: labels.clone(),
        templates: templates.iter().map(|t| t.as_str().to_string()).collect(),
    };

    // As `write_results` does for the other commands: a failed image is in the table, so on a
    // terminal its stderr line would repeat it.
    let table_on_terminal = dest.format == Format::Table
        && matches!(dest.sink, Sink::Stdout(_))
        && std::io::stdout().is_terminal();
    let bar = output::progress::bar_allowed(
        quiet,
        matches!(dest.sink, Sink::Stdout(_)),
        dest.format != Format::Json,
    );
    let progress = Progress::images(inputs.len(), bar).with_errors(!table_on_terminal);
    let mut writer = progress.suspend(|| ResultWriter::begin(dest.sink, dest.format, &header))?;
    let mut montage = opts
        .montage
        .as_ref()
        .map(|_| Montage::new(MONTAGE_TILE, &labels));
    let keep_images = files.is_some() || montage.is_some();
    let mut write_failures = 0usize;
    let failed = explain_images(
        &engine,
        &inputs,
        &opts.run.batch,
        &embeddings,
        keep_images,
        &progress,
        |input, explained| {
            let path = display_path(&input.path);
            let record = match explained {
                Ok(explained) => {
                    let drawn = draw(
                        &input.path,
                        explained,
                        &labels,
                        opts.range,
                        &engine.preprocess,
                        files.as_ref(),
                        montage.as_mut(),
                    );
                    match drawn {
                        Ok((grid, maps)) => ExplainResult {
                            path,
                            grid: Some(grid),
                            maps,
                            error: None,
                        },
                        Err(e) => {
                            let message = crate::error::escape_controls(&format!(
                                "{}: {}",
                                input.path.display(),
                                crate::error::one_line(&e)
                            ))
                            .into_owned();
                            write_failures += 1;
                            progress.error(&message);
                            ExplainResult {
                                path,
                                grid: None,
                                maps: Vec::new(),
                                error: Some(message),
                            }
                        }
                    }
                }
                Err(message) => ExplainResult {
                    path,
                    grid: None,
                    maps: Vec::new(),
                    error: Some(message),
                },
            };
            Ok(progress.suspend(|| writer.record(&record))?)
        },
    )?;
    progress.finish();
    let sink = writer.finish()?;
    sink.commit()?;
    if let (Some(path), Some(montage)) = (&opts.montage, &montage) {
        if montage.is_empty() {
            if !quiet {
                output::warn(&format!(
                    "--montage {}: no image could be explained; nothing written",
                    path.display()
                ));
            }
        } else {
            overlay::write_png("--montage", path, &montage.render(), opts.force)?;
        }
    }
    Ok(if failed + write_failures == 0 {
        Outcome::Success
    } else {
        Outcome::SomeFailed
    })
}

/// One explained image: its overlays written (with `-o`), its montage row added, its record's
/// maps. An overlay that cannot be written fails the image.
fn draw(
    input: &Path,
    explained: Explained,
    labels: &[String],
    range: MapRange,
    preprocess: &crate::images::PreprocessConfig,
    files: Option<&OverlayFiles>,
    montage: Option<&mut Montage>,
) -> Result<(Grid, Vec<LabelMap>)> {
    let Explained { maps, image } = explained;
    let bounds = range.bounds(&maps.maps);
    let mut overlays: Vec<Option<String>> = vec![None; labels.len()];
    if let Some(photo) = &image {
        let view = overlay::model_view(preprocess, photo.width(), photo.height())?;
        if let Some(files) = files {
            for (i, (map, &b)) in maps.maps.iter().zip(&bounds).enumerate() {
                let target = files.target(input, i);
                let mut picture = overlay::render(photo, &view, map, maps.rows, maps.cols, b);
                let label = labels.get(i).map_or("", String::as_str);
                let caption = overlay::overlay_caption(input, label, map);
                crate::output::draw::caption_band(&mut picture, &caption, Some(b));
                files.write(&target, &picture)?;
                overlays[i] = Some(display_path(&target));
            }
        }
        if let Some(montage) = montage {
            let name = input
                .file_name()
                .map_or_else(|| display_path(input), |n| n.to_string_lossy().into_owned());
            montage.add(&name, photo, &view, &maps, &bounds);
        }
    }
    let grid = Grid {
        rows: maps.rows,
        cols: maps.cols,
    };
    let records = labels
        .iter()
        .zip(maps.maps)
        .zip(overlays)
        .map(|((label, scores), overlay)| LabelMap {
            label: label.clone(),
            scores,
            overlay,
        })
        .collect();
    Ok((grid, records))
}
