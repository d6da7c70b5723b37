//! Finding a model's files: a local folder, or a Hugging Face Hub repository fetched into the
//! standard cache. This folder is the only code that touches the network, and it names no model
//! family nor any family's file: a checkpoint's files are those of the first of
//! `model::layouts()` whose config file it holds and that claims it.
//!
//! - `local`: a folder;
//! - `remote`: a Hub id, and how this run may reach the Hub (huggingface_hub's variables);
//! - `source`: one commit's files, from the cache or downloaded into it;
//! - `probe`: the one question asked before any download, which commit a revision is.

mod local;
mod probe;
mod remote;
mod source;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::model::{self, Layout, WeightFile};
use crate::Error;

/// The files of a checkpoint, on local disk.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// What the user named: a Hub id or a folder.
    pub id: String,
    /// The Hub commit the files come from; `None` for a local folder.
    pub revision: Option<String>,
    pub config: PathBuf,
    pub preprocessor: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: Vec<PathBuf>,
}

/// What to fetch and from where.
#[derive(Debug, Clone)]
pub(crate) struct ModelRequest {
    /// A Hub repo id (`openai/clip-vit-base-patch32`) or a path to a local folder.
    pub model: String,
    pub revision: Option<String>,
    /// Show download progress on stderr.
    pub progress: bool,
}

/// open_clip's spelling of a Hub model (`create_model("hf-hub:org/name")`), accepted for any.
const HF_HUB_PREFIX: &str = "hf-hub:";

fn model_error(model: &str, reason: impl Into<String>) -> anyhow::Error {
    Error::Model {
        model: model.to_string(),
        reason: reason.into(),
    }
    .into()
}

/// True when `model` names a local folder rather than a Hub id: it exists, or it is written as a path
/// (`./x`, `/x`, `~/x`, `x/`, or with more than one `/`, which no Hub id has).
pub(crate) fn is_local(model: &str) -> bool {
    Path::new(model).exists()
        || model.starts_with('.')
        || model.starts_with('/')
        || model.starts_with('~')
        || model.ends_with('/')
        || model.contains('\\')
        || model.matches('/').count() > 1
}

/// The files of the model `req` names: a local folder's, or a Hub repository's (from the cache,
/// downloaded where missing).
pub(crate) fn resolve(req: &ModelRequest) -> Result<ModelFiles> {
    if let Some(id) = req.model.strip_prefix(HF_HUB_PREFIX) {
        return remote::resolve_hub(&ModelRequest {
            model: id.to_string(),
            ..req.clone()
        });
    }
    if is_local(&req.model) {
        if req.revision.is_some() {
            return Err(model_error(
                &req.model,
                "--revision applies to Hub models, not to a local folder",
            ));
        }
        local::resolve_local(Path::new(&req.model))
    } else {
        remote::resolve_hub(req)
    }
}

/// A checkpoint's layout: the first of `model::layouts()` whose config file `find` finds (the
/// file's local path, or `None` when the folder or repository has no such file) and that claims
/// it, with that file. None does: the first layout (transformers'), with its config file when
/// there is one (a `config.json` without a `model_type` is then reported by the config parser),
/// so that a folder or repository with no config at all is told what the first layout holds.
fn recognise(
    find: &dyn Fn(&str) -> Result<Option<PathBuf>>,
) -> Result<(&'static Layout, Option<PathBuf>)> {
    let mut first = None;
    for layout in model::layouts() {
        let found = find(layout.config)?;
        if found.as_deref().is_some_and(layout.claims) {
            return Ok((layout, found));
        }
        first.get_or_insert((layout, found));
    }
    first.context("no model family has a layout")
}

/// The weight files to load, the first of the layout's there is (its order of preference; so a
/// `.bin` is never fetched where safetensors exist). `fetch(file)`: the file's local path, or
/// `None` when the folder or repository has no such file (downloading it if needed);
/// `shard(file)`: a shard an index names, which must exist. `None`: no weights at all.
fn weight_files(
    layout: &Layout,
    fetch: &dyn Fn(&str) -> Result<Option<PathBuf>>,
    shard: &dyn Fn(&str) -> Result<PathBuf>,
) -> Result<Option<Vec<PathBuf>>> {
    for weight in layout.weights {
        match *weight {
            WeightFile::Single(file) => {
                if let Some(path) = fetch(file)? {
                    return Ok(Some(vec![path]));
                }
            }
            WeightFile::Index(file) => {
                if let Some(index) = fetch(file)? {
                    let shards = shard_names(&index)?;
                    return shards
                        .iter()
                        .map(|s| shard(s))
                        .collect::<Result<_>>()
                        .map(Some);
                }
            }
        }
    }
    Ok(None)
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

/// The distinct shard files of a sharded checkpoint, in a stable order.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let parsed: ShardIndex =
        serde_json::from_str(&text).with_context(|| format!("invalid {}", index.display()))?;
    let mut shards: Vec<String> = parsed.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    if let Some(bad) = shards
        .iter()
        .find(|s| s.contains('/') || s.contains('\\') || s.starts_with('.'))
    {
        anyhow::bail!(
            "{}: shard name {bad:?} is not a plain file name",
            index.display()
        );
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_paths_from_hub_ids() {
        assert!(!is_local("openai/clip-vit-base-patch32"));
        assert!(!is_local("some-model"));
        assert!(is_local("./my-clip"));
        assert!(is_local("/models/clip"));
        assert!(is_local("models/openai/clip"));
        assert!(is_local("clip/"));
    }

    #[test]
    fn shard_index_lists_distinct_files_and_refuses_paths() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("model.safetensors.index.json");
        std::fs::write(
            &index,
            r#"{"metadata":{},"weight_map":{"a":"m-2.safetensors","b":"m-1.safetensors","c":"m-2.safetensors"}}"#,
        )
        .unwrap();
        assert_eq!(
            shard_names(&index).unwrap(),
            ["m-1.safetensors", "m-2.safetensors"]
        );
        std::fs::write(&index, r#"{"weight_map":{"a":"../../etc/passwd"}}"#).unwrap();
        assert!(shard_names(&index).is_err());
    }
}
