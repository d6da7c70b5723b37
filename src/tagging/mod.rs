//! Tagging: aspect files (`prompts/aspects/*.toml`, `--aspects my.toml`) and the rules that turn an
//! image's scores into tags. `vlm tag` applies them; `calibrate` tunes their thresholds and
//! `aspects` lists them.

pub mod aspects;
pub(crate) mod rules;
