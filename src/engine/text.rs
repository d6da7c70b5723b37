//! The text side of a run: prompts to normalised, ensembled embeddings, through the on-disk cache.

use anyhow::{Context, Result};

use super::{Engine, ModelPlan};
use crate::error::one_line;
use crate::model::Towers;
use crate::output::{self, Progress};
use crate::score::{self, LabelEmbeddings};
use crate::text::cache::TextCache;
use crate::text::Template;

/// Text embeddings are computed in chunks so that thousands of prompts do not become one huge batch.
const TEXT_CHUNK: usize = 256;

/// What the text side reports on stderr.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TextReport {
    pub quiet: bool,
    pub verbose: bool,
}

/// The text cache of a run, unless `--no-cache` or no cache folder can be found.
pub(crate) fn text_cache(no_cache: bool) -> Option<TextCache> {
    if no_cache {
        return None;
    }
    crate::cache::default_dir().map(TextCache::new)
}

/// The templates a run gives, or when it gives none the model family's default (`a photo of a
/// {}.` for CLIP, `This is a photo of {}.` for SigLIP).
pub(crate) fn templates_or_default(
    plan: &ModelPlan,
    templates: Vec<Template>,
) -> Result<Vec<Template>> {
    if templates.is_empty() {
        Ok(vec![Template::new(plan.spec.default_template())?])
    } else {
        Ok(templates)
    }
}

/// One text unit per label: the label in every template (their embeddings are ensembled).
pub(crate) fn prompt_units(labels: &[String], templates: &[Template]) -> Vec<Vec<String>> {
    labels
        .iter()
        .map(|l| templates.iter().map(|t| t.fill(l)).collect())
        .collect()
}

/// Loads the model for a run whose text side is `units` (each the prompts of one label, whose
/// normalised embeddings are averaged). Units found in the cache are not encoded again, and when all
/// are there the text tower and tokenizer are not even loaded. Units that are encoded are written to
/// the cache chunk by chunk, so an interrupted first run keeps what it finished. Returns the engine
/// and one ensembled, normalised embedding per unit.
pub(crate) fn load_with_text(
    plan: ModelPlan,
    units: &[Vec<String>],
    cache: Option<&TextCache>,
    report: TextReport,
) -> Result<(Engine, Vec<Vec<f32>>)> {
    load_text_side(plan, units, cache, report, true)
}

/// [`load_with_text`] for runs that encode no image (`vlm search "text"`, `vlm embed --text`): the
/// vision tower is never loaded, and when every unit is in the cache neither tower is.
pub(crate) fn load_text_only(
    plan: ModelPlan,
    units: &[Vec<String>],
    cache: Option<&TextCache>,
    report: TextReport,
) -> Result<(Engine, Vec<Vec<f32>>)> {
    load_text_side(plan, units, cache, report, false)
}

fn load_text_side(
    plan: ModelPlan,
    units: &[Vec<String>],
    cache: Option<&TextCache>,
    report: TextReport,
    vision: bool,
) -> Result<(Engine, Vec<Vec<f32>>)> {
    let started = std::time::Instant::now();
    // `--no-cache` turns off every cache, the packed weights' too.
    let plan = plan.without_caches_if(cache.is_none());
    let key = plan.cache_key();
    let mut embeds: Vec<Option<Vec<f32>>> = units
        .iter()
        .map(|u| cache.and_then(|c| c.get(&key, u)))
        .collect();
    let missing: Vec<usize> = (0..units.len()).filter(|&i| embeds[i].is_none()).collect();
    let towers = Towers {
        vision,
        text: !missing.is_empty(),
    };
    let engine = plan.load(towers)?;
    if report.verbose {
        output::info(&format!(
            "model loaded in {:.2} s ({})",
            started.elapsed().as_secs_f64(),
            match (towers.vision, towers.text) {
                (true, true) => "vision and text towers",
                (true, false) => "vision tower only: every label was in the text cache",
                (false, true) => "text tower only",
                (false, false) => "no tower: every text was in the text cache",
            }
        ));
    }
    let started = std::time::Instant::now();
    let prompt_count: usize = missing.iter().map(|&i| units[i].len()).sum();
    if !missing.is_empty() {
        // Tokenise everything first (fast; one warning for all the prompts that are cut), then
        // encode whole units chunk by chunk, each finished chunk going to the cache at once.
        let prompts: Vec<String> = missing.iter().flat_map(|&i| units[i].clone()).collect();
        let ids = engine.tokenize(&prompts, report.quiet)?;
        let progress = Progress::text(prompt_count, missing.len(), !report.quiet, report.verbose);
        let mut cache_failed = false;
        let mut ids = ids.into_iter();
        let mut start = 0usize;
        while start < missing.len() {
            let mut end = start;
            let mut count = 0usize;
            while end < missing.len()
                && (count == 0 || count + units[missing[end]].len() <= TEXT_CHUNK)
            {
                count += units[missing[end]].len();
                end += 1;
            }
            let chunk_ids: Vec<Vec<u32>> = ids.by_ref().take(count).collect();
            let raw = engine.encode_ids(&chunk_ids)?;
            let mut raw = raw.iter();
            for &i in &missing[start..end] {
                let parts: Vec<&[f32]> = raw
                    .by_ref()
                    .take(units[i].len())
                    .map(Vec::as_slice)
                    .collect();
                let e = score::ensemble(parts);
                if let Some(c) = cache {
                    if let Err(err) = c.put(&key, &units[i], &e) {
                        if !cache_failed && !report.quiet {
                            progress.warn(&format!(
                                "text cache not written ({}); use --no-cache to skip it",
                                one_line(&err)
                            ));
                        }
                        cache_failed = true;
                    }
                }
                embeds[i] = Some(e);
            }
            progress.add(count);
            start = end;
        }
        progress.finish();
    }
    if report.verbose {
        output::info(&format!(
            "text: {} entries (labels and neutral prompts), {} from the cache, {} encoded ({prompt_count} prompts) in {:.2} s{}",
            units.len(),
            units.len() - missing.len(),
            missing.len(),
            started.elapsed().as_secs_f64(),
            match cache {
                Some(c) => format!("; cache: {}", c.dir().display()),
                None => "; no cache".into(),
            }
        ));
    }
    let embeds = embeds
        .into_iter()
        .map(|e| e.context("a text embedding is missing"))
        .collect::<Result<Vec<_>>>()?;
    Ok((engine, embeds))
}

impl Engine {
    /// One ensembled, normalised embedding per label, over all templates.
    pub fn label_embeddings(
        &self,
        labels: &[String],
        templates: &[Template],
        quiet: bool,
    ) -> Result<LabelEmbeddings> {
        let prompts: Vec<String> = labels
            .iter()
            .flat_map(|l| templates.iter().map(move |t| t.fill(l)))
            .collect();
        let embeds = self.encode_prompts(&prompts, quiet)?;
        let per_label = templates.len();
        let embeddings = embeds
            .chunks(per_label)
            .map(|c| score::ensemble(c.iter().map(Vec::as_slice)))
            .collect();
        Ok(LabelEmbeddings {
            labels: labels.to_vec(),
            embeddings,
        })
    }

    /// Text embeddings (projected, not normalised) of prompts, in order.
    pub fn encode_prompts(&self, prompts: &[String], quiet: bool) -> Result<Vec<Vec<f32>>> {
        let ids = self.tokenize(prompts, quiet)?;
        self.encode_ids(&ids)
    }

    /// Token ids of prompts, cut to the context; one warning for all the prompts that were cut.
    pub(crate) fn tokenize(&self, prompts: &[String], quiet: bool) -> Result<Vec<Vec<u32>>> {
        let tokenizer = self
            .tokenizer
            .as_ref()
            .context("the tokenizer was not loaded")?;
        // The tokenizer is the model folder's: a prompt it cannot encode is reported against
        // the model (exit 2, naming the folder), not as a bare tokenizer message (issue 20).
        let tokens = tokenizer
            .encode(prompts)
            .map_err(|e| super::model_error(&self.files.id, e))?;
        if let (false, Some(&first)) = (quiet, tokens.truncated.first()) {
            let example: String = prompts[first].chars().take(60).collect();
            let more = if prompts[first].chars().count() > 60 {
                "..."
            } else {
                ""
            };
            output::warn(&format!(
                "{} prompt(s) longer than the model's {} tokens were cut, e.g. {example:?}{more}",
                tokens.truncated.len(),
                self.spec.text_policy().context_len,
            ));
        }
        if let (false, Some(warning)) = (quiet, self.spec.text_warning(&tokens.ids)) {
            output::warn(&warning);
        }
        Ok(tokens.ids)
    }

    /// Text embeddings of token ids, in order. Sequences are encoded in chunks of similar length,
    /// so that short prompts are not padded to long ones.
    pub(crate) fn encode_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut embeds: Vec<Vec<f32>> = vec![Vec::new(); ids.len()];
        for chunk in order.chunks(TEXT_CHUNK) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let out = self.model.encode_texts(&batch)?.to_vec2::<f32>()?;
            for (&i, e) in chunk.iter().zip(out) {
                embeds[i] = e;
            }
        }
        crate::model::checks::finite_embeddings("text", &embeds)
            .map_err(|e| super::model_error(&self.files.id, e))?;
        Ok(embeds)
    }
}
