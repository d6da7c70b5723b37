//! Multi-aspect tagging: pure functions from one image embedding and each aspect's label embeddings to
//! typed tags.
//!
//! - A `single` aspect (exactly one answer is true) is a softmax over its labels, as in `classify`;
//!   the score of a tag is its probability.
//! - A `multi` aspect (any number can be true) judges each label on its own, against the aspect's
//!   neutral prompt: `score = sigmoid(exp(logit_scale) * (cos(image, label) - cos(image, neutral)))`.
//!   That is the two-way softmax between "a photo of the dog" and "a photo of the object": above 0.5
//!   when the label describes the image better than saying nothing specific does. Unlike a softmax
//!   over hundreds of labels, a label's score does not depend on which other labels are in the list,
//!   and several labels (or none) can pass the threshold.

use serde::{Deserialize, Serialize};

use crate::aspects::AspectKind;
use crate::classify::{normalize, softmax_scaled, LabelEmbeddings};

/// Default `top_k` of a single aspect when neither the aspect file nor the command line sets one.
pub const DEFAULT_SINGLE_TOP_K: usize = 3;
/// Default threshold of a multi aspect: the label beats the neutral prompt.
pub const DEFAULT_MULTI_THRESHOLD: f32 = 0.5;

/// One tag of one aspect for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tag {
    pub label: String,
    /// single: softmax probability over the aspect's labels; multi: the label's own score against
    /// the neutral prompt (see the module docs). Both in 0..=1.
    pub score: f32,
    /// Cosine similarity of the image and label embeddings.
    pub cosine: f32,
}

/// An aspect's text side, ready to score images against.
#[derive(Debug, Clone)]
pub struct AspectEmbeddings {
    pub name: String,
    pub kind: AspectKind,
    pub labels: LabelEmbeddings,
    /// The neutral prompt's embedding; `multi` aspects only.
    pub neutral: Option<Vec<f32>>,
    pub rule: Rule,
}

/// Which tags are reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// Report at most this many, best first; `None` for no limit.
    pub top_k: Option<usize>,
    /// Report only tags scoring at least this.
    pub threshold: f32,
}

impl Rule {
    /// The effective rule: the command line wins over the aspect file, which wins over the defaults.
    pub fn resolve(
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

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Every label's score for one image, in label order, before the rule is applied.
pub fn scores(image: &[f32], aspect: &AspectEmbeddings, logit_scale: f32) -> Vec<Tag> {
    let mut image = image.to_vec();
    normalize(&mut image);
    let cosines: Vec<f32> = aspect
        .labels
        .embeddings
        .iter()
        .map(|t| dot(t, &image))
        .collect();
    let scale = logit_scale.exp();
    let scores: Vec<f32> = match (aspect.kind, &aspect.neutral) {
        (AspectKind::Multi, Some(neutral)) => {
            let base = dot(neutral, &image);
            cosines
                .iter()
                .map(|c| sigmoid(scale * (c - base)))
                .collect()
        }
        // A multi aspect always has a neutral (the aspect parser insists); without one, each label
        // is still judged alone, against a cosine of zero.
        (AspectKind::Multi, None) => cosines.iter().map(|c| sigmoid(scale * c)).collect(),
        (AspectKind::Single, _) => softmax_scaled(&cosines, scale),
    };
    aspect
        .labels
        .labels
        .iter()
        .zip(cosines.iter().zip(scores))
        .map(|(label, (&cosine, score))| Tag {
            label: label.clone(),
            score,
            cosine,
        })
        .collect()
}

/// The tags an image gets for one aspect: scored, filtered by the threshold, best first, cut to
/// `top_k`. Ties keep label order.
pub fn tag(image: &[f32], aspect: &AspectEmbeddings, logit_scale: f32) -> Vec<Tag> {
    let mut tags: Vec<Tag> = scores(image, aspect, logit_scale)
        .into_iter()
        .filter(|t| t.score >= aspect.rule.threshold)
        .collect();
    tags.sort_by(|a, b| b.score.total_cmp(&a.score));
    if let Some(k) = aspect.rule.top_k {
        tags.truncate(k);
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }

    const ALL: Rule = Rule {
        top_k: None,
        threshold: 0.0,
    };

    #[test]
    fn single_is_a_softmax_over_the_labels() {
        let a = aspect(AspectKind::Single, ALL);
        let tags = tag(&[3.0, 1.0, 0.0, 0.0], &a, 10f32.ln());
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
        let tags = scores(&image, &a, 100f32.ln());
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
            scores(&image, &a, 3.0)[0].score,
            scores(&image, &fewer, 3.0)[0].score
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
        assert_eq!(names(tag(&image, &a, 100f32.ln())), ["x", "y"]);
        let one = AspectEmbeddings {
            rule: Rule {
                top_k: Some(1),
                threshold: 0.5,
            },
            ..a.clone()
        };
        assert_eq!(names(tag(&image, &one, 100f32.ln())), ["x"]);
        let none = AspectEmbeddings {
            rule: Rule {
                top_k: None,
                threshold: 1.0,
            },
            ..a
        };
        assert!(tag(&image, &none, 10f32.ln()).is_empty());
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

    #[test]
    fn sigmoid_is_stable() {
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }
}
