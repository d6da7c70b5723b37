//! Tagging rules: how an image's tags for an aspect are scored and chosen (`vlm tag`, and
//! `calibrate` and `aspects`, which report and tune the same rules).
//!
//! - A `single` aspect (exactly one answer is true) is a softmax over its labels, as in `classify`;
//!   the score of a tag is its probability.
//! - A `multi` aspect (any number can be true) judges each label on its own, against the aspect's
//!   neutral prompt: `score = sigmoid(exp(logit_scale) * (cos(image, label) - cos(image, neutral)))`.
//!   That is the two-way softmax between "a photo of the dog" and "a photo of the object": above 0.5
//!   when the label describes the image better than saying nothing specific does. Unlike a softmax
//!   over hundreds of labels, a label's score does not depend on which other labels are in the list,
//!   and several labels (or none) can pass the threshold. A model with a sigmoid head (SigLIP)
//!   already scores each label on its own: its multi aspects use that probability, and the neutral
//!   prompt is not needed.

use anyhow::{Context, Result};

use super::aspects::{Aspect, AspectKind};
use crate::model::{HeadKind, ScoreHead};
use crate::output::{AspectInfo, Tag};
use crate::score::{self, LabelEmbeddings, LabelScore, Scoring, Selection};

/// Default `top_k` of a single aspect when neither the aspect file nor the command line sets one.
pub(crate) const DEFAULT_SINGLE_TOP_K: usize = 3;
/// Default threshold of a multi aspect: the label beats the neutral prompt.
pub(crate) const DEFAULT_MULTI_THRESHOLD: f32 = 0.5;

/// An aspect's text side, ready to score images against.
#[derive(Debug, Clone)]
pub(crate) struct AspectEmbeddings {
    pub name: String,
    pub kind: AspectKind,
    pub labels: LabelEmbeddings,
    /// The neutral prompt's embedding; `multi` aspects only.
    pub neutral: Option<Vec<f32>>,
    pub rule: Rule,
    /// The threshold of each label, in label order: the command line's for the aspect if given,
    /// else the label's own from the aspect file (`vlm calibrate` writes them), else the rule's.
    pub thresholds: Vec<f32>,
}

/// Which tags are reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rule {
    /// Report at most this many, best first; `None` for no limit.
    pub top_k: Option<usize>,
    /// Report only tags scoring at least this.
    pub threshold: f32,
}

impl Rule {
    /// The effective rule: the command line wins over the aspect file, which wins over the defaults.
    pub(crate) fn resolve(
        kind: AspectKind,
        file: (Option<usize>, Option<f32>),
        cli: (Option<usize>, Option<f32>),
    ) -> Rule {
        let top_k = cli.0.or(file.0).or(match kind {
            AspectKind::Single => Some(DEFAULT_SINGLE_TOP_K),
            AspectKind::Multi => None,
        });
        let threshold = cli.1.or(file.1).unwrap_or(match kind {
            AspectKind::Single => 0.0,
            AspectKind::Multi => DEFAULT_MULTI_THRESHOLD,
        });
        Rule { top_k, threshold }
    }
}

/// How a multi aspect scores its labels: on their own through a sigmoid head, or for a softmax
/// head against the neutral prompt's cosine.
fn multi_scoring(head: &ScoreHead, neutral: Option<&[f32]>, image: &[f32]) -> Scoring {
    match (head.kind, neutral) {
        (HeadKind::Sigmoid, _) => Scoring::Independent { baseline: None },
        (HeadKind::Softmax, Some(n)) => Scoring::Independent {
            baseline: Some(score::dot(n, image)),
        },
        // A multi aspect always has a neutral (the aspect parser insists); without one, each label
        // is still judged alone, against a cosine of zero.
        (HeadKind::Softmax, None) => Scoring::Independent {
            baseline: Some(0.0),
        },
    }
}

fn score_all(image: &[f32], aspect: &AspectEmbeddings, head: &ScoreHead) -> Vec<LabelScore> {
    score::score_labels(image, &aspect.labels, head, |normalised| {
        match aspect.kind {
            AspectKind::Single => Scoring::Softmax,
            AspectKind::Multi => multi_scoring(head, aspect.neutral.as_deref(), normalised),
        }
    })
}

/// Every label's score for one image, in label order, before the rule is applied.
pub(crate) fn scores(image: &[f32], aspect: &AspectEmbeddings, head: &ScoreHead) -> Vec<Tag> {
    score_all(image, aspect, head)
        .into_iter()
        .map(Tag::from)
        .collect()
}

/// The tags an image gets for one aspect: scored, filtered by each label's threshold, best first,
/// cut to `top_k`. Ties keep label order.
pub(crate) fn tag(image: &[f32], aspect: &AspectEmbeddings, head: &ScoreHead) -> Vec<Tag> {
    let selection = Selection {
        top_k: aspect.rule.top_k,
        threshold: None,
    };
    let passed: Vec<LabelScore> = score_all(image, aspect, head)
        .into_iter()
        .enumerate()
        .filter(|(i, s)| {
            let t = aspect
                .thresholds
                .get(*i)
                .copied()
                .unwrap_or(aspect.rule.threshold);
            s.score >= t
        })
        .map(|(_, s)| s)
        .collect();
    score::select(passed, selection)
        .into_iter()
        .map(Tag::from)
        .collect()
}

/// Each label's threshold: `--threshold` for the aspect when given (it overrides the whole file),
/// else the label's own, else the aspect's rule.
pub(crate) fn label_thresholds(aspect: &Aspect, rule: &Rule, cli: Option<f32>) -> Vec<f32> {
    aspect
        .labels
        .iter()
        .map(|l| cli.or(l.threshold).unwrap_or(rule.threshold))
        .collect()
}

/// A value for every aspect (`aspect: None`) or for one (`--threshold color=0.3`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PerAspect<T> {
    pub aspect: Option<String>,
    pub value: T,
}

impl<T: Copy> PerAspect<T> {
    /// The value for `aspect`: its own if given, else the last one for every aspect.
    pub(crate) fn lookup(list: &[PerAspect<T>], aspect: &str) -> Option<T> {
        list.iter()
            .rev()
            .find(|p| p.aspect.as_deref() == Some(aspect))
            .or_else(|| list.iter().rev().find(|p| p.aspect.is_none()))
            .map(|p| p.value)
    }
}

/// The text units of a run over `aspects`: one per label, then the neutral prompt of a multi
/// aspect when the head needs it.
pub(crate) fn text_units(aspects: &[Aspect], needs_neutral: bool) -> Vec<Vec<String>> {
    let mut units: Vec<Vec<String>> = Vec::new();
    for a in aspects {
        units.extend(a.labels.iter().map(|l| a.prompts_for(l)));
        if let (Some(n), true) = (&a.neutral, needs_neutral) {
            units.push(a.prompts_for(n));
        }
    }
    units
}

/// The aspects ready to score images: the embeddings of [`text_units`] split back per aspect, with
/// each aspect's rule and `--threshold` (if any).
pub(crate) fn prepare(
    aspects: &[Aspect],
    rules: &[Rule],
    cli_thresholds: &[Option<f32>],
    mut embeds: Vec<Vec<f32>>,
    needs_neutral: bool,
) -> Result<Vec<AspectEmbeddings>> {
    let mut prepared = Vec::with_capacity(aspects.len());
    let mut rest = embeds.drain(..);
    for ((a, rule), cli) in aspects.iter().zip(rules).zip(cli_thresholds) {
        let embeddings: Vec<Vec<f32>> = rest.by_ref().take(a.labels.len()).collect();
        let neutral = match (&a.neutral, needs_neutral) {
            (Some(_), true) => Some(rest.next().context("missing neutral embedding")?),
            _ => None,
        };
        prepared.push(AspectEmbeddings {
            name: a.name.clone(),
            kind: a.kind,
            labels: LabelEmbeddings {
                labels: a.labels.iter().map(|l| l.name.clone()).collect(),
                embeddings,
            },
            neutral,
            rule: *rule,
            thresholds: label_thresholds(a, rule, *cli),
        });
    }
    Ok(prepared)
}

/// An aspect as the JSON header describes it; `thresholds` are the labels' own (empty: none).
pub(crate) fn aspect_info(a: &Aspect, rule: &Rule, thresholds: &[f32]) -> AspectInfo {
    AspectInfo {
        name: a.name.clone(),
        kind: a.kind,
        description: a.description.clone(),
        source: a.source.clone(),
        labels: a.labels.len(),
        templates: a.templates.iter().map(|t| t.as_str().to_string()).collect(),
        top_k: rule.top_k,
        threshold: rule.threshold,
        label_thresholds: a
            .labels
            .iter()
            .zip(thresholds)
            .filter(|(_, &t)| t != rule.threshold)
            .map(|(l, &t)| (l.name.clone(), t))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::{normalize, softmax_scaled};

    /// A softmax (CLIP) head with this temperature.
    fn clip(scale: f32) -> ScoreHead {
        ScoreHead {
            kind: HeadKind::Softmax,
            logit_scale: scale.ln(),
            logit_bias: 0.0,
        }
    }

    fn aspect(kind: AspectKind, rule: Rule) -> AspectEmbeddings {
        AspectEmbeddings {
            name: "test".into(),
            kind,
            labels: LabelEmbeddings {
                labels: vec!["x".into(), "y".into(), "z".into()],
                embeddings: vec![
                    vec![1.0, 0.0, 0.0, 0.0],
                    vec![0.0, 1.0, 0.0, 0.0],
                    vec![0.0, 0.0, 1.0, 0.0],
                ],
            },
            // A generic prompt: a little of every label, mostly something else.
            neutral: (kind == AspectKind::Multi).then(|| {
                let mut n = vec![0.2, 0.2, 0.2, 0.9];
                normalize(&mut n);
                n
            }),
            rule,
            thresholds: vec![rule.threshold; 3],
        }
    }

    const ALL: Rule = Rule {
        top_k: None,
        threshold: 0.0,
    };

    #[test]
    fn single_is_a_softmax_over_the_labels() {
        let a = aspect(AspectKind::Single, ALL);
        let tags = tag(&[3.0, 1.0, 0.0, 0.0], &a, &clip(10.0));
        let sum: f32 = tags.iter().map(|t| t.score).sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert_eq!(tags[0].label, "x");
        let img = [3.0f32 / 10f32.sqrt(), 1.0 / 10f32.sqrt(), 0.0];
        let want = softmax_scaled(&img, 10.0);
        assert!((tags[0].score - want[0]).abs() < 1e-6);
    }

    #[test]
    fn multi_scores_each_label_against_the_neutral_prompt() {
        let a = aspect(AspectKind::Multi, ALL);
        let image = [1.0f32, 1.0, 0.0, 0.0];
        let tags = scores(&image, &a, &clip(100.0));
        let c = std::f32::consts::FRAC_1_SQRT_2;
        let n = (0.2f32 * 0.2 * 3.0 + 0.81).sqrt();
        let base = 0.4 / (2.0f32.sqrt() * n);
        let want = 1.0 / (1.0 + (-(100.0 * (c - base))).exp());
        assert!((tags[0].score - want).abs() < 1e-6);
        // Two labels are clearly present, and both pass; a softmax would have split them.
        assert!(tags[0].score > 0.99 && tags[1].score > 0.99, "{tags:?}");
        assert!(tags[2].score < 0.01);
    }

    #[test]
    fn a_multi_labels_score_does_not_depend_on_the_other_labels() {
        let a = aspect(AspectKind::Multi, ALL);
        let mut fewer = a.clone();
        fewer.labels.labels.truncate(1);
        fewer.labels.embeddings.truncate(1);
        let image = [0.3f32, 0.9, 0.1, 0.2];
        assert_eq!(
            scores(&image, &a, &clip(3.0f32.exp()))[0].score,
            scores(&image, &fewer, &clip(3.0f32.exp()))[0].score
        );
    }

    #[test]
    fn threshold_and_top_k_filter_best_first() {
        let image = [1.0f32, 0.8, 0.0, 0.0];
        let a = aspect(
            AspectKind::Multi,
            Rule {
                top_k: None,
                threshold: 0.5,
            },
        );
        let names = |tags: Vec<Tag>| tags.into_iter().map(|t| t.label).collect::<Vec<_>>();
        assert_eq!(names(tag(&image, &a, &clip(100.0))), ["x", "y"]);
        let one = AspectEmbeddings {
            rule: Rule {
                top_k: Some(1),
                threshold: 0.5,
            },
            ..a.clone()
        };
        assert_eq!(names(tag(&image, &one, &clip(100.0))), ["x"]);
        let none = AspectEmbeddings {
            rule: Rule {
                top_k: None,
                threshold: 1.0,
            },
            thresholds: vec![1.0; 3],
            ..a
        };
        assert!(tag(&image, &none, &clip(10.0)).is_empty());
    }

    #[test]
    fn per_label_thresholds_replace_the_aspects() {
        let image = [1.0f32, 0.8, 0.0, 0.0];
        let mut a = aspect(
            AspectKind::Multi,
            Rule {
                top_k: None,
                threshold: 0.5,
            },
        );
        let names = |tags: Vec<Tag>| tags.into_iter().map(|t| t.label).collect::<Vec<_>>();
        assert_eq!(names(tag(&image, &a, &clip(100.0))), ["x", "y"]);
        let all = scores(&image, &a, &clip(100.0));
        // y's own threshold just above its score drops it; z's just at its score lets it in.
        a.thresholds = vec![0.5, all[1].score + 1e-3, all[2].score];
        assert_eq!(names(tag(&image, &a, &clip(100.0))), ["x", "z"]);

        let file = Aspect::parse(
            "name = \"t\"\ndescription = \"T.\"\nkind = \"multi\"\ntemplates = [\"{}\"]\nneutral = \"n\"\nthreshold = 0.4\nlabels = [\"x\", { name = \"y\", threshold = 0.9 }]\n",
            "t.toml",
        )
        .unwrap();
        let rule = Rule::resolve(file.kind, (file.top_k, file.threshold), (None, None));
        assert_eq!(label_thresholds(&file, &rule, None), [0.4, 0.9]);
        // --threshold for the aspect wins over the file's labels too.
        assert_eq!(label_thresholds(&file, &rule, Some(0.2)), [0.2, 0.2]);
        let info = aspect_info(&file, &rule, &[0.4, 0.9]);
        assert_eq!(
            info.label_thresholds.into_iter().collect::<Vec<_>>(),
            [("y".to_string(), 0.9)]
        );
    }

    #[test]
    fn the_command_line_overrides_the_file_which_overrides_the_defaults() {
        let r = Rule::resolve(AspectKind::Single, (None, None), (None, None));
        assert_eq!(
            r,
            Rule {
                top_k: Some(3),
                threshold: 0.0
            }
        );
        let r = Rule::resolve(AspectKind::Multi, (Some(5), Some(0.7)), (None, None));
        assert_eq!(
            r,
            Rule {
                top_k: Some(5),
                threshold: 0.7
            }
        );
        let r = Rule::resolve(
            AspectKind::Multi,
            (Some(5), Some(0.7)),
            (Some(2), Some(0.2)),
        );
        assert_eq!(
            r,
            Rule {
                top_k: Some(2),
                threshold: 0.2
            }
        );
    }
}
