//! `vlm embed`'s header and records: one image's (or text's) L2-normalised embedding.

use serde::{Deserialize, Serialize};

use super::ModelInfo;
use crate::output::table::table_entry_head;
use crate::output::{Cell, Record};

/// What an `embed` run's vectors are: the JSON document's header (JSONL has none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmbedInfo {
    pub model: ModelInfo,
    /// The numeric type the model ran in (`f32`, `f16`, `bf16`); the vectors are written as f32.
    pub dtype: String,
    /// The length of every vector; null when no image could be embedded.
    pub dimension: Option<usize>,
    /// Always true: every vector has length 1, so a dot product is the cosine.
    pub normalized: bool,
    /// `--text` runs: the templates each text was put through (their embeddings averaged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<Vec<String>>,
}

/// One image's embedding, or the error that stopped it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageEmbedding {
    /// The path as given (lossily converted to UTF-8 if it is not).
    pub path: String,
    /// L2-normalised; null when the image failed.
    pub embedding: Option<Vec<f32>>,
    /// Why the image failed; null when it succeeded.
    pub error: Option<String>,
}

/// One `--text`'s embedding: the normalised mean of its templates' normalised embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TextEmbedding {
    pub text: String,
    pub embedding: Vec<f32>,
}

/// A short view of a vector for people: its length and first values.
fn preview(v: &[f32]) -> String {
    let head: Vec<String> = v.iter().take(4).map(|x| format!("{x:+.4}")).collect();
    format!(
        "  {} values: {}{}\n",
        v.len(),
        head.join(" "),
        if v.len() > 4 { " ..." } else { "" }
    )
}

impl Record for ImageEmbedding {
    /// The flat view has no room for a vector: its length stands in (use json, jsonl or npy).
    const COLUMNS: &'static [&'static str] = &["path", "dimension", "error"];

    fn rows(&self) -> Vec<Vec<Cell<'_>>> {
        match (&self.embedding, &self.error) {
            (_, Some(err)) => vec![Cell::error_row(&self.path, 3, err)],
            (Some(v), None) => vec![vec![
                Cell::Text(&self.path),
                Cell::Int(v.len()),
                Cell::Empty,
            ]],
            (None, None) => vec![vec![Cell::Text(&self.path), Cell::Empty, Cell::Empty]],
        }
    }

    fn table(&self, out: &mut String, _width: Option<usize>) {
        table_entry_head(out, &self.path, self.error.as_deref());
        if let Some(v) = &self.embedding {
            out.push_str(&preview(v));
        }
    }
}

impl Record for TextEmbedding {
    const COLUMNS: &'static [&'static str] = &["text", "dimension"];

    fn rows(&self) -> Vec<Vec<Cell<'_>>> {
        vec![vec![
            Cell::Text(&self.text),
            Cell::Int(self.embedding.len()),
        ]]
    }

    fn table(&self, out: &mut String, _width: Option<usize>) {
        table_entry_head(out, &self.text, None);
        out.push_str(&preview(&self.embedding));
    }
}
