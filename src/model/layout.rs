//! How a family's checkpoints lie on disk, in a folder or a Hub repository alike: the config file
//! a checkpoint is recognised by, the files read beside it and the weights in order of preference.
//! `hub` walks these ([`super::layouts`]) and names no file of its own.

use std::path::Path;

/// One weight file a layout may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WeightFile {
    /// The whole checkpoint in one file.
    Single(&'static str),
    /// A sharded checkpoint's index (`{"weight_map": {tensor: shard file}}`): every shard it
    /// names is loaded.
    Index(&'static str),
}

impl WeightFile {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            WeightFile::Single(name) | WeightFile::Index(name) => name,
        }
    }
}

/// A checkpoint format's files.
#[derive(Debug)]
pub(crate) struct Layout {
    /// The config file a checkpoint is recognised by; the family's `parse` reads it.
    pub config: &'static str,
    /// Whether a `config` file found is this layout's: timm's repositories hold a `config.json` of
    /// timm's own beside an OpenCLIP checkpoint's files.
    pub claims: fn(&Path) -> bool,
    /// The preprocessing config; `None`: `config` says it (`ModelSpec::preprocess`).
    pub preprocessor: Option<&'static str>,
    /// The tokenizer; `None`: the family builds its own from `config`
    /// (`ModelSpec::builtin_tokenizer`).
    pub tokenizer: Option<&'static str>,
    /// Files read beside the tokenizer when the checkpoint has them (which token pads:
    /// `text::pad_id`); none is required.
    pub tokenizer_sidecars: &'static [&'static str],
    /// The weight files in order of preference: the first there is is loaded (so a `.bin` is never
    /// fetched where safetensors exist). A PyTorch archive is read as data (`model::pytorch`),
    /// never unpickled.
    pub weights: &'static [WeightFile],
}

impl Layout {
    /// Every weight file, for messages: "a, b, c or d".
    pub(crate) fn weight_names(&self) -> String {
        one_of(self.weights.iter().map(WeightFile::name))
    }

    /// What a folder of this layout holds, for the message about a missing file: "config.json,
    /// preprocessor_config.json, tokenizer.json and model.safetensors (or pytorch_model.bin)".
    pub(crate) fn holds(&self) -> String {
        let configs: Vec<&str> = [Some(self.config), self.preprocessor, self.tokenizer]
            .into_iter()
            .flatten()
            .collect();
        let mut singles = self.weights.iter().filter_map(|w| match w {
            WeightFile::Single(name) => Some(*name),
            WeightFile::Index(_) => None,
        });
        let mut text = configs.join(", ");
        if let Some(first) = singles.next() {
            text = format!("{text} and {first}");
            let rest: Vec<&str> = singles.collect();
            if !rest.is_empty() {
                text = format!("{text} (or {})", rest.join(" or "));
            }
        }
        text
    }
}

/// "a", "a or b", "a, b or c".
fn one_of<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.to_string(),
        None => String::new(),
    }
}

/// transformers' checkpoint (`save_pretrained`): `config.json` with a `model_type`, the image
/// processor's and the tokenizer's files, and the weights in `modeling_utils`' order
/// (safetensors first, then `pytorch_model.bin`; each single file, then its sharded index).
pub(crate) static TRANSFORMERS: Layout = Layout {
    config: "config.json",
    claims: has_model_type,
    preprocessor: Some("preprocessor_config.json"),
    tokenizer: Some("tokenizer.json"),
    tokenizer_sidecars: &crate::text::TOKENIZER_SIDECARS,
    weights: &[
        WeightFile::Single("model.safetensors"),
        WeightFile::Index("model.safetensors.index.json"),
        WeightFile::Single("pytorch_model.bin"),
        WeightFile::Index("pytorch_model.bin.index.json"),
    ],
};

/// Whether `path` is a transformers `config.json`: a JSON object with a `model_type`.
fn has_model_type(path: &Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|v| v.get("model_type").is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_list_the_files_in_order() {
        assert_eq!(
            TRANSFORMERS.weight_names(),
            "model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json"
        );
        assert_eq!(
            TRANSFORMERS.holds(),
            "config.json, preprocessor_config.json, tokenizer.json and model.safetensors (or pytorch_model.bin)"
        );
        assert_eq!(one_of(["a", "b"].into_iter()), "a or b");
        assert_eq!(one_of(["a"].into_iter()), "a");
    }

    #[test]
    fn a_config_json_is_transformers_only_with_a_model_type() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert!(!(TRANSFORMERS.claims)(&path));
        std::fs::write(&path, r#"{"architecture": "vit_base_patch16_clip_224"}"#).unwrap();
        assert!(!(TRANSFORMERS.claims)(&path));
        std::fs::write(&path, r#"{"model_type": "clip"}"#).unwrap();
        assert!((TRANSFORMERS.claims)(&path));
    }
}
