//! Files of one Hub commit: from the cache Python's `huggingface_hub` fills, else downloaded into
//! it, checked, and the branch pointed at the commit once everything is in place.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use super::model_error;
use super::probe::{access_error, probe, Probe};
use super::remote::{is_commit, HubSettings};
use crate::model;

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
pub(super) struct HubSource<'a> {
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
    pub(super) fn open(
        settings: &'a HubSettings,
        id: &'a str,
        revision: &'a str,
    ) -> Result<HubSource<'a>> {
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
            && model::layouts()
                .iter()
                .any(|layout| snapshot.join(layout.config).is_file())
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
    pub(super) fn cache_only(&self) -> bool {
        self.api.is_none()
    }

    /// [`Self::fetch`] for a file the model can do without (the tokenizer's sidecars): a commit
    /// whose snapshot is already in the cache is not asked about it again, so that a pinned, cached
    /// model (an index's) makes no request at all; a cache filled by Python holds these files, or
    /// its `.no_exist` markers, already.
    pub(super) fn fetch_optional(&self, file: &str) -> Result<Option<PathBuf>> {
        if self.cached_commit {
            let Some(commit) = &self.commit else {
                return Ok(None);
            };
            let path = self.repo_dir.join("snapshots").join(commit).join(file);
            return Ok(path.is_file().then_some(path));
        }
        self.fetch(file)
    }

    /// One file of the commit: from its snapshot folder, else downloaded; `Ok(None)` when the
    /// commit does not have it (or, cache only, when the cache does not).
    pub(super) fn fetch(&self, file: &str) -> Result<Option<PathBuf>> {
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
    pub(super) fn missing(&self, file: &str) -> anyhow::Error {
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
    pub(super) fn finish(&self) -> Result<String> {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
        std::fs::write(snapshot.join("config.json"), "{}").unwrap();
        let absent = cache.path().join("models--o--m/.no_exist").join(commit);
        std::fs::create_dir_all(&absent).unwrap();
        std::fs::write(absent.join("model.safetensors"), "").unwrap();
        for offline in [true, false] {
            let settings = settings(cache.path(), offline);
            let source = HubSource::open(&settings, "o/m", commit).unwrap();
            assert_eq!(
                source.fetch("config.json").unwrap(),
                Some(snapshot.join("config.json"))
            );
            // Known absent: no request (the endpoint is a closed port).
            assert_eq!(source.fetch("model.safetensors").unwrap(), None);
            assert_eq!(source.finish().unwrap(), commit);
        }
        // A branch with no ref is not in the cache.
        let settings = settings(cache.path(), true);
        let source = HubSource::open(&settings, "o/m", "main").unwrap();
        assert_eq!(source.fetch("config.json").unwrap(), None);
        assert!(source
            .missing("config.json")
            .to_string()
            .contains("HF_HUB_OFFLINE is set"));
    }

    /// Any layout's config file in a commit's snapshot makes it a cached commit: no request.
    #[test]
    fn a_snapshot_with_any_layouts_config_is_cached() {
        let commit = "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268";
        for layout in model::layouts() {
            let cache = tempfile::tempdir().unwrap();
            let snapshot = cache.path().join("models--o--m/snapshots").join(commit);
            std::fs::create_dir_all(&snapshot).unwrap();
            std::fs::write(snapshot.join(layout.config), "{}").unwrap();
            let settings = settings(cache.path(), false);
            let source = HubSource::open(&settings, "o/m", commit).unwrap();
            assert!(source.cached_commit, "{}", layout.config);
        }
    }
}
