//! The records vlm writes: each run's header (what the JSON document opens with) and one record per
//! input. A record describes its rows once ([`Record::rows`]: the flat view CSV prints) and how a
//! person reads it ([`Record::table`]); JSON and JSONL come from `Serialize`.

//!
//! A new command adds a file here with its header and record types.

mod calibrate;
mod classify;
mod dupes;
mod embed;
mod eval;
mod explain;
mod search;
mod tag;

use serde::{Deserialize, Serialize};

use crate::model::HeadKind;

pub use calibrate::{CalibrateInfo, CalibratedLabel};
pub use classify::{ImageResult, Prediction, RunInfo};
pub use dupes::{DupeGroup, DupeImage, DupesInfo};
pub use embed::{EmbedInfo, ImageEmbedding, TextEmbedding};
pub use eval::{Confusion, EvalClass, EvalInfo, FailedInput, SweepRow};
pub use explain::{ExplainResult, Grid, LabelMap};
pub use search::{SearchHit, SearchInfo, SearchQuery};
pub use tag::{AspectInfo, AspectTags, Tag, TagResult, TagRunInfo};

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
