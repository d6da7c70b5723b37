//! `vlm dupes`' header and records: one group of near-identical images per record, biggest first.

use serde::{Deserialize, Serialize};

use super::ModelInfo;
use crate::error::escape_controls;
use crate::output::{Cell, Record};

/// A `dupes` run's header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DupesInfo {
    pub model: ModelInfo,
    pub dtype: String,
    /// The index file.
    pub db: String,
    /// Images whose cosine is at least this are linked; a group is what links together.
    pub threshold: f64,
    /// How many indexed images were compared.
    pub images: usize,
    /// How many groups follow.
    pub groups: usize,
}

/// One image of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DupeImage {
    /// The absolute path stored in the index.
    pub path: String,
    /// The file's size in bytes when it was indexed.
    pub size: u64,
    /// Cosine with the group's first image (1 for that one).
    pub score: f32,
}

/// Images that are copies of each other. The first is the largest file, the likeliest original.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DupeGroup {
    /// 1 for the biggest group.
    pub group: usize,
    pub images: Vec<DupeImage>,
}

/// A size for people: bytes in KiB, MiB or GiB.
fn human_size(bytes: u64) -> String {
    let mut value = bytes as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if value < 1024.0 || unit == "GiB" {
            return if unit == "B" {
                format!("{bytes} B")
            } else {
                format!("{value:.1} {unit}")
            };
        }
        value /= 1024.0;
    }
    format!("{bytes} B")
}

impl Record for DupeGroup {
    /// One row per image.
    const COLUMNS: &'static [&'static str] = &["group", "path", "size", "score"];

    fn rows(&self) -> Vec<Vec<Cell<'_>>> {
        self.images
            .iter()
            .map(|i| {
                vec![
                    Cell::Int(self.group),
                    Cell::Text(&i.path),
                    Cell::Int(i.size as usize),
                    Cell::Num(i.score),
                ]
            })
            .collect()
    }

    /// A line naming the group, then one line per image: score, size, path.
    fn table(&self, out: &mut String, _width: Option<usize>) {
        out.push_str(&format!(
            "group {}: {} images\n",
            self.group,
            self.images.len()
        ));
        for i in &self.images {
            out.push_str(&format!(
                "  {:.4}  {:>10}  {}\n",
                i.score,
                human_size(i.size),
                escape_controls(&i.path)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_well() {
        assert_eq!(super::human_size(512), "512 B");
        assert_eq!(super::human_size(2048), "2.0 KiB");
        assert_eq!(super::human_size(3 * 1024 * 1024 + 1), "3.0 MiB");
    }
}
