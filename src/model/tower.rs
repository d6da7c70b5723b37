//! What the towers of every family share, written once: the sizes a transformers config gives a
//! text and a vision tower ([`TextConfig`], [`VisionConfig`]) and their bounds, checked before
//! anything is allocated from them; reading `config.json` ([`HfConfig`]); the patch embedding and
//! the text transformer; and building the towers a run asks for from the weight files
//! ([`Loaded`]).
//!
//! A family keeps what really differs: its reference's defaults (each implements `Default` for
//! its `TextConfig<X>` / `VisionConfig<X>`, `X` holding the fields only it has), how it pools, and
//! its head. The shapes mirror Candle's `clip` and `siglip` models, whose text and vision configs
//! share one `TransformerConfig`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::nn::{self, Activation, Encoder, EncoderSpec, Linear, Linears};
use super::{checks, weights, LoadOptions};

// Every size is bounded before anything is allocated from it. The bounds are far above every
// published CLIP and SigLIP (the largest towers have a width of 1,664-1,792, 48 layers, a 256k
// vocabulary, 64-248 text positions and 336-448 px images with ~1,000 patches) and low enough
// that no product of them computed later (positions, attention scores, pixel batches) can
// overflow, nor ask for memory that the weights do not back (tests/fuzz, `model_files`).

/// Widths (hidden, projection, heads; MLP widths may be 8 times this) a config may ask for.
pub const MAX_WIDTH: usize = 1 << 14;
/// Encoder layers per tower.
pub const MAX_LAYERS: usize = 1 << 10;
/// Token vocabulary.
pub const MAX_VOCAB: usize = 1 << 22;
/// Text positions (the context length).
pub const MAX_TEXT_POSITIONS: usize = 1 << 12;
/// Side of the square input image, in pixels (and so of a patch).
pub const MAX_IMAGE_SIZE: usize = 1 << 12;
/// Patches of one image (CLIP's vision sequence is one longer, for the class token).
pub const MAX_PATCHES: usize = 1 << 12;

/// A text tower's sizes, under the names of transformers' `*TextConfig`, and the family's own
/// fields in `extra` (flattened: they sit beside the others in `text_config`). A field the JSON
/// leaves out takes the family's default (its `Default` for `TextConfig<X>`), as in transformers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    default,
    bound(deserialize = "X: Deserialize<'de>, TextConfig<X>: Default")
)]
pub struct TextConfig<X> {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// The text context, in tokens.
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    #[serde(flatten)]
    pub extra: X,
}

/// A vision tower's sizes, under the names of transformers' `*VisionConfig`; as [`TextConfig`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    default,
    bound(deserialize = "X: Deserialize<'de>, VisionConfig<X>: Default")
)]
pub struct VisionConfig<X> {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    #[serde(flatten)]
    pub extra: X,
}

/// How a vision tower's patches cover its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchFit {
    /// `image_size` is a whole number of patches (every CLIP and OpenCLIP ViT; vlm's CLIP loader
    /// has always required it, and the fuzz target holds it to that).
    Exact,
    /// The patch convolution (stride = kernel) drops the remainder: the one of
    /// google/siglip-so400m-patch14-384 covers 27 x 14 = 378 of its 384 pixels and never sees the
    /// last 6 rows and columns.
    Floor,
}

/// `value` within `1..=max`, or a one-line error naming the field.
pub(crate) fn bounded(name: &str, value: usize, max: usize) -> Result<()> {
    if value == 0 {
        bail!("{name} must be positive");
    }
    if value > max {
        bail!("{name} is {value}; vlm supports at most {max}");
    }
    Ok(())
}

/// The encoder's sizes of a tower whose config section is `section`: bounded, a positive
/// `layer_norm_eps` of at most 1, whole heads.
fn check_encoder(section: &str, e: &EncoderSpec) -> Result<()> {
    bounded(&format!("{section}.hidden_size"), e.hidden, MAX_WIDTH)?;
    bounded(
        &format!("{section}.intermediate_size"),
        e.intermediate,
        MAX_WIDTH * 8,
    )?;
    bounded(
        &format!("{section}.num_attention_heads"),
        e.heads,
        MAX_WIDTH,
    )?;
    // No layers at all is a valid (if useless) tower.
    if e.layers > MAX_LAYERS {
        bail!(
            "{section}.num_hidden_layers is {}; vlm supports at most {MAX_LAYERS}",
            e.layers
        );
    }
    checks::layer_norm_eps(&format!("{section}.layer_norm_eps"), e.eps)?;
    if !e.hidden.is_multiple_of(e.heads) {
        bail!(
            "{section}.hidden_size {} is not divisible by num_attention_heads {}",
            e.hidden,
            e.heads
        );
    }
    Ok(())
}

impl<X> TextConfig<X> {
    /// The encoder this tower's sizes describe, its linear layers multiplying at `linear`.
    pub(crate) fn encoder<'a>(&self, linear: Linears<'a>) -> EncoderSpec<'a> {
        EncoderSpec {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            intermediate: self.intermediate_size,
            layers: self.num_hidden_layers,
            act: self.hidden_act,
            eps: self.layer_norm_eps,
            linear,
        }
    }

    /// Every size within vlm's bounds, named as `config.json` names it (`text_config.*`).
    pub(crate) fn check(&self) -> Result<()> {
        check_encoder("text_config", &self.encoder(Linears::F32))?;
        bounded(
            "text_config.max_position_embeddings",
            self.max_position_embeddings,
            MAX_TEXT_POSITIONS,
        )?;
        bounded("text_config.vocab_size", self.vocab_size, MAX_VOCAB)
    }
}

impl<X> VisionConfig<X> {
    /// The encoder this tower's sizes describe, its linear layers multiplying at `linear`.
    pub(crate) fn encoder<'a>(&self, linear: Linears<'a>) -> EncoderSpec<'a> {
        EncoderSpec {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            intermediate: self.intermediate_size,
            layers: self.num_hidden_layers,
            act: self.hidden_act,
            eps: self.layer_norm_eps,
            linear,
        }
    }

    /// Patches per side of the grid: `image_size // patch_size`, as the convolution counts them.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Every size within vlm's bounds, named as `config.json` names it (`vision_config.*`), the
    /// patches fitting the image as `fit` says, and RGB input.
    pub(crate) fn check(&self, fit: PatchFit) -> Result<()> {
        check_encoder("vision_config", &self.encoder(Linears::F32))?;
        bounded("vision_config.patch_size", self.patch_size, MAX_IMAGE_SIZE)?;
        bounded("vision_config.image_size", self.image_size, MAX_IMAGE_SIZE)?;
        let (image, patch) = (self.image_size, self.patch_size);
        match fit {
            PatchFit::Exact if !image.is_multiple_of(patch) => {
                bail!("vision_config.image_size {image} is not a multiple of patch_size {patch}")
            }
            PatchFit::Floor if image < patch => {
                bail!("vision_config.image_size {image} is smaller than patch_size {patch}")
            }
            _ => {}
        }
        let patches = self.grid() * self.grid();
        if patches > MAX_PATCHES {
            bail!(
                "vision_config.image_size {image} with patch_size {patch} makes {patches} patches; vlm supports at most {MAX_PATCHES}"
            );
        }
        if self.num_channels != 3 {
            bail!(
                "vision_config.num_channels is {}; only RGB (3) is supported",
                self.num_channels
            );
        }
        Ok(())
    }
}

/// A transformers `config.json` of one `model_type`, read from its JSON object.
pub trait HfConfig: Sized {
    /// The `model_type` its configs carry.
    const MODEL_TYPE: &'static str;
    /// The transformers model class it configures, for messages (`CLIPModel`).
    const CLASS: &'static str;

    /// The config from its JSON object (whose `model_type` is [`Self::MODEL_TYPE`]), checked.
    fn from_object(obj: &Map<String, Value>) -> Result<Self>;

    fn from_json(text: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(text).context("not valid JSON")?;
        let obj = root.as_object().context("expected a JSON object")?;
        let (model_type, class) = (Self::MODEL_TYPE, Self::CLASS);
        match obj.get("model_type").and_then(Value::as_str) {
            Some(t) if t == model_type => Self::from_object(obj),
            Some(other) => bail!(
                "unsupported model_type {other:?}: expected a {class} config with model_type {model_type:?}"
            ),
            None => bail!("no model_type: expected a {class} config with model_type {model_type:?}"),
        }
    }

    fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("invalid model config {}", path.display()))
    }
}

/// `obj[key]` (`text_config`, `vision_config`) as `T`, with the family's defaults where it is
/// absent or null. Where `replaced_by` names a key holding an object, that object is read instead
/// (CLIP's legacy `text_config_dict`; see `clip::config`).
pub(crate) fn sub_config<T: DeserializeOwned + Default>(
    obj: &Map<String, Value>,
    key: &str,
    replaced_by: Option<&str>,
) -> Result<T> {
    let chosen = match replaced_by.and_then(|k| obj.get(k).map(|v| (v, k))) {
        Some((v @ Value::Object(_), k)) => (v, k),
        _ => match obj.get(key) {
            Some(v @ Value::Object(_)) => (v, key),
            None | Some(Value::Null) => return Ok(T::default()),
            Some(_) => bail!("{key} must be an object"),
        },
    };
    T::deserialize(chosen.0).with_context(|| format!("invalid {}", chosen.1))
}

/// A ViT's patch embedding: the patch convolution (stride = kernel size) as one linear layer over
/// non-overlapping patches. The kernel `patch_embedding.weight` `[hidden, c, p, p]` is a
/// `[hidden, c*p*p]` weight as it is; CLIP and SigLIP store it alike.
#[derive(Debug, Clone)]
pub(crate) struct PatchEmbedding {
    linear: Linear,
    image_size: usize,
    patch: usize,
    grid: usize,
    hidden: usize,
    dtype: DType,
}

impl PatchEmbedding {
    /// `patch_embedding.weight` under `emb`, and `patch_embedding.bias` where the family has one
    /// (SigLIP; CLIPVisionEmbeddings: bias=False).
    pub(crate) fn new<X>(
        emb: &VarBuilder,
        v: &VisionConfig<X>,
        bias: bool,
        linear: Linears,
    ) -> Result<Self> {
        let (hidden, channels, patch) = (v.hidden_size, v.num_channels, v.patch_size);
        let weight = emb
            .get((hidden, channels, patch, patch), "patch_embedding.weight")?
            .reshape((hidden, channels * patch * patch))?;
        let bias = if bias {
            Some(emb.get(hidden, "patch_embedding.bias")?)
        } else {
            None
        };
        Ok(Self {
            // int8 keeps the patch embedding in f32 (issue 24): it reads raw pixels, and it is
            // ~3% of ViT-B/32's work (one 3072 × 768 product per patch against 12 layers' 7M
            // multiply-adds).
            linear: Linear::from_weights(
                &format!("{}.patch_embedding", emb.prefix()),
                &weight,
                bias.as_ref(),
                linear.unless_int8(),
            )?,
            image_size: v.image_size,
            patch,
            grid: v.grid(),
            hidden,
            dtype: emb.dtype(),
        })
    }

    /// Patches per side of the grid.
    pub(crate) fn grid(&self) -> usize {
        self.grid
    }

    /// Pixels `[b, c, size, size]` to patch vectors `[b, grid², hidden]`, patches row-major, in
    /// the model's dtype. When the size is not a multiple of the patch ([`PatchFit::Floor`]), the
    /// convolution never reaches the last `size - grid·patch` rows and columns.
    pub(crate) fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, hgt, wid) = pixels.dims4()?;
        let (p, g, s) = (self.patch, self.grid, self.image_size);
        if hgt != s || wid != s {
            candle_core::bail!("pixel tensor is {hgt}x{wid}, the model expects {s}x{s}");
        }
        let pixels = if g * p == s {
            pixels.clone()
        } else {
            pixels.narrow(2, 0, g * p)?.narrow(3, 0, g * p)?
        };
        let patches = pixels
            .to_dtype(self.dtype)?
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        self.linear
            .forward(&patches)?
            .reshape((b, g * g, self.hidden))
    }
}

/// A text tower's transformer: token and position embeddings, the encoder, the final layer norm
/// and the projection into the joint space. The family pads, masks and picks the pooled
/// position ([`Self::embed`], then [`Self::pool`]).
#[derive(Debug, Clone)]
pub(crate) struct TextTransformer {
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: nn::LayerNorm,
    projection: Linear,
    context: usize,
    vocab: usize,
    hidden: usize,
}

impl TextTransformer {
    /// `embeddings.{token,position}_embedding`, `encoder` and `final_layer_norm` under `m`
    /// (`text_model`), with the `projection` the family reads (CLIP's `text_projection`,
    /// SigLIP's `text_model.head`).
    pub(crate) fn new<X>(
        m: &VarBuilder,
        t: &TextConfig<X>,
        projection: Linear,
        linear: Linears,
    ) -> Result<Self> {
        let emb = m.pp("embeddings");
        Ok(Self {
            token_embedding: emb.get((t.vocab_size, t.hidden_size), "token_embedding.weight")?,
            position_embedding: emb.get(
                (t.max_position_embeddings, t.hidden_size),
                "position_embedding.weight",
            )?,
            encoder: Encoder::new(m.pp("encoder"), &t.encoder(linear))?,
            final_layer_norm: nn::layer_norm(
                m.pp("final_layer_norm"),
                t.hidden_size,
                t.layer_norm_eps,
            )?,
            projection,
            context: t.max_position_embeddings,
            vocab: t.vocab_size,
            hidden: t.hidden_size,
        })
    }

    /// The context, in tokens.
    pub(crate) fn context(&self) -> usize {
        self.context
    }

    /// Token and position embeddings `[n, t, hidden]` of the sequences, each padded with `pad` to
    /// the longest (`t`), which must fit the context; every id must be in the vocabulary.
    pub(crate) fn embed(&self, ids: &[Vec<u32>], pad: u32) -> candle_core::Result<Tensor> {
        let device = self.token_embedding.device();
        let n = ids.len();
        let t = ids.iter().map(Vec::len).max().unwrap_or(0);
        if n == 0 || t == 0 {
            candle_core::bail!("no text to encode");
        }
        if t > self.context {
            candle_core::bail!(
                "sequence of {t} tokens exceeds the context of {}",
                self.context
            );
        }
        if let Some(&id) = ids.iter().flatten().find(|&&id| id as usize >= self.vocab) {
            candle_core::bail!(
                "token id {id} is outside the model's vocabulary of {}: the tokenizer does not belong to this model",
                self.vocab
            );
        }
        let mut flat = Vec::with_capacity(n * t);
        for seq in ids {
            flat.extend_from_slice(seq);
            flat.extend(std::iter::repeat_n(pad, t - seq.len()));
        }
        let flat = Tensor::from_vec(flat, n * t, device)?;
        self.token_embedding
            .index_select(&flat, 0)?
            .reshape((n, t, self.hidden))?
            .broadcast_add(&self.position_embedding.narrow(0, 0, t)?)
    }

    /// Text embeddings (projected, not normalised) as f32 `[n, dim]`: the embedded sequences
    /// `xs` through the encoder under `mask` (`None`: every position sees every other), each
    /// pooled at its position in `pooled`. The final layer norm is per position, so it follows
    /// the pooling.
    pub(crate) fn pool(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        pooled: &[usize],
    ) -> candle_core::Result<Tensor> {
        let rows: Vec<u32> = pooled.iter().map(|&p| p as u32).collect();
        let rows = Tensor::from_vec(rows, pooled.len(), xs.device())?;
        let pooled = self.encoder.forward_pooled(xs, mask, &rows)?;
        let pooled = self.final_layer_norm.forward(&pooled)?;
        self.projection.forward(&pooled)?.to_dtype(DType::F32)
    }
}

/// The weight files (safetensors or PyTorch; one, or the shards of an index) under a
/// `VarBuilder`: only the tensors the towers ask for are read, each straight into its own buffer
/// (see [`weights`]).
pub(crate) fn open(files: &[PathBuf], opts: &LoadOptions) -> Result<VarBuilder<'static>> {
    let files = weights::Checkpoint::open(files)?;
    Ok(VarBuilder::from_backend(
        Box::new(files),
        opts.dtype,
        opts.device.clone(),
    ))
}

/// A scalar head parameter the checkpoint must hold (`logit_scale`, `logit_bias`), `class` naming
/// the model it would come from. Its value is checked with every family's, at the seam
/// ([`checks::score_head`]).
pub(crate) fn head_scalar(vb: &VarBuilder, name: &str, class: &str) -> Result<f32> {
    if !vb.contains_tensor(name) {
        bail!("the checkpoint has no {name} tensor: is this a {class} checkpoint?");
    }
    nn::scalar(vb, name)
}

/// The towers of a loaded model that the run asked for ([`LoadOptions::towers`]): a run whose
/// text embeddings are all known reads no text tower.
#[derive(Debug)]
pub(crate) struct Loaded<V, T> {
    vision: Option<V>,
    text: Option<T>,
    device: Device,
}

impl<V, T> Loaded<V, T> {
    /// Builds the towers `opts` asks for from the checkpoint's `vb`, each with its family's
    /// constructor, given the precision of the tower's linear layers.
    pub(crate) fn new(
        vb: &VarBuilder,
        opts: &LoadOptions,
        vision: impl FnOnce(&VarBuilder, Linears) -> Result<V>,
        text: impl FnOnce(&VarBuilder, Linears) -> Result<T>,
    ) -> Result<Self> {
        let linears = |precision| Linears {
            precision,
            packs: opts.packs.as_deref(),
        };
        let vision = opts
            .towers
            .vision
            .then(|| vision(vb, linears(opts.vision)).context("cannot build the vision tower"))
            .transpose()?;
        let text = opts
            .towers
            .text
            .then(|| text(vb, linears(opts.text)).context("cannot build the text tower"))
            .transpose()?;
        Ok(Self {
            vision,
            text,
            device: opts.device.clone(),
        })
    }

    pub(crate) fn vision(&self) -> Result<&V> {
        self.vision
            .as_ref()
            .context("the vision tower was not loaded")
    }

    pub(crate) fn text(&self) -> Result<&T> {
        self.text.as_ref().context("the text tower was not loaded")
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A family's own field.
    #[derive(Debug, Clone, PartialEq, Default, Deserialize)]
    #[serde(default)]
    struct Extra {
        projection_size: Option<usize>,
    }

    impl Default for TextConfig<Extra> {
        fn default() -> Self {
            Self {
                vocab_size: 100,
                hidden_size: 64,
                intermediate_size: 256,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                max_position_embeddings: 16,
                hidden_act: Activation::GeluTanh,
                layer_norm_eps: 1e-6,
                extra: Extra::default(),
            }
        }
    }

    impl Default for VisionConfig<Extra> {
        fn default() -> Self {
            Self {
                hidden_size: 64,
                intermediate_size: 256,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_channels: 3,
                image_size: 32,
                patch_size: 16,
                hidden_act: Activation::QuickGelu,
                layer_norm_eps: 1e-5,
                extra: Extra::default(),
            }
        }
    }

    fn text(json: &str) -> Result<TextConfig<Extra>> {
        let obj: Map<String, Value> = serde_json::from_str(json).unwrap();
        sub_config(&obj, "text_config", None)
    }

    #[test]
    fn missing_fields_take_the_familys_defaults_and_its_own_fields_sit_beside_the_others() {
        let t = text(r#"{"text_config":{"hidden_size":32,"projection_size":8}}"#).unwrap();
        assert_eq!(t.hidden_size, 32);
        assert_eq!(t.vocab_size, 100);
        assert_eq!(t.extra.projection_size, Some(8));
        assert_eq!(text("{}").unwrap(), TextConfig::default());
        assert_eq!(
            text(r#"{"text_config":null}"#).unwrap(),
            TextConfig::default()
        );
        let err = format!("{:#}", text(r#"{"text_config":3}"#).unwrap_err());
        assert_eq!(err, "text_config must be an object");
        let err = format!(
            "{:#}",
            text(r#"{"text_config":{"projection_size":-1}}"#).unwrap_err()
        );
        assert!(err.starts_with("invalid text_config"), "{err}");
    }

    #[test]
    fn every_family_gets_the_same_bounds() {
        let t = TextConfig::<Extra>::default();
        assert!(t.check().is_ok());
        let bad = TextConfig {
            vocab_size: 1 << 30,
            ..t.clone()
        };
        let err = bad.check().unwrap_err().to_string();
        assert_eq!(
            err,
            "text_config.vocab_size is 1073741824; vlm supports at most 4194304"
        );
        let bad = TextConfig {
            intermediate_size: 0,
            ..t.clone()
        };
        let err = bad.check().unwrap_err().to_string();
        assert_eq!(err, "text_config.intermediate_size must be positive");
        let v = VisionConfig::<Extra>::default();
        assert!(v.check(PatchFit::Exact).is_ok());
        let odd = VisionConfig {
            image_size: 40,
            ..v.clone()
        };
        let err = odd.check(PatchFit::Exact).unwrap_err().to_string();
        assert!(err.contains("not a multiple of patch_size"), "{err}");
        assert!(odd.check(PatchFit::Floor).is_ok());
        assert_eq!(odd.grid(), 2);
        let small = VisionConfig {
            image_size: 8,
            ..v.clone()
        };
        let err = small.check(PatchFit::Floor).unwrap_err().to_string();
        assert!(err.contains("smaller than patch_size"), "{err}");
        let wide = VisionConfig {
            num_hidden_layers: 2000,
            ..v
        };
        let err = wide.check(PatchFit::Floor).unwrap_err().to_string();
        assert_eq!(
            err,
            "vision_config.num_hidden_layers is 2000; vlm supports at most 1024"
        );
    }
}
