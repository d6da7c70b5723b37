//! `vlm search`'s header and records: one hit per record, best first.

use serde::{Deserialize, Serialize};

use super::ModelInfo;
use crate::error::escape_controls;
use crate::output::{Cell, Record};

/// What was searched: a text (through templates, as `classify` puts labels) or an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// A search's header: the index, the model it was made with, the query and the cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchInfo {
    pub model: ModelInfo,
    pub dtype: String,
    /// The index file.
    pub db: String,
    pub query: SearchQuery,
    /// `--where`, the SQL LIKE pattern paths had to match.
    #[serde(rename = "where")]
    pub where_: Option<String>,
    /// How many images were compared with the query.
    pub searched: usize,
    pub top_k: Option<usize>,
    pub threshold: Option<f64>,
}

/// One result: an indexed image and its cosine with the query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchHit {
    /// 1 for the best.
    pub rank: usize,
    /// The absolute path stored in the index.
    pub path: String,
    /// Cosine similarity of the query and image embeddings.
    pub score: f32,
}

impl Record for SearchHit {
    const COLUMNS: &'static [&'static str] = &["rank", "path", "score"];

    fn rows(&self) -> Vec<Vec<Cell<'_>>> {
        vec![vec![
            Cell::Int(self.rank),
            Cell::Text(&self.path),
            Cell::Num(self.score),
        ]]
    }

    /// One line: rank, score, path.
    fn table(&self, out: &mut String, _width: Option<usize>) {
        out.push_str(&format!(
            "{:>4}  {:.4}  {}\n",
            self.rank,
            self.score,
            escape_controls(&self.path)
        ));
    }
}
