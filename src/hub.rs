//! Finding a model's files: a local folder, or a Hugging Face Hub repository fetched into the standard
//! cache. This is the only module that touches the network.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;

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
pub struct ModelRequest {
    /// A Hub repo id (`openai/clip-vit-base-patch32`) or a path to a local folder.
    pub model: String,
    pub revision: Option<String>,
    /// Show download progress on stderr.
    pub progress: bool,
}

const CONFIG: &str = "config.json";
const PREPROCESSOR: &str = "preprocessor_config.json";
const TOKENIZER: &str = "tokenizer.json";
/// Accepted in a local folder in place of `tokenizer.json` (the Hub serves it uncompressed).
const TOKENIZER_GZ: &str = "tokenizer.json.gz";
const WEIGHTS: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
const PICKLE_WEIGHTS: [&str; 2] = ["pytorch_model.bin", "pytorch_model.bin.index.json"];
/// An OpenCLIP checkpoint (issue 22): this one file is its model, preprocessing and tokenizer
/// config (the tokenizer itself is built in), beside its weights.
const OPENCLIP_CONFIG: &str = "open_clip_config.json";
const OPENCLIP_WEIGHTS: &str = "open_clip_model.safetensors";
const OPENCLIP_PICKLE: &str = "open_clip_pytorch_model.bin";
/// open_clip's spelling of a Hub model (`create_model("hf-hub:org/name")`).
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
pub fn is_local(model: &str) -> bool {
    Path::new(model).exists()
        || model.starts_with('.')
        || model.starts_with('/')
        || model.starts_with('~')
        || model.ends_with('/')
        || model.contains('\\')
        || model.matches('/').count() > 1
}

pub fn resolve(req: &ModelRequest) -> Result<ModelFiles> {
    if let Some(id) = req.model.strip_prefix(HF_HUB_PREFIX) {
        return resolve_hub(&ModelRequest {
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
        resolve_local(Path::new(&req.model))
    } else {
        resolve_hub(req)
    }
}

fn resolve_local(dir: &Path) -> Result<ModelFiles> {
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
    let need = |file: &str| -> Result<PathBuf> {
        let path = dir.join(file);
        if path.is_file() {
            Ok(path)
        } else {
            Err(model_error(
                &name,
                format!("missing {file}: a model folder holds config.json, preprocessor_config.json, tokenizer.json and model.safetensors"),
            ))
        }
    };
    if dir.join(OPENCLIP_CONFIG).is_file() && !is_transformers_config(&dir.join(CONFIG)) {
        let weights = match dir.join(OPENCLIP_WEIGHTS) {
            w if w.is_file() => w,
            _ => {
                return Err(no_openclip_weights(
                    &name,
                    dir.join(OPENCLIP_PICKLE).is_file(),
                ))
            }
        };
        return Ok(openclip_files(
            name,
            None,
            dir.join(OPENCLIP_CONFIG),
            weights,
        ));
    }
    let config = need(CONFIG)?;
    let preprocessor = need(PREPROCESSOR)?;
    let tokenizer = match dir.join(TOKENIZER_GZ) {
        gz if gz.is_file() && !dir.join(TOKENIZER).is_file() => gz,
        _ => need(TOKENIZER)?,
    };
    let weights = if dir.join(WEIGHTS).is_file() {
        vec![dir.join(WEIGHTS)]
    } else if dir.join(WEIGHTS_INDEX).is_file() {
        let shards = shard_names(&dir.join(WEIGHTS_INDEX))?;
        let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(model_error(
                &name,
                format!(
                    "{WEIGHTS_INDEX} lists {} but it is missing",
                    missing.display()
                ),
            ));
        }
        paths
    } else {
        return Err(no_weights_error(&name, |f| dir.join(f).is_file()));
    };
    Ok(ModelFiles {
        id: name,
        revision: None,
        config,
        preprocessor,
        tokenizer,
        weights,
    })
}

/// Whether `path` is a transformers `config.json` (an object with a `model_type`). timm's
/// repositories, which also hold OpenCLIP's files, have a `config.json` of their own without one.
fn is_transformers_config(path: &Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|v| v.get("model_type").is_some())
}

/// The files of an OpenCLIP checkpoint: its one config stands for the preprocessor and
/// tokenizer configs too.
fn openclip_files(
    id: String,
    revision: Option<String>,
    config: PathBuf,
    weights: PathBuf,
) -> ModelFiles {
    ModelFiles {
        id,
        revision,
        preprocessor: config.clone(),
        tokenizer: config.clone(),
        config,
        weights: vec![weights],
    }
}

fn no_openclip_weights(name: &str, has_pickle: bool) -> anyhow::Error {
    if has_pickle {
        model_error(
            name,
            format!("has only {OPENCLIP_PICKLE} weights, which vlm does not read yet; convert them to {OPENCLIP_WEIGHTS}"),
        )
    } else {
        model_error(
            name,
            format!("no weights beside {OPENCLIP_CONFIG}: expected {OPENCLIP_WEIGHTS} ({OPENCLIP_PICKLE} is not read yet)"),
        )
    }
}

fn no_weights_error(name: &str, has: impl Fn(&str) -> bool) -> anyhow::Error {
    if PICKLE_WEIGHTS.iter().any(|f| has(f)) {
        model_error(
            name,
            "has only pytorch_model.bin weights, which vlm never loads (unpickling can run code); \
             convert them with transformers: AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)",
        )
    } else {
        model_error(
            name,
            format!("no weights: expected {WEIGHTS} or {WEIGHTS_INDEX}"),
        )
    }
}

#[derive(Deserialize)]
struct SafetensorsIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

/// The distinct shard files of a sharded checkpoint, in a stable order.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let parsed: SafetensorsIndex =
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

/// The cache folder, as Python's `huggingface_hub` finds it: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    Cache::from_env().path().clone()
}

/// `HF_HUB_OFFLINE` as huggingface_hub reads it.
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

fn resolve_hub(req: &ModelRequest) -> Result<ModelFiles> {
    let id = req.model.as_str();
    if id.is_empty() || id.contains(char::is_whitespace) {
        return Err(model_error(id, "not a Hub id (owner/name) nor a folder"));
    }
    let revision = req.revision.clone().unwrap_or_else(|| "main".to_string());
    let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision.clone());
    let cache = Cache::new(cache_dir());
    // Offline: the cache only. Online: through the cache, downloading what is missing.
    type Fetch<'a> = Box<dyn Fn(&str) -> Result<Option<PathBuf>> + 'a>;
    let offline = offline();
    let fetch: Fetch = if offline {
        let cached = cache.repo(repo.clone());
        Box::new(move |file| Ok(cached.get(file)))
    } else {
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| cache.token());
        let api = ApiBuilder::from_cache(cache.clone())
            .with_token(token)
            .with_progress(req.progress);
        let api = match std::env::var("HF_ENDPOINT") {
            Ok(endpoint) if !endpoint.is_empty() => api.with_endpoint(endpoint),
            _ => api,
        };
        let api = api
            .build()
            .map_err(|e| model_error(id, format!("cannot set up the Hub client: {e}")))?;
        let api_repo = api.repo(repo.clone());
        let cached = cache.repo(repo.clone());
        Box::new(move |file| fetch_online(&api_repo, id, file, cached.get(file).is_some()))
    };
    let require = |file: &str| -> Result<PathBuf> {
        fetch(file)?.ok_or_else(|| {
            if offline {
                model_error(
                    id,
                    format!("{file} is not in the cache ({}) and HF_HUB_OFFLINE is set: run once online, or pass a local folder", cache_dir().display()),
                )
            } else if file == CONFIG {
                // The first file asked for: a 404 here almost always means a mistyped id.
                model_error(
                    id,
                    format!("not found on the Hub (no {file} at revision {revision}): check the model id and --revision"),
                )
            } else {
                model_error(
                    id,
                    format!("the repository has no {file}: it is not an image-text checkpoint in transformers' format"),
                )
            }
        })
    };
    // No transformers config.json: an OpenCLIP repository has open_clip_config.json instead
    // (timm's repositories have both, with a config.json of timm's).
    let config = match fetch(CONFIG)? {
        Some(config) if is_transformers_config(&config) => config,
        transformers => match fetch(OPENCLIP_CONFIG)? {
            Some(config) => {
                let Some(weights) = fetch(OPENCLIP_WEIGHTS)? else {
                    return Err(no_openclip_weights(id, false));
                };
                let commit = snapshot_commit(&config).unwrap_or(revision);
                return Ok(openclip_files(
                    id.to_string(),
                    Some(commit),
                    config,
                    weights,
                ));
            }
            None => match transformers {
                Some(config) => config,
                None => require(CONFIG)?,
            },
        },
    };
    let preprocessor = require(PREPROCESSOR)?;
    let tokenizer = require(TOKENIZER)?;
    let weights = if let Some(w) = fetch(WEIGHTS)? {
        vec![w]
    } else if let Some(index) = fetch(WEIGHTS_INDEX)? {
        shard_names(&index)?
            .iter()
            .map(|s| require(s))
            .collect::<Result<Vec<_>>>()?
    } else if offline {
        return Err(model_error(
            id,
            format!("no {WEIGHTS} in the cache and HF_HUB_OFFLINE is set: run once online, or pass a local folder"),
        ));
    } else {
        // Ask for the pickle files' presence only to explain the refusal; never download them.
        return Err(no_weights_error(id, |_| true));
    };
    let commit = snapshot_commit(&config).unwrap_or(revision);
    Ok(ModelFiles {
        id: id.to_string(),
        revision: Some(commit),
        config,
        preprocessor,
        tokenizer,
        weights,
    })
}

/// The snapshot folder is named by the commit it holds: report that, not a moving branch name.
fn snapshot_commit(file: &Path) -> Option<String> {
    file.parent()
        .and_then(Path::file_name)
        .map(|c| c.to_string_lossy().into_owned())
}

/// Fetches one file through the cache; `Ok(None)` when the repository does not have it. `in_cache`:
/// whether the cache holds the file already, so that `HF_HUB_OFFLINE=1` would help.
fn fetch_online(repo: &ApiRepo, id: &str, file: &str, in_cache: bool) -> Result<Option<PathBuf>> {
    match repo.get(file) {
        Ok(path) => Ok(Some(path)),
        Err(hf_hub::api::sync::ApiError::RequestError(err)) => match *err {
            ureq::Error::Status(404, _) => Ok(None),
            ureq::Error::Status(401 | 403, _) => Err(model_error(
                id,
                "the Hub refused access (gated or private repository?): set HF_TOKEN",
            )),
            // The Hub answers 401 for repositories that do not exist, too, unless a token is set;
            // both cases land above. Anything else is the network.
            other => Err(model_error(
                id,
                if in_cache {
                    format!("cannot fetch {file} from the Hub ({other}): check the network, or set HF_HUB_OFFLINE=1 to use the cached copy, or pass a local folder")
                } else {
                    format!("cannot fetch {file} from the Hub ({other}): check the network (the model is not in the cache at {} yet), or pass a local folder", cache_dir().display())
                },
            )),
        },
        Err(e) => Err(model_error(id, format!("cannot fetch {file}: {e}"))),
    }
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
    fn local_folder_errors_name_the_folder_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().display().to_string();
        let err = resolve_local(dir.path()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("model {name}: missing config.json")),
            "{err}"
        );
        for f in [CONFIG, PREPROCESSOR, TOKENIZER] {
            std::fs::write(dir.path().join(f), "{}").unwrap();
        }
        let err = resolve_local(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no weights"), "{err}");
        std::fs::write(dir.path().join("pytorch_model.bin"), "x").unwrap();
        let err = resolve_local(dir.path()).unwrap_err().to_string();
        assert!(err.contains("never loads"), "{err}");
        let err = resolve_local(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("no such folder"), "{err}");
    }

    #[test]
    fn shard_index_lists_distinct_files_and_refuses_paths() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join(WEIGHTS_INDEX);
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
