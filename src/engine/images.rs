//! Image files to embeddings: decoded on worker threads, encoded batch by batch on this one, each
//! input's result handed on in input order.

use anyhow::{Context, Result};

use super::Engine;
use crate::images::{self as preprocess, DecodeLimits};
use crate::inputs::Input;
use crate::output::Progress;
use crate::pool::{self, Panicked, PoolOptions};

/// How images are decoded and batched.
#[derive(Debug, Clone)]
pub(crate) struct BatchOptions {
    /// Threads for decoding (and, through `RAYON_NUM_THREADS`, the model); `None`: all cores.
    pub threads: Option<usize>,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Decode every pixel of large JPEGs (no DCT scaling).
    pub exact_decode: bool,
    /// Refuse images with more pixels than this.
    pub max_pixels: u64,
}

/// Decodes images on worker threads and encodes them batch by batch on this one, handing each
/// input's position in `inputs`, the input and its embedding (or the error that stopped it) to
/// `emit`, in input order. Returns how many inputs failed.
pub(crate) fn encode_images(
    engine: &Engine,
    inputs: &[Input],
    opts: &BatchOptions,
    progress: &Progress,
    mut emit: impl FnMut(usize, &Input, Result<Vec<f32>, String>) -> Result<()>,
) -> Result<usize> {
    let limits = DecodeLimits {
        max_pixels: opts.max_pixels,
    };
    let batch_size = opts.batch_size.max(1);
    let exact_decode = opts.exact_decode;
    let threads = opts.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n.max(1),
    );
    let pool = PoolOptions {
        threads,
        // Room for the next whole batch while this one is encoded, and one image per worker.
        window: batch_size + threads,
    };
    let mut batch = Batch {
        engine,
        pending: Vec::with_capacity(batch_size),
        ready: 0,
    };
    let mut failed = 0usize;
    let mut on_done = |i: usize, r: Result<Vec<f32>, String>| -> Result<()> {
        let input = &inputs[i];
        // The record's error and the stderr line are the same one line, whatever the file name.
        let r = r.map_err(|m| crate::error::escape_controls(&m).into_owned());
        if let Err(message) = &r {
            failed += 1;
            progress.error(message);
        }
        progress.inc();
        emit(i, input, r)
    };
    pool::ordered_map(
        inputs,
        pool,
        |input| match &input.error {
            Some(message) => Err(message.clone()),
            None if exact_decode => {
                preprocess::prepare_file(&input.path, &limits, &engine.preprocess)
                    .map_err(|e| e.to_string())
            }
            None => preprocess::prepare_file_reduced(&input.path, &limits, &engine.preprocess)
                .map_err(|e| e.to_string()),
        },
        |i, prepared| {
            let prepared = prepared.unwrap_or_else(|Panicked(message)| {
                Err(format!(
                    "{}: internal error while decoding ({message}); please report it",
                    inputs[i].path.display()
                ))
            });
            batch.ready += usize::from(prepared.is_ok());
            batch.pending.push((i, prepared));
            if batch.ready >= batch_size {
                batch.flush(&mut on_done)?;
            }
            Ok(())
        },
    )?;
    batch.flush(&mut on_done)?;
    Ok(failed)
}

/// Prepared inputs waiting for a forward pass, in input order (failed ones included, so that their
/// records keep their place).
struct Batch<'a> {
    engine: &'a Engine,
    pending: Vec<(usize, Result<Vec<f32>, String>)>,
    ready: usize,
}

impl Batch<'_> {
    fn flush(
        &mut self,
        emit: &mut impl FnMut(usize, Result<Vec<f32>, String>) -> Result<()>,
    ) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.ready = 0;
        let pixels: Vec<Vec<f32>> = pending
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok().cloned())
            .collect();
        let mut embeds = if pixels.is_empty() {
            Vec::new()
        } else {
            self.engine.image_embeddings(&pixels)?
        }
        .into_iter();
        drop(pixels);
        for (i, prepared) in pending {
            let result = match prepared {
                Ok(_) => Ok(embeds.next().context("missing image embedding")?),
                Err(message) => Err(message),
            };
            emit(i, result)?;
        }
        Ok(())
    }
}
