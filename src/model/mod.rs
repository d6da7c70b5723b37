//! The model seam: what vlm needs from an image-text model family, and the list of families.
//!
//! A family (CLIP, SigLIP) lives in a folder of its own and exposes a [`Family`]: the `model_type`s it
//! reads and a parser from `config.json` to a [`ModelSpec`]. The spec says, before any weight is
//! read, what the rest of vlm must know: the image size the vision tower takes, how text is tokenised
//! ([`TextPolicy`]), which score head turns similarities into scores ([`HeadKind`]), and the default
//! prompt. Loading the spec gives an [`ImageTextModel`]: images and token ids in, embeddings out,
//! plus the learned [`ScoreHead`]. Nothing outside this folder names a concrete family.
//!
//! A family also says how its checkpoints lie on disk ([`Layout`]: `hub` finds a folder's or a
//! repository's files by walking [`layouts`]) and which image processor classes of transformers
//! have defaults of their own ([`ProcessorClass`]: `images` reads `preprocessor_config.json` with
//! [`processor_classes`]), so that `hub` and `images` name no family.
//!
//! Adding a family = a new folder here plus one line in [`FAMILIES`].

pub(crate) mod checks;
pub mod clip;
pub(crate) mod layout;
pub mod nn;
pub mod openclip;
pub(crate) mod packs;
pub mod pickle;
pub mod pytorch;
pub mod siglip;
pub mod tower;
pub mod weights;

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(crate) use layout::{Layout, WeightFile};

use crate::images::ProcessorClass;

/// Every family vlm can load, tried in order by `model_type`. OpenCLIP's `open_clip_config.json`
/// has no `model_type`: [`parse_config`] knows it by its `model_cfg`.
pub(crate) const FAMILIES: &[Family] = &[clip::FAMILY, siglip::FAMILY, openclip::FAMILY];

/// One model family: the `model_type` values of the configs it reads, and their parser.
pub(crate) struct Family {
    /// Short name, as printed in messages and cache keys.
    pub name: &'static str,
    pub model_types: &'static [&'static str],
    /// Related `model_type`s the family knows it cannot run, each with the rest of a one-line
    /// message saying why and what to use instead (`"siglip2"`: NaFlex).
    pub refused: &'static [(&'static str, &'static str)],
    /// Parses a whole `config.json` (already known to have one of `model_types`).
    pub parse: fn(&str) -> Result<Box<dyn ModelSpec>>,
    /// The score head every model of the family has, where it has one (an OpenCLIP checkpoint's
    /// depends on its weights: `logit_bias` makes it sigmoid).
    pub head: Option<HeadKind>,
    /// How its checkpoints lie on disk. Families that share a format share the one [`Layout`]
    /// (CLIP and SigLIP: [`layout::TRANSFORMERS`]).
    pub layout: &'static Layout,
    /// transformers' image processor classes whose defaults differ from the base class's
    /// (`CLIPImageProcessor`), as `preprocessor_config.json`'s `image_processor_type` names them.
    pub processors: &'static [ProcessorClass],
}

/// The distinct layouts of [`FAMILIES`], in their order: a checkpoint is the first one's whose
/// config file it holds and the layout claims.
pub(crate) fn layouts() -> Vec<&'static Layout> {
    let mut out: Vec<&'static Layout> = Vec::new();
    for family in FAMILIES {
        if !out.iter().any(|l| std::ptr::eq(*l, family.layout)) {
            out.push(family.layout);
        }
    }
    out
}

/// Every family's image processor classes, for reading any checkpoint's
/// `preprocessor_config.json` (transformers' `AutoImageProcessor` goes by the class it names,
/// whatever the model).
pub fn processor_classes() -> Vec<ProcessorClass> {
    FAMILIES
        .iter()
        .flat_map(|f| f.processors.iter().copied())
        .collect()
}

/// The head a family's models always have, by the family's name: for records that name only the
/// family (an index written before it stored the head).
pub(crate) fn head_of_family(name: &str) -> Option<HeadKind> {
    FAMILIES
        .iter()
        .find(|f| f.name == name)
        .and_then(|f| f.head)
}

/// How similarities become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// CLIP: `softmax(exp(logit_scale) · cos)` over the labels; probabilities sum to 1.
    Softmax,
    /// SigLIP: `sigmoid(exp(logit_scale) · cos + logit_bias)` per label, independent of the others.
    Sigmoid,
}

impl std::fmt::Display for HeadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeadKind::Softmax => "softmax",
            HeadKind::Sigmoid => "sigmoid",
        })
    }
}

/// A loaded model's score head: its kind and learned parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreHead {
    pub kind: HeadKind,
    /// The learned log temperature; similarities are scaled by its exp.
    pub logit_scale: f32,
    /// Added to the scaled similarity (SigLIP); 0 for CLIP.
    pub logit_bias: f32,
}

impl ScoreHead {
    /// `exp(logit_scale)`: the factor applied to cosines.
    pub fn scale(&self) -> f32 {
        self.logit_scale.exp()
    }

    /// The logit of one cosine similarity, as `logits_per_image` holds it.
    pub fn logit(&self, cosine: f32) -> f32 {
        cosine * self.scale() + self.logit_bias
    }
}

/// How a family's text is padded before the text tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// To the longest sequence of the batch (CLIP: the causal mask hides padding from the pooled
    /// token, so the amount of padding does not change the result).
    Longest,
    /// Always to the full context, by the tokenizer, with the tokenizer's own padding id (SigLIP
    /// pools the last position and masks nothing, so the padding is part of what the model sees).
    /// The id is `tokenizer.json`'s `padding.pad_id` when it has a padding section (SigLIP 2's
    /// Gemma tokenizer: `<pad>` = 0), else the id of `</s>` (SigLIP's `SiglipTokenizer` pads
    /// with its end token, 1): it belongs to the tokenizer file, not to `config.json`, whose
    /// `pad_token_id` defaults are CLIP's.
    Full,
}

/// A family's own text normalisation: a function from the prompt to the text the tokenizer sees.
/// Its name stands for it in cache keys (the policy's `Debug`) and comparisons.
#[derive(Clone, Copy)]
pub struct Normalizer {
    pub name: &'static str,
    pub apply: fn(&str) -> String,
}

impl Debug for Normalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Normalizer {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Normalizer {}

/// Python's `str.isspace()` (what `str.split()` splits on): Unicode White_Space (Rust's
/// `char::is_whitespace`) plus the four information separators U+001C..U+001F, which Python counts
/// as whitespace and Unicode does not. Families' normalisers follow Python's splitting.
pub(crate) fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Text normalisation applied before the tokenizer (what `tokenizer.json` cannot express).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextNormalization {
    /// The tokenizer file does everything.
    None,
    /// The family's own ([`Normalizer`]: SigLIP (v1)'s canonicalisation, OpenCLIP's
    /// `SimpleTokenizer` clean functions).
    Family(Normalizer),
}

/// How a family tokenises text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextPolicy {
    /// The text tower's context, in tokens; longer prompts are cut, keeping the end token.
    pub context_len: usize,
    pub padding: Padding,
    pub normalization: TextNormalization,
}

impl TextPolicy {
    /// Everything here that changes a text embedding, for cache keys.
    pub fn cache_tag(&self) -> String {
        format!("{self:?}")
    }
}

/// Which towers to materialise: a run whose text embeddings are all known needs no text tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Towers {
    pub vision: bool,
    pub text: bool,
}

impl Towers {
    pub const BOTH: Towers = Towers {
        vision: true,
        text: true,
    };
}

/// Where and how to run the network.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// The tensors' dtype (weights and activations outside the linear layers).
    pub dtype: DType,
    /// How the image tower's linear layers multiply on the CPU.
    pub vision: nn::LinearPrecision,
    /// How the text tower's linear layers multiply on the CPU.
    pub text: nn::LinearPrecision,
    pub towers: Towers,
    /// The packed-weight cache this load reads layers packed at load from and records them in
    /// (`None`: every such layer is packed from the checkpoint). The caller saves it after the
    /// load ([`packs::PackStore::save`]).
    pub(crate) packs: Option<std::sync::Arc<packs::PackStore>>,
}

/// A checkpoint's parsed `config.json`: what vlm must know before loading any weight.
pub trait ModelSpec: Debug + Send + Sync {
    /// The family's short name (`clip`, ...).
    fn family(&self) -> &'static str;
    /// The square side, in pixels, of the images the vision tower takes.
    fn image_size(&self) -> usize;
    fn text_policy(&self) -> TextPolicy;
    fn head_kind(&self) -> HeadKind;
    /// The prompt template used when the user gives none.
    fn default_template(&self) -> &'static str;
    /// Loads the towers asked for from safetensors files (one, or the shards of an index).
    fn load(&self, weights: &[PathBuf], opts: &LoadOptions) -> Result<Box<dyn ImageTextModel>>;
    /// The `(rows, cols)` grid of [`ImageTextModel::patch_embeddings`], or `None` when the family
    /// has no patch-level method (yet): `vlm explain` then refuses the model before loading it.
    fn patch_grid(&self) -> Option<(usize, usize)> {
        None
    }
    /// A warning about tokenised prompts that this family would embed badly, or `None`. CLIP
    /// pools each text at its `eos_token_id`: a config whose id the tokenizer never produces
    /// pools every prompt at its first token, so every label gets the same embedding (issue 20).
    fn text_warning(&self, ids: &[Vec<u32>]) -> Option<String> {
        let _ = ids;
        None
    }

    /// The preprocessing, when the family's own config says it; `None`: read the folder's
    /// `preprocessor_config.json`.
    fn preprocess(&self) -> Option<crate::images::PreprocessConfig> {
        None
    }
    /// The tokenizer, when the family ships its own; `Ok(None)`: read the folder's
    /// `tokenizer.json`.
    fn builtin_tokenizer(&self) -> Result<Option<tokenizers::Tokenizer>> {
        Ok(None)
    }
}

/// Per-patch image embeddings, in the same space as the text embeddings, for `vlm explain`.
#[derive(Debug, Clone)]
pub struct PatchEmbeddings {
    /// Projected, not normalised, f32 `[batch, rows * cols, dim]`; patches row-major.
    pub embeddings: Tensor,
    pub rows: usize,
    pub cols: usize,
}

/// A loaded image-text model.
pub trait ImageTextModel: Send + Sync {
    /// Image embeddings (projected, not normalised) of pixels `[batch, 3, size, size]`, as f32
    /// `[batch, dim]`.
    fn encode_images(&self, pixels: &Tensor) -> Result<Tensor>;
    /// Text embeddings (projected, not normalised) of token id sequences as the tokenizer gives
    /// them under the family's [`TextPolicy`] (unpadded for [`Padding::Longest`], padded to the
    /// context for [`Padding::Full`]; each within the context), as f32 `[n, dim]`.
    fn encode_texts(&self, ids: &[Vec<u32>]) -> Result<Tensor>;
    fn head(&self) -> ScoreHead;
    fn device(&self) -> &Device;
    /// Dense per-patch embeddings of pixels `[batch, 3, size, size]` (the grid
    /// [`ModelSpec::patch_grid`] announced), comparable with [`Self::encode_texts`] by cosine.
    /// `Ok(None)`: this family has no such method. Each family chooses its own (CLIP: the value
    /// path of the last layer, see `clip::VisionTower::patch_embeddings`).
    fn patch_embeddings(&self, pixels: &Tensor) -> Result<Option<PatchEmbeddings>> {
        let _ = pixels;
        Ok(None)
    }
}

/// Reads `config.json` and hands it to the family its `model_type` names.
pub(crate) fn read_config(path: &Path) -> Result<Box<dyn ModelSpec>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_config(&text).with_context(|| format!("invalid model config {}", path.display()))
}

/// [`read_config`] on a string.
pub(crate) fn parse_config(text: &str) -> Result<Box<dyn ModelSpec>> {
    let root: Value = serde_json::from_str(text).context("not valid JSON")?;
    let obj = root.as_object().context("expected a JSON object")?;
    if openclip::is_config(obj) {
        return (openclip::FAMILY.parse)(text);
    }
    let supported = || {
        FAMILIES
            .iter()
            .flat_map(|f| f.model_types.iter().map(|t| format!("{t:?}")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(model_type) = obj.get("model_type").and_then(Value::as_str) else {
        bail!(
            "no model_type: expected one of {} (an image-text model config)",
            supported()
        );
    };
    if let Some((_, why)) = FAMILIES
        .iter()
        .flat_map(|f| f.refused.iter())
        .find(|(t, _)| *t == model_type)
    {
        bail!("model_type {model_type:?} {why}");
    }
    match FAMILIES
        .iter()
        .find(|f| f.model_types.contains(&model_type))
    {
        Some(family) => (family.parse)(text),
        None => bail!(
            "unsupported model_type {model_type:?}: vlm runs image-text models with model_type {}",
            supported()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_go_to_their_family() {
        let spec = parse_config(r#"{"model_type":"clip"}"#).unwrap();
        assert_eq!(spec.family(), "clip");
        assert_eq!(spec.head_kind(), HeadKind::Softmax);
        assert_eq!(spec.image_size(), 224);
        let err = parse_config(r#"{"model_type":"llama"}"#).unwrap_err();
        assert!(format!("{err:#}").contains("unsupported model_type \"llama\""));
        let err = parse_config(r#"{"text_config":{}}"#).unwrap_err();
        assert!(format!("{err:#}").contains("no model_type"));
        let spec = parse_config(r#"{"model_type":"siglip"}"#).unwrap();
        assert_eq!(spec.family(), "siglip");
        assert_eq!(spec.head_kind(), HeadKind::Sigmoid);
        assert_eq!(spec.image_size(), 224);
        assert_eq!(spec.default_template(), "This is a photo of {}.");
        let policy = spec.text_policy();
        assert_eq!(policy.context_len, 64);
        assert_eq!(policy.padding, Padding::Full);
        assert_eq!(
            policy.normalization,
            TextNormalization::Family(siglip::text::CANONICAL)
        );
    }

    #[test]
    fn naflex_is_refused_by_name_with_what_to_use_instead() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/configs/siglip2-base-patch16-naflex.json");
        let err = format!("{:#}", read_config(&path).unwrap_err());
        assert!(
            err.contains("model_type \"siglip2\" is SigLIP 2 NaFlex"),
            "{err}"
        );
        assert!(err.contains("google/siglip2-base-patch16-224"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        // The supported list names what runs, not what is refused.
        let err = format!(
            "{:#}",
            parse_config(r#"{"model_type":"llama"}"#).unwrap_err()
        );
        assert!(
            err.ends_with("with model_type \"clip\", \"siglip\""),
            "{err}"
        );
    }

    /// issue 21: family names appear only under `src/model/` (outside comments, which may say
    /// whose convention a line follows). Plain "clip" is left alone: the whole product is
    /// CLIP-style.
    #[test]
    fn family_names_appear_only_under_model() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![];
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path == src.join("model") {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        files.sort();
        assert!(files.len() > 20, "{files:?}");
        let mut hits = vec![];
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            for (i, line) in code_lines(&text).iter().enumerate() {
                let lower = line.to_lowercase();
                if ["siglip", "openclip", "open_clip"]
                    .iter()
                    .any(|name| lower.contains(name))
                {
                    let rel = file.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
                    hits.push(format!("{}:{}: {}", rel.display(), i + 1, line.trim()));
                }
            }
        }
        assert!(
            hits.is_empty(),
            "family names outside src/model/ (move the knowledge to the family):\n{}",
            hits.join("\n")
        );
    }

    /// `text`'s lines with the comments blanked out: `//` to the end of the line, `/* */`
    /// (nested), outside string and char literals (raw strings included).
    fn code_lines(text: &str) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = String::new();
        let (mut i, mut depth) = (0, 0usize);
        // `Some(hashes)`: inside a string (`None` hashes: an ordinary one, with escapes).
        let mut string: Option<Option<usize>> = None;
        let at = |i: usize, s: &str| chars[i..].iter().take(s.len()).copied().eq(s.chars());
        while i < chars.len() {
            let c = chars[i];
            if depth > 0 {
                if at(i, "*/") {
                    depth -= 1;
                    i += 2;
                } else if at(i, "/*") {
                    depth += 1;
                    i += 2;
                } else {
                    if c == '\n' {
                        out.push(c);
                    }
                    i += 1;
                }
                continue;
            }
            match string {
                Some(None) => {
                    if c == '\\' {
                        out.push(c);
                        i += 1;
                        if let Some(&next) = chars.get(i) {
                            out.push(next);
                        }
                    } else if c == '"' {
                        string = None;
                    }
                    out.push(c);
                    i += 1;
                    continue;
                }
                Some(Some(hashes)) => {
                    out.push(c);
                    i += 1;
                    if c == '"' && at(i, &"#".repeat(hashes)) {
                        out.push_str(&"#".repeat(hashes));
                        i += hashes;
                        string = None;
                    }
                    continue;
                }
                None => {}
            }
            if at(i, "//") {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            } else if at(i, "/*") {
                depth += 1;
                i += 2;
            } else if c == '"' {
                string = Some(None);
                out.push(c);
                i += 1;
            } else if c == 'r' && (at(i + 1, "\"") || at(i + 1, "#")) {
                let hashes = chars[i + 1..].iter().take_while(|&&h| h == '#').count();
                if chars.get(i + 1 + hashes) == Some(&'"') {
                    string = Some(Some(hashes));
                    out.extend(&chars[i..i + 2 + hashes]);
                    i += 2 + hashes;
                } else {
                    out.push(c);
                    i += 1;
                }
            } else if c == '\'' {
                // A char literal ('"', '\'', 'x'), or a lifetime ('a), which has no closing quote.
                let len = if chars.get(i + 1) == Some(&'\\') {
                    chars[i + 2..]
                        .iter()
                        .position(|&q| q == '\'')
                        .map_or(1, |p| p + 3)
                } else if chars.get(i + 2) == Some(&'\'') {
                    3
                } else {
                    1
                };
                out.extend(&chars[i..i + len]);
                i += len;
            } else {
                out.push(c);
                i += 1;
            }
        }
        out.split('\n').map(str::to_string).collect()
    }

    #[test]
    fn comments_are_blanked_and_literals_kept() {
        let text =
            "a // b\n\"c // d\" /* e\n f */ g\nlet q = '\"'; h\nr#\"x\" // y\"# z // w\n'a' 'b";
        assert_eq!(
            code_lines(text),
            [
                "a ",
                "\"c // d\" ",
                " g",
                "let q = '\"'; h",
                "r#\"x\" // y\"# z ",
                "'a' 'b"
            ]
        );
    }

    /// A layout's config file names it: two layouts with one config file could not both be
    /// probed on the Hub by it.
    #[test]
    fn layouts_have_distinct_config_files() {
        let layouts = layouts();
        assert!(std::ptr::eq(layouts[0], &layout::TRANSFORMERS));
        for (i, a) in layouts.iter().enumerate() {
            for b in &layouts[i + 1..] {
                assert_ne!(a.config, b.config);
            }
        }
    }

    #[test]
    fn the_head_scales_then_shifts() {
        let head = ScoreHead {
            kind: HeadKind::Sigmoid,
            logit_scale: 2f32.ln(),
            logit_bias: -1.0,
        };
        assert!((head.logit(0.5) - 0.0).abs() < 1e-6);
    }
}
