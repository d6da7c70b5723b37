//! Evaluation: ground-truth files (`vlm calibrate --truth`) and the numbers `eval` and `calibrate`
//! report from them (accuracy, precision and recall, threshold search).

pub(crate) mod metrics;
pub(crate) mod truth;
