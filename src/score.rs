//! Scoring, in one place for every command: embeddings to cosines, cosines to scores through the
//! model's head, prompt ensembling, and which scores a result keeps.
//!
//! - **softmax** (CLIP's head, and any "exactly one answer" question): `softmax(exp(logit_scale) ·
//!   cos)` over the labels, as `CLIPModel(...).logits_per_image.softmax(-1)`. A constant bias would
//!   cancel, so it is left out.
//! - **independent** (SigLIP's head, and `multi` aspects): each label on its own,
//!   `sigmoid(exp(logit_scale) · cos + logit_bias)`, as transformers' zero-shot pipeline does for
//!   SigLIP; or, for a CLIP model, `sigmoid(exp(logit_scale) · (cos − cos_neutral))` against a
//!   neutral prompt: the two-way softmax between the label and saying nothing specific.

use crate::model::ScoreHead;

/// L2-normalises a vector in place; a zero vector stays zero rather than turning into NaNs.
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Prompt ensembling as in the CLIP paper (and OpenAI's ImageNet notebook): normalise each template's
/// text embedding, average them, normalise the mean.
pub fn ensemble<'a>(embeddings: impl IntoIterator<Item = &'a [f32]>) -> Vec<f32> {
    let mut sum: Vec<f32> = Vec::new();
    let mut count = 0usize;
    for e in embeddings {
        let mut e = e.to_vec();
        normalize(&mut e);
        if sum.is_empty() {
            sum = e;
        } else {
            sum.iter_mut().zip(&e).for_each(|(s, x)| *s += x);
        }
        count += 1;
    }
    if count > 0 {
        sum.iter_mut().for_each(|s| *s /= count as f32);
    }
    normalize(&mut sum);
    sum
}

pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Labels with their normalised (ensembled) text embeddings, ready to score images against.
#[derive(Debug, Clone)]
pub struct LabelEmbeddings {
    pub labels: Vec<String>,
    pub embeddings: Vec<Vec<f32>>,
}

impl LabelEmbeddings {
    /// The cosine of a *normalised* image embedding with every label, in label order.
    pub(crate) fn cosines(&self, image: &[f32]) -> Vec<f32> {
        self.embeddings.iter().map(|t| dot(t, image)).collect()
    }
}

/// How a set of cosines becomes scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scoring {
    /// One answer among the labels: a softmax over them.
    Softmax,
    /// Each label judged alone: through the head's own sigmoid (`baseline: None`), or against the
    /// cosine of a neutral prompt.
    Independent { baseline: Option<f32> },
}

impl Scoring {
    /// What a model's head means when the labels are the whole question (`classify`).
    pub fn of_head(head: &ScoreHead) -> Scoring {
        match head.kind {
            crate::model::HeadKind::Softmax => Scoring::Softmax,
            crate::model::HeadKind::Sigmoid => Scoring::Independent { baseline: None },
        }
    }

    pub(crate) fn apply(self, cosines: &[f32], head: &ScoreHead) -> Vec<f32> {
        match self {
            Scoring::Softmax => softmax_scaled(cosines, head.scale()),
            Scoring::Independent { baseline: None } => {
                cosines.iter().map(|&c| sigmoid(head.logit(c))).collect()
            }
            Scoring::Independent {
                baseline: Some(base),
            } => {
                let scale = head.scale();
                cosines
                    .iter()
                    .map(|&c| sigmoid(scale * (c - base)))
                    .collect()
            }
        }
    }
}

/// One label's score for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelScore {
    pub label: String,
    /// In 0..=1: a probability (softmax), or the label's own score (independent).
    pub score: f32,
    /// Cosine similarity of the image and label embeddings.
    pub cosine: f32,
}

/// Every label's score for one image, in label order. `image` need not be normalised.
pub fn score_labels(
    image: &[f32],
    labels: &LabelEmbeddings,
    head: &ScoreHead,
    scoring: impl FnOnce(&[f32]) -> Scoring,
) -> Vec<LabelScore> {
    let mut image = image.to_vec();
    normalize(&mut image);
    let cosines = labels.cosines(&image);
    let scores = scoring(&image).apply(&cosines, head);
    labels
        .labels
        .iter()
        .zip(cosines.iter().zip(scores))
        .map(|(label, (&cosine, score))| LabelScore {
            label: label.clone(),
            score,
            cosine,
        })
        .collect()
}

/// Which scores a result keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Selection {
    /// At most this many, best first; `None` for no limit.
    pub top_k: Option<usize>,
    /// Only scores of at least this; `None` keeps all.
    pub threshold: Option<f32>,
}

/// Filters by the threshold, sorts best first (ties keep label order, so the output is
/// deterministic) and cuts to `top_k`.
pub(crate) fn select(scores: Vec<LabelScore>, selection: Selection) -> Vec<LabelScore> {
    let mut kept: Vec<LabelScore> = match selection.threshold {
        Some(t) => scores.into_iter().filter(|s| s.score >= t).collect(),
        None => scores,
    };
    kept.sort_by(|a, b| b.score.total_cmp(&a.score));
    if let Some(k) = selection.top_k {
        kept.truncate(k);
    }
    kept
}

/// `softmax(xs * scale)`, shifted by the maximum so that large scales (CLIP's is 100) cannot overflow.
pub(crate) fn softmax_scaled(xs: &[f32], scale: f32) -> Vec<f32> {
    let max = xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
    let exps: Vec<f32> = xs.iter().map(|&x| (x * scale - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

pub(crate) fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HeadKind;

    fn head(kind: HeadKind, scale: f32, bias: f32) -> ScoreHead {
        ScoreHead {
            kind,
            logit_scale: scale.ln(),
            logit_bias: bias,
        }
    }

    fn labels() -> LabelEmbeddings {
        LabelEmbeddings {
            labels: vec!["a".into(), "b".into()],
            embeddings: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
        }
    }

    #[test]
    fn ensemble_averages_normalised_embeddings() {
        let a = [3.0f32, 0.0];
        let b = [0.0f32, 0.5];
        let e = ensemble([&a[..], &b[..]]);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((e[0] - s).abs() < 1e-6 && (e[1] - s).abs() < 1e-6, "{e:?}");
        // One template: the normalised embedding itself.
        assert_eq!(ensemble([&a[..]]), vec![1.0, 0.0]);
    }

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let p = softmax_scaled(&[0.3, 0.1, -0.2], 100.0);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[0] > p[1] && p[1] > p[2]);
        let p = softmax_scaled(&[1000.0, 999.0], 100.0);
        assert!(p.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn softmax_head_uses_cosine_times_exp_logit_scale() {
        let h = head(HeadKind::Softmax, 2.0, 0.0);
        // Unnormalised image embedding: cosine must not depend on its length.
        let p = score_labels(&[6.0, 8.0], &labels(), &h, |_| Scoring::of_head(&h));
        assert!((p[0].cosine - 0.6).abs() < 1e-6 && (p[1].cosine - 0.8).abs() < 1e-6);
        let e = (2.0f32 * 0.6).exp() / ((2.0f32 * 0.6).exp() + (2.0f32 * 0.8).exp());
        assert!((p[0].score - e).abs() < 1e-6);
    }

    #[test]
    fn sigmoid_head_scores_each_label_alone_with_its_bias() {
        let h = head(HeadKind::Sigmoid, 10.0, -5.0);
        let p = score_labels(&[6.0, 8.0], &labels(), &h, |_| Scoring::of_head(&h));
        assert!((p[0].score - sigmoid(10.0 * 0.6 - 5.0)).abs() < 1e-6);
        assert!((p[1].score - sigmoid(10.0 * 0.8 - 5.0)).abs() < 1e-6);
        // Independent: dropping a label leaves the other's score as it was.
        let one = LabelEmbeddings {
            labels: vec!["a".into()],
            embeddings: vec![vec![1.0, 0.0]],
        };
        assert_eq!(
            score_labels(&[6.0, 8.0], &one, &h, |_| Scoring::of_head(&h))[0].score,
            p[0].score
        );
    }

    #[test]
    fn a_baseline_compares_against_the_neutral_cosine() {
        let h = head(HeadKind::Softmax, 100.0, 0.0);
        let s = Scoring::Independent {
            baseline: Some(0.25),
        }
        .apply(&[0.3, 0.2], &h);
        assert!((s[0] - sigmoid(100.0 * 0.05)).abs() < 1e-6);
        assert!(s[1] < 0.5);
    }

    #[test]
    fn select_filters_sorts_and_cuts() {
        let mk = |label: &str, score| LabelScore {
            label: label.into(),
            score,
            cosine: 0.0,
        };
        let all = vec![mk("a", 0.2), mk("b", 0.5), mk("c", 0.3)];
        let names = |v: Vec<LabelScore>| v.into_iter().map(|s| s.label).collect::<Vec<_>>();
        let top2 = Selection {
            top_k: Some(2),
            threshold: None,
        };
        assert_eq!(names(select(all.clone(), top2)), ["b", "c"]);
        let above = Selection {
            top_k: None,
            threshold: Some(0.3),
        };
        assert_eq!(names(select(all, above)), ["b", "c"]);
        let ties = vec![mk("a", 0.5), mk("b", 0.5)];
        let keep = Selection {
            top_k: None,
            threshold: None,
        };
        assert_eq!(select(ties, keep)[0].label, "a");
    }

    #[test]
    fn sigmoid_is_stable() {
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }
}
