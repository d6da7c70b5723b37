//! vlm: zero-shot image classification and tagging with CLIP.
//!
//! `main.rs` only parses arguments and maps the outcome to an exit code; the work lives here:
//! `cli` (arguments), `hub` (the only network access), `model` (config + network), `preprocess`
//! (image + config -> pixels), `text` (tokenizer, templates, labels), `classify` (embeddings ->
//! ranked results), `output` (the only place that prints) and `app` (wires them together).

pub mod app;
pub mod aspects;
pub mod cache;
pub mod classify;
pub mod cli;
pub mod error;
pub mod hub;
pub mod inputs;
pub mod jpeg;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod preprocess;
pub mod tag;
pub mod text;

pub use error::Error;
