//! One row per model family: where its fixture folders and reference numbers are, how close vlm
//! must come to them, and how to damage its head, config and weights. The hostile-model harness
//! (`tests/it/hostile_models.rs`) and the parity harness (`tests/it/parity.rs`) iterate over
//! [`FAMILIES`], so a new family is one more row here (issue 21).
//!
//! The fixtures are random-weight tiny models: `make_fixtures.py` (CLIP: `tiny-openai`,
//! `tiny-laion`), `make_siglip_fixtures.py` (`tiny-siglip`, `tiny-siglip2`) and
//! `make_openclip_fixtures.py` (`tiny-openclip-quickgelu`, `tiny-openclip-gelu`) under
//! `tests/fixtures/`, which also wrote the reference numbers of transformers or open_clip.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use serde_json::Value;
use vlm::engine::Engine;
use vlm::images::{self as preprocess, DecodeLimits};

use super::{fixtures, image, read_json, Head};

/// Which tower a corrupted weight or config field belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tower {
    Vision,
    Text,
}

pub struct Family {
    /// As people write it: "SigLIP 2".
    pub name: &'static str,
    /// The `family` of a JSON header's `model` object.
    pub id: &'static str,
    /// The score head of [`Family::hostile`].
    pub head: Head,
    /// Every fixture folder of the family (`tests/fixtures/models/`); parity checks each.
    pub fixtures: &'static [&'static str],
    /// The fixture the hostile harness copies and damages: one weight file, all tensors f32.
    pub hostile: &'static str,
    /// The weight file of [`Family::hostile`].
    pub weights: &'static str,
    pub reference: Reference,
    pub config: Config,
    /// The score head's scalar tensors: each, non-finite, is a model error.
    pub head_tensors: &'static [&'static str],
    /// Weights every image (or text) embedding passes through, and an element of each: a NaN
    /// there reaches every score.
    pub score_tensors: &'static [(&'static str, usize, Tower)],
    /// Weights every patch embedding of `vlm explain` passes through; empty where explain has no
    /// method for the family.
    pub patch_tensors: &'static [&'static str],
    /// An element of a weight that no score of the harness's prompts reads (the embedding row of
    /// a token they do not use), or `None` where the family's fixture has no such f32 row.
    pub unused_weight: Option<(&'static str, usize)>,
    /// Harness cases this family is known to fail, with what vlm printed: skipped and reported,
    /// never loosened. `(case, why)`.
    pub known_gaps: &'static [(&'static str, &'static str)],
}

/// The reference numbers of one family: `file` and `pixels` with `{}` for the fixture's name.
pub struct Reference {
    /// Who computed them: "transformers", "open_clip".
    pub source: &'static str,
    pub file: &'static str,
    /// The pixel tensors the reference embedded, by image name; `None`: it embedded the PNG files
    /// themselves, which vlm's preprocessing reproduces bit for bit.
    pub pixels: Option<&'static str>,
    /// f32 embeddings on identical input.
    pub embed_tol: f32,
    /// Probabilities from identical pixels and ids.
    pub prob_tol: f32,
}

/// Where the family's config keeps what the hostile harness edits.
pub struct Config {
    /// The file, in the model folder.
    pub file: &'static str,
    /// JSON path of each tower's section.
    pub vision: &'static [&'static str],
    pub text: &'static [&'static str],
    /// JSON path of the shared embedding width, where the family has one.
    pub projection: Option<&'static [&'static str]>,
    /// The family's key for a transformers `CLIP*Config` field (dotted for a nested one), or
    /// `None` where it has no such field.
    pub key: fn(Tower, &'static str) -> Option<&'static str>,
    /// Whether the folder has a `preprocessor_config.json` (crop size and the like).
    pub preprocessor: bool,
}

pub const CLIP: Family = Family {
    name: "CLIP",
    id: "clip",
    head: Head::Softmax,
    fixtures: &["tiny-openai", "tiny-laion"],
    hostile: "tiny-openai",
    weights: "model.safetensors",
    reference: Reference {
        source: "transformers",
        file: "reference/{}.json",
        pixels: Some("reference/pixels.safetensors"),
        // transformers' eager attention and ours sum in different orders.
        embed_tol: 1e-4,
        // Cosines agree to ~1e-5; times exp(logit_scale) <= 100 that moves a softmax by < 1e-3.
        prob_tol: 1e-3,
    },
    config: Config {
        file: "config.json",
        // The fixture's override, which wins over `vision_config`.
        vision: &["vision_config_dict"],
        text: &["text_config_dict"],
        projection: Some(&["projection_dim"]),
        key: same_key,
        preprocessor: true,
    },
    head_tensors: &["logit_scale"],
    score_tensors: &[
        ("visual_projection.weight", 0, Tower::Vision),
        ("vision_model.post_layernorm.weight", 3, Tower::Vision),
        ("vision_model.embeddings.class_embedding", 0, Tower::Vision),
        ("text_projection.weight", 7, Tower::Text),
        ("text_model.final_layer_norm.bias", 0, Tower::Text),
    ],
    patch_tensors: &[
        "visual_projection.weight",
        "vision_model.post_layernorm.bias",
        "vision_model.encoder.layers.0.mlp.fc1.bias",
    ],
    // Token 40,000 of 49,408; hidden size 32.
    unused_weight: Some(("text_model.embeddings.token_embedding.weight", 40_000 * 32)),
    known_gaps: &[],
};

pub const SIGLIP: Family = Family {
    name: "SigLIP",
    id: "siglip",
    head: Head::Sigmoid,
    fixtures: &["tiny-siglip"],
    hostile: "tiny-siglip",
    weights: "model.safetensors",
    reference: Reference {
        source: "transformers",
        file: "reference/{}.json",
        pixels: Some("reference/pixels-{}.safetensors"),
        embed_tol: 1e-4,
        // A cosine error of ~1e-6 times exp(logit_scale) (8 here) moves a sigmoid by far less.
        prob_tol: 1e-3,
    },
    config: SIGLIP_CONFIG,
    head_tensors: &["logit_scale", "logit_bias"],
    score_tensors: SIGLIP_SCORE_TENSORS,
    patch_tensors: &[],
    // Piece 990 of the 1,000-piece stand-in vocabulary; hidden size 32.
    unused_weight: Some(("text_model.embeddings.token_embedding.weight", 990 * 32)),
    known_gaps: SIGLIP_GAPS,
};

pub const SIGLIP2: Family = Family {
    name: "SigLIP 2",
    id: "siglip",
    head: Head::Sigmoid,
    fixtures: &["tiny-siglip2"],
    hostile: "tiny-siglip2",
    weights: "model.safetensors",
    reference: Reference {
        source: "transformers",
        file: "reference/{}.json",
        pixels: Some("reference/pixels-{}.safetensors"),
        embed_tol: 1e-4,
        // exp(logit_scale) is 10 here.
        prob_tol: 1e-3,
    },
    config: SIGLIP_CONFIG,
    head_tensors: &["logit_scale", "logit_bias"],
    score_tensors: SIGLIP_SCORE_TENSORS,
    patch_tensors: &[],
    // Piece 250,000 of Gemma's 256,000 (an unused byte-fallback range); hidden size 16.
    unused_weight: Some(("text_model.embeddings.token_embedding.weight", 250_000 * 16)),
    known_gaps: SIGLIP_GAPS,
};

pub const OPENCLIP: Family = Family {
    name: "OpenCLIP",
    id: "openclip",
    // tiny-openclip-gelu has a logit_bias (tiny-openclip-quickgelu is softmax).
    head: Head::Sigmoid,
    fixtures: &["tiny-openclip-quickgelu", "tiny-openclip-gelu"],
    hostile: "tiny-openclip-gelu",
    weights: "open_clip_model.safetensors",
    reference: Reference {
        source: "open_clip",
        file: "reference/openclip-{}.json",
        pixels: None,
        // The bounds; measured: embeddings within 1.2e-7, probabilities within 1e-6.
        embed_tol: 2e-3,
        prob_tol: 1e-3,
    },
    config: Config {
        file: "open_clip_config.json",
        vision: &["model_cfg", "vision_cfg"],
        text: &["model_cfg", "text_cfg"],
        projection: Some(&["model_cfg", "embed_dim"]),
        key: open_clip_key,
        preprocessor: false,
    },
    head_tensors: &["logit_scale", "logit_bias"],
    score_tensors: &[
        ("visual.proj", 0, Tower::Vision),
        ("visual.ln_post.weight", 3, Tower::Vision),
        ("visual.class_embedding", 0, Tower::Vision),
        ("text.text_projection.weight", 7, Tower::Text),
        ("text.ln_final.bias", 0, Tower::Text),
    ],
    patch_tensors: &[
        "visual.proj",
        "visual.ln_post.bias",
        "visual.transformer.resblocks.0.mlp.c_fc.bias",
    ],
    // The token embedding is f16 in both fixtures (open_clip saves it so).
    unused_weight: None,
    known_gaps: &[
        (
            "config Vision.image_size = 4096",
            "refused (exit 2) as `vision_config.image_size 4096 is not a multiple of patch_size 12` \
             before the patch count is checked: the fixture's patch is 12, which 4096 is no \
             multiple of",
        ),
        (
            "config Vision.hidden_size = 18446744073709551615",
            "refused (exit 2) as `vision_cfg.width 18446744073709551615 is not a multiple of \
             head_width 16`, not by the width bound",
        ),
        (
            "config Vision.image_size = -224",
            "refused (exit 2) as `vision_cfg.image_size -224 is not a positive integer`, not \
             `invalid vision_cfg`",
        ),
        (
            "config Vision.image_size = 1e+300",
            "refused (exit 2) as `vision_cfg.image_size 1e+300 is not a positive integer`, not \
             `invalid vision_cfg`",
        ),
    ],
};

/// Every family, in the order the harnesses report them.
pub const FAMILIES: [&Family; 4] = [&CLIP, &SIGLIP, &SIGLIP2, &OPENCLIP];

const SIGLIP_CONFIG: Config = Config {
    file: "config.json",
    vision: &["vision_config"],
    text: &["text_config"],
    // SigLIP's shared width is the vision tower's (`text_config.projection_size`).
    projection: None,
    key: siglip_key,
    preprocessor: true,
};

/// What SigLIP and SigLIP 2 fail: `src/model/siglip/config.rs` bounds no size from above (CLIP's
/// `MAX_WIDTH`, `MAX_LAYERS` and `MAX_PATCHES` are not applied), so each of these is refused (exit
/// 2, one line) only later, by another check, with another message (quoted from `tiny-siglip`;
/// `tiny-siglip2`'s differ in its sizes).
const SIGLIP_GAPS: &[(&str, &str)] = &[];

const SIGLIP_SCORE_TENSORS: &[(&str, usize, Tower)] = &[
    ("vision_model.head.mlp.fc2.bias", 0, Tower::Vision),
    ("vision_model.post_layernorm.weight", 3, Tower::Vision),
    ("vision_model.head.probe", 0, Tower::Vision),
    ("text_model.head.weight", 7, Tower::Text),
    ("text_model.final_layer_norm.bias", 0, Tower::Text),
];

/// transformers' `CLIPConfig` and `SiglipConfig` name their fields alike.
fn same_key(_: Tower, field: &'static str) -> Option<&'static str> {
    Some(field)
}

/// `SiglipConfig` names its fields as `CLIPConfig` does, but has no end token: the text is pooled at
/// its last position, and `eos_token_id` is never read (`src/model/siglip/config.rs`).
fn siglip_key(_: Tower, field: &'static str) -> Option<&'static str> {
    (field != "eos_token_id").then_some(field)
}

/// open_clip's `model_cfg` names (`open_clip/model.py`, `CLIPVisionCfg`, `CLIPTextCfg`).
fn open_clip_key(tower: Tower, field: &'static str) -> Option<&'static str> {
    Some(match (tower, field) {
        (_, "image_size" | "patch_size" | "vocab_size") => field,
        (_, "hidden_size") => "width",
        (_, "num_hidden_layers") => "layers",
        (Tower::Text, "num_attention_heads") => "heads",
        (Tower::Text, "max_position_embeddings") => "context_length",
        (_, "layer_norm_eps") => "norm_kwargs.eps",
        // The vision tower's heads are width / head_width; the MLP's width is a ratio; the end
        // token is CLIP's tokenizer's.
        _ => return None,
    })
}

impl Family {
    /// `tests/fixtures/models/<fixture>`.
    pub fn folder(fixture: &str) -> PathBuf {
        fixtures().join("models").join(fixture)
    }

    /// The reference of `fixture`, parsed as `T`.
    pub fn reference<T: for<'de> Deserialize<'de>>(&self, fixture: &str) -> T {
        read_json(&self.reference.file.replace("{}", fixture))
    }

    /// The reference's pixel tensors of `fixture`, by image name, when it has its own.
    pub fn pixels(&self, fixture: &str) -> Option<std::collections::HashMap<String, Tensor>> {
        let file = self.reference.pixels?.replace("{}", fixture);
        Some(candle_core::safetensors::load(fixtures().join(file), &Device::Cpu).unwrap())
    }

    /// The reference's images of `fixture` through `m`'s image tower: the reference's own pixel
    /// tensors where it has them, else the fixture PNGs through vlm's decoder and the family's
    /// preprocessing (which give open_clip's pixels bit for bit: `openclip.rs`,
    /// `pixels_match_open_clips_transform`).
    pub fn image_embeddings(&self, fixture: &str, m: &Engine, images: &[String]) -> Vec<Vec<f32>> {
        match self.pixels(fixture) {
            Some(pixels) => {
                let batch: Vec<Tensor> = images.iter().map(|n| pixels[n].clone()).collect();
                let batch = Tensor::stack(&batch, 0).unwrap();
                let embeds = m.model.encode_images(&batch).unwrap();
                assert_eq!(embeds.dtype(), DType::F32);
                embeds.to_vec2().unwrap()
            }
            None => {
                let pixels: Vec<Vec<f32>> = images
                    .iter()
                    .map(|f| {
                        preprocess::prepare_file(
                            Path::new(&image(f)),
                            &DecodeLimits::default(),
                            &m.preprocess,
                        )
                        .unwrap()
                    })
                    .collect();
                m.image_embeddings(&pixels).unwrap()
            }
        }
    }

    /// The known gap of this family for `case`, if any.
    pub fn gap(&self, case: &str) -> Option<&'static str> {
        self.known_gaps
            .iter()
            .find(|(c, _)| *c == case)
            .map(|(_, why)| *why)
    }

    /// Runs `check`, the harness's `case` for this family. A known gap must still fail (it is
    /// then reported on stderr, not as a failure), so that the table cannot go on excusing a
    /// fixed one; any other case must pass.
    pub fn case(&self, case: &str, check: impl FnOnce()) {
        let Some(why) = self.gap(case) else {
            return check();
        };
        let failed = catch_unwind(AssertUnwindSafe(check)).is_err();
        assert!(
            failed,
            "{case}: a known gap of {} that passes now: remove it from its known_gaps",
            self.name
        );
        eprintln!("KNOWN GAP {case} for {}: {why}", self.name);
    }

    /// Sets `field` of `tower`'s section (a transformers name, see [`Config::key`]) in `config`
    /// to `value`; false where the family has no such field.
    pub fn set_config(
        &self,
        config: &mut Value,
        tower: Tower,
        field: &'static str,
        value: Value,
    ) -> bool {
        let Some(key) = (self.config.key)(tower, field) else {
            return false;
        };
        let section = match tower {
            Tower::Vision => self.config.vision,
            Tower::Text => self.config.text,
        };
        let parts: Vec<&str> = section.iter().copied().chain(key.split('.')).collect();
        let Some((last, path)) = parts.split_last() else {
            return false;
        };
        let mut at = config;
        for part in path {
            if !at[*part].is_object() {
                at[*part] = Value::Object(Default::default());
            }
            at = &mut at[*part];
        }
        at[*last] = value;
        true
    }

    /// The name vlm gives `tower`'s section when it cannot parse it (the JSON key).
    pub fn section(&self, tower: Tower) -> &'static str {
        let path = match tower {
            Tower::Vision => self.config.vision,
            Tower::Text => self.config.text,
        };
        path[path.len() - 1]
    }
}

/// The message a caught panic carries.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Runs `case` for every family ([`Family::case`]: a known gap must still fail), each to its end
/// even when another fails; then fails with every family's failure, named.
pub fn for_each_family(case: &str, check: impl Fn(&Family)) {
    let mut failed = Vec::new();
    for family in FAMILIES {
        let run = catch_unwind(AssertUnwindSafe(|| family.case(case, || check(family))));
        if let Err(panic) = run {
            failed.push(format!("{}: {}", family.name, panic_message(&*panic)));
        }
    }
    assert!(
        failed.is_empty(),
        "{case} failed for {} of {} families:\n{}",
        failed.len(),
        FAMILIES.len(),
        failed.join("\n")
    );
}
