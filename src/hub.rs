//! Finding a model's files: a local folder, or a Hugging Face Hub repository fetched into the standard
//! cache. This is the only module that touches the network.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use std::time::Duration;

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
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
/// The weight files, in transformers' order of preference (`modeling_utils`: safetensors first,
/// then `pytorch_model.bin`): each single file, then its sharded index. A PyTorch archive is read
/// as data (`model::pytorch`), never unpickled.
const WEIGHT_FILES: [(&str, &str); 2] = [
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
];
const NO_WEIGHTS: &str = "model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json";
/// An OpenCLIP checkpoint (issue 22): this one file is its model, preprocessing and tokenizer
/// config (the tokenizer itself is built in), beside its weights.
const OPENCLIP_CONFIG: &str = "open_clip_config.json";
/// An OpenCLIP checkpoint's weights, in open_clip's order of preference (`factory.py`:
/// safetensors first); the `.bin` is read as data, as `pytorch_model.bin` is.
const OPENCLIP_WEIGHTS: [&str; 2] = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"];
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
                format!("missing {file}: a model folder holds config.json, preprocessor_config.json, tokenizer.json and model.safetensors (or pytorch_model.bin)"),
            ))
        }
    };
    if dir.join(OPENCLIP_CONFIG).is_file() && !is_transformers_config(&dir.join(CONFIG)) {
        let present = |file: &str| -> Result<Option<PathBuf>> {
            let path = dir.join(file);
            Ok(path.is_file().then_some(path))
        };
        let Some(weights) = openclip_weights(&present)? else {
            return Err(no_openclip_weights(&name));
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
    let present = |file: &str| -> Result<Option<PathBuf>> {
        let path = dir.join(file);
        Ok(path.is_file().then_some(path))
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
    let Some(weights) = weight_files(&present, &shard)? else {
        return Err(model_error(
            &name,
            format!("no weights: expected {NO_WEIGHTS}"),
        ));
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

/// The weight files to load, the first of [`WEIGHT_FILES`] there is (transformers' order; so a
/// `.bin` is never fetched where safetensors exist). `fetch(file)`: the file's local path, or
/// `None` when the folder or repository has no such file (downloading it if needed); `shard(file)`:
/// a shard an index names, which must exist. `None`: no weights at all.
fn weight_files(
    fetch: &dyn Fn(&str) -> Result<Option<PathBuf>>,
    shard: &dyn Fn(&str) -> Result<PathBuf>,
) -> Result<Option<Vec<PathBuf>>> {
    for (single, index) in WEIGHT_FILES {
        if let Some(path) = fetch(single)? {
            return Ok(Some(vec![path]));
        }
        if let Some(index) = fetch(index)? {
            let shards = shard_names(&index)?;
            return shards
                .iter()
                .map(|s| shard(s))
                .collect::<Result<_>>()
                .map(Some);
        }
    }
    Ok(None)
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

fn no_openclip_weights(name: &str) -> anyhow::Error {
    model_error(
        name,
        format!(
            "no weights beside {OPENCLIP_CONFIG}: expected {}",
            OPENCLIP_WEIGHTS.join(" or ")
        ),
    )
}

/// The first of [`OPENCLIP_WEIGHTS`] that `fetch` finds.
fn openclip_weights(fetch: &dyn Fn(&str) -> Result<Option<PathBuf>>) -> Result<Option<PathBuf>> {
    for file in OPENCLIP_WEIGHTS {
        if let Some(path) = fetch(file)? {
            return Ok(Some(path));
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
    let settings = HubSettings::from_env(req.progress);
    let source = HubSource::open(&settings, id, &revision)?;
    let offline = source.cache_only();
    let fetch = |file: &str| source.fetch(file);
    let require =
        |file: &str| -> Result<PathBuf> { fetch(file)?.ok_or_else(|| source.missing(file)) };
    // No transformers config.json: an OpenCLIP repository has open_clip_config.json instead
    // (timm's repositories have both, with a config.json of timm's).
    let config = match fetch(CONFIG)? {
        Some(config) if is_transformers_config(&config) => config,
        transformers => match fetch(OPENCLIP_CONFIG)? {
            Some(config) => {
                let Some(weights) = openclip_weights(&fetch)? else {
                    return Err(no_openclip_weights(id));
                };
                let commit = source.finish()?;
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
    // Which token pads the text is named in these when the repository has them; they land beside
    // tokenizer.json in the snapshot, where the tokenizer looks (`text::pad_id`).
    for file in crate::text::TOKENIZER_SIDECARS {
        source.fetch_optional(file)?;
    }
    let Some(weights) = weight_files(&fetch, &require)? else {
        return Err(if offline && !settings.offline {
            // The Hub did not answer and the cached commit has no weights.
            source.missing(&format!("the weights ({NO_WEIGHTS})"))
        } else if offline {
            model_error(
                id,
                format!("no weights ({NO_WEIGHTS}) in the cache and HF_HUB_OFFLINE is set: run once online, or pass a local folder"),
            )
        } else {
            model_error(
                id,
                format!("the repository has no weights: expected {NO_WEIGHTS}"),
            )
        });
    };
    let commit = source.finish()?;
    Ok(ModelFiles {
        id: id.to_string(),
        revision: Some(commit),
        config,
        preprocessor,
        tokenizer,
        weights,
    })
}

/// How this run may reach the Hub, read once from the environment (huggingface_hub's variables).
#[derive(Debug, Clone)]
struct HubSettings {
    cache: PathBuf,
    /// `HF_HUB_OFFLINE`: the cache only, no request at all.
    offline: bool,
    endpoint: String,
    token: Option<String>,
    /// How long to wait for the Hub's answer on which commit a branch points to before falling
    /// back to the cached one: `HF_HUB_ETAG_TIMEOUT`, 10 s by default, as in huggingface_hub.
    timeout: Duration,
    progress: bool,
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
fn is_commit(revision: &str) -> bool {
    revision.len() == 40
        && revision
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Where one run takes a Hub model's files from: the cache laid out as Python's `huggingface_hub`
/// lays it out (`refs/<branch>` holds a commit id, `snapshots/<commit>/<file>` links into `blobs/`,
/// `.no_exist/<commit>/<file>` marks a file the commit does not have), downloading what is missing.
///
/// Which commit (issue 19, section 3):
/// - a 40-hex revision is that commit: its snapshot folder is used as it is, offline or online,
///   with no request for cached files (a commit never changes, and Python writes no
///   `refs/<commit>`, which hf-hub's own cache lookup needs);
/// - a branch or tag, online: one request asks the Hub which commit it points to now (Python asks
///   on every load too), and the files come from that commit's snapshot, downloading what is
///   missing; if the Hub cannot be reached (no network, a timeout, a server error), the commit
///   cached in `refs/<branch>` is used without a word, as huggingface_hub does;
/// - `HF_HUB_OFFLINE=1`: `refs/<branch>` only, no request.
struct HubSource<'a> {
    id: &'a str,
    revision: &'a str,
    settings: &'a HubSettings,
    /// `<cache>/models--owner--name`.
    repo_dir: PathBuf,
    /// The commit whose files this run uses; `None` when it is neither cached nor known online.
    commit: Option<String>,
    /// Downloads missing files of `commit`; `None` in offline mode or when the Hub is unreachable.
    api: Option<ApiRepo>,
    /// Why the Hub was not asked or did not answer, for the messages about missing files.
    unreachable: Option<String>,
    /// Whether `refs/<commit>` was there before this run (hf-hub writes one per download; Python
    /// never does, so vlm removes the ones it caused).
    had_commit_ref: bool,
    /// The revision is a commit whose snapshot was found in the cache: no request was made.
    cached_commit: bool,
}

impl<'a> HubSource<'a> {
    fn open(settings: &'a HubSettings, id: &'a str, revision: &'a str) -> Result<HubSource<'a>> {
        let repo = Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string());
        let repo_dir = settings.cache.join(repo.folder_name());
        let cached_ref = || -> Option<String> {
            let text = std::fs::read_to_string(repo_dir.join("refs").join(revision)).ok()?;
            let commit = text.trim();
            is_commit(commit).then(|| commit.to_string())
        };
        let mut source = HubSource {
            id,
            revision,
            settings,
            repo_dir: repo_dir.clone(),
            commit: None,
            api: None,
            unreachable: None,
            had_commit_ref: false,
            cached_commit: false,
        };
        if settings.offline {
            source.commit = if is_commit(revision) {
                Some(revision.to_string())
            } else {
                cached_ref()
            };
            return Ok(source);
        }
        let snapshot = repo_dir.join("snapshots").join(revision);
        let commit = if is_commit(revision)
            && (snapshot.join(CONFIG).is_file() || snapshot.join(OPENCLIP_CONFIG).is_file())
        {
            source.cached_commit = true;
            revision.to_string()
        } else {
            match probe(settings, id, revision) {
                Probe::Commit(commit) => commit,
                Probe::Refused(err) | Probe::NoEntry(err) => return Err(err),
                Probe::Unreachable(why) => {
                    source.commit = if is_commit(revision) {
                        Some(revision.to_string())
                    } else {
                        cached_ref()
                    };
                    source.unreachable = Some(why);
                    return Ok(source);
                }
            }
        };
        let api = ApiBuilder::from_cache(Cache::new(settings.cache.clone()))
            .with_token(settings.token.clone())
            .with_progress(settings.progress)
            .with_endpoint(settings.endpoint.clone())
            .build()
            .map_err(|e| model_error(id, format!("cannot set up the Hub client: {e}")))?;
        source.api = Some(api.repo(Repo::with_revision(
            id.to_string(),
            RepoType::Model,
            commit.clone(),
        )));
        source.had_commit_ref = repo_dir.join("refs").join(&commit).exists();
        source.commit = Some(commit);
        Ok(source)
    }

    /// True when no file will be downloaded (offline, or the Hub did not answer).
    fn cache_only(&self) -> bool {
        self.api.is_none()
    }

    /// One file of the commit: from its snapshot folder, else downloaded; `Ok(None)` when the
    /// commit does not have it (or, cache only, when the cache does not).
    /// [`Self::fetch`] for a file the model can do without (the tokenizer's sidecars): a commit
    /// whose snapshot is already in the cache is not asked about it again, so that a pinned, cached
    /// model (an index's) makes no request at all; a cache filled by Python holds these files, or
    /// its `.no_exist` markers, already.
    fn fetch_optional(&self, file: &str) -> Result<Option<PathBuf>> {
        if self.cached_commit {
            let Some(commit) = &self.commit else {
                return Ok(None);
            };
            let path = self.repo_dir.join("snapshots").join(commit).join(file);
            return Ok(path.is_file().then_some(path));
        }
        self.fetch(file)
    }

    fn fetch(&self, file: &str) -> Result<Option<PathBuf>> {
        let Some(commit) = &self.commit else {
            return Ok(None);
        };
        let path = self.repo_dir.join("snapshots").join(commit).join(file);
        if path.is_file() {
            return Ok(Some(path));
        }
        let absent = self.repo_dir.join(".no_exist").join(commit).join(file);
        if absent.exists() {
            return Ok(None);
        }
        let Some(api) = &self.api else {
            return Ok(None);
        };
        // A snapshot link whose blob is gone (a cleaned cache): hf-hub would fail to link the new
        // download over it ("File exists") on every run.
        if path.symlink_metadata().is_ok() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove the broken link {}", path.display()))?;
        }
        match api.download(file) {
            Ok(path) => {
                self.check_download(file, &path)?;
                Ok(Some(path))
            }
            Err(ApiError::RequestError(err)) => match *err {
                ureq::Error::Status(404, response) => {
                    if response.header("X-Error-Code") == Some("EntryNotFound") {
                        // As huggingface_hub records it, so neither asks again for this commit.
                        if let Some(dir) = absent.parent() {
                            let _ = std::fs::create_dir_all(dir)
                                .and_then(|()| std::fs::write(&absent, b""));
                        }
                    }
                    Ok(None)
                }
                ureq::Error::Status(code @ (401 | 403), response) => Err(access_error(
                    self.id,
                    code,
                    response.header("X-Error-Code"),
                    self.settings.token.is_some(),
                )),
                other => Err(model_error(
                    self.id,
                    format!(
                        "cannot fetch {file} from the Hub ({other}): check the network, or pass a local folder"
                    ),
                )),
            },
            Err(ApiError::IoError(e)) => Err(model_error(
                self.id,
                format!(
                    "the download of {file} stopped ({e}): run the command again to resume it"
                ),
            )),
            Err(e) => Err(model_error(self.id, format!("cannot fetch {file}: {e}"))),
        }
    }

    /// A file just downloaded is whole before anything reads it: for a large (LFS) file the Hub
    /// names the blob by its sha256, and hf-hub checks neither the length nor the hash (a resumed
    /// download that a server answered from byte 0, or a body cut off without a length, would be
    /// kept as if whole). A mismatch removes the blob so that the next run downloads it again.
    fn check_download(&self, file: &str, path: &Path) -> Result<()> {
        let Ok(blob) = std::fs::canonicalize(path) else {
            return Ok(());
        };
        let Some(expected) = blob
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_ascii_lowercase)
        else {
            return Ok(());
        };
        let actual =
            sha256_file(&blob).with_context(|| format!("cannot read {}", blob.display()))?;
        if actual == expected {
            return Ok(());
        }
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(&blob);
        Err(model_error(
            self.id,
            format!(
                "the download of {file} is not the Hub's file (sha256 {actual}, expected {expected}); it was removed: run the command again"
            ),
        ))
    }

    /// The one-line error for a file the model needs but this run cannot have.
    fn missing(&self, file: &str) -> anyhow::Error {
        let cache = self.settings.cache.display();
        if self.settings.offline {
            model_error(
                self.id,
                format!("{file} is not in the cache ({cache}) and HF_HUB_OFFLINE is set: run once online, or pass a local folder"),
            )
        } else if let Some(why) = &self.unreachable {
            model_error(
                self.id,
                format!("cannot fetch {file} from the Hub ({why}): check the network (the model is not in the cache at {cache} yet), or pass a local folder"),
            )
        } else {
            model_error(
                self.id,
                format!(
                    "the repository has no {file} at revision {}: it is not an image-text checkpoint in transformers' format",
                    self.revision
                ),
            )
        }
    }

    /// After every file is in place: points `refs/<branch>` at the commit used, as huggingface_hub
    /// does (only now, so that an interrupted download never leaves the branch on a commit whose
    /// files are not all cached), and returns the commit.
    fn finish(&self) -> Result<String> {
        let commit = self
            .commit
            .clone()
            .unwrap_or_else(|| self.revision.to_string());
        if self.api.is_none() {
            return Ok(commit);
        }
        let refs = self.repo_dir.join("refs");
        if !self.had_commit_ref {
            let _ = std::fs::remove_file(refs.join(&commit));
        }
        if !is_commit(self.revision) {
            let path = refs.join(self.revision);
            let current = std::fs::read_to_string(&path).ok();
            if current.as_deref().map(str::trim) != Some(commit.as_str()) {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                std::fs::write(&path, &commit)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        Ok(commit)
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    let mut hex = String::with_capacity(64);
    for byte in hasher.finalize() {
        let _ = write!(hex, "{byte:02x}");
    }
    Ok(hex)
}

/// What the Hub said about a revision.
enum Probe {
    /// The commit the revision points to now.
    Commit(String),
    /// A definite answer that the model cannot be had (no such repository or revision, gated).
    Refused(anyhow::Error),
    /// No answer (network, timeout, server error): use the cache.
    Unreachable(String),
    /// The repository and revision exist, but not the file asked about (an OpenCLIP repository
    /// has no `config.json`): ask about the next one.
    NoEntry(anyhow::Error),
}

/// Asks the Hub which commit `revision` points to: one `HEAD` of its `config.json`, as
/// huggingface_hub does before every load, answered with `X-Repo-Commit`. Relative redirects (a
/// renamed repository) are followed; an absolute one (the file's CDN) already carries the header.
fn probe(settings: &HubSettings, id: &str, revision: &str) -> Probe {
    // An OpenCLIP repository (issue 22) answers for its open_clip_config.json instead; the error
    // about a missing config.json is the one reported when neither is there.
    match probe_file(settings, id, revision, CONFIG) {
        Probe::NoEntry(err) => match probe_file(settings, id, revision, OPENCLIP_CONFIG) {
            Probe::NoEntry(_) => Probe::Refused(err),
            other => other,
        },
        other => other,
    }
}

/// [`probe`] for one file of the repository.
fn probe_file(settings: &HubSettings, id: &str, revision: &str, file: &str) -> Probe {
    let agent = ureq::AgentBuilder::new()
        .try_proxy_from_env(true)
        .redirects(0)
        .timeout_connect(settings.timeout)
        .timeout(settings.timeout)
        .build();
    let mut url = format!(
        "{}/{id}/resolve/{}/{file}",
        settings.endpoint,
        revision.replace('/', "%2F")
    );
    for _ in 0..5 {
        let mut request = agent
            .head(&url)
            .set("User-Agent", concat!("vlm/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = &settings.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(code, response)) => {
                return refused(settings, id, revision, code, &response)
            }
            Err(ureq::Error::Transport(t)) => return Probe::Unreachable(t.to_string()),
        };
        if (300..400).contains(&response.status()) {
            if let Some(location) = response.header("Location").filter(|l| l.starts_with('/')) {
                url = format!("{}{location}", origin(&url));
                continue;
            }
        }
        return match response.header("X-Repo-Commit").map(str::trim) {
            Some(commit) if is_commit(commit) => Probe::Commit(commit.to_string()),
            _ => Probe::Refused(model_error(
                id,
                format!(
                    "{} answered without a commit id (X-Repo-Commit): is HF_ENDPOINT a Hugging Face Hub?",
                    settings.endpoint
                ),
            )),
        };
    }
    Probe::Refused(model_error(id, "the Hub redirected too many times"))
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

fn refused(
    settings: &HubSettings,
    id: &str,
    revision: &str,
    code: u16,
    response: &ureq::Response,
) -> Probe {
    let error_code = response.header("X-Error-Code");
    match (code, error_code) {
        (401 | 403, _) => Probe::Refused(access_error(
            id,
            code,
            error_code,
            settings.token.is_some(),
        )),
        (404, Some("RevisionNotFound")) => Probe::Refused(model_error(
            id,
            format!("the Hub has no revision {revision}: check --revision"),
        )),
        (404, Some("EntryNotFound")) => Probe::NoEntry(model_error(
            id,
            format!("the repository has no {CONFIG} at revision {revision}: it is not an image-text checkpoint in transformers' format"),
        )),
        (404, _) => Probe::Refused(model_error(
            id,
            format!("not found on the Hub (no {CONFIG} at revision {revision}): check the model id and --revision"),
        )),
        (408 | 429 | 500..=599, _) => Probe::Unreachable(format!("the Hub answered {code}")),
        _ => Probe::Refused(model_error(
            id,
            format!("the Hub answered {code} for {CONFIG} at revision {revision}"),
        )),
    }
}

/// 401/403: a gated or private repository, or (401 without a token) one that does not exist: the
/// Hub answers alike so as not to tell private names.
fn access_error(id: &str, code: u16, error_code: Option<&str>, has_token: bool) -> anyhow::Error {
    let reason = match (error_code, has_token) {
        (Some("GatedRepo"), false) => format!(
            "the repository is gated: accept its conditions at https://huggingface.co/{id} and set HF_TOKEN to a token of that account"
        ),
        (Some("GatedRepo"), true) => format!(
            "the repository is gated and the Hub refused HF_TOKEN ({code}): accept its conditions at https://huggingface.co/{id} with the token's account"
        ),
        (_, false) => "the Hub refused access (no such repository, or a private or gated one): check the model id, or set HF_TOKEN".to_string(),
        (_, true) => format!(
            "the Hub refused access with HF_TOKEN ({code}): check the model id and that the token's account can read it"
        ),
    };
    model_error(id, reason)
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
        for f in [CONFIG, PREPROCESSOR, TOKENIZER] {
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

    #[test]
    fn only_full_lowercase_commit_ids_are_commits() {
        assert!(is_commit("3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268"));
        assert!(!is_commit("3d74acf9a28c"));
        assert!(!is_commit("3D74ACF9A28C67741B2F4F2EA7635F0AAF6F0268"));
        assert!(!is_commit("main"));
        assert!(!is_commit("refs/pr/15"));
        assert_eq!(
            origin("http://127.0.0.1:8/a/resolve/main/x"),
            "http://127.0.0.1:8"
        );
        assert_eq!(origin("https://huggingface.co"), "https://huggingface.co");
    }

    fn settings(cache: &Path, offline: bool) -> HubSettings {
        HubSettings {
            cache: cache.to_path_buf(),
            offline,
            // A closed port: nothing may be asked in these tests.
            endpoint: "http://127.0.0.1:9".into(),
            token: None,
            timeout: Duration::from_secs(1),
            progress: false,
        }
    }

    /// issue 19: Python writes refs/main and snapshots/<commit>/ but never refs/<commit>.
    #[test]
    fn a_commit_resolves_to_its_snapshot_without_a_ref_offline_and_online() {
        let cache = tempfile::tempdir().unwrap();
        let commit = "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268";
        let snapshot = cache.path().join("models--o--m/snapshots").join(commit);
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::write(snapshot.join(CONFIG), "{}").unwrap();
        let absent = cache.path().join("models--o--m/.no_exist").join(commit);
        std::fs::create_dir_all(&absent).unwrap();
        std::fs::write(absent.join("model.safetensors"), "").unwrap();
        for offline in [true, false] {
            let settings = settings(cache.path(), offline);
            let source = HubSource::open(&settings, "o/m", commit).unwrap();
            assert_eq!(source.fetch(CONFIG).unwrap(), Some(snapshot.join(CONFIG)));
            // Known absent: no request (the endpoint is a closed port).
            assert_eq!(source.fetch("model.safetensors").unwrap(), None);
            assert_eq!(source.finish().unwrap(), commit);
        }
        // A branch with no ref is not in the cache.
        let settings = settings(cache.path(), true);
        let source = HubSource::open(&settings, "o/m", "main").unwrap();
        assert_eq!(source.fetch(CONFIG).unwrap(), None);
        assert!(source
            .missing(CONFIG)
            .to_string()
            .contains("HF_HUB_OFFLINE is set"));
    }
}
