//! A model folder on local disk: its layout, its files, and the one-line errors for what it lacks.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{model_error, recognise, weight_files, ModelFiles};

/// The files of the checkpoint in `dir`.
pub(super) fn resolve_local(dir: &Path) -> Result<ModelFiles> {
    let name = dir.display().to_string();
    if !dir.exists() {
        return Err(model_error(&name, "no such folder"));
    }
    if !dir.is_dir() {
        return Err(model_error(
            &name,
            "not a folder: give a model folder or a Hub id",
        ));
    }
    let present = |file: &str| -> Result<Option<PathBuf>> {
        let path = dir.join(file);
        Ok(path.is_file().then_some(path))
    };
    let (layout, config) = recognise(&present)?;
    let need = |file: &str| -> Result<PathBuf> {
        present(file)?.ok_or_else(|| {
            model_error(
                &name,
                format!("missing {file}: a model folder holds {}", layout.holds()),
            )
        })
    };
    let config = match config {
        Some(config) => config,
        None => need(layout.config)?,
    };
    let preprocessor = layout.preprocessor.map(&need).transpose()?;
    let tokenizer = match layout.tokenizer {
        // Its gzip is accepted in a local folder in place of the file (the Hub serves it
        // uncompressed; `text::Tokenizer` reads either).
        Some(file) => match dir.join(format!("{file}.gz")) {
            gz if gz.is_file() && !dir.join(file).is_file() => Some(gz),
            _ => Some(need(file)?),
        },
        None => None,
    };
    let shard = |file: &str| -> Result<PathBuf> {
        let path = dir.join(file);
        if path.is_file() {
            Ok(path)
        } else {
            Err(model_error(
                &name,
                format!("its shard index lists {} but it is missing", path.display()),
            ))
        }
    };
    let Some(weights) = weight_files(layout, &present, &shard)? else {
        return Err(model_error(
            &name,
            format!("no weights: expected {}", layout.weight_names()),
        ));
    };
    // What the layout has no file for, its config says.
    Ok(ModelFiles {
        id: name,
        revision: None,
        preprocessor: preprocessor.unwrap_or_else(|| config.clone()),
        tokenizer: tokenizer.unwrap_or_else(|| config.clone()),
        config,
        weights,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_folder_errors_name_the_folder_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().display().to_string();
        let err = resolve_local(dir.path()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("model {name}: missing config.json")),
            "{err}"
        );
        for f in ["config.json", "preprocessor_config.json", "tokenizer.json"] {
            std::fs::write(dir.path().join(f), "{}").unwrap();
        }
        let err = resolve_local(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no weights: expected model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json"), "{err}");
        let err = resolve_local(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("no such folder"), "{err}");
    }

    /// transformers' order: model.safetensors, its index, pytorch_model.bin, its index; the first
    /// present wins, whatever else the folder holds.
    #[test]
    fn weights_are_chosen_in_transformers_order() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["config.json", "preprocessor_config.json", "tokenizer.json"] {
            std::fs::write(dir.path().join(f), "{}").unwrap();
        }
        let chosen = || {
            let files = resolve_local(dir.path()).unwrap();
            let names: Vec<String> = files
                .weights
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            names
        };
        let write = |f: &str, text: &str| std::fs::write(dir.path().join(f), text).unwrap();
        write("pytorch_model-2.bin", "x");
        write("pytorch_model-1.bin", "x");
        write(
            "pytorch_model.bin.index.json",
            r#"{"weight_map":{"a":"pytorch_model-2.bin","b":"pytorch_model-1.bin"}}"#,
        );
        assert_eq!(chosen(), ["pytorch_model-1.bin", "pytorch_model-2.bin"]);
        write("pytorch_model.bin", "x");
        assert_eq!(chosen(), ["pytorch_model.bin"]);
        write("model-1.safetensors", "x");
        write(
            "model.safetensors.index.json",
            r#"{"weight_map":{"a":"model-1.safetensors"}}"#,
        );
        assert_eq!(chosen(), ["model-1.safetensors"]);
        write("model.safetensors", "x");
        assert_eq!(chosen(), ["model.safetensors"]);
        // A shard an index names must be there.
        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        std::fs::remove_file(dir.path().join("model-1.safetensors")).unwrap();
        let err = resolve_local(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("lists") && err.contains("model-1.safetensors but it is missing"),
            "{err}"
        );
    }

    /// A folder is the first layout whose config file it holds and that claims it: a
    /// `config.json` without a `model_type` (timm's, beside another layout's config) is not
    /// transformers'; a layout whose config says the preprocessing and the tokenizer stands for
    /// them with its config; a folder none claims is reported as the first layout's.
    #[test]
    fn a_folder_is_the_layout_that_claims_its_config() {
        let layouts = crate::model::layouts();
        let (first, other) = (layouts[0], layouts[1]);
        let dir = tempfile::tempdir().unwrap();
        let write = |f: &str, text: &str| std::fs::write(dir.path().join(f), text).unwrap();
        write(first.config, r#"{"architecture": "timm's own"}"#);
        write(other.config, "{}");
        let err = resolve_local(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no weights: expected"), "{err}");
        assert!(err.contains(&other.weight_names()), "{err}");
        write(other.weights[0].name(), "x");
        let files = resolve_local(dir.path()).unwrap();
        assert_eq!(files.config, dir.path().join(other.config));
        assert_eq!(files.preprocessor, files.config);
        assert_eq!(files.tokenizer, files.config);
        assert_eq!(files.weights, [dir.path().join(other.weights[0].name())]);
        // A config.json with a model_type: transformers' layout, whatever else is there.
        write(first.config, r#"{"model_type": "x"}"#);
        let err = resolve_local(dir.path()).unwrap_err().to_string();
        assert!(err.contains("missing preprocessor_config.json"), "{err}");
        // None claims it: the first layout's files are asked for.
        std::fs::remove_file(dir.path().join(other.config)).unwrap();
        write(first.config, "{}");
        let err = resolve_local(dir.path()).unwrap_err().to_string();
        assert!(err.contains("missing preprocessor_config.json"), "{err}");
    }

    /// A gzipped tokenizer stands for the file in a folder, unless the file is there too.
    #[test]
    fn a_gzipped_tokenizer_stands_for_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let write = |f: &str| std::fs::write(dir.path().join(f), "{}").unwrap();
        for f in [
            "config.json",
            "preprocessor_config.json",
            "tokenizer.json.gz",
        ] {
            write(f);
        }
        write("model.safetensors");
        let files = resolve_local(dir.path()).unwrap();
        assert_eq!(files.tokenizer, dir.path().join("tokenizer.json.gz"));
        write("tokenizer.json");
        let files = resolve_local(dir.path()).unwrap();
        assert_eq!(files.tokenizer, dir.path().join("tokenizer.json"));
    }
}
