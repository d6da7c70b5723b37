//! A Hub model: how this run may reach the Hub, and a repository's files by its layout.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use hf_hub::Cache;

use super::source::HubSource;
use super::{model_error, recognise, weight_files, ModelFiles, ModelRequest};

/// The cache folder, as Python's `huggingface_hub` finds it: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
pub(crate) fn cache_dir() -> PathBuf {
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

/// The files of a Hub model, from the cache or downloaded into it.
pub(super) fn resolve_hub(req: &ModelRequest) -> Result<ModelFiles> {
    let id = req.model.as_str();
    if id.is_empty() || id.contains(char::is_whitespace) {
        return Err(model_error(id, "not a Hub id (owner/name) nor a folder"));
    }
    let revision = req.revision.clone().unwrap_or_else(|| "main".to_string());
    let settings = HubSettings::from_env(req.progress);
    let source = HubSource::open(&settings, id, &revision)?;
    let offline = source.cache_only();
    let fetch = |file: &str| source.fetch(file);
    let require =
        |file: &str| -> Result<PathBuf> { fetch(file)?.ok_or_else(|| source.missing(file)) };
    // The first layout whose config file the commit has and claims (timm's repositories have a
    // config.json of timm's beside an OpenCLIP checkpoint's own config).
    let (layout, config) = recognise(&fetch)?;
    let config = match config {
        Some(config) => config,
        None => require(layout.config)?,
    };
    let preprocessor = layout.preprocessor.map(&require).transpose()?;
    let tokenizer = layout.tokenizer.map(&require).transpose()?;
    // Which token pads the text is named in these when the repository has them; they land beside
    // the tokenizer in the snapshot, where it looks (`text::pad_id`).
    for file in layout.tokenizer_sidecars {
        source.fetch_optional(file)?;
    }
    let expected = layout.weight_names();
    let Some(weights) = weight_files(layout, &fetch, &require)? else {
        return Err(if offline && !settings.offline {
            // The Hub did not answer and the cached commit has no weights.
            source.missing(&format!("the weights ({expected})"))
        } else if offline {
            model_error(
                id,
                format!("no weights ({expected}) in the cache and HF_HUB_OFFLINE is set: run once online, or pass a local folder"),
            )
        } else {
            model_error(
                id,
                format!("the repository has no weights: expected {expected}"),
            )
        });
    };
    let commit = source.finish()?;
    // What the layout has no file for, its config says.
    Ok(ModelFiles {
        id: id.to_string(),
        revision: Some(commit),
        preprocessor: preprocessor.unwrap_or_else(|| config.clone()),
        tokenizer: tokenizer.unwrap_or_else(|| config.clone()),
        config,
        weights,
    })
}

/// How this run may reach the Hub, read once from the environment (huggingface_hub's variables).
#[derive(Debug, Clone)]
pub(super) struct HubSettings {
    pub(super) cache: PathBuf,
    /// `HF_HUB_OFFLINE`: the cache only, no request at all.
    pub(super) offline: bool,
    pub(super) endpoint: String,
    pub(super) token: Option<String>,
    /// How long to wait for the Hub's answer on which commit a branch points to before falling
    /// back to the cached one: `HF_HUB_ETAG_TIMEOUT`, 10 s by default, as in huggingface_hub.
    pub(super) timeout: Duration,
    pub(super) progress: bool,
}

impl HubSettings {
    fn from_env(progress: bool) -> HubSettings {
        let cache = cache_dir();
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .or_else(|| Cache::new(cache.clone()).token());
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "https://huggingface.co".to_string());
        let timeout = std::env::var("HF_HUB_ETAG_TIMEOUT")
            .ok()
            .and_then(|t| t.trim().parse::<f64>().ok())
            .filter(|t| t.is_finite() && *t > 0.0)
            .map_or(Duration::from_secs(10), Duration::from_secs_f64);
        HubSettings {
            cache,
            offline: offline(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            timeout,
            progress,
        }
    }
}

/// A full commit id, as the Hub names snapshots. Such a revision never moves, so its cached files
/// are used without asking the Hub.
pub(super) fn is_commit(revision: &str) -> bool {
    revision.len() == 40
        && revision
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_lowercase_commit_ids_are_commits() {
        assert!(is_commit("3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268"));
        assert!(!is_commit("3d74acf9a28c"));
        assert!(!is_commit("3D74ACF9A28C67741B2F4F2EA7635F0AAF6F0268"));
        assert!(!is_commit("main"));
        assert!(!is_commit("refs/pr/15"));
    }
}
