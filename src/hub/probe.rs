//! The one question asked of the Hub before any download: which commit a revision points to now.

use super::model_error;
use super::remote::{is_commit, HubSettings};
use crate::model;

/// What the Hub said about a revision.
pub(super) enum Probe {
    /// The commit the revision points to now.
    Commit(String),
    /// A definite answer that the model cannot be had (no such repository or revision, gated).
    Refused(anyhow::Error),
    /// No answer (network, timeout, server error): use the cache.
    Unreachable(String),
    /// The repository and revision exist, but not the file asked about (a repository of another
    /// layout has no `config.json`): ask about the next layout's.
    NoEntry(anyhow::Error),
}

/// Asks the Hub which commit `revision` points to: one `HEAD` of its `config.json`, as
/// huggingface_hub does before every load, answered with `X-Repo-Commit`. Relative redirects (a
/// renamed repository) are followed; an absolute one (the file's CDN) already carries the header.
///
/// A repository of another layout (an OpenCLIP one, issue 22) answers for its own config file
/// instead: each layout's is asked in turn (`model::layouts`), and the error about the first
/// layout's missing file is the one reported when none is there.
pub(super) fn probe(settings: &HubSettings, id: &str, revision: &str) -> Probe {
    let mut missing = None;
    for layout in model::layouts() {
        match probe_file(settings, id, revision, layout.config) {
            Probe::NoEntry(err) => {
                missing.get_or_insert(err);
            }
            other => return other,
        }
    }
    Probe::Refused(missing.unwrap_or_else(|| model_error(id, "no model family has a layout")))
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
                return refused(settings, &Asked { id, revision, file }, code, &response)
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

/// What a probe asked the Hub about.
struct Asked<'a> {
    id: &'a str,
    revision: &'a str,
    file: &'a str,
}

fn refused(
    settings: &HubSettings,
    asked: &Asked<'_>,
    code: u16,
    response: &ureq::Response,
) -> Probe {
    let Asked { id, revision, file } = *asked;
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
            format!("the repository has no {file} at revision {revision}: it is not an image-text checkpoint in transformers' format"),
        )),
        (404, _) => Probe::Refused(model_error(
            id,
            format!("not found on the Hub (no {file} at revision {revision}): check the model id and --revision"),
        )),
        (408 | 429 | 500..=599, _) => Probe::Unreachable(format!("the Hub answered {code}")),
        _ => Probe::Refused(model_error(
            id,
            format!("the Hub answered {code} for {file} at revision {revision}"),
        )),
    }
}

/// 401/403: a gated or private repository, or (401 without a token) one that does not exist: the
/// Hub answers alike so as not to tell private names.
pub(super) fn access_error(
    id: &str,
    code: u16,
    error_code: Option<&str>,
    has_token: bool,
) -> anyhow::Error {
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
    fn the_origin_of_a_url_is_its_scheme_host_and_port() {
        assert_eq!(
            origin("http://127.0.0.1:8/a/resolve/main/x"),
            "http://127.0.0.1:8"
        );
        assert_eq!(origin("https://huggingface.co"), "https://huggingface.co");
    }
}
