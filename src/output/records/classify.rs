//! `vlm classify`'s header and per-image record.

use serde::{Deserialize, Serialize};

use super::ModelInfo;
use crate::output::table::table_entry_head;
use crate::output::{Cell, Record};
use crate::score::LabelScore;

/// What a `classify` run is about, known before the first image: the JSON document's header.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunInfo {
    pub model: ModelInfo,
    pub labels: Vec<String>,
    pub templates: Vec<String>,
}

/// One ranked label for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Prediction {
    pub label: String,
    /// The model's score head on `cosine`: a softmax over all labels for CLIP, each label's own
    /// sigmoid for SigLIP (see [`super::ModelInfo::head`]).
    pub probability: f32,
    /// Cosine similarity of the image and label embeddings.
    pub cosine: f32,
}

impl From<LabelScore> for Prediction {
    fn from(s: LabelScore) -> Self {
        Self {
            label: s.label,
            probability: s.score,
            cosine: s.cosine,
        }
    }
}

/// The outcome of `classify` for one input image: ranked predictions, or the error that stopped it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageResult {
    /// The path as given (lossily converted to UTF-8 if it is not).
    pub path: String,
    /// Best first; empty when the image failed.
    pub predictions: Vec<Prediction>,
    /// Why the image failed; null when it succeeded.
    pub error: Option<String>,
}

impl Record for ImageResult {
    /// One row per image and label; a failed image has one row with only the error.
    const COLUMNS: &'static [&'static str] =
        &["path", "rank", "label", "probability", "cosine", "error"];

    fn rows(&self) -> Vec<Vec<Cell<'_>>> {
        let mut rows = Vec::new();
        if let Some(err) = &self.error {
            rows.push(Cell::error_row(&self.path, 6, err));
        }
        for (i, p) in self.predictions.iter().enumerate() {
            rows.push(vec![
                Cell::Text(&self.path),
                Cell::Int(i + 1),
                Cell::Text(&p.label),
                Cell::Num(p.probability),
                Cell::Num(p.cosine),
                Cell::Empty,
            ]);
        }
        rows
    }

    /// The path, then the labels aligned with probability and cosine.
    fn table(&self, out: &mut String, _width: Option<usize>) {
        table_entry_head(out, &self.path, self.error.as_deref());
        let width = self
            .predictions
            .iter()
            .map(|p| p.label.chars().count())
            .max()
            .unwrap_or(5)
            .clamp(5, 40);
        for p in &self.predictions {
            out.push_str(&format!(
                "  {:<width$}  {:>6.2}%  cos {:+.4}\n",
                p.label,
                p.probability * 100.0,
                p.cosine,
            ));
        }
    }
}
