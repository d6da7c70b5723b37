//! `open_clip_config.json`: `{"model_cfg": {...}, "preprocess_cfg": {...}}`, as open_clip's
//! `create_model("local-dir:DIR" | "hf-hub:org/name")` reads it (`factory.py`), into the CLIP
//! towers' config plus what only OpenCLIP has.
//!
//! `model_cfg` holds the keyword arguments of open_clip's `CLIP` class (`model.py`), with
//! `vision_cfg` / `text_cfg` the fields of its `CLIPVisionCfg` / `CLIPTextCfg` dataclasses.
//! open_clip fails on a field those classes do not have, and so does this parser; a field vlm
//! reads but whose value it does not implement is refused by name, in one line.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::images::{Convention, CropSize, PreprocessConfig, Resample, ResizeSize};
use crate::model::clip::config::{TextConfig, TextExtra, TokenIds, VisionConfig};
use crate::model::clip::{ClipConfig, TextPooling, TowerOptions, VisionPool};
use crate::model::nn::Activation;

use super::tokenizer;

/// open_clip's `OPENAI_DATASET_MEAN` / `_STD` (`constants.py`), `PreprocessCfg`'s defaults.
const OPENAI_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const OPENAI_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Which `SimpleTokenizer` clean function the text goes through (`tokenizer_kwargs.clean`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clean {
    /// `"lower"`, the default.
    Lower,
    Whitespace,
    Canonicalize,
}

/// A parsed `open_clip_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenClipConfig {
    /// The towers, as the CLIP family builds them.
    pub clip: ClipConfig,
    /// `custom_text`: the text tower's tensors are under `text.` (open_clip's `CustomTextCLIP`).
    pub text_prefix: &'static str,
    /// Layer scale (`ls_init_value`) in the vision / text blocks: `ls_1.gamma`, `ls_2.gamma`.
    pub vision_layer_scale: bool,
    pub text_layer_scale: bool,
    /// `init_logit_bias`: the checkpoint has a `logit_bias` and the head is a sigmoid.
    pub logit_bias: bool,
    pub clean: Clean,
    pub preprocess: PreprocessConfig,
}

/// `CLIPVisionCfg` (open_clip 3.3 `model.py`): every field, so that an unknown one is refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
// Every field is listed so that only what open_clip itself would reject is unknown; some never
// change inference (patch_dropout, output_tokens, ...) and are not read.
#[allow(dead_code)]
struct VisionCfg {
    layers: Option<Value>,
    width: Option<usize>,
    head_width: Option<usize>,
    mlp_ratio: Option<f64>,
    patch_size: Option<Value>,
    image_size: Option<Value>,
    ls_init_value: Option<f64>,
    patch_dropout: Option<f64>,
    attentional_pool: Option<Value>,
    attn_pooler_queries: Option<Value>,
    attn_pooler_heads: Option<Value>,
    no_ln_pre: Option<bool>,
    pos_embed_type: Option<String>,
    final_ln_after_pool: Option<bool>,
    pool_type: Option<String>,
    output_tokens: Option<bool>,
    act_kwargs: Option<Value>,
    norm_kwargs: Option<Value>,
    block_type: Option<String>,
    qk_norm: Option<bool>,
    scaled_cosine_attn: Option<bool>,
    scale_heads: Option<bool>,
    scale_attn_inner: Option<bool>,
    scale_attn: Option<bool>,
    scale_fc: Option<bool>,
    timm_model_name: Option<String>,
    timm_model_pretrained: Option<Value>,
    timm_pool: Option<Value>,
    timm_proj: Option<Value>,
    timm_proj_bias: Option<Value>,
    timm_drop: Option<Value>,
    timm_drop_path: Option<Value>,
}

/// `CLIPTextCfg` (open_clip 3.3 `model.py`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
// Every field is listed so that only what open_clip itself would reject is unknown; some never
// change inference (patch_dropout, output_tokens, ...) and are not read.
#[allow(dead_code)]
struct TextCfg {
    context_length: Option<usize>,
    vocab_size: Option<usize>,
    hf_tokenizer_name: Option<String>,
    tokenizer_mode: Option<Value>,
    tokenizer_kwargs: Option<serde_json::Map<String, Value>>,
    width: Option<usize>,
    heads: Option<usize>,
    layers: Option<usize>,
    mlp_ratio: Option<f64>,
    ls_init_value: Option<f64>,
    embed_cls: Option<bool>,
    pad_id: Option<i64>,
    eos_id: Option<i64>,
    no_causal_mask: Option<bool>,
    final_ln_after_pool: Option<bool>,
    pool_type: Option<String>,
    proj_bias: Option<bool>,
    proj_type: Option<String>,
    output_tokens: Option<bool>,
    act_kwargs: Option<Value>,
    norm_kwargs: Option<Value>,
    block_type: Option<String>,
    qk_norm: Option<bool>,
    scaled_cosine_attn: Option<bool>,
    scale_heads: Option<bool>,
    scale_attn_inner: Option<bool>,
    scale_attn: Option<bool>,
    scale_fc: Option<bool>,
    hf_model_name: Option<String>,
    hf_model_pretrained: Option<Value>,
    hf_proj_type: Option<Value>,
    hf_pooler_type: Option<Value>,
}

/// The keyword arguments of open_clip's `CLIP` (plus `custom_text`, which `create_model` pops).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
// Every field is listed so that only what open_clip itself would reject is unknown; some never
// change inference (patch_dropout, output_tokens, ...) and are not read.
#[allow(dead_code)]
struct ModelCfg {
    embed_dim: usize,
    vision_cfg: Value,
    text_cfg: Value,
    quick_gelu: Option<bool>,
    init_logit_scale: Option<f64>,
    init_logit_bias: Option<f64>,
    nonscalar_logit_scale: Option<bool>,
    custom_text: Option<bool>,
    multimodal_cfg: Option<Value>,
    cast_dtype: Option<Value>,
    output_dict: Option<bool>,
}

/// `PreprocessCfg`'s fields (`transform.py`); others are dropped, as `merge_preprocess_dict` does.
#[derive(Debug, Default, Deserialize)]
struct PreprocessCfg {
    mode: Option<String>,
    mean: Option<Value>,
    std: Option<Value>,
    interpolation: Option<String>,
    resize_mode: Option<String>,
    fill_color: Option<Value>,
}

/// A square side given as an int or an `[h, w]` pair with `h == w`.
fn square(v: &Value, name: &str) -> Result<usize> {
    let side = |v: &Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
    match v {
        Value::Array(a) if a.len() == 2 => match (side(&a[0]), side(&a[1])) {
            (Some(h), Some(w)) if h == w => Ok(h),
            _ => bail!("{name} {v}: vlm runs square inputs only"),
        },
        _ => side(v).with_context(|| format!("{name} {v} is not a positive integer")),
    }
}

/// `norm_kwargs`: only `eps` is implemented.
fn eps(kwargs: Option<&Value>, tower: &str) -> Result<f64> {
    let Some(kwargs) = kwargs.filter(|v| !v.is_null()) else {
        return Ok(1e-5);
    };
    let obj = kwargs
        .as_object()
        .with_context(|| format!("{tower}.norm_kwargs {kwargs} is not an object"))?;
    if let Some(key) = obj.keys().find(|k| *k != "eps") {
        bail!("{tower}.norm_kwargs.{key} is not implemented (vlm reads eps only)");
    }
    match obj.get("eps") {
        None => Ok(1e-5),
        Some(v) => v
            .as_f64()
            .with_context(|| format!("{tower}.norm_kwargs.eps {v} is not a number")),
    }
}

/// The MLP activation: `quick_gelu` for the model, `act_kwargs` for the tower (nn.GELU's
/// `approximate`).
fn activation(quick_gelu: bool, kwargs: Option<&Value>, tower: &str) -> Result<Activation> {
    let kwargs = kwargs
        .filter(|v| !v.is_null())
        .map(|v| {
            v.as_object()
                .with_context(|| format!("{tower}.act_kwargs {v} is not an object"))
        })
        .transpose()?;
    let Some(kwargs) = kwargs.filter(|k| !k.is_empty()) else {
        return Ok(if quick_gelu {
            Activation::QuickGelu
        } else {
            Activation::Gelu
        });
    };
    if quick_gelu {
        bail!("{tower}.act_kwargs with quick_gelu: open_clip's QuickGELU takes no arguments");
    }
    if let Some(key) = kwargs.keys().find(|k| *k != "approximate") {
        bail!("{tower}.act_kwargs.{key} is not implemented (vlm reads approximate only)");
    }
    match kwargs.get("approximate").and_then(Value::as_str) {
        Some("none") | None => Ok(Activation::Gelu),
        Some("tanh") => Ok(Activation::GeluTanh),
        Some(other) => {
            bail!("{tower}.act_kwargs.approximate {other:?} is not \"none\" or \"tanh\"")
        }
    }
}

/// `int(width * mlp_ratio)`.
fn mlp_width(width: usize, ratio: Option<f64>, tower: &str) -> Result<usize> {
    let ratio = ratio.unwrap_or(4.0);
    if !(ratio.is_finite() && ratio > 0.0) {
        bail!("{tower}.mlp_ratio {ratio} is not a positive number");
    }
    Ok((width as f64 * ratio) as usize)
}

/// Refuses the custom attention block and its options (open_clip's
/// `CustomResidualAttentionBlock`), which vlm does not implement.
fn plain_blocks(
    tower: &str,
    block_type: Option<&str>,
    flags: [(&str, Option<bool>); 6],
) -> Result<()> {
    if let Some(t) = block_type.filter(|t| *t != "default") {
        bail!("{tower}.block_type {t:?} is not implemented (vlm runs the default block)");
    }
    if let Some((name, _)) = flags.iter().find(|(_, v)| *v == Some(true)) {
        bail!("{tower}.{name} is not implemented (vlm runs the default attention block)");
    }
    Ok(())
}

/// True for a parsed JSON object that is an `open_clip_config.json` (it has no `model_type`).
pub(crate) fn is_config(obj: &serde_json::Map<String, Value>) -> bool {
    obj.contains_key("model_cfg") && !obj.contains_key("model_type")
}

impl OpenClipConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(text).context("not valid JSON")?;
        let model = root
            .get("model_cfg")
            .context("no model_cfg: not an open_clip_config.json")?;
        let model: ModelCfg = serde_json::from_value(model.clone()).context("model_cfg")?;
        if model.multimodal_cfg.is_some() {
            bail!("model_cfg.multimodal_cfg: a CoCa captioning model, which vlm does not run");
        }
        let vision: VisionCfg =
            serde_json::from_value(model.vision_cfg.clone()).context("model_cfg.vision_cfg")?;
        let text: TextCfg =
            serde_json::from_value(model.text_cfg.clone()).context("model_cfg.text_cfg")?;
        let quick_gelu = model.quick_gelu.unwrap_or(false);

        // Vision tower: open_clip's own VisionTransformer only.
        if let Some(name) = &vision.timm_model_name {
            bail!("vision_cfg.timm_model_name {name:?}: a timm image tower (MobileCLIP, ViT-*-SigLIP, ConvNeXt, ...), which vlm does not run; it runs OpenCLIP's own ViT");
        }
        let layers = match &vision.layers {
            None => 12,
            Some(Value::Array(_)) => bail!("vision_cfg.layers is a list: a ModifiedResNet (RN50, ...) image tower, which vlm does not run"),
            Some(v) => v.as_u64().and_then(|n| usize::try_from(n).ok()).with_context(|| format!("vision_cfg.layers {v} is not an integer"))?,
        };
        if let Some(pool) = vision
            .attentional_pool
            .as_ref()
            .filter(|v| !matches!(v, Value::Bool(false) | Value::Null))
        {
            bail!("vision_cfg.attentional_pool {pool}: the attentional pooler (CoCa) is not implemented");
        }
        let pool = match vision.pool_type.as_deref().unwrap_or("tok") {
            "tok" => VisionPool::ClassToken,
            "avg" => VisionPool::MeanOfPatches,
            other => bail!(
                "vision_cfg.pool_type {other:?} is not implemented (vlm pools \"tok\" or \"avg\")"
            ),
        };
        match vision.pos_embed_type.as_deref().unwrap_or("learnable") {
            // A fixed sin-cos table is saved in the checkpoint like a learned one.
            "learnable" | "sin_cos_2d" => {}
            other => bail!("vision_cfg.pos_embed_type {other:?} is not implemented"),
        }
        plain_blocks(
            "vision_cfg",
            vision.block_type.as_deref(),
            [
                ("qk_norm", vision.qk_norm),
                ("scaled_cosine_attn", vision.scaled_cosine_attn),
                ("scale_heads", vision.scale_heads),
                ("scale_attn_inner", vision.scale_attn_inner),
                ("scale_attn", vision.scale_attn),
                ("scale_fc", vision.scale_fc),
            ],
        )?;
        let width = vision.width.unwrap_or(768);
        let head_width = vision.head_width.unwrap_or(64);
        if head_width == 0 || !width.is_multiple_of(head_width) {
            bail!("vision_cfg.width {width} is not a multiple of head_width {head_width}");
        }
        let image_size = square(
            vision.image_size.as_ref().unwrap_or(&Value::from(224)),
            "vision_cfg.image_size",
        )?;
        let patch_size = square(
            vision.patch_size.as_ref().unwrap_or(&Value::from(16)),
            "vision_cfg.patch_size",
        )?;
        let vision_config = VisionConfig {
            hidden_size: width,
            intermediate_size: mlp_width(width, vision.mlp_ratio, "vision_cfg")?,
            num_hidden_layers: layers,
            num_attention_heads: width / head_width,
            num_channels: 3,
            image_size,
            patch_size,
            hidden_act: activation(quick_gelu, vision.act_kwargs.as_ref(), "vision_cfg")?,
            layer_norm_eps: eps(vision.norm_kwargs.as_ref(), "vision_cfg")?,
            extra: (),
        };

        // Text tower: open_clip's own TextTransformer with CLIP's BPE tokenizer.
        if let Some(name) = &text.hf_model_name {
            bail!("text_cfg.hf_model_name {name:?}: a Hugging Face text tower (xlm-roberta, ...), which vlm does not run");
        }
        if let Some(name) = &text.hf_tokenizer_name {
            bail!("text_cfg.hf_tokenizer_name {name:?}: the model needs that Hugging Face tokenizer; vlm runs OpenCLIP models with CLIP's own BPE tokenizer");
        }
        if text.embed_cls == Some(true) {
            bail!("text_cfg.embed_cls: a CoCa-style text tower, which vlm does not run");
        }
        if text.no_causal_mask == Some(true) {
            bail!(
                "text_cfg.no_causal_mask is not implemented (vlm's OpenCLIP text tower is causal)"
            );
        }
        let pooling = match text.pool_type.as_deref().unwrap_or("argmax") {
            "argmax" => TextPooling::ArgMaxId,
            "eos" => {
                let eos = text.eos_id.unwrap_or(2);
                TextPooling::FirstEos(
                    u32::try_from(eos)
                        .ok()
                        .filter(|&e| (e as usize) < tokenizer::VOCAB_SIZE)
                        .with_context(|| {
                            format!("text_cfg.eos_id {eos} is not a token of CLIP's tokenizer")
                        })?,
                )
            }
            other => bail!(
                "text_cfg.pool_type {other:?} is not implemented (vlm pools \"argmax\" or \"eos\")"
            ),
        };
        match text.proj_type.as_deref().unwrap_or("linear") {
            "linear" => {}
            other => bail!("text_cfg.proj_type {other:?} is not implemented (vlm needs a linear text projection)"),
        }
        plain_blocks(
            "text_cfg",
            text.block_type.as_deref(),
            [
                ("qk_norm", text.qk_norm),
                ("scaled_cosine_attn", text.scaled_cosine_attn),
                ("scale_heads", text.scale_heads),
                ("scale_attn_inner", text.scale_attn_inner),
                ("scale_attn", text.scale_attn),
                ("scale_fc", text.scale_fc),
            ],
        )?;
        let clean = match text.tokenizer_kwargs.as_ref() {
            None => Clean::Lower,
            Some(kwargs) => {
                if let Some(key) = kwargs.keys().find(|k| *k != "clean") {
                    bail!(
                        "text_cfg.tokenizer_kwargs.{key} is not implemented (vlm reads clean only)"
                    );
                }
                match kwargs.get("clean").and_then(Value::as_str) {
                    None | Some("lower") => Clean::Lower,
                    Some("whitespace") => Clean::Whitespace,
                    Some("canonicalize") => Clean::Canonicalize,
                    Some(other) => bail!("text_cfg.tokenizer_kwargs.clean {other:?} is not \"lower\", \"whitespace\" or \"canonicalize\""),
                }
            }
        };
        let vocab_size = text.vocab_size.unwrap_or(tokenizer::VOCAB_SIZE);
        if vocab_size < tokenizer::VOCAB_SIZE {
            bail!(
                "text_cfg.vocab_size {vocab_size} is smaller than CLIP's tokenizer ({} ids)",
                tokenizer::VOCAB_SIZE
            );
        }
        let text_width = text.width.unwrap_or(512);
        let text_config = TextConfig {
            vocab_size,
            hidden_size: text_width,
            intermediate_size: mlp_width(text_width, text.mlp_ratio, "text_cfg")?,
            num_hidden_layers: text.layers.unwrap_or(12),
            num_attention_heads: text.heads.unwrap_or(8),
            max_position_embeddings: text.context_length.unwrap_or(77),
            hidden_act: activation(quick_gelu, text.act_kwargs.as_ref(), "text_cfg")?,
            layer_norm_eps: eps(text.norm_kwargs.as_ref(), "text_cfg")?,
            extra: TextExtra {
                pad_token_id: text.pad_id.or(Some(0)),
                bos_token_id: Some(i64::from(tokenizer::START_OF_TEXT)),
                eos_token_id: Some(TokenIds::One(i64::from(tokenizer::END_OF_TEXT))),
            },
        };
        if text_config.max_position_embeddings < 2 {
            bail!(
                "text_cfg.context_length {} leaves no room for the start and end tokens",
                text_config.max_position_embeddings
            );
        }
        let clip = ClipConfig {
            text: text_config,
            vision: vision_config,
            projection_dim: model.embed_dim,
            logit_scale_init_value: model.init_logit_scale.unwrap_or((1.0f64 / 0.07).ln()),
            options: TowerOptions {
                vision_ln_pre: !vision.no_ln_pre.unwrap_or(false),
                vision_pool: pool,
                vision_ln_after_pool: vision.final_ln_after_pool.unwrap_or(false),
                text_projection_bias: text.proj_bias.unwrap_or(false),
                text_pooling: Some(pooling),
            },
        };
        // The CLIP family's bounds on every size, with its names for them.
        clip.validate()?;
        let preprocess = match root.get("preprocess_cfg").filter(|v| !v.is_null()) {
            Some(v) => serde_json::from_value(v.clone()).context("preprocess_cfg")?,
            None => PreprocessCfg::default(),
        };
        Ok(Self {
            clip,
            text_prefix: if model.custom_text.unwrap_or(false) {
                "text."
            } else {
                ""
            },
            vision_layer_scale: vision.ls_init_value.is_some(),
            text_layer_scale: text.ls_init_value.is_some(),
            logit_bias: model.init_logit_bias.is_some(),
            clean,
            preprocess: preprocess_config(&preprocess, image_size)?,
        })
    }
}

/// `mean` / `std`: a number for every channel, or three.
fn rgb(v: Option<&Value>, default: [f64; 3], name: &str) -> Result<[f64; 3]> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(default);
    };
    let num = |x: &Value| {
        x.as_f64()
            .with_context(|| format!("preprocess_cfg.{name} {v} is not numbers"))
    };
    match v {
        Value::Array(a) if a.len() == 3 => Ok([num(&a[0])?, num(&a[1])?, num(&a[2])?]),
        // `mean or OPENAI_DATASET_MEAN`: an empty list is the default.
        Value::Array(a) if a.is_empty() => Ok(default),
        Value::Array(_) => bail!("preprocess_cfg.{name} {v}: expected 3 values (RGB)"),
        _ => Ok([num(v)?; 3]),
    }
}

/// open_clip's inference `image_transform` (`transform.py`) as a [`PreprocessConfig`] with
/// torchvision's conventions. The size is the vision tower's (`create_model` overwrites
/// `preprocess_cfg.size` with it).
fn preprocess_config(cfg: &PreprocessCfg, size: usize) -> Result<PreprocessConfig> {
    if let Some(mode) = cfg.mode.as_deref().filter(|m| *m != "RGB") {
        bail!("preprocess_cfg.mode {mode:?} is not \"RGB\"");
    }
    let resample = match cfg.interpolation.as_deref().unwrap_or("bicubic") {
        // "random" is for training; inference uses bicubic.
        "bicubic" | "random" => Resample::Bicubic,
        "bilinear" => Resample::Bilinear,
        other => bail!("preprocess_cfg.interpolation {other:?} is not \"bicubic\" or \"bilinear\""),
    };
    let side = u32::try_from(size).context("vision_cfg.image_size is too large")?;
    let fill = match cfg.fill_color.as_ref().filter(|v| !v.is_null()) {
        None => 0,
        Some(v) => v
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .with_context(|| {
                format!("preprocess_cfg.fill_color {v} is not an integer from 0 to 255")
            })?,
    };
    let crop = CropSize {
        height: side,
        width: side,
    };
    let (resize, center_crop, fill) = match cfg.resize_mode.as_deref().unwrap_or("shortest") {
        // Resize(size) then CenterCrop(size): torchvision pads with 0 (never needed here).
        "shortest" => (
            ResizeSize::ShortestEdge {
                shortest_edge: side,
                longest_edge: None,
            },
            true,
            0,
        ),
        // ResizeKeepRatio(size, longest=1) then CenterCropOrPad(size, fill=fill_color).
        "longest" => (ResizeSize::LongestEdge { longest_edge: side }, true, fill),
        // Resize((size, size)).
        "squash" => (
            ResizeSize::Exact {
                height: side,
                width: side,
            },
            false,
            0,
        ),
        other => bail!(
            "preprocess_cfg.resize_mode {other:?} is not \"shortest\", \"longest\" or \"squash\""
        ),
    };
    let out = PreprocessConfig {
        do_resize: true,
        size: resize,
        resample,
        do_center_crop: center_crop,
        crop_size: crop,
        do_rescale: true,
        rescale_factor: 1.0 / 255.0,
        do_normalize: true,
        image_mean: rgb(cfg.mean.as_ref(), OPENAI_MEAN, "mean")?,
        image_std: rgb(cfg.std.as_ref(), OPENAI_STD, "std")?,
        do_convert_rgb: true,
        convention: Convention::Torchvision { fill },
    };
    out.validate().context("preprocess_cfg")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(model_cfg: &str) -> Result<OpenClipConfig> {
        OpenClipConfig::from_json(&format!(r#"{{"model_cfg": {model_cfg}}}"#))
    }

    const B32: &str = r#"{"embed_dim": 512, "quick_gelu": true,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}"#;

    #[test]
    fn a_published_config_becomes_clip_towers() {
        let cfg = parse(B32).unwrap();
        let c = &cfg.clip;
        assert_eq!(c.vision.num_attention_heads, 12);
        assert_eq!(c.vision.intermediate_size, 3072);
        assert_eq!(c.vision.hidden_act, Activation::QuickGelu);
        assert_eq!(c.text.intermediate_size, 2048);
        assert_eq!(c.projection_dim, 512);
        assert_eq!(c.text_pooling(), TextPooling::ArgMaxId);
        assert_eq!(cfg.clean, Clean::Lower);
        assert_eq!(cfg.text_prefix, "");
        assert!(!cfg.logit_bias);
        let p = &cfg.preprocess;
        assert_eq!(p.output_size(), Some((224, 224)));
        assert_eq!(p.convention, Convention::Torchvision { fill: 0 });
        assert_eq!(p.image_mean, OPENAI_MEAN);
    }

    #[test]
    fn unsupported_fields_are_refused_by_name_in_one_line() {
        let with = |tower: &str, field: &str| {
            let mut v: Value = serde_json::from_str(B32).unwrap();
            let extra: Value = serde_json::from_str(&format!("{{{field}}}")).unwrap();
            for (k, x) in extra.as_object().unwrap() {
                if tower.is_empty() {
                    v[k] = x.clone();
                } else {
                    v[tower][k] = x.clone();
                }
            }
            format!("{:#}", parse(&v.to_string()).unwrap_err())
        };
        for (tower, field, want) in [
            (
                "vision_cfg",
                r#""timm_model_name": "vit_base_patch16_siglip_224""#,
                "vision_cfg.timm_model_name \"vit_base_patch16_siglip_224\": a timm image tower",
            ),
            (
                "vision_cfg",
                r#""layers": [3, 4, 6, 3]"#,
                "a ModifiedResNet",
            ),
            (
                "vision_cfg",
                r#""attentional_pool": true"#,
                "vision_cfg.attentional_pool true",
            ),
            (
                "vision_cfg",
                r#""pool_type": "none""#,
                "vision_cfg.pool_type \"none\" is not implemented",
            ),
            (
                "vision_cfg",
                r#""qk_norm": true"#,
                "vision_cfg.qk_norm is not implemented",
            ),
            (
                "vision_cfg",
                r#""image_size": [224, 192]"#,
                "square inputs only",
            ),
            (
                "vision_cfg",
                r#""frobnicate": 1"#,
                "unknown field `frobnicate`",
            ),
            (
                "text_cfg",
                r#""hf_model_name": "xlm-roberta-base""#,
                "text_cfg.hf_model_name \"xlm-roberta-base\"",
            ),
            (
                "text_cfg",
                r#""hf_tokenizer_name": "bert-base-uncased""#,
                "text_cfg.hf_tokenizer_name",
            ),
            (
                "text_cfg",
                r#""pool_type": "last""#,
                "text_cfg.pool_type \"last\" is not implemented",
            ),
            ("text_cfg", r#""embed_cls": true"#, "text_cfg.embed_cls"),
            (
                "text_cfg",
                r#""no_causal_mask": true"#,
                "text_cfg.no_causal_mask",
            ),
            (
                "text_cfg",
                r#""proj_type": "none""#,
                "text_cfg.proj_type \"none\"",
            ),
            (
                "text_cfg",
                r#""tokenizer_kwargs": {"reduction_mask": "simple"}"#,
                "tokenizer_kwargs.reduction_mask",
            ),
            (
                "text_cfg",
                r#""act_kwargs": {"approximate": "tanh"}"#,
                "QuickGELU takes no arguments",
            ),
            (
                "text_cfg",
                r#""norm_kwargs": {"elementwise_affine": false}"#,
                "norm_kwargs.elementwise_affine",
            ),
            (
                "text_cfg",
                r#""vocab_size": 32000"#,
                "text_cfg.vocab_size 32000 is smaller",
            ),
            ("", r#""multimodal_cfg": {}"#, "CoCa"),
        ] {
            let err = with(tower, field);
            assert!(err.contains(want), "{field}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn preprocessing_follows_preprocess_cfg() {
        let cfg = OpenClipConfig::from_json(&format!(
            r#"{{"model_cfg": {B32}, "preprocess_cfg": {{"mean": 0.5, "std": [0.1, 0.2, 0.3],
                "interpolation": "bilinear", "resize_mode": "longest", "fill_color": 7, "size": 999}}}}"#
        ))
        .unwrap();
        let p = cfg.preprocess;
        assert_eq!(p.size, ResizeSize::LongestEdge { longest_edge: 224 });
        assert_eq!(p.resample, Resample::Bilinear);
        assert_eq!(p.image_mean, [0.5; 3]);
        assert_eq!(p.image_std, [0.1, 0.2, 0.3]);
        assert_eq!(p.convention, Convention::Torchvision { fill: 7 });
        for bad in [
            r#""resize_mode": "crop""#,
            r#""fill_color": 300"#,
            r#""interpolation": "nearest""#,
        ] {
            let err = OpenClipConfig::from_json(&format!(
                r#"{{"model_cfg": {B32}, "preprocess_cfg": {{{bad}}}}}"#
            ))
            .unwrap_err();
            assert!(format!("{err:#}").contains("preprocess_cfg."), "{err:#}");
        }
    }
}
