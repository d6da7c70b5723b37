//! Cheap checks that a checkpoint's numbers can give meaningful scores.
//!
//! A score depends on three things the checkpoint supplies: the learned temperature
//! (`logit_scale`), the image embedding and the text embeddings. Each is checked once it exists,
//! and a non-finite one is a model error (exit 2) rather than `"probability": null` on every
//! line. The weights themselves are not scanned: that would read every page of the checkpoint
//! (hundreds of MB) on every call, while a non-finite weight that matters shows up in the
//! embeddings it feeds, which are a few hundred floats per input. A non-finite weight that no
//! score depends on (the row of a token that no prompt uses) is harmless and not reported.

use anyhow::{bail, Result};

use super::ScoreHead;

/// `value`, when it is a finite number; otherwise an error naming `name`.
pub(crate) fn finite_scalar(name: &str, value: f32) -> Result<f32> {
    if !value.is_finite() {
        bail!("{name} is {value}, not a finite number: the checkpoint is damaged");
    }
    Ok(value)
}

/// The checkpoint's `logit_scale`, checked: finite, and with a finite `exp` (the factor the
/// cosines are multiplied by). CLIP trains it clamped to ln(100); anything above ~88.7 would
/// overflow f32 and turn every probability into NaN.
pub(crate) fn logit_scale(value: f32) -> Result<f32> {
    let value = finite_scalar("logit_scale", value)?;
    if !value.exp().is_finite() {
        bail!(
            "logit_scale is {value}: exp(logit_scale) overflows (CLIP checkpoints hold about 4.6)"
        );
    }
    Ok(value)
}

/// A loaded model's score head, checked for every family at the seam
/// ([`crate::engine::ModelPlan::load`]): `logit_scale` as [`logit_scale`] has it, a finite
/// `logit_bias`, and finite logits at both ends of the cosine range. A NaN bias would otherwise
/// print `"probability": null` for every label and make `vlm tag` return no tags (issue 21).
pub(crate) fn score_head(head: ScoreHead) -> Result<ScoreHead> {
    logit_scale(head.logit_scale)?;
    finite_scalar("logit_bias", head.logit_bias)?;
    for cosine in [-1.0, 1.0] {
        let logit = head.logit(cosine);
        if !logit.is_finite() {
            bail!(
                "logit_scale {} with logit_bias {} gives the logit {logit} at cosine {cosine}",
                head.logit_scale,
                head.logit_bias
            );
        }
    }
    Ok(head)
}

/// The largest `layer_norm_eps` accepted. Checkpoints use 1e-12 to 1e-5; an epsilon near the
/// activations' variance flattens every normalised vector towards zero and every score towards
/// the same value (1e30 gives 0.5 everywhere), which is a damaged config, not a model (issue 20).
pub(crate) const MAX_LAYER_NORM_EPS: f64 = 1.0;

/// A config's `layer_norm_eps`, named `name` in the error: `0 < eps <= 1`.
pub(crate) fn layer_norm_eps(name: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value > 0.0 && value <= MAX_LAYER_NORM_EPS) {
        bail!(
            "{name} is {value}; it must be a positive number no larger than {MAX_LAYER_NORM_EPS} \
             (checkpoints use 1e-12 to 1e-5)"
        );
    }
    Ok(())
}

/// Checks embeddings (one row per input) before they are scored: every value finite, and the
/// squared norm too (normalising would otherwise divide by infinity). `what` starts the error:
/// "image", "text".
pub(crate) fn finite_embeddings(what: &str, rows: &[Vec<f32>]) -> Result<()> {
    for row in rows {
        let finite =
            row.iter().all(|x| x.is_finite()) && row.iter().map(|x| x * x).sum::<f32>().is_finite();
        if !finite {
            bail!(
                "{what} embedding with NaN or infinite values: a weight it depends on is not \
                 finite, or the numeric type overflowed (try --dtype f32)"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_numbers_are_refused_by_name() {
        assert_eq!(finite_scalar("x", 1.5).unwrap(), 1.5);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let err = finite_scalar("logit_scale", bad).unwrap_err().to_string();
            assert!(err.starts_with("logit_scale is"), "{err}");
        }
        assert_eq!(logit_scale(4.6052).unwrap(), 4.6052);
        assert!(logit_scale(-1e30).is_ok());
        let err = logit_scale(100.0).unwrap_err().to_string();
        assert!(err.contains("overflows"), "{err}");
        assert!(logit_scale(f32::NAN).is_err());
    }

    #[test]
    fn the_head_needs_finite_parameters_and_logits() {
        use crate::model::HeadKind;
        let head = |logit_scale, logit_bias| ScoreHead {
            kind: HeadKind::Sigmoid,
            logit_scale,
            logit_bias,
        };
        assert!(score_head(head(4.7, -16.5)).is_ok());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let err = score_head(head(4.7, bad)).unwrap_err().to_string();
            assert!(err.starts_with("logit_bias is"), "{err}");
            let err = score_head(head(bad, 0.0)).unwrap_err().to_string();
            assert!(err.starts_with("logit_scale is"), "{err}");
        }
        let err = score_head(head(88.0, 3e38)).unwrap_err().to_string();
        assert!(err.contains("gives the logit inf"), "{err}");
    }

    #[test]
    fn layer_norm_eps_is_bounded_on_both_sides() {
        for good in [1e-12, 1e-5, 1.0] {
            assert!(layer_norm_eps("x", good).is_ok(), "{good}");
        }
        for bad in [0.0, -1e-5, 1.5, 1e30, f64::NAN, f64::INFINITY] {
            let err = layer_norm_eps("vision_config.layer_norm_eps", bad)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("vision_config.layer_norm_eps is"), "{err}");
        }
    }

    #[test]
    fn embeddings_with_nan_infinity_or_an_overflowing_norm_are_refused() {
        assert!(finite_embeddings("image", &[vec![0.5, -0.25], vec![0.0, 0.0]]).is_ok());
        assert!(finite_embeddings("image", &[]).is_ok());
        for bad in [
            vec![0.5, f32::NAN],
            vec![f32::INFINITY, 0.0],
            vec![3e38, 3e38],
        ] {
            let err = finite_embeddings("text", &[vec![1.0, 2.0], bad])
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("text embedding with NaN"), "{err}");
        }
    }
}
