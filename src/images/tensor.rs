//! Preprocessed images stacked into the vision tower's input tensor.

use candle_core::{Device, Tensor};

use super::config::PreprocessConfig;

/// Stacks preprocessed images into an `[N, 3, H, W]` float32 tensor. Every image must have
/// the config's fixed output size ([`PreprocessConfig::output_size`]).
pub fn to_tensor(
    batch: &[Vec<f32>],
    cfg: &PreprocessConfig,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let (w, h) = cfg.output_size().ok_or_else(|| {
        candle_core::Error::Msg(
            "the preprocessor config has no fixed output size (no center crop and no exact resize), so images cannot be batched".into(),
        )
    })?;
    let (w, h) = (w as usize, h as usize);
    let per_image = 3 * h * w;
    let mut data = Vec::with_capacity(per_image * batch.len());
    for (i, px) in batch.iter().enumerate() {
        if px.len() != per_image {
            return Err(candle_core::Error::Msg(format!(
                "image {i} in the batch has {} values, expected 3x{h}x{w} = {per_image}",
                px.len()
            )));
        }
        data.extend_from_slice(px);
    }
    Tensor::from_vec(data, (batch.len(), 3, h, w), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::transform::preprocess;
    use image::{Rgb, RgbImage};

    #[test]
    fn to_tensor_stacks_batches() {
        let cfg = PreprocessConfig::default();
        let a = preprocess(&RgbImage::from_pixel(5, 9, Rgb([1, 2, 3])), &cfg).unwrap();
        let b = preprocess(&RgbImage::from_pixel(9, 5, Rgb([4, 5, 6])), &cfg).unwrap();
        let t = to_tensor(&[a.clone(), b], &cfg, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3, 224, 224]);
        assert_eq!(t.dtype(), candle_core::DType::F32);
        assert_eq!(
            t.get(0)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            a
        );
        assert!(to_tensor(&[vec![0.0; 10]], &cfg, &Device::Cpu).is_err());
        let t = to_tensor(&[], &cfg, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[0, 3, 224, 224]);
    }
}
