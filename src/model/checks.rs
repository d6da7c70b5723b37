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

/// `value`, when it is a finite number; otherwise an error naming `name`.
pub fn finite_scalar(name: &str, value: f32) -> Result<f32> {
    if !value.is_finite() {
        bail!("{name} is {value}, not a finite number: the checkpoint is damaged");
    }
    Ok(value)
}

/// The checkpoint's `logit_scale`, checked: finite, and with a finite `exp` (the factor the
/// cosines are multiplied by). CLIP trains it clamped to ln(100); anything above ~88.7 would
/// overflow f32 and turn every probability into NaN.
pub fn logit_scale(value: f32) -> Result<f32> {
    let value = finite_scalar("logit_scale", value)?;
    if !value.exp().is_finite() {
        bail!(
            "logit_scale is {value}: exp(logit_scale) overflows (CLIP checkpoints hold about 4.6)"
        );
    }
    Ok(value)
}

/// Checks embeddings (one row per input) before they are scored: every value finite, and the
/// squared norm too (normalising would otherwise divide by infinity). `what` starts the error:
/// "image", "text".
pub fn finite_embeddings(what: &str, rows: &[Vec<f32>]) -> Result<()> {
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
