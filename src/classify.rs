//! Zero-shot classification: pure functions from embeddings to ranked, typed results.

use serde::{Deserialize, Serialize};

/// One ranked label for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prediction {
    pub label: String,
    /// Softmax over all labels of `cosine * exp(logit_scale)`.
    pub probability: f32,
    /// Cosine similarity of the image and label embeddings.
    pub cosine: f32,
}

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

/// Labels with their normalised (ensembled) text embeddings, ready to score images against.
#[derive(Debug, Clone)]
pub struct LabelEmbeddings {
    pub labels: Vec<String>,
    pub embeddings: Vec<Vec<f32>>,
}

/// Scores of one image against every label, in label order.
pub fn scores(image: &[f32], labels: &LabelEmbeddings, logit_scale: f32) -> Vec<Prediction> {
    let mut image = image.to_vec();
    normalize(&mut image);
    let cosines: Vec<f32> = labels
        .embeddings
        .iter()
        .map(|t| t.iter().zip(&image).map(|(a, b)| a * b).sum())
        .collect();
    let probs = softmax_scaled(&cosines, logit_scale.exp());
    labels
        .labels
        .iter()
        .zip(cosines.iter().zip(probs))
        .map(|(label, (&cosine, probability))| Prediction {
            label: label.clone(),
            probability,
            cosine,
        })
        .collect()
}

/// `softmax(xs * scale)`, shifted by the maximum so that large scales (CLIP's is 100) cannot overflow.
pub fn softmax_scaled(xs: &[f32], scale: f32) -> Vec<f32> {
    let max = xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
    let exps: Vec<f32> = xs.iter().map(|&x| (x * scale - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Best first; ties keep label order, so the output is deterministic. `top_k` of `None` keeps all.
pub fn rank(mut predictions: Vec<Prediction>, top_k: Option<usize>) -> Vec<Prediction> {
    predictions.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    if let Some(k) = top_k {
        predictions.truncate(k);
    }
    predictions
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn scores_use_cosine_times_exp_logit_scale() {
        let labels = LabelEmbeddings {
            labels: vec!["a".into(), "b".into()],
            embeddings: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
        };
        // Unnormalised image embedding: cosine must not depend on its length.
        let p = scores(&[6.0, 8.0], &labels, 2.0f32.ln());
        assert!((p[0].cosine - 0.6).abs() < 1e-6 && (p[1].cosine - 0.8).abs() < 1e-6);
        let e = (2.0f32 * 0.6).exp() / ((2.0f32 * 0.6).exp() + (2.0f32 * 0.8).exp());
        assert!((p[0].probability - e).abs() < 1e-6);
    }

    #[test]
    fn rank_sorts_and_cuts() {
        let mk = |label: &str, probability| Prediction {
            label: label.into(),
            probability,
            cosine: 0.0,
        };
        let r = rank(vec![mk("a", 0.2), mk("b", 0.5), mk("c", 0.3)], Some(2));
        let names: Vec<_> = r.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(rank(vec![mk("a", 0.5), mk("b", 0.5)], None)[0].label, "a");
    }
}
