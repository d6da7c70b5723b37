//! `vlm calibrate`: per-label thresholds of one aspect, from examples. Each image of a ground
//! truth is scored as `vlm tag` scores it; for each label, the report gives precision, recall and
//! F1 at the aspect's threshold and at the one chosen, and `-o` writes the aspect file again with a
//! threshold per label, which `vlm tag` then uses.
//!
//! - The chosen threshold is exact over the candidates (the label's distinct scores): the highest
//!   F1 (ties: the lowest threshold), or with `--precision P` the lowest threshold whose precision
//!   is at least P. What is written is a short decimal between the winning score and the next lower
//!   one, so the decisions on the truth are exactly those of the winning score ([`metrics::search`]).
//! - A label with fewer than `--min-positives` positives (default 3) keeps its threshold, and so
//!   does one whose precision target cannot be reached; the report's `note` says why.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::eval::write_report;
use super::tag::{self, label_thresholds, prepare, text_units, Rule};
use super::{display_path, show_progress, Outcome, RunOptions};
use crate::aspects::{self, Aspect};
use crate::engine::images::encode_images;
use crate::engine::text::{load_with_text, text_cache, TextReport};
use crate::engine::{plan_model, ModelOptions};
use crate::inputs::Input;
use crate::metrics::{self, counts_at, Counts, Target};
use crate::model::HeadKind;
use crate::output::{CalibrateInfo, CalibratedLabel, FailedInput, Progress, Sink};
use crate::truth::{self, TruthRow};
use crate::Error;

/// Labels with fewer positives than this keep their threshold, unless `--min-positives` says.
pub const DEFAULT_MIN_POSITIVES: usize = 3;

/// Everything `vlm calibrate` needs.
#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    /// One aspect: a built-in name or an aspect file.
    pub aspect: String,
    pub truth: PathBuf,
    /// Where to write the calibrated aspect file.
    pub output: Option<PathBuf>,
    /// Overwrite `output` if it exists.
    pub force: bool,
    /// Reach this precision instead of maximising F1.
    pub precision: Option<f64>,
    pub min_positives: usize,
    pub model: ModelOptions,
    /// The report's format; `run.output.output` is unused (the report goes to stdout).
    pub run: RunOptions,
}

/// The aspect of the run: exactly one.
fn one_aspect(spec: &str) -> Result<Aspect> {
    let mut found = aspects::resolve(&[spec.to_string()])?;
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(Error::Usage(format!(
            "--aspect {spec}: {n} aspects; calibrate takes one at a time"
        ))
        .into()),
    }
}

/// Checks `-o` before any work: not the input aspect file, not an existing file without --force.
fn check_output(out: &Path, aspect: &Aspect, force: bool) -> Result<()> {
    if aspect.source != aspects::BUILTIN_SOURCE {
        let same = match (
            std::fs::canonicalize(out),
            std::fs::canonicalize(&aspect.source),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            return Err(Error::Usage(format!(
                "-o {}: that is the aspect file being calibrated; write the calibrated one beside it",
                out.display()
            ))
            .into());
        }
    }
    if out.symlink_metadata().is_ok() && !force {
        return Err(Error::Usage(format!(
            "-o {}: already exists; use --force to overwrite it",
            out.display()
        ))
        .into());
    }
    if out.is_dir() {
        return Err(Error::Usage(format!("-o {}: is a folder", out.display())).into());
    }
    Ok(())
}

/// The truth's labels as indexes into the aspect's labels; an unknown label is an error naming
/// the file and line.
fn truth_matrix(rows: &[TruthRow], aspect: &Aspect, source: &str) -> Result<Vec<Vec<bool>>> {
    let names: Vec<&str> = aspect.labels.iter().map(|l| l.name.as_str()).collect();
    let mut per_label = vec![vec![false; rows.len()]; names.len()];
    for (i, row) in rows.iter().enumerate() {
        for l in &row.labels {
            let Some(j) = names.iter().position(|n| n == l) else {
                let hint = names
                    .iter()
                    .find(|n| n.eq_ignore_ascii_case(l))
                    .map(|n| format!(" (did you mean {n:?}?)"))
                    .unwrap_or_default();
                return Err(Error::Usage(format!(
                    "{source}:{}: label {} is not in aspect {}{hint}",
                    row.line,
                    crate::error::quote(l),
                    aspect.name
                ))
                .into());
            };
            per_label[j][i] = true;
        }
    }
    Ok(per_label)
}

/// One label's report line and the threshold to write (`None`: leave the label as it was).
fn calibrate_label(
    label: &str,
    scores: &[f32],
    truth: &[bool],
    before: f32,
    target: Target,
    min_positives: usize,
) -> (CalibratedLabel, Option<f32>) {
    let positives = truth.iter().filter(|&&t| t).count();
    let at_before = counts_at(scores, truth, before);
    let (after, counts, note) = if positives < min_positives {
        (
            None,
            at_before,
            Some(format!(
                "kept: {positives} positive(s), fewer than {min_positives}"
            )),
        )
    } else {
        match metrics::search(scores, truth, target) {
            Some(choice) => (Some(choice.threshold), choice.counts, None),
            None => (
                None,
                at_before,
                Some(match target {
                    Target::Precision(p) => format!("kept: no threshold reaches precision {p}"),
                    Target::F1 => "kept: no positives".to_string(),
                }),
            ),
        }
    };
    let c: Counts = counts;
    (
        CalibratedLabel {
            label: label.to_string(),
            positives,
            threshold_before: before,
            precision_before: at_before.precision(),
            recall_before: at_before.recall(),
            f1_before: at_before.f1(),
            threshold_after: after.unwrap_or(before),
            precision_after: c.precision(),
            recall_after: c.recall(),
            f1_after: c.f1(),
            note,
        },
        after,
    )
}

/// Writes `text` to `target` through a temporary file beside it; never over an existing file
/// unless `force`.
fn write_aspect_file(target: &Path, text: &str, force: bool) -> Result<()> {
    use std::io::Write;
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let cannot = || format!("cannot write {}", target.display());
    let mut file = tempfile::Builder::new()
        .prefix(".vlm-calibrate")
        .tempfile_in(&dir)
        .with_context(cannot)?;
    file.write_all(text.as_bytes()).with_context(cannot)?;
    let persisted = if force {
        file.persist(target).map(|_| ())
    } else {
        file.persist_noclobber(target).map(|_| ())
    };
    persisted.map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(Error::Usage(format!(
                "-o {}: already exists; use --force to overwrite it",
                target.display()
            )))
        } else {
            anyhow::Error::from(e.error).context(cannot())
        }
    })
}

pub fn run(opts: &CalibrateOptions) -> Result<Outcome> {
    let quiet = opts.run.quiet;
    let aspect = one_aspect(&opts.aspect)?;
    if let Some(out) = &opts.output {
        check_output(out, &aspect, opts.force)?;
    }
    let target = match opts.precision {
        None => Target::F1,
        Some(p) if (0.0..=1.0).contains(&p) => Target::Precision(p),
        Some(p) => {
            return Err(Error::Usage(format!("--precision {p}: must be between 0 and 1")).into())
        }
    };
    let truth_source = display_path(&opts.truth);
    let rows = truth::read(&opts.truth)?;
    // Every row's labels are checked, found or not; then only the found rows are kept.
    truth_matrix(&rows, &aspect, &truth_source)?;
    let total_rows = rows.len();
    let located = truth::locate(rows, &truth_source)?;
    let rows = located.rows;
    let per_label_truth = truth_matrix(&rows, &aspect, &truth_source)?;
    if !located.missing_rows.is_empty() {
        // One line for all of them, even with -q: each is also a reason for exit code 1.
        let named: Vec<String> = located
            .missing_rows
            .iter()
            .take(3)
            .map(|r| format!("{} (line {})", crate::error::quote(&r.given), r.line))
            .collect();
        let more = located.missing - named.len();
        crate::output::report_error(&format!(
            "{truth_source}: {} of {} paths do not exist and are left out: {}{}",
            located.missing,
            total_rows,
            named.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    let format = super::format_for(&opts.run.output);
    let sink = Sink::open(None, format, false)?;

    let plan = plan_model(&opts.model, quiet)?;
    let needs_neutral = plan.spec.head_kind() == HeadKind::Softmax;
    let units = text_units(std::slice::from_ref(&aspect), needs_neutral);
    let cache = text_cache(opts.run.no_cache);
    let report = TextReport {
        quiet,
        verbose: opts.run.verbose,
    };
    let (engine, embeds) = load_with_text(plan, &units, cache.as_ref(), report)?;
    let rule = Rule::resolve(aspect.kind, (aspect.top_k, aspect.threshold), (None, None));
    let prepared = prepare(
        std::slice::from_ref(&aspect),
        &[rule],
        &[None],
        embeds,
        needs_neutral,
    )?;
    let prepared = prepared.first().context("no aspect prepared")?;
    let head = engine.head();

    // Scores per label over the images that could be scored.
    let inputs: Vec<Input> = rows
        .iter()
        .map(|r| Input {
            path: r.path.clone(),
            error: None,
        })
        .collect();
    let mut scored: Vec<usize> = Vec::new();
    let mut scores: Vec<Vec<f32>> = vec![Vec::new(); aspect.labels.len()];
    // The report lists the first missing paths (all of them are counted on stderr), then every
    // image that could not be decoded.
    let mut failed: Vec<FailedInput> = located
        .missing_rows
        .iter()
        .map(|r| FailedInput {
            path: display_path(&r.path),
            error: format!(
                "{}: no such file ({} of the truth's paths do not exist; the first {} are listed)",
                crate::error::escape_controls(&display_path(&r.path)),
                located.missing,
                located.missing_rows.len()
            ),
        })
        .collect();
    let progress = Progress::images(inputs.len(), show_progress(quiet)).with_errors(true);
    encode_images(
        &engine,
        &inputs,
        &opts.run.batch,
        &progress,
        |i, input, embedding| {
            match embedding {
                Ok(e) => {
                    for (j, t) in tag::scores(&e, prepared, &head).into_iter().enumerate() {
                        if let Some(col) = scores.get_mut(j) {
                            col.push(t.score);
                        }
                    }
                    scored.push(i);
                }
                Err(message) => failed.push(FailedInput {
                    path: display_path(&input.path),
                    error: message,
                }),
            }
            Ok(())
        },
    )?;
    progress.finish();

    let before = label_thresholds(&aspect, &rule, None);
    let mut calibrated = aspect.clone();
    let mut records = Vec::with_capacity(aspect.labels.len());
    for (j, label) in aspect.labels.iter().enumerate() {
        let truth: Vec<bool> = scored.iter().map(|&i| per_label_truth[j][i]).collect();
        let (record, after) = calibrate_label(
            &label.name,
            &scores[j],
            &truth,
            before[j],
            target,
            opts.min_positives,
        );
        if let (Some(t), Some(l)) = (after, calibrated.labels.get_mut(j)) {
            l.threshold = Some(t);
        }
        records.push(record);
    }
    if !quiet {
        let kept = records.iter().filter(|r| r.note.is_some()).count();
        if kept > 0 {
            crate::output::warn(&format!(
                "{kept} of {} labels kept their threshold (too few positives or target not reached; see each label's note)",
                records.len()
            ));
        }
    }
    if let Some(out) = &opts.output {
        let comment = format!(
            "Calibrated by `vlm calibrate` from {} ({} images), model {}, target {};\n\
             the per-label thresholds below replace the aspect's threshold for those labels.\n\
             Aspect from: {}",
            truth_source,
            scored.len(),
            engine.files.id,
            target_name(target),
            aspect.source
        );
        write_aspect_file(out, &calibrated.to_toml(&comment), opts.force)?;
    }
    let header = CalibrateInfo {
        model: engine.info(),
        aspect: aspect.name.clone(),
        source: aspect.source.clone(),
        truth: truth_source,
        images: scored.len(),
        failed,
        target: target_name(target),
        min_positives: opts.min_positives,
        output: opts.output.as_deref().map(display_path),
    };
    let some_failed = !header.failed.is_empty();
    write_report(sink, format, &header, &records)?;
    Ok(if some_failed {
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
}

fn target_name(target: Target) -> String {
    match target {
        Target::F1 => "f1".into(),
        Target::Precision(p) => format!("precision>={p}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_positives_keep_the_threshold_and_say_so() {
        let scores = [0.9, 0.8, 0.2, 0.1];
        let (r, after) = calibrate_label(
            "dog",
            &scores,
            &[true, false, false, false],
            0.5,
            Target::F1,
            3,
        );
        assert_eq!(after, None);
        assert_eq!(r.threshold_after, 0.5);
        assert_eq!(r.note.as_deref(), Some("kept: 1 positive(s), fewer than 3"));
        assert_eq!(r.f1_before, r.f1_after);
        let (r, after) = calibrate_label(
            "dog",
            &scores,
            &[true, true, false, false],
            0.95,
            Target::F1,
            2,
        );
        assert_eq!(after, Some(0.5));
        assert_eq!((r.f1_before, r.f1_after), (Some(0.0), Some(1.0)));
        assert_eq!(r.note, None);
        let (r, after) = calibrate_label(
            "dog",
            &scores,
            &[false, true, true, false],
            0.5,
            Target::Precision(1.0),
            2,
        );
        assert_eq!(after, None);
        assert_eq!(
            r.note.as_deref(),
            Some("kept: no threshold reaches precision 1")
        );
    }

    #[test]
    fn truth_labels_must_be_the_aspects() {
        let aspect = aspects::builtin("color").unwrap();
        let row = |labels: &[&str], line| TruthRow {
            given: "a.jpg".into(),
            path: "a.jpg".into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            line,
        };
        let m = truth_matrix(&[row(&["red"], 2), row(&[], 3)], &aspect, "t.csv").unwrap();
        let red = aspect.labels.iter().position(|l| l.name == "red").unwrap();
        assert_eq!(m[red], [true, false]);
        let e = truth_matrix(&[row(&["Red"], 4)], &aspect, "t.csv")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "t.csv:4: label \"Red\" is not in aspect color (did you mean \"red\"?)"
        );
    }
}
