//! Where results go: stdout, a file streamed as records finish, or a file put in place at the end.

use std::io::{self, Write};
use std::path::Path;

use anyhow::Result;

use super::target::{Existing, StreamFile, Target, WholeFile};
use super::Format;

/// Ctrl-C (or SIGTERM) during a run: the temporary files of whole-document outputs are removed
/// before the process exits (130), so no `.*.vlm-partial` is left behind; the target was never
/// touched. A run writing to a file says what the file holds (issue 23 item 6).
pub(crate) mod interrupt {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Mutex, MutexGuard, Once};
    use std::time::Duration;

    static PARTIAL: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static REPORT: Mutex<Option<Report>> = Mutex::new(None);
    /// Held while a record is written and counted, so the count said on Ctrl-C is the file's.
    static WRITING: Mutex<()> = Mutex::new(());
    static WRITTEN: AtomicUsize = AtomicUsize::new(0);
    static FAILED: AtomicUsize = AtomicUsize::new(0);
    static HANDLER: Once = Once::new();

    /// What a run writing to a file says when it is interrupted.
    #[derive(Debug, Clone)]
    pub(crate) struct Report {
        /// The output as given.
        pub output: String,
        /// What a record is (`results`, `embeddings`).
        pub noun: &'static str,
        /// Streamed: the records written so far are in the file; otherwise nothing is.
        pub streamed: bool,
        /// `--resume` can go on from the file.
        pub resumable: bool,
        /// Records the file held before this run (`--resume`).
        pub before: usize,
    }

    fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
        match m.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn install() {
        HANDLER.call_once(|| {
            // If a handler cannot be installed (another one is), the default action stays:
            // the run stops, and only the cleanup and the last word are lost.
            let _ = ctrlc::set_handler(|| {
                // Wait (a little) for a record being written, and keep the next from starting.
                let mut guard = None;
                for _ in 0..100 {
                    match WRITING.try_lock() {
                        Ok(g) => {
                            guard = Some(g);
                            break;
                        }
                        Err(std::sync::TryLockError::Poisoned(p)) => {
                            guard = Some(p.into_inner());
                            break;
                        }
                        Err(std::sync::TryLockError::WouldBlock) => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                    }
                }
                for p in lock(&PARTIAL).iter() {
                    let _ = std::fs::remove_file(p);
                }
                if let Some(report) = lock(&REPORT).as_ref() {
                    crate::output::info(&interrupted(
                        report,
                        WRITTEN.load(Ordering::SeqCst),
                        FAILED.load(Ordering::SeqCst),
                    ));
                }
                // `guard` is held until the process ends: released before the exit, it let one
                // more record into the file after the line above had counted them (CI saw
                // "holds 4 results" over a file of 5).
                let _hold = guard;
                crate::exit_codes::ExitCode::Interrupted.exit();
            });
        });
    }

    /// The line said on Ctrl-C.
    pub(crate) fn interrupted(r: &Report, written: usize, failed: usize) -> String {
        if !r.streamed {
            return format!(
                "interrupted: {} was not written (json and table files are put in place when the run ends; -f jsonl keeps each result as it is done)",
                r.output
            );
        }
        let total = r.before + written;
        let failed = if failed > 0 {
            format!(" ({failed} failed)")
        } else {
            String::new()
        };
        let more = if r.before > 0 {
            format!(", {written} of them from this run{failed}")
        } else {
            failed
        };
        let next = if r.resumable {
            "; the same command with --resume goes on from there"
        } else {
            ""
        };
        format!(
            "interrupted: {} holds {total} {}{more}{next}",
            r.output,
            noun(r.noun, total)
        )
    }

    /// `results` for any count but one.
    fn noun(plural: &str, n: usize) -> &str {
        if n == 1 {
            plural.strip_suffix('s').unwrap_or(plural)
        } else {
            plural
        }
    }

    /// The line said when a run writing to a file is done (issue 23 item 6).
    pub(crate) fn finished(r: &Report, written: usize, failed: usize) -> String {
        let failed = if failed > 0 {
            format!(" ({failed} failed)")
        } else {
            String::new()
        };
        let noun = noun(r.noun, written);
        if r.before > 0 {
            format!(
                "wrote {written} more {noun}{failed} to {}, which now holds {}",
                r.output,
                r.before + written
            )
        } else {
            format!("wrote {written} {noun}{failed} to {}", r.output)
        }
    }

    pub(crate) fn register(path: &Path) {
        install();
        lock(&PARTIAL).push(path.to_path_buf());
    }

    pub(crate) fn unregister(path: &Path) {
        lock(&PARTIAL).retain(|p| p != path);
    }

    /// From now on, Ctrl-C says what `report`'s output holds.
    pub(crate) fn report(report: Report) {
        install();
        *lock(&REPORT) = Some(report);
    }

    /// Writes one record with `write` and counts it (`ok`: not a failed input) when it was
    /// written; Ctrl-C waits for both.
    pub(crate) fn record<T, E>(ok: bool, write: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let _guard = lock(&WRITING);
        let result = write();
        if result.is_ok() {
            WRITTEN.fetch_add(1, Ordering::SeqCst);
            if !ok {
                FAILED.fetch_add(1, Ordering::SeqCst);
            }
        }
        result
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_last_word_says_what_the_file_holds() {
            let mut r = Report {
                output: "tags.jsonl".into(),
                noun: "results",
                streamed: true,
                resumable: true,
                before: 0,
            };
            assert_eq!(
                interrupted(&r, 12, 1),
                "interrupted: tags.jsonl holds 12 results (1 failed); the same command with --resume goes on from there"
            );
            r.before = 30;
            assert_eq!(
                interrupted(&r, 12, 0),
                "interrupted: tags.jsonl holds 42 results, 12 of them from this run; the same command with --resume goes on from there"
            );
            r.streamed = false;
            assert!(interrupted(&r, 12, 0).starts_with("interrupted: tags.jsonl was not written"));
        }
    }
}

/// Where results go: stdout, or `--output FILE`.
pub(crate) enum Sink {
    Stdout(StdoutSink),
    /// Streamed formats: the file is opened (truncated, made, or appended to with `--resume`) at
    /// the first flush, i.e. when the first result is ready, so a run that fails before any
    /// result leaves an existing file as it was.
    Lazy(StreamFile),
    /// Whole-document formats: written to a temporary file and put in place when the run is done
    /// (or straight into a FIFO or device); a run that fails leaves the target untouched.
    Atomic(WholeFile),
}

/// Standard output, its errors naming it (`stdout: No space left on device`). A broken pipe keeps
/// its kind: `vlm ... | head` ends quietly.
pub(crate) struct StdoutSink(io::StdoutLock<'static>);

impl StdoutSink {
    pub(crate) fn new() -> StdoutSink {
        StdoutSink(io::stdout().lock())
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

fn stdout_error(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("stdout: {}", super::target::reason(&e)))
}

impl Write for StdoutSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(stdout_error)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(stdout_error)
    }
}

impl Sink {
    /// Checks `--output` and prepares it; nothing existing is modified yet.
    pub(crate) fn open(output: Option<&Path>, format: Format, existing: Existing) -> Result<Sink> {
        match output {
            None => Ok(Sink::Stdout(StdoutSink::new())),
            Some(path) => Sink::to(&Target::check("--output", path, existing)?, format),
        }
    }

    /// Prepares an already checked output.
    pub(crate) fn to(target: &Target, format: Format) -> Result<Sink> {
        Ok(match format {
            Format::Jsonl | Format::Csv => Sink::Lazy(StreamFile::new(target)),
            Format::Json | Format::Table => Sink::Atomic(WholeFile::create(target, false)?),
        })
    }

    /// The file results go to; `None` for stdout.
    pub(crate) fn target(&self) -> Option<&Target> {
        match self {
            Sink::Stdout(_) => None,
            Sink::Lazy(f) => Some(f.target()),
            Sink::Atomic(f) => Some(f.target()),
        }
    }

    /// Puts a finished output in place.
    pub(crate) fn commit(self) -> Result<()> {
        match self {
            Sink::Stdout(mut out) => Ok(out.flush()?),
            Sink::Lazy(mut file) => Ok(file.flush()?),
            Sink::Atomic(file) => file.commit(),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stdout(out) => out.write(buf),
            Sink::Lazy(file) => file.write(buf),
            Sink::Atomic(file) => file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::Lazy(file) => file.flush(),
            Sink::Atomic(file) => file.flush(),
        }
    }
}
