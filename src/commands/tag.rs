//! `vlm tag`: tags along several aspects at once, from one image encoding. The rules (softmax for
//! a single aspect, each label against the neutral prompt for a multi one) live in
//! [`crate::tagging::rules`].

use anyhow::Result;

use super::{
    collect_inputs, open_destination_for, skip_completed, write_results, InputSpec, Outcome,
    RunOptions,
};
use crate::engine::text::{load_with_text, text_cache, TextReport};
use crate::engine::{plan_model, ModelOptions};
use crate::model::HeadKind;
use crate::output::{AspectTags, RunStamp, TagResult, TagRunInfo};
use crate::tagging::aspects::{self, Aspect};
use crate::tagging::rules::{
    aspect_info, label_thresholds, prepare, tag, text_units, PerAspect, Rule,
};
use crate::Error;

/// Everything `vlm tag` needs.
#[derive(Debug, Clone)]
pub(crate) struct TagOptions {
    /// `--aspects` values: built-in names, `all`, or files; comma-separated.
    pub aspects: Vec<String>,
    pub threshold: Vec<PerAspect<f32>>,
    pub top_k: Vec<PerAspect<usize>>,
    pub inputs: InputSpec,
    pub model: ModelOptions,
    pub run: RunOptions,
}

/// The effective rule of every aspect; a per-aspect option naming an aspect that is not in the
/// run is a usage error (a typo would otherwise be silently ignored).
fn aspect_rules(aspects: &[Aspect], opts: &TagOptions) -> Result<Vec<Rule>> {
    let names: Vec<&str> = aspects.iter().map(|a| a.name.as_str()).collect();
    let named = opts
        .threshold
        .iter()
        .filter_map(|p| p.aspect.as_ref().map(|a| ("--threshold", a)))
        .chain(
            opts.top_k
                .iter()
                .filter_map(|p| p.aspect.as_ref().map(|a| ("--top-k", a))),
        );
    for (flag, name) in named {
        if !names.contains(&name.as_str()) {
            return Err(Error::Usage(format!(
                "{flag} {name}=...: no aspect {name:?} in this run{} (aspects: {})",
                crate::error::hint(name, &names),
                names.join(", ")
            ))
            .into());
        }
    }
    Ok(aspects
        .iter()
        .map(|a| {
            Rule::resolve(
                a.kind,
                (a.top_k, a.threshold),
                (
                    PerAspect::lookup(&opts.top_k, &a.name),
                    PerAspect::lookup(&opts.threshold, &a.name),
                ),
            )
        })
        .collect())
}

/// The run's fingerprint for `--resume`: the aspects' labels, neutral prompts and rules as this
/// run applies them (per-label thresholds included), and their templates.
fn run_stamp(aspects: &[Aspect], rules: &[Rule], opts: &TagOptions) -> RunStamp {
    let labels: Vec<_> = aspects
        .iter()
        .zip(rules)
        .map(|(a, rule)| {
            let cli = PerAspect::lookup(&opts.threshold, &a.name);
            (
                &a.name,
                a.kind,
                a.labels.iter().map(|l| &l.name).collect::<Vec<_>>(),
                a.neutral.as_ref().map(|n| &n.name),
                rule.top_k,
                label_thresholds(a, rule, cli),
            )
        })
        .collect();
    let templates: Vec<Vec<&str>> = aspects
        .iter()
        .map(|a| a.templates.iter().map(|t| t.as_str()).collect())
        .collect();
    RunStamp::new("tag", &opts.model, &labels, &templates)
}

pub(crate) fn run(opts: &TagOptions) -> Result<Outcome> {
    let quiet = opts.run.quiet;
    let aspects = aspects::resolve(&opts.aspects)?;
    let rules = aspect_rules(&aspects, opts)?;
    let inputs = collect_inputs(&opts.inputs)?;
    let dest = open_destination_for(&opts.run.output, Some(run_stamp(&aspects, &rules, opts)))?;
    let inputs = skip_completed(inputs, &dest.completed, quiet);
    let plan = plan_model(&opts.model, quiet)?;
    // A sigmoid head scores each label on its own: multi aspects need no neutral prompt.
    let needs_neutral = plan.spec.head_kind() == HeadKind::Softmax;

    let units = text_units(&aspects, needs_neutral);
    let cache = text_cache(opts.run.no_cache);
    let report = TextReport {
        quiet,
        verbose: opts.run.verbose,
    };
    let (engine, embeds) = load_with_text(plan, &units, cache.as_ref(), report)?;
    let cli_thresholds: Vec<Option<f32>> = aspects
        .iter()
        .map(|a| PerAspect::lookup(&opts.threshold, &a.name))
        .collect();
    let prepared = prepare(&aspects, &rules, &cli_thresholds, embeds, needs_neutral)?;
    let header = TagRunInfo {
        model: engine.info(),
        aspects: aspects
            .iter()
            .zip(&prepared)
            .map(|(a, p)| aspect_info(a, &p.rule, &p.thresholds))
            .collect(),
    };
    let head = engine.head();
    write_results(
        &engine,
        &inputs,
        &opts.run,
        dest,
        &header,
        |path, embedding| match embedding {
            Ok(embed) => TagResult {
                path,
                aspects: prepared
                    .iter()
                    .map(|a| AspectTags {
                        aspect: a.name.clone(),
                        kind: a.kind,
                        tags: tag(&embed, a, &head),
                    })
                    .collect(),
                error: None,
            },
            Err(message) => TagResult {
                path,
                aspects: Vec::new(),
                error: Some(message),
            },
        },
    )
}
