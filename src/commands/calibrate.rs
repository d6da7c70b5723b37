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

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{display_path, show_progress, Outcome, RunOptions};
use crate::engine::images::encode_images;
use crate::engine::text::{load_with_text, text_cache, TextReport};
use crate::engine::{plan_model, ModelOptions};
use crate::evaluation::metrics::{self, counts_at, Counts, Target};
use crate::evaluation::truth::{self, TruthRow};
use crate::inputs::Input;
use crate::model::HeadKind;
use crate::output::target::WholeFile;
use crate::output::{
    write_report, CalibrateInfo, CalibratedLabel, Existing, FailedInput, Format, Progress,
    ResultWriter, Sink, Target as OutputTarget,
};
use crate::tagging::aspects::{self, Aspect};
use crate::tagging::rules::{self, label_thresholds, prepare, text_units, Rule};
use crate::Error;

/// Labels with fewer positives than this keep their threshold, unless `--min-positives` says.
pub(crate) const DEFAULT_MIN_POSITIVES: usize = 3;

/// Everything `vlm calibrate` needs.
#[derive(Debug, Clone)]
pub(crate) struct CalibrateOptions {
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
    /// The table lists every label of the aspect, not only those the truth has images of.
    pub all: bool,
    pub model: ModelOptions,
    /// The report's format; `run.output.output` is unused (the report goes to stdout).
    pub run: RunOptions,
}

/// The rows a table shows, and how many it leaves out (issue 23: an aspect of 397 labels
/// calibrated from a truth that covers 6 printed 397 rows, and the useful ones scrolled away).
/// The calibrated labels come first, then the other labels the truth has images of, each group
/// in label order; labels without a single image in the truth are left out unless `all` (then
/// they come last).
fn table_rows(records: &[CalibratedLabel], all: bool) -> (Vec<&CalibratedLabel>, usize) {
    let calibrated = records.iter().filter(|r| r.note.is_none());
    let kept_seen = records
        .iter()
        .filter(|r| r.note.is_some() && r.positives > 0);
    let unseen = records
        .iter()
        .filter(|r| r.note.is_some() && r.positives == 0);
    let mut rows: Vec<&CalibratedLabel> = calibrated.chain(kept_seen).collect();
    let left_out = if all {
        rows.extend(unseen);
        0
    } else {
        unseen.count()
    };
    (rows, left_out)
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

/// Checks `-o` before any work: not the input aspect file, not an existing file without --force,
/// and where it leads (see [`OutputTarget::check`]).
fn check_output(out: &Path, aspect: &Aspect, force: bool) -> Result<OutputTarget> {
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
    OutputTarget::check("-o", out, Existing::of(force, false, false))
}

/// The truth's labels as indexes into the aspect's labels; an unknown label is an error naming
/// the file and line.
fn truth_matrix(rows: &[TruthRow], aspect: &Aspect, source: &str) -> Result<Vec<Vec<bool>>> {
    let names: Vec<&str> = aspect.labels.iter().map(|l| l.name.as_str()).collect();
    let mut per_label = vec![vec![false; rows.len()]; names.len()];
    for (i, row) in rows.iter().enumerate() {
        for l in &row.labels {
            let Some(j) = names.iter().position(|n| n == l) else {
                let hint = crate::error::hint(l, &names);
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

/// Writes `text` to `target`, put in place at the end; never over an existing file unless
/// `--force` (checked again then).
fn write_aspect_file(target: &OutputTarget, text: &str) -> Result<()> {
    use std::io::Write;
    let mut file = WholeFile::create(target, false)?;
    file.write_all(text.as_bytes())?;
    file.commit()
}

pub(crate) fn run(opts: &CalibrateOptions) -> Result<Outcome> {
    let quiet = opts.run.quiet;
    let aspect = one_aspect(&opts.aspect)?;
    let out_target = match &opts.output {
        Some(out) => Some(check_output(out, &aspect, opts.force)?),
        None => None,
    };
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
        // The first few missing paths by name, then how many more.
        let named: Vec<String> = located
            .missing_rows
            .iter()
            .take(3)
            .map(|r| format!("{} (line {})", crate::error::quote(&r.given), r.line))
            .collect();
        let more = match located.missing - named.len() {
            0 => String::new(),
            more => format!(" and {more} more"),
        };
        let named = named.join(", ");
        if rows.is_empty() {
            // None of the truth's images exists: a usage error before the model loads (issue 23).
            return Err(Error::Usage(format!(
                "nothing to process: {truth_source}: none of the {} paths it lists exists: {named}{more}",
                located.missing
            ))
            .into());
        }
        // One line for all of them, even with -q: each is also a reason for exit code 1.
        crate::output::report_error(&format!(
            "{truth_source}: {} of {total_rows} paths do not exist and are left out: {named}{more}",
            located.missing
        ));
    }
    let inputs: Vec<Input> = rows
        .iter()
        .map(|r| Input {
            path: r.path.clone(),
            error: None,
        })
        .collect();
    // None of the truth's images readable is a usage error before the model loads (issue 23).
    super::require_usable(&inputs)?;
    let format = super::format_for(&opts.run.output);
    let sink = Sink::open(None, format, crate::output::Existing::Replace)?;

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
                    for (j, t) in rules::scores(&e, prepared, &head).into_iter().enumerate() {
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
    if let Some(out) = &out_target {
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
        write_aspect_file(out, &calibrated.to_toml(&comment))?;
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
    if format == Format::Table {
        // The table for a person: what was calibrated first, the rest summarised. JSON, JSONL
        // and CSV always hold every label, in label order, for scripts.
        let (rows, left_out) = table_rows(&records, opts.all);
        let mut writer = ResultWriter::begin(sink, format, &header)?;
        for r in rows {
            writer.record(r)?;
        }
        let mut sink = writer.finish()?;
        if left_out > 0 {
            writeln!(
                sink,
                "  ({left_out} more labels of {} have no image in the truth and kept their threshold; --all lists them)",
                aspect.name
            )?;
        }
        sink.commit()?;
    } else {
        write_report(sink, format, &header, &records)?;
    }
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
    fn the_table_leads_with_the_calibrated_labels() {
        let label = |name: &str, positives: usize, note: Option<&str>| CalibratedLabel {
            label: name.into(),
            positives,
            threshold_before: 0.5,
            precision_before: None,
            recall_before: None,
            f1_before: None,
            threshold_after: 0.5,
            precision_after: None,
            recall_after: None,
            f1_after: None,
            note: note.map(str::to_string),
        };
        let records = [
            label("apple", 0, Some("kept: 0 positive(s), fewer than 3")),
            label("bike", 1, Some("kept: 1 positive(s), fewer than 3")),
            label("car", 5, None),
            label("dog", 0, Some("kept: 0 positive(s), fewer than 3")),
            label("egg", 4, None),
        ];
        let names = |rows: Vec<&CalibratedLabel>| -> Vec<String> {
            rows.iter().map(|r| r.label.clone()).collect()
        };
        let (rows, left_out) = table_rows(&records, false);
        assert_eq!(names(rows), ["car", "egg", "bike"]);
        assert_eq!(left_out, 2);
        let (rows, left_out) = table_rows(&records, true);
        assert_eq!(names(rows), ["car", "egg", "bike", "apple", "dog"]);
        assert_eq!(left_out, 0);
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
