//! Where results go: stdout, a file streamed as records finish, or a file put in place at the end.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use super::Format;

/// Ctrl-C (or SIGTERM) during a run: the temporary files of whole-document outputs are removed
/// before the process exits (130), so no `.*.vlm-partial` is left behind; the target was never
/// touched.
pub mod interrupt {
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, Once};

    static PARTIAL: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static HANDLER: Once = Once::new();

    fn partial() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
        match PARTIAL.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn register(path: &Path) {
        HANDLER.call_once(|| {
            // If a handler cannot be installed (another one is), the default action stays:
            // the run stops, and only the cleanup is lost.
            let _ = ctrlc::set_handler(|| {
                for p in partial().iter() {
                    let _ = std::fs::remove_file(p);
                }
                crate::exit_codes::ExitCode::Interrupted.exit();
            });
        });
        partial().push(path.to_path_buf());
    }

    pub fn unregister(path: &Path) {
        partial().retain(|p| p != path);
    }
}

/// Where results go: stdout, or `--output FILE`.
pub enum Sink {
    Stdout(io::StdoutLock<'static>),
    /// Streamed formats: the file is opened (truncated, or appended to with `--resume`) at the first
    /// flush, i.e. when the first result is ready, so a run that fails before any result leaves an
    /// existing file as it was.
    Lazy(LazyFile),
    /// Whole-document formats: written to a temporary file beside the target and renamed over it
    /// when the run is done; a run that fails leaves the target untouched.
    Atomic {
        file: tempfile::NamedTempFile,
        target: PathBuf,
    },
}

pub struct LazyFile {
    path: PathBuf,
    append: bool,
    pending: Vec<u8>,
    file: Option<File>,
}

impl LazyFile {
    fn open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .append(self.append)
                .truncate(!self.append)
                .open(&self.path)?;
            self.file = Some(file);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("output file not open"))
    }
}

impl Write for LazyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => {
                self.pending.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let file = self.open()?;
        file.write_all(&pending)?;
        file.flush()
    }
}

impl Sink {
    /// Checks `--output` and prepares it; nothing existing is modified yet.
    pub fn open(output: Option<&Path>, format: Format, append: bool) -> Result<Sink> {
        let Some(path) = output else {
            return Ok(Sink::Stdout(io::stdout().lock()));
        };
        let context = || format!("--output {}", path.display());
        if path.is_dir() {
            return Err(anyhow::anyhow!("is a folder")).with_context(context);
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match format {
            Format::Jsonl | Format::Csv => {
                // Fail now, before the model loads, if the file cannot be written at all.
                if path.exists() {
                    OpenOptions::new()
                        .append(true)
                        .open(path)
                        .with_context(context)?;
                } else if !dir.is_dir() {
                    return Err(anyhow::anyhow!("folder {} does not exist", dir.display()))
                        .with_context(context);
                }
                Ok(Sink::Lazy(LazyFile {
                    path: path.to_path_buf(),
                    append,
                    pending: Vec::new(),
                    file: None,
                }))
            }
            Format::Json | Format::Table => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let prefix = format!(".{name}.");
                let mut builder = tempfile::Builder::new();
                builder.prefix(&prefix).suffix(".vlm-partial");
                // The finished file gets the permissions of any new file (0666 less the umask),
                // not the 0600 of a temporary one.
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    builder.permissions(std::fs::Permissions::from_mode(0o666));
                }
                let file = builder
                    .tempfile_in(&dir)
                    .with_context(|| format!("cannot create a temporary file in {}", dir.display()))
                    .with_context(context)?;
                interrupt::register(file.path());
                Ok(Sink::Atomic {
                    file,
                    target: path.to_path_buf(),
                })
            }
        }
    }

    /// Puts a finished output in place.
    pub fn commit(self) -> Result<()> {
        match self {
            Sink::Stdout(mut out) => Ok(out.flush()?),
            Sink::Lazy(mut file) => Ok(file
                .flush()
                .with_context(|| format!("--output {}", file.path.display()))?),
            Sink::Atomic { file, target } => {
                interrupt::unregister(file.path());
                file.persist(&target)
                    .map_err(|e| e.error)
                    .with_context(|| {
                        format!("--output {}: cannot rename into place", target.display())
                    })?;
                Ok(())
            }
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stdout(out) => out.write(buf),
            Sink::Lazy(file) => file.write(buf),
            Sink::Atomic { file, .. } => file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::Lazy(file) => file.flush(),
            Sink::Atomic { file, .. } => file.flush(),
        }
    }
}

/// The part of any vlm JSONL record that `--resume` reads.
#[derive(Deserialize)]
struct ResumeRecord {
    path: String,
    error: Option<String>,
}

/// Reads an existing JSONL output for `--resume`: the paths that already have a result. The file is
/// tidied first (atomically) when it needs it: records of failed images are dropped so that those
/// images are tried again, and a last line cut short by a killed run is removed. A line that is not a
/// vlm record stops the run: appending to someone else's file would corrupt it.
pub fn read_completed(path: &Path) -> Result<HashSet<String>> {
    let context = || format!("--resume {}", path.display());
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e).with_context(context),
    };
    let mut reader = io::BufReader::new(file);
    let mut done = HashSet::new();
    let mut kept: Vec<u8> = Vec::new();
    let mut changed = false;
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).with_context(context)? == 0 {
            break;
        }
        number += 1;
        let complete = line.last() == Some(&b'\n');
        if line.iter().all(u8::is_ascii_whitespace) {
            changed = true;
            continue;
        }
        match serde_json::from_slice::<ResumeRecord>(&line) {
            Ok(record) if record.error.is_none() => {
                done.insert(record.path);
                kept.extend_from_slice(&line);
                if !complete {
                    kept.push(b'\n');
                    changed = true;
                }
            }
            Ok(_) => changed = true,
            // Only the last line can be a record cut short.
            Err(_) if !complete => changed = true,
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "{}:{number}: not a vlm JSONL record ({e}); refusing to append to it",
                    path.display()
                ))
            }
        }
    }
    if changed {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(context)?;
        tmp.write_all(&kept).with_context(context)?;
        tmp.persist(path)
            .map_err(|e| e.error)
            .with_context(context)?;
    }
    Ok(done)
}
