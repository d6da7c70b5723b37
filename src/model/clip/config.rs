//! `config.json` of a Hugging Face `CLIPModel` checkpoint, parsed in full rather than matched to presets.
//!
//! Defaults are transformers' own (`models/clip/configuration_clip.py`), so that a sparse config means the
//! same thing here as it does there.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{Map, Value};

pub(crate) use crate::model::nn::Activation;
use crate::model::tower::{self, HfConfig, PatchFit, MAX_WIDTH};

/// `eos_token_id` is an int in every CLIP config seen so far, but transformers types it `int | list[int]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(i64),
    Many(Vec<i64>),
}

impl TokenIds {
    fn first(&self) -> Option<i64> {
        match self {
            TokenIds::One(id) => Some(*id),
            TokenIds::Many(ids) => ids.first().copied(),
        }
    }
}

/// `CLIPTextConfig`'s own fields: its special token ids.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct TextExtra {
    pub pad_token_id: Option<i64>,
    pub bos_token_id: Option<i64>,
    pub eos_token_id: Option<TokenIds>,
}

impl Default for TextExtra {
    /// `CLIPTextConfig`'s defaults.
    fn default() -> Self {
        Self {
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
            eos_token_id: Some(TokenIds::One(49407)),
        }
    }
}

/// `CLIPTextConfig`.
pub(crate) type TextConfig = tower::TextConfig<TextExtra>;

impl Default for TextConfig {
    /// `CLIPTextConfig`'s defaults.
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            extra: TextExtra::default(),
        }
    }
}

/// `CLIPVisionConfig`: nothing of its own.
pub(crate) type VisionConfig = tower::VisionConfig<()>;

impl Default for VisionConfig {
    /// `CLIPVisionConfig`'s defaults.
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            extra: (),
        }
    }
}

/// How the text tower picks the token whose hidden state becomes the text embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextPooling {
    /// The first position holding the highest token id. Checkpoints whose config still says
    /// `eos_token_id == 2` (all of OpenAI's) pool this way; transformers keeps it for them
    /// (`CLIPTextTransformer.forward`, see huggingface/transformers#24773).
    ArgMaxId,
    /// The first position holding this end-of-text id.
    FirstEos(u32),
}

impl TextPooling {
    /// The pooled position of each sequence, computed on the host from the ids. Never use a device
    /// arg-max for this: Candle's CUDA arg-max does not return the first index on ties, and padding
    /// with the end token makes ties.
    pub fn positions(&self, ids: &[Vec<u32>]) -> Vec<usize> {
        ids.iter()
            .map(|seq| match *self {
                TextPooling::ArgMaxId => {
                    let mut best = 0;
                    for (i, &id) in seq.iter().enumerate() {
                        if id > seq[best] {
                            best = i;
                        }
                    }
                    best
                }
                // transformers takes `(ids == eos).int().argmax()`, which is 0 when no end token is
                // present; our tokenizer always keeps the end token, but follow it anyway.
                TextPooling::FirstEos(eos) => seq.iter().position(|&id| id == eos).unwrap_or(0),
            })
            .collect()
    }
}

/// Which hidden states the vision tower pools into the image embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionPool {
    /// The class token (`CLIPVisionTransformer`; OpenCLIP `pool_type: "tok"`).
    ClassToken,
    /// The mean of the patch tokens, class token excluded (OpenCLIP `pool_type: "avg"`).
    MeanOfPatches,
}

/// Tower variants that transformers' `CLIPModel` does not have and OpenCLIP checkpoints use
/// (`open_clip/transformer.py`, `VisionTransformer` and `TextTransformer`). The defaults are
/// `CLIPModel`'s; `config.json` never changes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TowerOptions {
    /// The layer norm before the vision encoder (OpenCLIP's `no_ln_pre` drops it).
    pub vision_ln_pre: bool,
    pub vision_pool: VisionPool,
    /// The final vision layer norm on the pooled vector instead of on every token before pooling
    /// (OpenCLIP's `final_ln_after_pool`; the same thing for [`VisionPool::ClassToken`]).
    pub vision_ln_after_pool: bool,
    /// The text projection has a bias (OpenCLIP's `proj_bias`: an `nn.Linear`).
    pub text_projection_bias: bool,
    /// Overrides the pooling [`ClipConfig::text_pooling`] reads from `eos_token_id`.
    pub text_pooling: Option<TextPooling>,
}

impl Default for TowerOptions {
    fn default() -> Self {
        Self {
            vision_ln_pre: true,
            vision_pool: VisionPool::ClassToken,
            vision_ln_after_pool: false,
            text_projection_bias: false,
            text_pooling: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    /// Width of the joint embedding space (`text_projection` / `visual_projection`).
    pub projection_dim: usize,
    pub logit_scale_init_value: f64,
    pub options: TowerOptions,
}

impl HfConfig for ClipConfig {
    const MODEL_TYPE: &'static str = "clip";
    const CLASS: &'static str = "CLIPModel";

    fn from_object(obj: &Map<String, Value>) -> Result<Self> {
        // The legacy `*_config_dict` overrides as transformers' `CLIPConfig.__init__` reads them:
        // the dict is completed with the sub-config's defaults and then *replaces* every field of
        // `*_config`, so a field the dict leaves out falls back to the default, not to
        // `*_config`.
        let text = tower::sub_config::<TextConfig>(obj, "text_config", Some("text_config_dict"))?;
        let vision =
            tower::sub_config::<VisionConfig>(obj, "vision_config", Some("vision_config_dict"))?;
        let projection_dim = match obj.get("projection_dim") {
            None | Some(Value::Null) => 512,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .context("projection_dim must be a positive integer")?,
        };
        let logit_scale_init_value = obj
            .get("logit_scale_init_value")
            .and_then(Value::as_f64)
            .unwrap_or(2.6592);
        let cfg = Self {
            text,
            vision,
            projection_dim,
            logit_scale_init_value,
            options: TowerOptions::default(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl ClipConfig {
    /// Every family's bounds on the towers (`tower`), a whole number of patches, and an end token
    /// inside the vocabulary.
    pub(crate) fn validate(&self) -> Result<()> {
        let t = &self.text;
        t.check()?;
        self.vision.check(PatchFit::Exact)?;
        tower::bounded("projection_dim", self.projection_dim, MAX_WIDTH)?;
        // The pooled token is found by its id: one outside the vocabulary (or past u32) could
        // never be found, and every prompt would pool at position 0.
        if let Some(id) = t.extra.eos_token_id.as_ref().and_then(TokenIds::first) {
            if id >= 0 && usize::try_from(id).map_or(true, |id| id >= t.vocab_size) {
                bail!(
                    "text_config.eos_token_id {id} is outside the vocabulary (vocab_size {})",
                    t.vocab_size
                );
            }
        }
        Ok(())
    }

    pub fn text_pooling(&self) -> TextPooling {
        if let Some(pooling) = self.options.text_pooling {
            return pooling;
        }
        match self
            .text
            .extra
            .eos_token_id
            .as_ref()
            .and_then(TokenIds::first)
        {
            Some(2) => TextPooling::ArgMaxId,
            Some(id) if id >= 0 => {
                u32::try_from(id).map_or(TextPooling::FirstEos(49407), TextPooling::FirstEos)
            }
            _ => TextPooling::FirstEos(49407),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn fixture(path: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(path)
    }

    #[test]
    fn parses_the_published_openai_base_patch32_config() {
        let cfg =
            ClipConfig::from_file(&fixture("configs/openai-clip-vit-base-patch32.json")).unwrap();
        assert_eq!(cfg.projection_dim, 512);
        assert_eq!(cfg.text.hidden_size, 512);
        assert_eq!(cfg.text.num_hidden_layers, 12);
        assert_eq!(cfg.text.num_attention_heads, 8);
        assert_eq!(cfg.text.intermediate_size, 2048);
        assert_eq!(cfg.text.max_position_embeddings, 77);
        assert_eq!(cfg.text.vocab_size, 49408);
        assert_eq!(cfg.text.hidden_act, Activation::QuickGelu);
        assert_eq!(cfg.vision.hidden_size, 768);
        assert_eq!(cfg.vision.num_hidden_layers, 12);
        assert_eq!(cfg.vision.num_attention_heads, 12);
        assert_eq!(cfg.vision.patch_size, 32);
        assert_eq!(cfg.vision.image_size, 224);
        assert_eq!(cfg.vision.grid(), 7);
        assert!((cfg.logit_scale_init_value - 2.6592).abs() < 1e-9);
        // The published config still says eos_token_id = 2, so the text pools at the arg-max id.
        assert_eq!(cfg.text_pooling(), TextPooling::ArgMaxId);
    }

    #[test]
    fn parses_the_reserialized_config_identically() {
        let a =
            ClipConfig::from_file(&fixture("configs/openai-clip-vit-base-patch32.json")).unwrap();
        let b = ClipConfig::from_file(&fixture("configs/reserialized-config.json")).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn config_dict_overrides_replace_the_whole_sub_config() {
        let cfg = ClipConfig::from_json(
            r#"{"model_type":"clip","projection_dim":768,
                "text_config":{"hidden_size":512,"num_attention_heads":8,"hidden_act":"gelu"},
                "text_config_dict":{"hidden_size":768,"num_attention_heads":12},
                "vision_config":{"hidden_size":768},
                "vision_config_dict":{"hidden_size":1024,"patch_size":14,"num_attention_heads":16,
                                      "num_hidden_layers":24,"intermediate_size":4096}}"#,
        )
        .unwrap();
        assert_eq!(cfg.text.hidden_size, 768);
        assert_eq!(cfg.text.num_attention_heads, 12);
        // Not in the dict: the default wins over text_config, as in transformers.
        assert_eq!(cfg.text.hidden_act, Activation::QuickGelu);
        assert_eq!(cfg.vision.hidden_size, 1024);
        assert_eq!(cfg.vision.patch_size, 14);
        assert_eq!(cfg.vision.grid(), 16);
    }

    #[test]
    fn gelu_and_eos_pooling_of_laion_style_configs() {
        let cfg = ClipConfig::from_json(
            r#"{"model_type":"clip","text_config":{"hidden_act":"gelu","eos_token_id":49407},
                "vision_config":{"hidden_act":"gelu","layer_norm_eps":1e-6}}"#,
        )
        .unwrap();
        assert_eq!(cfg.text.hidden_act, Activation::Gelu);
        assert_eq!(cfg.vision.layer_norm_eps, 1e-6);
        assert_eq!(cfg.text_pooling(), TextPooling::FirstEos(49407));
    }

    #[test]
    fn refuses_other_model_types_and_bad_sizes() {
        let err = ClipConfig::from_json(r#"{"model_type":"siglip"}"#).unwrap_err();
        assert!(format!("{err:#}").contains("unsupported model_type \"siglip\""));
        assert!(ClipConfig::from_json(r#"{"text_config":{}}"#).is_err());
        let err = ClipConfig::from_json(
            r#"{"model_type":"clip","vision_config":{"hidden_size":100,"num_attention_heads":12}}"#,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("not divisible"));
        let err =
            ClipConfig::from_json(r#"{"model_type":"clip","vision_config":{"hidden_act":"relu"}}"#)
                .unwrap_err();
        assert!(format!("{err:#}").contains("vision_config"), "{err:#}");
    }

    #[test]
    fn every_size_is_bounded_with_a_message_naming_it() {
        let cases = [
            (
                r#""vision_config":{"image_size":274877907168}"#,
                "vision_config.image_size is 274877907168; vlm supports at most 4096",
            ),
            (
                r#""vision_config":{"image_size":4096,"patch_size":32}"#,
                "makes 16384 patches",
            ),
            (
                r#""vision_config":{"patch_size":448}"#,
                "not a multiple of patch_size",
            ),
            (
                r#""vision_config":{"hidden_size":18446744073709551615}"#,
                "vision_config.hidden_size is 18446744073709551615",
            ),
            (
                r#""vision_config":{"intermediate_size":0}"#,
                "vision_config.intermediate_size must be positive",
            ),
            (
                r#""vision_config":{"num_hidden_layers":1000000}"#,
                "vision_config.num_hidden_layers is 1000000",
            ),
            (
                r#""vision_config":{"layer_norm_eps":-1.0}"#,
                "vision_config.layer_norm_eps is -1",
            ),
            (
                r#""vision_config":{"layer_norm_eps":0.0}"#,
                "must be a positive number",
            ),
            (
                r#""text_config":{"layer_norm_eps":1e30}"#,
                "text_config.layer_norm_eps is 1000000000000000000000000000000",
            ),
            (
                r#""text_config":{"vocab_size":4294967297}"#,
                "text_config.vocab_size is 4294967297",
            ),
            (
                r#""text_config":{"max_position_embeddings":100000}"#,
                "text_config.max_position_embeddings is 100000",
            ),
            (
                r#""text_config":{"num_hidden_layers":4096}"#,
                "text_config.num_hidden_layers is 4096",
            ),
            (
                r#""text_config":{"eos_token_id":4294967296}"#,
                "eos_token_id 4294967296 is outside the vocabulary",
            ),
            (
                r#""text_config":{"eos_token_id":49408}"#,
                "eos_token_id 49408 is outside",
            ),
            (
                r#""projection_dim":1e300"#,
                "projection_dim must be a positive integer",
            ),
            (
                r#""projection_dim":1000000000"#,
                "projection_dim is 1000000000",
            ),
        ];
        for (fields, want) in cases {
            let json = format!(r#"{{"model_type":"clip",{fields}}}"#);
            let err = format!("{:#}", ClipConfig::from_json(&json).unwrap_err());
            assert!(err.contains(want), "{fields}: {err} should say {want}");
        }
        // The largest sizes in use load.
        let cfg = ClipConfig::from_json(
            r#"{"model_type":"clip","projection_dim":1280,
                "text_config":{"hidden_size":1280,"num_attention_heads":20,"num_hidden_layers":32,
                               "intermediate_size":5120,"max_position_embeddings":248,
                               "vocab_size":250000,"eos_token_id":1},
                "vision_config":{"hidden_size":1664,"num_attention_heads":16,"num_hidden_layers":48,
                                 "intermediate_size":8192,"image_size":448,"patch_size":14}}"#,
        )
        .unwrap();
        assert_eq!(cfg.vision.grid(), 32);
    }

    #[test]
    fn pooling_positions_follow_transformers() {
        let ids = vec![
            vec![49406, 320, 2368, 49407, 49407, 49407],
            vec![49406, 320, 49407],
        ];
        assert_eq!(TextPooling::ArgMaxId.positions(&ids), vec![3, 2]);
        assert_eq!(TextPooling::FirstEos(49407).positions(&ids), vec![3, 2]);
        // Padding with id 0 after the end token: still the first end token.
        let padded = vec![vec![49406, 320, 49407, 0, 0]];
        assert_eq!(TextPooling::FirstEos(49407).positions(&padded), vec![2]);
        assert_eq!(TextPooling::FirstEos(7).positions(&padded), vec![0]);
    }
}
