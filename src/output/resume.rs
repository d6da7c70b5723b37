//! `--resume`: which images a JSONL output already has, and whether it is this run's to append to
//! (issue 20 item 4).
//!
//! Every JSONL record of `classify` and `tag` carries `"run"`, the run's fingerprint:
//! `"classify m=1f0c8a2e l=77d1b3c0 t=5e2a9c41"`, the command and a short hash each of the model
//! (local folder or Hub id and revision, and `--dtype`), the labels (with `-k`; for `tag` each
//! aspect's labels, neutral prompt, thresholds and `top_k`) and the templates. `--resume` appends
//! only to a file whose records all carry this run's fingerprint; anything else is refused with one
//! line saying which part differs, before the model loads and before the file is touched.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, Write};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::target::{Target, WholeFile};
use crate::engine::ModelOptions;
use crate::Error;

/// A run's fingerprint, as its JSONL records carry it in `run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunStamp(String);

/// The first 8 hex digits of SHA-256 of `value`'s JSON: enough to tell runs apart, short enough
/// for every line.
fn short_hash(value: &impl Serialize) -> String {
    let json = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// The model as a run names it: a local folder by its canonical path (`./m` and `m` are the same
/// model), a Hub id with the revision asked for; and the precision, which changes the numbers.
fn model_key(model: &ModelOptions) -> serde_json::Value {
    let id = if crate::hub::is_local(&model.model) {
        std::fs::canonicalize(&model.model)
            .map_or_else(|_| model.model.clone(), |p| p.display().to_string())
    } else {
        model.model.clone()
    };
    serde_json::json!({
        "model": id,
        "revision": model.revision,
        "dtype": model.precision.name(),
    })
}

impl RunStamp {
    /// `command`'s fingerprint with `model`, `labels` (everything that decides which labels a
    /// record lists) and `templates` (as given; empty for the model's default, which the model
    /// decides).
    pub(crate) fn new(
        command: &str,
        model: &ModelOptions,
        labels: &impl Serialize,
        templates: &impl Serialize,
    ) -> RunStamp {
        RunStamp(format!(
            "{command} m={} l={} t={}",
            short_hash(&model_key(model)),
            short_hash(labels),
            short_hash(templates)
        ))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// What differs between this run and one whose records carry `other`.
    fn difference(&self, other: &str) -> String {
        let mine: Vec<&str> = self.0.split(' ').collect();
        let theirs: Vec<&str> = other.split(' ').collect();
        if mine.first() != theirs.first() {
            return format!(
                "they were written by vlm {}, not vlm {}",
                theirs.first().unwrap_or(&"?"),
                mine.first().unwrap_or(&"?")
            );
        }
        let names = [(1, "model"), (2, "labels"), (3, "templates")];
        let differ: Vec<&str> = names
            .iter()
            .filter(|(i, _)| mine.get(*i) != theirs.get(*i))
            .map(|(_, n)| *n)
            .collect();
        if differ.is_empty() {
            "they carry another fingerprint".into()
        } else {
            format!("they were made with other {}", differ.join(", "))
        }
    }
}

/// The part of any vlm JSONL record that `--resume` reads.
#[derive(Deserialize)]
struct ResumeRecord {
    path: String,
    error: Option<String>,
    run: Option<String>,
}

/// An existing JSONL output, read (not changed) for `--resume`.
pub(crate) struct ResumeFile {
    target: Target,
    /// Paths that already have a result.
    done: HashSet<String>,
    /// The file as it should be: failed records and a cut last line dropped.
    kept: Vec<u8>,
    changed: bool,
    /// Each fingerprint found, with the first line carrying it; `None` for a record without one.
    runs: Vec<(Option<String>, usize)>,
}

impl ResumeFile {
    /// Reads the file `target` is; a missing file has nothing done. A line that is not a vlm
    /// record stops the run: appending to someone else's file would corrupt it.
    pub(crate) fn read(target: &Target) -> Result<ResumeFile> {
        let context = || target.name().to_string();
        let empty = |target: &Target| ResumeFile {
            target: target.clone(),
            done: HashSet::new(),
            kept: Vec::new(),
            changed: false,
            runs: Vec::new(),
        };
        let Some(path) = target.regular_file() else {
            return Ok(empty(target));
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(empty(target)),
            Err(e) => return Err(target.io_error(&e).into()),
        };
        let mut out = empty(target);
        let mut reader = io::BufReader::new(file);
        let mut line = Vec::new();
        let mut number = 0usize;
        loop {
            line.clear();
            if reader
                .read_until(b'\n', &mut line)
                .map_err(|e| target.io_error(&e))
                .with_context(context)?
                == 0
            {
                break;
            }
            number += 1;
            let complete = line.last() == Some(&b'\n');
            if line.iter().all(u8::is_ascii_whitespace) {
                out.changed = true;
                continue;
            }
            match serde_json::from_slice::<ResumeRecord>(&line) {
                Ok(record) => {
                    if !out.runs.iter().any(|(r, _)| *r == record.run) {
                        out.runs.push((record.run, number));
                    }
                    if record.error.is_some() {
                        out.changed = true;
                        continue;
                    }
                    out.done.insert(record.path);
                    out.kept.extend_from_slice(&line);
                    if !complete {
                        out.kept.push(b'\n');
                        out.changed = true;
                    }
                }
                // Only the last line can be a record cut short.
                Err(_) if !complete => out.changed = true,
                Err(e) => {
                    return Err(anyhow!(Error::Usage(format!(
                    "--resume {}:{number}: not a vlm JSONL record ({e}); refusing to append to it",
                    target.shown()
                ))))
                }
            }
        }
        Ok(out)
    }

    /// Whether the records are this run's (`stamp`): refused with one line otherwise, the file
    /// untouched. Then the file is tidied (atomically): records of failed images are dropped, so
    /// that they are tried again, and a last line cut short by a killed run is removed.
    pub(crate) fn accept(&self, stamp: &RunStamp) -> Result<()> {
        let how = "resume with the same command, model, labels and templates, or write another file (--force without --resume starts this one over)";
        for (run, line) in &self.runs {
            let why = match run {
                Some(r) if r == stamp.as_str() => continue,
                Some(r) => stamp.difference(r),
                None => "it has no \"run\" fingerprint (written by an older vlm?), so it cannot be told whether it is this run's".into(),
            };
            return Err(anyhow!(Error::Usage(format!(
                "--resume {}:{line}: the records are not this run's: {why}; {how}",
                self.target.shown()
            ))));
        }
        if self.changed {
            let mut file = WholeFile::create(&self.target, false)?;
            file.write_all(&self.kept)?;
            file.commit()?;
        }
        Ok(())
    }

    /// Paths (as printed) that already have a result.
    pub(crate) fn completed(&self) -> &HashSet<String> {
        &self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> ModelOptions {
        ModelOptions {
            model: name.into(),
            revision: None,
            device: "cpu".into(),
            precision: crate::engine::Precision::F32,
        }
    }

    #[test]
    fn fingerprints_name_what_differs() {
        let a = RunStamp::new("classify", &model("org/a"), &["cat", "dog"], &["{}"]);
        assert_eq!(
            a,
            RunStamp::new("classify", &model("org/a"), &["cat", "dog"], &["{}"])
        );
        let b = RunStamp::new("classify", &model("org/b"), &["cat", "dog"], &["{}"]);
        assert_eq!(a.difference(b.as_str()), "they were made with other model");
        let c = RunStamp::new("classify", &model("org/a"), &["cat"], &["x {}"]);
        assert_eq!(
            a.difference(c.as_str()),
            "they were made with other labels, templates"
        );
        let t = RunStamp::new("tag", &model("org/a"), &["cat", "dog"], &["{}"]);
        assert_eq!(
            a.difference(t.as_str()),
            "they were written by vlm tag, not vlm classify"
        );
    }
}
