//! A named output (`--output`, `-o`, `--montage`, an overlay picture), checked before any work and
//! written without losing what the path held (issue 20, items 1, 13, 15 and 16):
//!
//! - a symbolic link is followed: the file it points to is written (through a temporary file in
//!   that file's folder, renamed over it), and the link stays a link;
//! - a FIFO, a character device (`/dev/null`, a terminal) or a link into `/proc` (`/dev/stdout`) is
//!   written to directly, never replaced;
//! - an existing regular file is written only with `--force` (or appended to with `--resume`), and
//!   only when the user may write it; one with other names (hard links), or in a folder that takes
//!   no new file, is rewritten in place at the end instead of replaced, and a replaced file keeps
//!   its permissions;
//! - every error names the output (`--output rodir/x.jsonl: Permission denied`);
//! - temporary files are `.NAME.XXXXXX.vlm-partial`, locked while their run lives, so that the next
//!   run writing NAME removes those a killed run left (a live run's are locked and stay).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use super::sink::interrupt;
use crate::Error;

/// Symbolic links followed before giving up (Linux's own limit, `ELOOP`).
const MAX_LINKS: usize = 40;
const PARTIAL_SUFFIX: &str = ".vlm-partial";
/// Random characters in a temporary file's name (`tempfile`'s default).
const RANDOM_LEN: usize = 6;

/// What may happen to an existing regular file at the path (issue 20 item 16: one rule for every
/// command).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Existing {
    /// Refused; `resume` says whether the message offers `--resume` as well as `--force`.
    Refuse { resume: bool },
    /// `--force`: replaced.
    Replace,
    /// `--resume`: appended to.
    Append,
}

impl Existing {
    /// From a command's flags: `resumable` when the command has `--resume` for this output.
    pub(crate) fn of(force: bool, resume: bool, resumable: bool) -> Existing {
        if resume {
            Existing::Append
        } else if force {
            Existing::Replace
        } else {
            Existing::Refuse { resume: resumable }
        }
    }
}

/// A checked output path.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The flag and the path as given (`--output x.jsonl`): how messages name it.
    name: String,
    existing: Existing,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// A regular file at `real` (symbolic links followed), existing (`old`) or not.
    File { real: PathBuf, old: Option<OldFile> },
    /// A FIFO, a character device, or an open file named through `/proc`: written directly.
    Stream { path: PathBuf },
}

#[derive(Debug, Clone, Copy)]
struct OldFile {
    /// Permission bits, given to the file that replaces it.
    mode: u32,
    /// Rewritten in place rather than replaced: it has other names, or its folder takes no new
    /// file.
    in_place: bool,
}

/// An OS error's text without Rust's ` (os error N)` suffix, looking through wrappers that add a
/// path (`tempfile`'s): `Permission denied`.
pub(crate) fn reason(e: &io::Error) -> String {
    let mut code = e.raw_os_error();
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
    while code.is_none() {
        let Some(s) = source else { break };
        if let Some(io) = s.downcast_ref::<io::Error>() {
            code = io.raw_os_error();
        }
        source = s.source();
    }
    let text = match code {
        Some(c) => io::Error::from_raw_os_error(c).to_string(),
        None => e.to_string(),
    };
    // What follows the OS's text (tempfile's ` at path "..."`) names a temporary file, not
    // the output.
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Where `path` leads, following symbolic links one at a time: the last path, which is not a
/// link (it may not exist), or `None` when a link lives in `/proc` (`/dev/stdout`,
/// `/dev/fd/1`): those name open files, which must be written through the link, not replaced.
fn follow_links(path: &Path) -> io::Result<Option<PathBuf>> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let dir = folder_of(&p);
                if fs::canonicalize(&dir).is_ok_and(|d| d.starts_with("/proc")) {
                    return Ok(None);
                }
                // An absolute link replaces the folder; a relative one is relative to it.
                p = dir.join(fs::read_link(&p)?);
            }
            Ok(_) => return Ok(Some(p)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(p)),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

#[cfg(unix)]
fn is_stream(ft: &fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    ft.is_fifo() || ft.is_char_device()
}

#[cfg(not(unix))]
fn is_stream(_: &fs::FileType) -> bool {
    false
}

#[cfg(unix)]
fn mode_and_links(m: &fs::Metadata) -> (u32, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.mode() & 0o777, m.nlink())
}

#[cfg(not(unix))]
fn mode_and_links(_: &fs::Metadata) -> (u32, u64) {
    (0o666, 1)
}

impl Target {
    /// Checks `path` as the output named by `flag`, before any work: where it leads, that it can
    /// be written, and that an existing file may be (`existing`). Temporary files a killed run
    /// left for the same file are removed.
    pub(crate) fn check(flag: &str, path: &Path, existing: Existing) -> Result<Target> {
        let name = format!("{flag} {}", path.display());
        let fail = |message: String| anyhow!(Error::Usage(format!("{name}: {message}")));
        let stream = |path: PathBuf| -> Result<Target> {
            if existing == Existing::Append {
                return Err(fail(
                    "not a regular file: --resume reads and appends to a file".into(),
                ));
            }
            Ok(Target {
                name: name.clone(),
                existing,
                kind: Kind::Stream { path },
            })
        };
        // The kernel's view, every link followed.
        let meta = match fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(fail(reason(&e))),
        };
        if let Some(m) = &meta {
            let ft = m.file_type();
            if ft.is_dir() {
                return Err(fail("is a folder".into()));
            }
            if is_stream(&ft) {
                return stream(path.to_path_buf());
            }
            if !ft.is_file() {
                return Err(fail(
                    "not a regular file, FIFO or character device; give another path".into(),
                ));
            }
        }
        let Some(real) = follow_links(path).map_err(|e| fail(reason(&e)))? else {
            // `/dev/stdout` and the like, whatever they lead to.
            return stream(path.to_path_buf());
        };
        let dir = folder_of(&real);
        let old = match &meta {
            None => {
                if !dir.is_dir() {
                    return Err(fail(format!("folder {} does not exist", dir.display())));
                }
                // Can a file be made there? A temporary one is made and removed.
                partial_in(&dir, &real, 0o600, false).map_err(|e| fail(reason(&e)))?;
                None
            }
            Some(m) => {
                if let Existing::Refuse { resume } = existing {
                    let or_resume = if resume {
                        ", or --resume to add what it lacks"
                    } else {
                        ""
                    };
                    return Err(fail(format!(
                        "already exists; use --force to overwrite it{or_resume}"
                    )));
                }
                // The user must be allowed to write the file itself (opening it changes nothing).
                OpenOptions::new()
                    .write(true)
                    .open(&real)
                    .map_err(|e| fail(reason(&e)))?;
                let (mode, links) = mode_and_links(m);
                let folder_takes_files = partial_in(&dir, &real, 0o600, false).is_ok();
                Some(OldFile {
                    mode,
                    in_place: links > 1 || !folder_takes_files,
                })
            }
        };
        remove_stale_partials(&real);
        Ok(Target {
            name,
            existing,
            kind: Kind::File { real, old },
        })
    }

    /// `--output x.jsonl`: the flag and the path as given.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The path as given (without the flag).
    pub(crate) fn shown(&self) -> &str {
        self.name
            .split_once(' ')
            .map_or(self.name.as_str(), |(_, p)| p)
    }

    /// The regular file this output is (links followed), if it is one.
    pub(crate) fn regular_file(&self) -> Option<&Path> {
        match &self.kind {
            Kind::File { real, .. } => Some(real),
            Kind::Stream { .. } => None,
        }
    }

    /// An I/O error on this output, as one line naming it. Its kind is kept: a FIFO or
    /// `/dev/stdout` whose reader went away ends the run as quietly as `vlm ... | head` does.
    pub(crate) fn io_error(&self, e: &io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("{}: {}", self.name, reason(e)))
    }

    fn usage(&self, message: &str) -> anyhow::Error {
        anyhow!(Error::Usage(format!("{}: {message}", self.name)))
    }
}

/// A temporary file for `real`, in `dir`: `.NAME.XXXXXX.vlm-partial`, locked while it is open
/// (what tells a later run that this one lives), removed on Ctrl-C when `register`ed.
fn partial_in(
    dir: &Path,
    real: &Path,
    mode: u32,
    register: bool,
) -> io::Result<tempfile::NamedTempFile> {
    let mut prefix = OsString::from(".");
    prefix.push(real.file_name().unwrap_or_else(|| OsStr::new("output")));
    prefix.push(".");
    let mut builder = tempfile::Builder::new();
    builder
        .prefix(&prefix)
        .suffix(PARTIAL_SUFFIX)
        .rand_bytes(RANDOM_LEN);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = mode;
    let file = builder.tempfile_in(dir)?;
    // A file system without locks keeps its partial files from being cleaned up; nothing else.
    let _ = file.as_file().try_lock();
    if register {
        interrupt::register(file.path());
    }
    Ok(file)
}

/// Whether `candidate` is a temporary file vlm made for a file named `name`.
fn is_partial_of(candidate: &OsStr, name: &OsStr) -> bool {
    let c = candidate.as_encoded_bytes();
    let middle = c
        .strip_prefix(b".")
        .and_then(|r| r.strip_prefix(name.as_encoded_bytes()))
        .and_then(|r| r.strip_prefix(b"."))
        .and_then(|r| r.strip_suffix(PARTIAL_SUFFIX.as_bytes()));
    middle.is_some_and(|m| m.len() == RANDOM_LEN && m.iter().all(u8::is_ascii_alphanumeric))
}

/// Removes the temporary files a killed run left beside `real` (issue 20 item 15): plain files
/// named for it whose lock no live run holds.
pub(crate) fn remove_stale_partials(real: &Path) {
    let Some(name) = real.file_name() else { return };
    let Ok(entries) = fs::read_dir(folder_of(real)) else {
        return;
    };
    for entry in entries.flatten() {
        if !is_partial_of(&entry.file_name(), name) || !entry.file_type().is_ok_and(|t| t.is_file())
        {
            continue;
        }
        let path = entry.path();
        if let Ok(f) = File::open(&path) {
            if f.try_lock().is_ok() {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

/// A whole output (a JSON document, a table, a `.npy`, a picture): written to a temporary file
/// and put in place by [`WholeFile::commit`], so a run that fails leaves the target as it was; or
/// straight into a FIFO or device.
pub(crate) struct WholeFile {
    target: Target,
    out: Out,
}

enum Out {
    /// Beside the file, renamed over it at the end.
    Beside(tempfile::NamedTempFile),
    /// In the temporary folder, copied into the file (or the stream) at the end.
    Elsewhere(tempfile::NamedTempFile),
    /// A FIFO or device, opened at the first write (opening a FIFO waits for its reader).
    Direct(Option<File>),
}

impl WholeFile {
    /// Starts the output; nothing at the target changes before `commit`. `seekable`: the writer
    /// goes back to rewrite what it wrote (a `.npy` header), which a stream cannot do, so a
    /// stream's bytes are gathered first.
    pub(crate) fn create(target: &Target, seekable: bool) -> Result<WholeFile> {
        let out = match &target.kind {
            Kind::File { real, old } => {
                let mode = old.map_or(0o666, |o| o.mode);
                if old.is_some_and(|o| o.in_place) {
                    Out::Elsewhere(
                        partial_in(&std::env::temp_dir(), real, 0o600, true)
                            .map_err(|e| target.io_error(&e))?,
                    )
                } else {
                    Out::Beside(
                        partial_in(&folder_of(real), real, mode, true)
                            .map_err(|e| target.io_error(&e))?,
                    )
                }
            }
            Kind::Stream { path } if seekable => Out::Elsewhere(
                partial_in(&std::env::temp_dir(), path, 0o600, true)
                    .map_err(|e| target.io_error(&e))?,
            ),
            Kind::Stream { .. } => Out::Direct(None),
        };
        Ok(WholeFile {
            target: target.clone(),
            out,
        })
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    fn direct(&mut self) -> io::Result<&mut File> {
        let Out::Direct(file) = &mut self.out else {
            return Err(io::Error::other("not a stream"));
        };
        if file.is_none() {
            if let Kind::Stream { path } = &self.target.kind {
                *file = Some(OpenOptions::new().append(true).open(path)?);
            }
        }
        file.as_mut()
            .ok_or_else(|| io::Error::other("output not open"))
    }

    /// Puts the finished output in place: renamed over the file, copied into it, or (a stream)
    /// closed, which tells its reader the output is complete.
    pub(crate) fn commit(mut self) -> Result<()> {
        let target = self.target.clone();
        match std::mem::replace(&mut self.out, Out::Direct(None)) {
            Out::Beside(mut file) => {
                file.flush().map_err(|e| target.io_error(&e))?;
                interrupt::unregister(file.path());
                let Kind::File { real, old } = &target.kind else {
                    return Err(anyhow!("{}: not a file", target.name));
                };
                let persisted =
                    if old.is_none() && matches!(target.existing, Existing::Refuse { .. }) {
                        // Made by someone else since the check: still not overwritten.
                        file.persist_noclobber(real)
                    } else {
                        file.persist(real)
                    };
                match persisted {
                    Ok(_) => Ok(()),
                    Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                        Err(target.usage("already exists; use --force to overwrite it"))
                    }
                    Err(e) => Err(target.io_error(&e.error).into()),
                }
            }
            Out::Elsewhere(mut file) => {
                interrupt::unregister(file.path());
                let mut copy = || -> io::Result<()> {
                    file.flush()?;
                    file.as_file_mut().seek(SeekFrom::Start(0))?;
                    let mut dest = match &target.kind {
                        Kind::File { real, .. } => {
                            let f = OpenOptions::new().write(true).open(real)?;
                            f.set_len(0)?;
                            f
                        }
                        Kind::Stream { path } => OpenOptions::new().append(true).open(path)?,
                    };
                    io::copy(file.as_file_mut(), &mut dest)?;
                    dest.flush()
                };
                copy().map_err(|e| target.io_error(&e))?;
                Ok(())
            }
            Out::Direct(file) => {
                self.out = Out::Direct(file);
                let f = self.direct().map_err(|e| target.io_error(&e))?;
                f.flush().map_err(|e| target.io_error(&e))?;
                Ok(())
            }
        }
    }
}

impl Write for WholeFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = match &mut self.out {
            Out::Beside(f) | Out::Elsewhere(f) => f.write(buf),
            Out::Direct(_) => match self.direct() {
                Ok(f) => f.write(buf),
                Err(e) => Err(e),
            },
        };
        result.map_err(|e| self.target.io_error(&e))
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = match &mut self.out {
            Out::Beside(f) | Out::Elsewhere(f) => f.flush(),
            Out::Direct(Some(f)) => f.flush(),
            Out::Direct(None) => Ok(()),
        };
        result.map_err(|e| self.target.io_error(&e))
    }
}

impl Seek for WholeFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match &mut self.out {
            Out::Beside(f) | Out::Elsewhere(f) => f.seek(pos),
            Out::Direct(_) => Err(io::Error::other("cannot seek in a stream")),
        }
        .map_err(|e| self.target.io_error(&e))
    }
}

/// A streamed output (JSONL, CSV): opened at the first flush, i.e. when the first result is ready,
/// so a run that fails before any result leaves an existing file as it was; truncated then
/// (`--force`), appended to (`--resume`), or made new (never over a file made meanwhile).
pub(crate) struct StreamFile {
    target: Target,
    pending: Vec<u8>,
    file: Option<File>,
}

impl StreamFile {
    pub(crate) fn new(target: &Target) -> StreamFile {
        StreamFile {
            target: target.clone(),
            pending: Vec::new(),
            file: None,
        }
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    fn open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let mut options = OpenOptions::new();
            let path = match &self.target.kind {
                Kind::File { real, old } => {
                    match (self.target.existing, old) {
                        (Existing::Append, _) => options.append(true).create(true),
                        (_, Some(_)) => options.write(true).create(true).truncate(true),
                        (Existing::Refuse { .. }, None) => options.write(true).create_new(true),
                        (_, None) => options.write(true).create(true).truncate(true),
                    };
                    real
                }
                Kind::Stream { path } => {
                    options.append(true);
                    path
                }
            };
            self.file = Some(options.open(path)?);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("output file not open"))
    }
}

impl Write for StreamFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf).map_err(|e| self.target.io_error(&e)),
            None => {
                self.pending.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let result = self
            .open()
            .and_then(|f| f.write_all(&pending).and_then(|()| f.flush()));
        result.map_err(|e| self.target.io_error(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_read_without_their_number() {
        let e = io::Error::from_raw_os_error(13);
        assert_eq!(reason(&e), "Permission denied");
        let wrapped = io::Error::new(e.kind(), e);
        assert_eq!(reason(&wrapped), "Permission denied");
        // tempfile's wrapper hides the code behind its own text.
        let dir = tempfile::tempdir().unwrap();
        let e = tempfile::tempfile_in(dir.path().join("missing")).unwrap_err();
        assert_eq!(reason(&e), "No such file or directory");
        assert_eq!(reason(&io::Error::other("odd")), "odd");
    }

    #[test]
    fn partial_names_match_only_their_file() {
        let p = |s: &str| OsStr::new(s).to_owned();
        assert!(is_partial_of(
            &p(".a.json.Xy12Zq.vlm-partial"),
            OsStr::new("a.json")
        ));
        assert!(!is_partial_of(
            &p(".a.json.x.Xy12Zq.vlm-partial"),
            OsStr::new("a.json")
        ));
        assert!(!is_partial_of(
            &p(".a.json.Xy12Z.vlm-partial"),
            OsStr::new("a.json")
        ));
        assert!(!is_partial_of(
            &p("a.json.Xy12Zq.vlm-partial"),
            OsStr::new("a.json")
        ));
        assert!(!is_partial_of(
            &p(".b.json.Xy12Zq.vlm-partial"),
            OsStr::new("a.json")
        ));
    }

    #[test]
    fn a_live_runs_partial_stays_and_a_dead_runs_goes() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("out.json");
        let live = partial_in(dir.path(), &real, 0o600, false).unwrap();
        let dead = dir.path().join(".out.json.AbC123.vlm-partial");
        fs::write(&dead, "half").unwrap();
        let other = dir.path().join(".other.json.AbC123.vlm-partial");
        fs::write(&other, "half").unwrap();
        remove_stale_partials(&real);
        assert!(live.path().exists());
        assert!(!dead.exists());
        assert!(other.exists());
    }
}
