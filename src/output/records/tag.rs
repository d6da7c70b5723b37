//! `vlm tag`'s header and per-image record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ModelInfo;
use crate::output::table::{table_entry_head, wrap_items};
use crate::output::{Cell, Record};
use crate::score::LabelScore;
use crate::tagging::aspects::AspectKind;

/// One aspect of a `tag` run, as the JSON document's header describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AspectInfo {
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
    #[serde(serialize_with = "super::shortest_f32::serialize")]
    pub threshold: f32,
    /// Labels whose threshold differs from `threshold` (their own, from the aspect file), by name;
    /// left out when there are none.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "super::shortest_f32::map"
    )]
    pub label_thresholds: BTreeMap<String, f32>,
}

/// What a `tag` run is about: the JSON document's header.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TagRunInfo {
    pub model: ModelInfo,
    pub aspects: Vec<AspectInfo>,
}

/// One tag of one aspect for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tag {
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
pub(crate) struct AspectTags {
    pub aspect: String,
    pub kind: AspectKind,
    /// Best first; may be empty when nothing passes the threshold.
    pub tags: Vec<Tag>,
}

/// The outcome of `tag` for one input image: its tags grouped by aspect, in `--aspects` order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TagResult {
    pub path: String,
    /// Empty when the image failed.
    pub aspects: Vec<AspectTags>,
    pub error: Option<String>,
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
