//! `config.json` of a Hugging Face `SiglipModel` checkpoint (SigLIP and the fixed-resolution SigLIP 2
//! checkpoints, both `model_type` "siglip"), parsed in full.
//!
//! Defaults are transformers' own (`models/siglip/configuration_siglip.py`): the published configs are
//! sparse (google/siglip2-base-patch16-224's `vision_config` holds only its `model_type`), so a missing
//! field must mean here what it means there.
//!
//! Also the family's image processor class ([`IMAGE_PROCESSOR`]): `SiglipImageProcessor`'s
//! defaults, which `preprocessor_config.json` leaves to the class.

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::images::{Convention, CropSize, PreprocessConfig, ProcessorClass, Resample, ResizeSize};
use crate::model::nn::Activation;
use crate::model::tower::{self, HfConfig, PatchFit, MAX_WIDTH};
use crate::model::TextNormalization;

/// Gemma's vocabulary size: the text tower of every SigLIP 2 checkpoint, whose tokenizer is
/// `GemmaTokenizer` (see [`SiglipConfig::text_normalization`]).
pub(crate) const GEMMA_VOCAB_SIZE: usize = 256_000;

/// `SiglipTextConfig`'s own field.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub(crate) struct TextExtra {
    /// Width of the text `head` output; `None` (the default) means `hidden_size`.
    pub projection_size: Option<usize>,
}

/// `SiglipTextConfig`. Its `pad_token_id` / `bos_token_id` / `eos_token_id` defaults (1, 49406,
/// 49407) are CLIP's and match no SigLIP tokenizer; transformers' model never reads them (the text
/// is pooled at the last position), and neither does vlm: the padding id comes from the tokenizer.
pub(crate) type TextConfig = tower::TextConfig<TextExtra>;

impl Default for TextConfig {
    /// `SiglipTextConfig`'s defaults.
    fn default() -> Self {
        Self {
            vocab_size: 32000,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 64,
            hidden_act: Activation::GeluTanh,
            layer_norm_eps: 1e-6,
            extra: TextExtra::default(),
        }
    }
}

impl TextConfig {
    /// The text embedding's width: `projection_size`, else `hidden_size`.
    pub(crate) fn projection_size(&self) -> usize {
        self.extra.projection_size.unwrap_or(self.hidden_size)
    }
}

/// `SiglipVisionConfig`'s own field.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub(crate) struct VisionExtra {
    /// The attention-pooling head whose output is the image embedding.
    pub vision_use_head: bool,
}

impl Default for VisionExtra {
    fn default() -> Self {
        Self {
            vision_use_head: true,
        }
    }
}

/// `SiglipVisionConfig`.
pub(crate) type VisionConfig = tower::VisionConfig<VisionExtra>;

impl Default for VisionConfig {
    /// `SiglipVisionConfig`'s defaults.
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            hidden_act: Activation::GeluTanh,
            layer_norm_eps: 1e-6,
            extra: VisionExtra::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SiglipConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
}

impl HfConfig for SiglipConfig {
    const MODEL_TYPE: &'static str = "siglip";
    const CLASS: &'static str = "SiglipModel";

    fn from_object(obj: &Map<String, Value>) -> Result<Self> {
        let cfg = Self {
            text: tower::sub_config(obj, "text_config", None)?,
            vision: tower::sub_config(obj, "vision_config", None)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl SiglipConfig {
    /// Every family's bounds on the towers (`tower`); the patch grid may leave pixels out
    /// ([`PatchFit::Floor`]); a pooling head, and text and image embeddings of one width.
    fn validate(&self) -> Result<()> {
        let t = &self.text;
        let v = &self.vision;
        t.check()?;
        v.check(PatchFit::Floor)?;
        tower::bounded(
            "text_config.projection_size",
            t.projection_size(),
            MAX_WIDTH,
        )?;
        if !v.extra.vision_use_head {
            bail!("vision_config.vision_use_head is false: without its attention-pooling head the vision tower gives no image embedding");
        }
        if t.projection_size() != v.hidden_size {
            bail!(
                "text_config.projection_size {} differs from vision_config.hidden_size {}: text and image embeddings would not meet in one space",
                t.projection_size(),
                v.hidden_size
            );
        }
        Ok(())
    }

    /// Which text canonicalisation the checkpoint's tokenizer expects. transformers picks the
    /// tokenizer from `tokenizer_config.json`: SigLIP (v1) checkpoints use `SiglipTokenizer`, which
    /// lowercases, drops ASCII punctuation and collapses whitespace in Python before SentencePiece
    /// (nothing `tokenizer.json` can express); SigLIP 2 checkpoints use `GemmaTokenizer`, which
    /// passes the text on as is. vlm reads only `config.json` here, and tells them apart by the
    /// text vocabulary: Gemma's 256,000 pieces are SigLIP 2's (every published SigLIP 2 checkpoint),
    /// anything else is a SigLIP tokenizer (32,000 for the English checkpoints, 250,000 for the
    /// multilingual one).
    pub(crate) fn text_normalization(&self) -> TextNormalization {
        if self.text.vocab_size == GEMMA_VOCAB_SIZE {
            TextNormalization::None
        } else {
            TextNormalization::Family(super::text::CANONICAL)
        }
    }
}

/// `SiglipImageProcessor`, `...Fast`, `...Pil` (SigLIP and SigLIP 2 alike): other defaults, and
/// no crop step, whatever a `do_center_crop` key says (transformers ignores it there).
pub(crate) const IMAGE_PROCESSOR: ProcessorClass = ProcessorClass {
    name_prefix: "SiglipImageProcessor",
    defaults: image_processor_defaults,
    crops: false,
};

/// `SiglipImageProcessor`'s class attributes: resize straight to 224×224 (no aspect ratio kept),
/// no center crop (the class has no crop step at all), rescale, normalise with mean = std = 0.5
/// (`IMAGENET_STANDARD_MEAN`/`_STD`).
pub(crate) fn image_processor_defaults() -> PreprocessConfig {
    PreprocessConfig {
        do_resize: true,
        size: ResizeSize::Exact {
            height: 224,
            width: 224,
        },
        resample: Resample::Bicubic,
        do_center_crop: false,
        crop_size: CropSize {
            height: 224,
            width: 224,
        },
        do_rescale: true,
        rescale_factor: 1.0 / 255.0,
        do_normalize: true,
        image_mean: [0.5; 3],
        image_std: [0.5; 3],
        do_convert_rgb: true,
        convention: Convention::Transformers,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn siglip_processors_resize_exactly_without_a_crop() {
        // The published google/siglip-base-patch16-224 and google/siglip2-base-patch16-224
        // files: no do_center_crop key, which for CLIP would mean a 224 crop; SigLIP 2 says
        // "do_convert_rgb": null (the class default, true, stays).
        let classes = crate::model::processor_classes();
        for (name, resample) in [
            ("siglip-base-patch16-224", Resample::Bicubic),
            ("siglip2-base-patch16-224", Resample::Bilinear),
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/configs/siglip")
                .join(name)
                .join("preprocessor_config.json");
            let cfg = PreprocessConfig::from_file_with(&path, &classes).unwrap();
            assert_eq!(
                cfg,
                PreprocessConfig {
                    resample,
                    ..image_processor_defaults()
                },
                "{name}"
            );
            assert_eq!(cfg.output_size(), Some((224, 224)));
            assert_eq!(cfg.resized_size(640, 480).unwrap(), (224, 224));
        }
        let cfg = PreprocessConfig::from_json_with(
            r#"{"image_processor_type": "SiglipImageProcessorFast", "do_center_crop": true,
                "size": {"height": 384, "width": 384}}"#,
            &classes,
        )
        .unwrap();
        assert!(!cfg.do_center_crop);
        assert_eq!(cfg.output_size(), Some((384, 384)));
        assert_eq!(cfg.image_mean, [0.5; 3]);
    }

    fn published(name: &str) -> SiglipConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/configs/siglip")
            .join(name)
            .join("config.json");
        SiglipConfig::from_file(&path).unwrap()
    }

    /// What every published config leaves to the defaults.
    fn assert_common_defaults(cfg: &SiglipConfig) {
        assert_eq!(cfg.text.max_position_embeddings, 64);
        assert_eq!(cfg.text.hidden_act, Activation::GeluTanh);
        assert_eq!(cfg.text.layer_norm_eps, 1e-6);
        assert_eq!(cfg.vision.hidden_act, Activation::GeluTanh);
        assert_eq!(cfg.vision.layer_norm_eps, 1e-6);
        assert_eq!(cfg.vision.num_channels, 3);
        assert!(cfg.vision.extra.vision_use_head);
    }

    #[test]
    fn parses_siglip_base_patch16_224() {
        let cfg = published("siglip-base-patch16-224");
        assert_common_defaults(&cfg);
        assert_eq!(cfg.text.vocab_size, 32000);
        assert_eq!(cfg.text.hidden_size, 768);
        assert_eq!(cfg.text.intermediate_size, 3072);
        assert_eq!(cfg.text.num_attention_heads, 12);
        assert_eq!(cfg.text.num_hidden_layers, 12); // default
        assert_eq!(cfg.text.extra.projection_size, None);
        assert_eq!(cfg.text.projection_size(), 768);
        assert_eq!(cfg.vision.hidden_size, 768);
        assert_eq!(cfg.vision.intermediate_size, 3072);
        assert_eq!(cfg.vision.num_hidden_layers, 12);
        assert_eq!(cfg.vision.num_attention_heads, 12);
        assert_eq!(cfg.vision.image_size, 224);
        assert_eq!(cfg.vision.patch_size, 16);
        assert_eq!(cfg.vision.grid(), 14);
        assert_eq!(
            cfg.text_normalization(),
            TextNormalization::Family(crate::model::siglip::text::CANONICAL)
        );
    }

    #[test]
    fn parses_siglip_so400m_patch14_384() {
        let cfg = published("siglip-so400m-patch14-384");
        assert_common_defaults(&cfg);
        assert_eq!(cfg.text.vocab_size, 32000); // default
        assert_eq!(cfg.text.hidden_size, 1152);
        assert_eq!(cfg.text.intermediate_size, 4304);
        assert_eq!(cfg.text.num_attention_heads, 16);
        assert_eq!(cfg.text.num_hidden_layers, 27);
        assert_eq!(cfg.text.projection_size(), 1152);
        assert_eq!(cfg.vision.hidden_size, 1152);
        assert_eq!(cfg.vision.intermediate_size, 4304);
        assert_eq!(cfg.vision.num_hidden_layers, 27);
        assert_eq!(cfg.vision.num_attention_heads, 16);
        assert_eq!(cfg.vision.image_size, 384);
        assert_eq!(cfg.vision.patch_size, 14);
        // 384 is not a multiple of 14: the convolution sees 27 patches of 14 (378 pixels) per side.
        assert_eq!(cfg.vision.grid(), 27);
        assert_eq!(
            cfg.text_normalization(),
            TextNormalization::Family(crate::model::siglip::text::CANONICAL)
        );
    }

    #[test]
    fn parses_siglip2_base_patch16_224_from_defaults_only() {
        let cfg = published("siglip2-base-patch16-224");
        assert_common_defaults(&cfg);
        assert_eq!(cfg.text.vocab_size, 256000);
        assert_eq!(cfg.text.hidden_size, 768);
        assert_eq!(cfg.text.intermediate_size, 3072);
        assert_eq!(cfg.text.num_attention_heads, 12);
        assert_eq!(cfg.text.num_hidden_layers, 12);
        assert_eq!(cfg.text.projection_size(), 768);
        assert_eq!(cfg.vision, VisionConfig::default());
        assert_eq!(cfg.vision.image_size, 224);
        assert_eq!(cfg.vision.patch_size, 16);
        assert_eq!(cfg.vision.grid(), 14);
        assert_eq!(cfg.text_normalization(), TextNormalization::None);
    }

    #[test]
    fn parses_siglip2_so400m_patch14_384() {
        let cfg = published("siglip2-so400m-patch14-384");
        assert_common_defaults(&cfg);
        assert_eq!(cfg.text.vocab_size, 256000);
        assert_eq!(cfg.text.hidden_size, 1152);
        assert_eq!(cfg.text.intermediate_size, 4304);
        assert_eq!(cfg.text.num_attention_heads, 16);
        assert_eq!(cfg.text.num_hidden_layers, 27);
        assert_eq!(cfg.text.extra.projection_size, Some(1152));
        assert_eq!(cfg.vision.hidden_size, 1152);
        assert_eq!(cfg.vision.num_hidden_layers, 27);
        assert_eq!(cfg.vision.image_size, 384);
        assert_eq!(cfg.vision.patch_size, 14);
        assert_eq!(cfg.vision.grid(), 27);
        assert_eq!(cfg.text_normalization(), TextNormalization::None);
    }

    #[test]
    fn refuses_the_naflex_config_and_bad_sizes() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/configs/siglip/siglip2-base-patch16-naflex/config.json");
        let err = SiglipConfig::from_file(&path).unwrap_err();
        assert!(
            format!("{err:#}").contains("unsupported model_type \"siglip2\""),
            "{err:#}"
        );
        let err = SiglipConfig::from_json(
            r#"{"model_type":"siglip","text_config":{"projection_size":512}}"#,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("projection_size 512"),
            "{err:#}"
        );
        let err = SiglipConfig::from_json(
            r#"{"model_type":"siglip","vision_config":{"vision_use_head":false}}"#,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("vision_use_head"), "{err:#}");
        let err =
            SiglipConfig::from_json(r#"{"model_type":"siglip","vision_config":{"image_size":8}}"#)
                .unwrap_err();
        assert!(
            format!("{err:#}").contains("smaller than patch_size"),
            "{err:#}"
        );
        let err = SiglipConfig::from_json(
            r#"{"model_type":"siglip","text_config":{"hidden_act":"relu"}}"#,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("text_config"), "{err:#}");
        assert!(SiglipConfig::from_json(r#"{"model_type":"siglip","text_config":3}"#).is_err());
        for (bad, want) in [
            (
                r#""vision_config":{"layer_norm_eps":-1e-5}"#,
                "vision_config.layer_norm_eps is -0.00001",
            ),
            (
                r#""text_config":{"layer_norm_eps":1e30}"#,
                "text_config.layer_norm_eps is 1000000000000000000000000000000",
            ),
        ] {
            let json = format!(r#"{{"model_type":"siglip",{bad}}}"#);
            let err = format!("{:#}", SiglipConfig::from_json(&json).unwrap_err());
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn the_token_id_fields_are_read_and_ignored() {
        let cfg = SiglipConfig::from_json(
            r#"{"model_type":"siglip","text_config":{"pad_token_id":0,"eos_token_id":1,"bos_token_id":2}}"#,
        )
        .unwrap();
        assert_eq!(cfg.text, TextConfig::default());
    }
}
