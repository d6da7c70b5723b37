//! `vlm classify`: rank labels for each image.

use anyhow::Result;

use super::{
    collect_inputs, open_destination_for, skip_completed, write_results, InputSpec, Outcome,
    RunOptions,
};
use crate::engine::text::{
    load_with_text, prompt_units, templates_or_default, text_cache, TextReport,
};
use crate::engine::{plan_model, ModelOptions};
use crate::model::HeadKind;
use crate::output::{self, ImageResult, Prediction, RunInfo, RunStamp};
use crate::score::{self, LabelEmbeddings, Scoring, Selection};
use crate::text::{labels_from, templates_from, Template};

/// Everything `vlm classify` needs.
#[derive(Debug, Clone)]
pub(crate) struct ClassifyOptions {
    /// `--labels` values, each comma-separated.
    pub labels: Vec<String>,
    pub labels_files: Vec<std::path::PathBuf>,
    /// `--template` values.
    pub templates: Vec<String>,
    /// `--templates NAME|FILE`.
    pub template_set: Option<String>,
    pub top_k: Option<usize>,
    pub inputs: InputSpec,
    pub model: ModelOptions,
    pub run: RunOptions,
}

fn collect_labels(opts: &ClassifyOptions) -> Result<(Vec<String>, Vec<String>)> {
    labels_from(&opts.labels, &opts.labels_files)
}

/// What looks like a mistake in the labels, said once the model is known to load (so that a model
/// error stays the only line): label-file lines holding commas, and a lone label under a softmax
/// head, whose probability is always 1.
fn warn_about_labels(labels: &[String], warnings: &[String], head: HeadKind) {
    for w in warnings {
        output::warn(w);
    }
    if let ([only], HeadKind::Softmax) = (labels, head) {
        output::warn(&format!(
            "only one label ({}): its probability is always 1 with this model; give two or more (comma-separated) to compare",
            crate::error::quote(only)
        ));
    }
}

/// The user's templates, or `None` for the model's default.
fn collect_templates(opts: &ClassifyOptions) -> Result<Vec<Template>> {
    templates_from(&opts.templates, opts.template_set.as_deref())
}

pub(crate) fn run(opts: &ClassifyOptions) -> Result<Outcome> {
    // Everything the user typed is checked before the model is touched.
    let quiet = opts.run.quiet;
    let (labels, label_warnings) = collect_labels(opts)?;
    let templates = collect_templates(opts)?;
    let inputs = collect_inputs(&opts.inputs)?;
    let stamp = RunStamp::new(
        "classify",
        &opts.model,
        &(&labels, opts.top_k),
        &templates.iter().map(Template::as_str).collect::<Vec<_>>(),
    );
    let dest = open_destination_for(&opts.run.output, Some(stamp))?;
    let inputs = skip_completed(inputs, &dest.completed, quiet);
    let plan = plan_model(&opts.model, quiet)?;
    let templates = templates_or_default(&plan, templates)?;
    let units = prompt_units(&labels, &templates);
    let cache = text_cache(opts.run.no_cache);
    let report = TextReport {
        quiet,
        verbose: opts.run.verbose,
    };
    let (engine, embeddings) = load_with_text(plan, &units, cache.as_ref(), report)?;
    if !quiet {
        warn_about_labels(&labels, &label_warnings, engine.head().kind);
    }
    let label_embeds = LabelEmbeddings {
        labels: labels.clone(),
        embeddings,
    };
    let header = RunInfo {
        model: engine.info(),
        labels,
        templates: templates.iter().map(|t| t.as_str().to_string()).collect(),
    };
    let head = engine.head();
    let selection = Selection {
        top_k: opts.top_k,
        threshold: None,
    };
    write_results(
        &engine,
        &inputs,
        &opts.run,
        dest,
        &header,
        |path, embedding| match embedding {
            Ok(embed) => {
                let scores =
                    score::score_labels(&embed, &label_embeds, &head, |_| Scoring::of_head(&head));
                ImageResult {
                    path,
                    predictions: score::select(scores, selection)
                        .into_iter()
                        .map(Prediction::from)
                        .collect(),
                    error: None,
                }
            }
            Err(message) => ImageResult {
                path,
                predictions: Vec::new(),
                error: Some(message),
            },
        },
    )
}
