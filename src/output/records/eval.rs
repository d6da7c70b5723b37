//! `vlm eval`'s report: the header holds the headline numbers (and the `--sweep` rows), one record
//! per class follows (the JSON document's `classes`).

use serde::{Deserialize, Serialize};

use super::ModelInfo;
use crate::error::escape_controls;
use crate::output::{Cell, Record};

/// An input that could not be scored, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailedInput {
    pub path: String,
    pub error: String,
}

/// One `--sweep` row: a template alone, or the ensemble of all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SweepRow {
    /// The template, or `ensemble` for all of them together (a template always holds `{}`).
    pub template: String,
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    pub mean_per_class_recall: Option<f64>,
}

/// What an `eval` run found, before its per-class records. Fractions are in 0..1; they are null
/// when no image could be scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EvalInfo {
    pub model: ModelInfo,
    /// The dataset folder as given.
    pub root: String,
    pub templates: Vec<String>,
    /// Images whose best class is the true one, over `images`.
    pub top1: Option<f64>,
    /// Images whose true class is among the `top5_k` best, over `images`.
    pub top5: Option<f64>,
    /// The k of `top5`: 5, or the number of classes when there are fewer.
    pub top5_k: usize,
    /// The mean of the classes' recalls, over the classes that have images.
    pub mean_per_class_recall: Option<f64>,
    /// Images scored (failed ones are not counted here but listed in `failed`).
    pub images: usize,
    pub failed: Vec<FailedInput>,
    /// `--sweep` only: best first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<Vec<SweepRow>>,
}

/// A class's most frequent wrong prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Confusion {
    /// The label predicted instead.
    pub label: String,
    /// How many of the class's images got it.
    pub images: usize,
}

/// One class of an `eval` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EvalClass {
    pub label: String,
    /// Images of this class that were scored.
    pub images: usize,
    /// Top-1 accuracy within the class; null for a class without images.
    pub recall: Option<f64>,
    /// The labels its images were most often taken for, most first (at most 3).
    pub top_confusions: Vec<Confusion>,
}

fn percent(x: Option<f64>) -> String {
    match x {
        Some(x) => format!("{:.2}%", x * 100.0),
        None => "-".into(),
    }
}

fn confusions_text(c: &[Confusion], sep: &str) -> String {
    c.iter()
        .map(|c| format!("{} {}", c.label, c.images))
        .collect::<Vec<_>>()
        .join(sep)
}

impl Record for EvalClass {
    const COLUMNS: &'static [&'static str] = &["label", "images", "recall", "top_confusions"];
    const ARRAY: &'static str = "classes";

    /// One row per class; confusions as `label count` joined by `; `.
    fn rows(&self) -> Vec<Vec<Cell<'_>>> {
        vec![vec![
            Cell::Text(&self.label),
            Cell::Int(self.images),
            self.recall.map_or(Cell::Empty, |r| Cell::Num(r as f32)),
            Cell::Owned(confusions_text(&self.top_confusions, "; ")),
        ]]
    }

    fn table(&self, out: &mut String, _width: Option<usize>) {
        let line = format!(
            "  {:<24}  {:>6}  {:>7}  {}",
            escape_controls(&self.label),
            self.images,
            percent(self.recall),
            escape_controls(&confusions_text(&self.top_confusions, ", "))
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }

    /// The headline numbers, failures, the sweep, then the head of the class table.
    fn table_preamble(header: &serde_json::Value, out: &mut String, _width: Option<usize>) {
        let Ok(info) = serde_json::from_value::<EvalInfo>(header.clone()) else {
            return;
        };
        out.push_str(&format!(
            "{}: {} images, model {}, {} template(s)\n",
            escape_controls(&info.root),
            info.images,
            escape_controls(&info.model.id),
            info.templates.len()
        ));
        let k = if info.top5_k == 5 {
            "top-5".to_string()
        } else {
            format!("top-{} (all classes)", info.top5_k)
        };
        out.push_str(&format!(
            "top-1 {}   {k} {}   mean per-class recall {}\n",
            percent(info.top1),
            percent(info.top5),
            percent(info.mean_per_class_recall)
        ));
        if !info.failed.is_empty() {
            out.push_str(&format!(
                "failed: {} image(s), not counted\n",
                info.failed.len()
            ));
            for f in &info.failed {
                out.push_str(&format!("  {}\n", escape_controls(&f.error)));
            }
        }
        if let Some(rows) = &info.sweep {
            out.push_str(&format!(
                "\nsweep, best first:\n    top-1  {:>7}  mean rec.  template\n",
                format!("top-{}", info.top5_k)
            ));
            for r in rows {
                out.push_str(&format!(
                    "  {:>7}  {:>7}  {:>9}  {}\n",
                    percent(r.top1),
                    percent(r.top5),
                    percent(r.mean_per_class_recall),
                    escape_controls(&r.template)
                ));
            }
        }
        out.push_str(&format!(
            "\n  {:<24}  {:>6}  {:>7}  {}\n",
            "class", "images", "recall", "taken for"
        ));
    }
}
