//! Image files to patch maps, for `vlm explain`: each image's per-patch embeddings (the model
//! family's dense method, [`crate::model::ImageTextModel::patch_embeddings`]) compared by cosine
//! with every label's text embedding. Decoded on worker threads, encoded batch by batch on this
//! one, each input's result handed on in input order, like [`super::images`].

use anyhow::{bail, Context, Result};
use image::RgbImage;

use super::images::BatchOptions;
use super::Engine;
use crate::images::{self as preprocess, DecodeLimits, ImageLoadError};
use crate::inputs::Input;
use crate::output::Progress;
use crate::pool::{self, Panicked, PoolOptions};
use crate::score;

/// One image's cosine maps: for each label, `rows * cols` cosines, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchMaps {
    pub rows: usize,
    pub cols: usize,
    /// In label order; each `rows * cols` long.
    pub maps: Vec<Vec<f32>>,
}

/// What `explain` gets for one image: its maps and, when asked for, the decoded picture (EXIF
/// orientation applied, RGB) to draw them over.
pub(crate) struct Explained {
    pub maps: PatchMaps,
    pub image: Option<RgbImage>,
}

impl Engine {
    /// Cosine maps of preprocessed images against normalised label embeddings, in order.
    pub fn patch_maps(&self, pixels: &[Vec<f32>], labels: &[Vec<f32>]) -> Result<Vec<PatchMaps>> {
        let batch = crate::images::to_tensor(pixels, &self.preprocess, self.model.device())?;
        let Some(patches) = self.model.patch_embeddings(&batch)? else {
            bail!(
                "vlm explain has no patch-level method for {} models yet",
                self.spec.family()
            );
        };
        let (rows, cols) = (patches.rows, patches.cols);
        let embeds: Vec<Vec<Vec<f32>>> = patches
            .embeddings
            .to_vec3::<f32>()
            .context("cannot read the patch embeddings")?;
        embeds
            .into_iter()
            .map(|image| {
                if image.len() != rows * cols {
                    bail!(
                        "the model gave {} patch embeddings for a {rows}x{cols} grid",
                        image.len()
                    );
                }
                // The check `image_embeddings` makes for every other command: a non-finite
                // weight on the patch path (projection, post_layernorm, an MLP bias) is a model
                // error, not `null` scores and blank overlays (issue 20).
                crate::model::checks::finite_embeddings("patch", &image)
                    .map_err(|e| super::model_error(&self.files.id, e))?;
                let normalized: Vec<Vec<f32>> = image
                    .into_iter()
                    .map(|mut p| {
                        score::normalize(&mut p);
                        p
                    })
                    .collect();
                let maps = labels
                    .iter()
                    .map(|t| normalized.iter().map(|p| score::dot(t, p)).collect())
                    .collect();
                Ok(PatchMaps { rows, cols, maps })
            })
            .collect()
    }
}

/// A decoded, preprocessed image waiting for its forward pass.
struct Prepared {
    pixels: Vec<f32>,
    image: Option<RgbImage>,
}

/// Decodes every input on worker threads (every pixel: the overlays are drawn at the original's
/// size, so no DCT-reduced decode here; `opts.exact_decode` is implied), computes the maps of
/// each batch against `labels` (normalised text embeddings) and hands each input's result, or
/// the one-line error that stopped it, to `emit` in input order. With `keep_images` the decoded
/// picture comes along for the overlays. Returns how many inputs failed.
pub(crate) fn explain_images(
    engine: &Engine,
    inputs: &[Input],
    opts: &BatchOptions,
    labels: &[Vec<f32>],
    keep_images: bool,
    progress: &Progress,
    mut emit: impl FnMut(&Input, Result<Explained, String>) -> Result<()>,
) -> Result<usize> {
    let limits = DecodeLimits {
        max_pixels: opts.max_pixels,
    };
    let batch_size = opts.batch_size.max(1);
    let threads = opts.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n.max(1),
    );
    let pool = PoolOptions {
        threads,
        window: batch_size + threads,
    };
    let mut pending: Vec<(usize, Result<Prepared, String>)> = Vec::with_capacity(batch_size);
    let mut ready = 0usize;
    let mut failed = 0usize;
    let mut on_done = |i: usize, r: Result<Explained, String>| -> Result<()> {
        let r = r.map_err(|m| crate::error::escape_controls(&m).into_owned());
        if let Err(message) = &r {
            failed += 1;
            progress.error(message);
        }
        progress.inc();
        emit(&inputs[i], r)
    };
    let flush = |pending: &mut Vec<(usize, Result<Prepared, String>)>,
                 on_done: &mut dyn FnMut(usize, Result<Explained, String>) -> Result<()>|
     -> Result<()> {
        let batch = std::mem::take(pending);
        let pixels: Vec<Vec<f32>> = batch
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok().map(|p| p.pixels.clone()))
            .collect();
        let mut maps = if pixels.is_empty() {
            Vec::new()
        } else {
            engine.patch_maps(&pixels, labels)?
        }
        .into_iter();
        drop(pixels);
        for (i, prepared) in batch {
            let result = match prepared {
                Ok(p) => Ok(Explained {
                    maps: maps.next().context("missing patch maps")?,
                    image: p.image,
                }),
                Err(message) => Err(message),
            };
            on_done(i, result)?;
        }
        Ok(())
    };
    pool::ordered_map(
        inputs,
        pool,
        |input| prepare(input, &limits, engine, keep_images),
        |i, prepared| {
            let prepared = prepared.unwrap_or_else(|Panicked(message)| {
                Err(format!(
                    "{}: internal error while decoding ({message}); please report it",
                    inputs[i].path.display()
                ))
            });
            ready += usize::from(prepared.is_ok());
            pending.push((i, prepared));
            if ready >= batch_size {
                ready = 0;
                flush(&mut pending, &mut on_done)?;
            }
            Ok(())
        },
    )?;
    flush(&mut pending, &mut on_done)?;
    Ok(failed)
}

/// One input's worker step: decode every pixel, preprocess, keep the picture if asked.
fn prepare(
    input: &Input,
    limits: &DecodeLimits,
    engine: &Engine,
    keep_image: bool,
) -> Result<Prepared, String> {
    if let Some(message) = &input.error {
        return Err(message.clone());
    }
    let image = preprocess::load_image(&input.path, limits).map_err(|e| e.to_string())?;
    let pixels = preprocess::preprocess(&image, &engine.preprocess).map_err(|e| {
        ImageLoadError::Preprocess {
            path: input.path.clone(),
            detail: crate::error::one_line(&e),
        }
        .to_string()
    })?;
    Ok(Prepared {
        pixels,
        image: keep_image.then_some(image),
    })
}
