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

pub(crate) use calibrate::{CalibrateInfo, CalibratedLabel};
pub(crate) use classify::{ImageResult, Prediction, RunInfo};
pub(crate) use dupes::{DupeGroup, DupeImage, DupesInfo};
pub(crate) use embed::{EmbedInfo, ImageEmbedding, TextEmbedding};
pub(crate) use eval::{Confusion, EvalClass, EvalInfo, FailedInput, SweepRow};
pub(crate) use explain::{ExplainResult, Grid, LabelMap};
pub(crate) use search::{SearchHit, SearchInfo, SearchQuery};
pub(crate) use tag::{AspectInfo, AspectTags, Tag, TagResult, TagRunInfo};

/// `f32` values as their shortest decimal (`0.497`, as an aspect file writes it), also where a
/// header goes through `serde_json::Value`, which holds numbers as `f64` and would print
/// `0.4970000088214874` (issue 23). For `#[serde(serialize_with)]`.
pub(crate) mod shortest_f32 {
    use std::collections::BTreeMap;

    use serde::ser::SerializeMap;
    use serde::Serializer;

    /// The `f64` whose shortest decimal is `x`'s shortest decimal.
    pub(crate) fn widen(x: f32) -> f64 {
        x.to_string().parse().unwrap_or(f64::from(x))
    }

    pub(crate) fn serialize<S: Serializer>(x: &f32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(widen(*x))
    }

    pub(crate) fn map<S: Serializer>(m: &BTreeMap<String, f32>, s: S) -> Result<S::Ok, S::Error> {
        let mut out = s.serialize_map(Some(m.len()))?;
        for (k, v) in m {
            out.serialize_entry(k, &widen(*v))?;
        }
        out.end()
    }
}

/// Which model produced the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelInfo {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_thresholds_print_as_written() {
        let info = AspectInfo {
            name: "vehicle".into(),
            kind: crate::tagging::aspects::AspectKind::Multi,
            description: String::new(),
            source: "v.toml".into(),
            labels: 2,
            templates: vec![],
            top_k: None,
            threshold: 0.497,
            label_thresholds: [("bike".to_string(), 0.3f32)].into_iter().collect(),
        };
        // Through a `Value`, as `ResultWriter` writes headers.
        let text = serde_json::to_value(&info).unwrap().to_string();
        assert!(text.contains(r#""threshold":0.497,"#), "{text}");
        assert!(
            text.contains(r#""label_thresholds":{"bike":0.3}"#),
            "{text}"
        );
        let back: AspectInfo = serde_json::from_str(&text).unwrap();
        assert_eq!(back, info);
    }
}
