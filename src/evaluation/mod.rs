//! Evaluation: ground-truth files (`vlm calibrate --truth`) and the numbers `eval` and `calibrate`
//! report from them (accuracy, precision and recall, threshold search).

pub mod metrics;
pub mod truth;
