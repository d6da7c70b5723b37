//! `vlm explain`'s per-image record. The run's header is `classify`'s [`super::RunInfo`]
//! (model, labels, templates).

use serde::{Deserialize, Serialize};

use crate::output::table::table_entry_head;
use crate::output::{Cell, Record};

/// The size of a patch grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grid {
    pub rows: usize,
    pub cols: usize,
}

/// One label's map over one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LabelMap {
    pub label: String,
    /// `rows * cols` cosine similarities of each patch and the label, row-major (top row first).
    pub scores: Vec<f32>,
    /// The overlay PNG written for it (`-o DIR`); null without `-o`.
    pub overlay: Option<String>,
}

/// The outcome of `explain` for one input image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExplainResult {
    pub path: String,
    /// The patch grid; null when the image failed.
    pub grid: Option<Grid>,
    /// One per label, in label order; empty when the image failed.
    pub maps: Vec<LabelMap>,
    pub error: Option<String>,
}

/// Shades from the lowest to the highest cosine of a map, for the table.
const SHADES: [char; 5] = [' ', '░', '▒', '▓', '█'];

/// The table shows each map as shaded cells up to this many columns; wider grids (large models)
/// get the summary line only.
const MAX_SHADED_COLS: usize = 48;

impl LabelMap {
    /// `(index, value)` of the highest cosine, and the mean.
    fn peak_and_mean(&self) -> Option<((usize, f32), f32)> {
        let peak = self
            .scores
            .iter()
            .copied()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        let mean = self.scores.iter().sum::<f32>() / self.scores.len() as f32;
        Some((peak, mean))
    }
}

impl Record for ExplainResult {
    /// One row per image, label and cell; a failed image has one row with only the error.
    const COLUMNS: &'static [&'static str] = &["path", "label", "row", "col", "cosine", "error"];

    fn rows(&self) -> Vec<Vec<Cell<'_>>> {
        let mut rows = Vec::new();
        if let Some(err) = &self.error {
            rows.push(Cell::error_row(&self.path, 6, err));
        }
        let cols = self.grid.map_or(1, |g| g.cols.max(1));
        for m in &self.maps {
            for (i, &s) in m.scores.iter().enumerate() {
                rows.push(vec![
                    Cell::Text(&self.path),
                    Cell::Text(&m.label),
                    Cell::Int(i / cols),
                    Cell::Int(i % cols),
                    Cell::Num(s),
                    Cell::Empty,
                ]);
            }
        }
        rows
    }

    /// The path and grid, then per label its peak cell, mean and overlay file, and the map as
    /// shaded cells (lowest to highest cosine of that map: ` ░▒▓█`), two characters per cell.
    fn table(&self, out: &mut String, width: Option<usize>) {
        table_entry_head(out, &self.path, self.error.as_deref());
        let Some(grid) = self.grid else { return };
        let label_width = self
            .maps
            .iter()
            .map(|m| m.label.chars().count())
            .max()
            .unwrap_or(0)
            .min(40);
        let shaded = grid.cols <= MAX_SHADED_COLS
            && width.is_none_or(|w| 4 + label_width + 2 * grid.cols <= w);
        for m in &self.maps {
            let Some(((peak, max), mean)) = m.peak_and_mean() else {
                continue;
            };
            let cols = grid.cols.max(1);
            out.push_str(&format!(
                "  {:<label_width$}  peak {max:+.4} at row {}, col {} of {}x{}  mean {mean:+.4}",
                crate::error::escape_controls(&m.label),
                peak / cols,
                peak % cols,
                grid.rows,
                grid.cols,
            ));
            if let Some(file) = &m.overlay {
                out.push_str(&format!("  -> {}", crate::error::escape_controls(file)));
            }
            out.push('\n');
            if !shaded {
                continue;
            }
            let (lo, hi) = m
                .scores
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
                    (lo.min(x), hi.max(x))
                });
            let indent = " ".repeat(4 + label_width);
            for row in m.scores.chunks(cols) {
                out.push_str(&indent);
                for &s in row {
                    let t = if hi > lo { (s - lo) / (hi - lo) } else { 0.5 };
                    let i =
                        ((t * (SHADES.len() - 1) as f32).round() as usize).min(SHADES.len() - 1);
                    out.push(SHADES[i]);
                    out.push(SHADES[i]);
                }
                out.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ExplainResult {
        ExplainResult {
            path: "a.png".into(),
            grid: Some(Grid { rows: 2, cols: 3 }),
            maps: vec![LabelMap {
                label: "dog".into(),
                scores: vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
                overlay: Some("maps/a.dog.png".into()),
            }],
            error: None,
        }
    }

    #[test]
    fn table_shows_the_peak_and_the_shaded_grid() {
        let mut out = String::new();
        record().table(&mut out, None);
        insta::assert_snapshot!(out, @r"
        a.png
          dog  peak +0.5000 at row 1, col 2 of 2x3  mean +0.2500  -> maps/a.dog.png
                 ░░▒▒
               ▒▒▓▓██
        ");
    }

    #[test]
    fn csv_rows_are_cells() {
        let r = record();
        let rows = r.rows();
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[4][2], Cell::Int(1));
        assert_eq!(rows[4][3], Cell::Int(1));
        assert_eq!(rows[4][4], Cell::Num(0.4));
    }
}
