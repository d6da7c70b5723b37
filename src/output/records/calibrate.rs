//! `vlm calibrate`'s report: a header naming the aspect, the truth and the target, then one record
//! per label of the aspect (the JSON document's `labels`).

use serde::{Deserialize, Serialize};

use super::{FailedInput, ModelInfo};
use crate::error::escape_controls;
use crate::output::{Cell, Record};

/// What a `calibrate` run was about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CalibrateInfo {
    pub model: ModelInfo,
    pub aspect: String,
    /// "built-in" or the aspect file's path.
    pub source: String,
    /// The ground-truth file.
    pub truth: String,
    /// Images scored (failed ones are listed in `failed` and left out).
    pub images: usize,
    pub failed: Vec<FailedInput>,
    /// `"f1"`, or `"precision>=P"`.
    pub target: String,
    /// Labels with fewer positives keep their threshold.
    pub min_positives: usize,
    /// The aspect file written (`-o`), or null.
    pub output: Option<String>,
}

/// One label: its decisions on the truth at the threshold before, and at the one chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CalibratedLabel {
    pub label: String,
    /// Images of the truth that have this label.
    pub positives: usize,
    pub threshold_before: f32,
    pub precision_before: Option<f64>,
    pub recall_before: Option<f64>,
    pub f1_before: Option<f64>,
    /// Equal to `threshold_before` when the label kept it (see `note`).
    pub threshold_after: f32,
    pub precision_after: Option<f64>,
    pub recall_after: Option<f64>,
    pub f1_after: Option<f64>,
    /// Why the label kept its threshold; null when it was calibrated.
    pub note: Option<String>,
}

fn num(x: Option<f64>) -> Cell<'static> {
    x.map_or(Cell::Empty, |x| Cell::Num(x as f32))
}

fn fixed(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.3}"))
}

impl Record for CalibratedLabel {
    const COLUMNS: &'static [&'static str] = &[
        "label",
        "positives",
        "threshold_before",
        "precision_before",
        "recall_before",
        "f1_before",
        "threshold_after",
        "precision_after",
        "recall_after",
        "f1_after",
        "note",
    ];
    const ARRAY: &'static str = "labels";

    fn rows(&self) -> Vec<Vec<Cell<'_>>> {
        vec![vec![
            Cell::Text(&self.label),
            Cell::Int(self.positives),
            Cell::Num(self.threshold_before),
            num(self.precision_before),
            num(self.recall_before),
            num(self.f1_before),
            Cell::Num(self.threshold_after),
            num(self.precision_after),
            num(self.recall_after),
            num(self.f1_after),
            self.note.as_deref().map_or(Cell::Empty, Cell::Text),
        ]]
    }

    fn table(&self, out: &mut String, _width: Option<usize>) {
        let line = format!(
            "  {:<24} {:>4}  {:>8} {:>5} {:>5} {:>5}  {:>8} {:>5} {:>5} {:>5}  {}",
            escape_controls(&self.label),
            self.positives,
            self.threshold_before.to_string(),
            fixed(self.precision_before),
            fixed(self.recall_before),
            fixed(self.f1_before),
            self.threshold_after.to_string(),
            fixed(self.precision_after),
            fixed(self.recall_after),
            fixed(self.f1_after),
            self.note
                .as_deref()
                .map(escape_controls)
                .unwrap_or_default()
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }

    fn table_preamble(header: &serde_json::Value, out: &mut String, _width: Option<usize>) {
        let Ok(info) = serde_json::from_value::<CalibrateInfo>(header.clone()) else {
            return;
        };
        out.push_str(&format!(
            "aspect {} ({}) on {}: {} images, target {}\n",
            info.aspect,
            escape_controls(&info.source),
            escape_controls(&info.truth),
            info.images,
            info.target
        ));
        for f in &info.failed {
            out.push_str(&format!(
                "failed, left out: {}\n",
                escape_controls(&f.error)
            ));
        }
        if let Some(o) = &info.output {
            out.push_str(&format!("wrote {}\n", escape_controls(o)));
        }
        out.push_str(&format!(
            "\n  {:<24} {:>4}  {:>8} {:>5} {:>5} {:>5}  {:>8} {:>5} {:>5} {:>5}\n",
            "label", "pos", "before", "prec", "rec", "F1", "after", "prec", "rec", "F1"
        ));
    }
}
