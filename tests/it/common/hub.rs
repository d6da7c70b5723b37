//! A stand-in for the Hugging Face Hub on 127.0.0.1, reached through `HF_ENDPOINT` (issue 19,
//! section 2). The standard library (and sha2 for the Hub's content hashes); a thread per port (the
//! Hub's, the CDN's) answers one connection at a time (every answer says `Connection: close`);
//! both stop and are joined when the [`StandIn`] is dropped.
//!
//! It answers what hf-hub (`ApiRepo::download`) and Python's huggingface_hub (`hf_hub_download`)
//! ask, with the headers the real Hub sends:
//! - `GET|HEAD /{repo}/resolve/{revision}/{file}` (`revision` a branch, tag or commit, `/` written
//!   `%2F`): `X-Repo-Commit` always; a small file is answered in place (`ETag`, `Content-Length`,
//!   `Range` honoured with `206` and `Content-Range`); a large one (`*.safetensors`, `*.bin`, ...,
//!   stored in LFS on the Hub) with `302` to `/cdn/{sha256}` on a second port (the Hub's CDN is
//!   another origin) and `X-Linked-Etag`, `X-Linked-Size`;
//! - `404` with `X-Error-Code: EntryNotFound` (and the commit), `RevisionNotFound`; `401` with
//!   `RepoNotFound` for an unknown repository (as the Hub answers without a token); `401`/`403`
//!   with `GatedRepo` for a gated one without the right `Authorization: Bearer` token;
//! - faults on demand: close the connection part-way through a file, or ignore `Range`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// One file as the stand-in serves it.
#[derive(Clone)]
struct Served {
    bytes: Arc<Vec<u8>>,
    sha256: String,
}

impl Served {
    fn new(bytes: Vec<u8>) -> Served {
        Served {
            sha256: hex(&Sha256::digest(&bytes)),
            bytes: Arc::new(bytes),
        }
    }

    /// A stand-in for the git object id the Hub sends as the `ETag` of a small file (40 hex).
    fn git_etag(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!("blob {}\0", self.bytes.len()));
        h.update(self.bytes.as_slice());
        hex(&h.finalize())[..40].to_string()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Large files live in LFS on the Hub: `resolve` redirects them to the CDN.
fn is_lfs(name: &str) -> bool {
    [
        ".safetensors",
        ".bin",
        ".msgpack",
        ".h5",
        ".pt",
        ".pth",
        ".onnx",
    ]
    .iter()
    .any(|ext| name.ends_with(ext))
}

/// A repository: commits (each a file list), branches pointing at them, maybe gated.
#[derive(Clone, Default)]
pub struct HubRepo {
    id: String,
    commits: BTreeMap<String, BTreeMap<String, Served>>,
    branches: BTreeMap<String, String>,
    /// `Some(token)`: gated; only `Authorization: Bearer {token}` gets the files.
    gated: Option<String>,
}

impl HubRepo {
    pub fn new(id: &str) -> HubRepo {
        HubRepo {
            id: id.to_string(),
            ..HubRepo::default()
        }
    }

    /// Adds commit `commit` (40 hex) holding `files` (name, contents).
    pub fn commit(mut self, commit: &str, files: Vec<(String, Vec<u8>)>) -> HubRepo {
        assert_eq!(commit.len(), 40, "a commit id is 40 hex digits");
        let files = files
            .into_iter()
            .map(|(name, bytes)| (name, Served::new(bytes)))
            .collect();
        self.commits.insert(commit.to_string(), files);
        self
    }

    pub fn branch(mut self, name: &str, commit: &str) -> HubRepo {
        self.branches.insert(name.to_string(), commit.to_string());
        self
    }

    pub fn gated(mut self, token: &str) -> HubRepo {
        self.gated = Some(token.to_string());
        self
    }
}

/// Every file of a folder, for [`HubRepo::commit`].
pub fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_str().unwrap().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Closes the connection after `after` bytes of the next `times` bodies of `file`.
#[derive(Clone, Debug)]
pub struct Cut {
    pub file: String,
    pub after: usize,
    pub times: usize,
    /// Send `Content-Length` (the client can tell the body is short) or not (the body ends with
    /// the connection, so a cut looks like the end).
    pub content_length: bool,
}

#[derive(Default)]
struct State {
    repos: Vec<HubRepo>,
    log: Vec<String>,
    cut: Option<Cut>,
    ignore_range: bool,
}

/// The running stand-in; stops when dropped.
pub struct StandIn {
    url: String,
    cdn_url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl StandIn {
    pub fn start(repos: Vec<HubRepo>) -> StandIn {
        StandIn::start_on("127.0.0.1:0", repos)
    }

    pub fn start_on(addr: &str, repos: Vec<HubRepo>) -> StandIn {
        let hub = TcpListener::bind(addr).unwrap();
        // The CDN is another origin, as on the Hub: huggingface_hub follows redirects within the
        // Hub's origin and reads a file's metadata off the redirect to anywhere else.
        let cdn = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", hub.local_addr().unwrap());
        let cdn_url = format!("http://{}", cdn.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            repos,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = [hub, cdn]
            .into_iter()
            .map(|listener| {
                let (state, stop, cdn_url) = (state.clone(), stop.clone(), cdn_url.clone());
                std::thread::spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        if let Ok(stream) = stream {
                            let _ = serve(stream, &state, &cdn_url);
                        }
                    }
                })
            })
            .collect();
        StandIn {
            url,
            cdn_url,
            state,
            stop,
            threads,
        }
    }

    /// The value for `HF_ENDPOINT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The requests so far, as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_requests(&self) {
        self.state.lock().unwrap().log.clear();
    }

    pub fn set_branch(&self, repo: &str, branch: &str, commit: &str) {
        let mut state = self.state.lock().unwrap();
        let repo = state.repos.iter_mut().find(|r| r.id == repo).unwrap();
        repo.branches.insert(branch.to_string(), commit.to_string());
    }

    pub fn cut(&self, cut: Option<Cut>) {
        self.state.lock().unwrap().cut = cut;
    }

    pub fn ignore_range(&self, ignore: bool) {
        self.state.lock().unwrap().ignore_range = ignore;
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loops, which then see `stop`.
        for url in [&self.url, &self.cdn_url] {
            let _ = TcpStream::connect(url.trim_start_matches("http://"));
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok(Request {
        method,
        path,
        headers,
    })
}

fn percent_decode(s: &str) -> String {
    s.replace("%2F", "/").replace("%2f", "/")
}

/// What to send back.
struct Answer {
    status: &'static str,
    headers: Vec<(String, String)>,
    body: Option<(Served, usize, usize)>,
}

impl Answer {
    fn error(status: &'static str, code: &str) -> Answer {
        Answer {
            status,
            headers: vec![
                ("X-Error-Code".into(), code.into()),
                ("X-Error-Message".into(), code.into()),
            ],
            body: None,
        }
    }
}

fn serve(mut stream: TcpStream, state: &Mutex<State>, cdn: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let request = read_request(&stream)?;
    let (answer, cut) = {
        let mut state = state.lock().unwrap();
        state
            .log
            .push(format!("{} {}", request.method, request.path));
        let answer = route(&state, &request, cdn);
        let name = request.path.rsplit('/').next().unwrap_or("").to_string();
        // The file to cut, by name (resolve) or by content (the CDN).
        let targeted = match (&state.cut, &answer.body) {
            (Some(cut), Some((served, start, end))) => {
                request.method == "GET"
                    && end - start > 1
                    && (cut.file == name
                        || state
                            .repos
                            .iter()
                            .flat_map(|r| r.commits.values())
                            .filter_map(|files| files.get(&cut.file))
                            .any(|f| f.sha256 == served.sha256))
            }
            _ => false,
        };
        let cut = match &mut state.cut {
            Some(cut) if targeted && cut.times > 0 => {
                cut.times -= 1;
                Some(cut.clone())
            }
            _ => None,
        };
        (answer, cut)
    };
    let mut head = format!("HTTP/1.1 {}\r\n", answer.status);
    for (k, v) in &answer.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let body_len = answer.body.as_ref().map_or(0, |(_, s, e)| e - s);
    if cut.as_ref().is_none_or(|c| c.content_length) {
        head.push_str(&format!("Content-Length: {body_len}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    stream.write_all(head.as_bytes())?;
    if request.method == "GET" {
        if let Some((served, start, end)) = &answer.body {
            let end = match &cut {
                Some(cut) => (*start + cut.after).min(*end),
                None => *end,
            };
            stream.write_all(&served.bytes[*start..end])?;
        }
    }
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Both);
    // Drain what the client may still send, so that closing never resets the connection
    // before the client has read the answer.
    let mut sink = [0u8; 1024];
    let _ = stream.read(&mut sink);
    Ok(())
}

/// `(start, end)` of a `Range: bytes=a-b` / `bytes=a-` header within `len` bytes.
fn range(header: Option<&String>, len: usize) -> Option<(usize, usize)> {
    let spec = header?.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: usize = a.trim().parse().ok()?;
    let end = match b.trim() {
        "" => len,
        b => (b.parse::<usize>().ok()? + 1).min(len),
    };
    Some((start, end))
}

fn content(
    served: &Served,
    request: &Request,
    state: &State,
    mut headers: Vec<(String, String)>,
) -> Answer {
    let len = served.bytes.len();
    headers.push(("Accept-Ranges".into(), "bytes".into()));
    let wanted = match range(request.headers.get("range"), len) {
        // A server that cannot resume: answers a range from byte N > 0 with the whole file (a
        // probe for the size, `bytes=0-0`, still gets its Content-Range).
        Some((start, _)) if state.ignore_range && start > 0 => None,
        wanted => wanted,
    };
    match wanted {
        Some((start, _)) if start >= len && len > 0 => {
            headers.push(("Content-Range".into(), format!("bytes */{len}")));
            Answer {
                status: "416 Range Not Satisfiable",
                headers,
                body: None,
            }
        }
        Some((start, end)) => {
            headers.push((
                "Content-Range".into(),
                format!("bytes {start}-{}/{len}", end.max(start + 1) - 1),
            ));
            Answer {
                status: "206 Partial Content",
                headers,
                body: Some((served.clone(), start, end)),
            }
        }
        None => Answer {
            status: "200 OK",
            headers,
            body: Some((served.clone(), 0, len)),
        },
    }
}

fn route(state: &State, request: &Request, cdn: &str) -> Answer {
    if request.method != "GET" && request.method != "HEAD" {
        return Answer::error("405 Method Not Allowed", "MethodNotAllowed");
    }
    // The CDN: content by sha256, no authorisation (the Hub's links are signed).
    if let Some(sha) = request.path.strip_prefix("/cdn/") {
        let found = state
            .repos
            .iter()
            .flat_map(|r| r.commits.values())
            .flat_map(|files| files.values())
            .find(|f| f.sha256 == sha);
        return match found {
            Some(served) => {
                let headers = vec![("ETag".into(), format!("\"{}\"", served.sha256))];
                content(served, request, state, headers)
            }
            None => Answer::error("404 Not Found", "NotFound"),
        };
    }
    let Some((repo_id, rest)) = request.path.trim_start_matches('/').split_once("/resolve/") else {
        return Answer::error("404 Not Found", "NotFound");
    };
    let Some((revision, file)) = rest.split_once('/') else {
        return Answer::error("404 Not Found", "EntryNotFound");
    };
    let revision = percent_decode(revision);
    let Some(repo) = state.repos.iter().find(|r| r.id == repo_id) else {
        return Answer::error("401 Unauthorized", "RepoNotFound");
    };
    if let Some(token) = &repo.gated {
        match request.headers.get("authorization") {
            Some(auth) if *auth == format!("Bearer {token}") => {}
            Some(_) => return Answer::error("403 Forbidden", "GatedRepo"),
            None => return Answer::error("401 Unauthorized", "GatedRepo"),
        }
    }
    let commit = match repo.branches.get(&revision) {
        Some(commit) => commit.clone(),
        None if repo.commits.contains_key(&revision) => revision.clone(),
        None => return Answer::error("404 Not Found", "RevisionNotFound"),
    };
    let commit_header = ("X-Repo-Commit".to_string(), commit.clone());
    let Some(served) = repo.commits[&commit].get(file) else {
        let mut answer = Answer::error("404 Not Found", "EntryNotFound");
        answer.headers.push(commit_header);
        return answer;
    };
    if is_lfs(file) {
        return Answer {
            status: "302 Found",
            headers: vec![
                commit_header,
                ("ETag".into(), format!("\"{}\"", served.git_etag())),
                ("X-Linked-Etag".into(), format!("\"{}\"", served.sha256)),
                ("X-Linked-Size".into(), served.bytes.len().to_string()),
                ("Location".into(), format!("{cdn}/cdn/{}", served.sha256)),
            ],
            body: None,
        };
    }
    let headers = vec![
        commit_header,
        ("ETag".into(), format!("\"{}\"", served.git_etag())),
    ];
    content(served, request, state, headers)
}
