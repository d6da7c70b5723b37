//! The records vlm writes: each run's header (what the JSON document opens with) and one record per
//! input. A record describes its rows once ([`Record::rows`]: the flat view CSV prints) and how a
//! person reads it ([`Record::table`]); JSON and JSONL come from `Serialize`.

use serde::{Deserialize, Serialize};

use super::table::{table_entry_head, wrap_items};
use super::{Cell, Record};
use crate::aspects::AspectKind;
use crate::model::HeadKind;
use crate::score::LabelScore;

/// Which model produced the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// The Hub id or local folder given with `--model`.
    pub id: String,
    /// The Hub commit the weights came from; null for a local folder.
    pub revision: Option<String>,
    /// The model family (`clip`, `siglip`).
    pub family: String,
    /// The score head: `softmax` (CLIP: probabilities over the labels sum to 1) or `sigmoid`
    /// (SigLIP: each label's probability on its own).
    pub head: HeadKind,
}

/// What a `classify` run is about, known before the first image: the JSON document's header.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub model: ModelInfo,
    pub labels: Vec<String>,
    pub templates: Vec<String>,
}

/// One ranked label for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prediction {
    pub label: String,
    /// The model's score head on `cosine`: a softmax over all labels for CLIP, each label's own
    /// sigmoid for SigLIP (see [`ModelInfo::head`]).
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
pub struct ImageResult {
    /// The path as given (lossily converted to UTF-8 if it is not).
    pub path: String,
    /// Best first; empty when the image failed.
    pub predictions: Vec<Prediction>,
    /// Why the image failed; null when it succeeded.
    pub error: Option<String>,
}

/// One aspect of a `tag` run, as the JSON document's header describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AspectInfo {
    pub name: String,
    pub kind: AspectKind,
    pub description: String,
    /// "built-in", or the aspect file's path.
    pub source: String,
    /// Number of labels.
    pub labels: usize,
    pub templates: Vec<String>,
    /// The rule in force (command line over aspect file over defaults).
    pub top_k: Option<usize>,
    pub threshold: f32,
}

/// What a `tag` run is about: the JSON document's header.
#[derive(Debug, Clone, Serialize)]
pub struct TagRunInfo {
    pub model: ModelInfo,
    pub aspects: Vec<AspectInfo>,
}

/// One tag of one aspect for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tag {
    pub label: String,
    /// single: softmax probability over the aspect's labels; multi: the label's own score (see
    /// `commands::tag`). Both in 0..=1.
    pub score: f32,
    /// Cosine similarity of the image and label embeddings.
    pub cosine: f32,
}

impl From<LabelScore> for Tag {
    fn from(s: LabelScore) -> Self {
        Self {
            label: s.label,
            score: s.score,
            cosine: s.cosine,
        }
    }
}

/// One aspect's tags for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AspectTags {
    pub aspect: String,
    pub kind: AspectKind,
    /// Best first; may be empty when nothing passes the threshold.
    pub tags: Vec<Tag>,
}

/// The outcome of `tag` for one input image: its tags grouped by aspect, in `--aspects` order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagResult {
    pub path: String,
    /// Empty when the image failed.
    pub aspects: Vec<AspectTags>,
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

impl Record for TagResult {
    /// One row per image, aspect and tag; a failed image has one row with only the error.
    const COLUMNS: &'static [&'static str] = &[
        "path", "aspect", "rank", "label", "score", "cosine", "error",
    ];

    fn rows(&self) -> Vec<Vec<Cell<'_>>> {
        let mut rows = Vec::new();
        if let Some(err) = &self.error {
            rows.push(Cell::error_row(&self.path, 7, err));
        }
        for group in &self.aspects {
            for (i, t) in group.tags.iter().enumerate() {
                rows.push(vec![
                    Cell::Text(&self.path),
                    Cell::Text(&group.aspect),
                    Cell::Int(i + 1),
                    Cell::Text(&t.label),
                    Cell::Num(t.score),
                    Cell::Num(t.cosine),
                    Cell::Empty,
                ]);
            }
        }
        rows
    }

    /// The path, then one line per aspect with its tags and scores, wrapped between tags to the
    /// terminal's width.
    fn table(&self, out: &mut String, width: Option<usize>) {
        table_entry_head(out, &self.path, self.error.as_deref());
        let name_width = self
            .aspects
            .iter()
            .map(|a| a.aspect.chars().count())
            .max()
            .unwrap_or(0);
        for group in &self.aspects {
            let tags: Vec<String> = group
                .tags
                .iter()
                .map(|t| format!("{} {:.0}%", t.label, t.score * 100.0))
                .collect();
            let lead = format!("  {:<name_width$}  ", group.aspect);
            if tags.is_empty() {
                out.push_str(&format!("{lead}-\n"));
            } else {
                // Two spaces between tags: a label may contain a comma ("hot, dog").
                out.push_str(&wrap_items(&lead, &tags, "  ", width));
            }
        }
    }
}
