//! vlm: zero-shot image classification and tagging with CLIP.
//!
//! `main.rs` only parses arguments and maps the outcome to an exit code; the work lives here:
//! `cli` (arguments), `hub` (the only network access), `model` (config + network), `images`
//! (image file + config -> pixels), `text` (tokenizer, templates, labels), `classify`
//! (embeddings -> ranked results), `output` (the only place that prints) and `app` (wires them
//! together).

// README "Guarantees": nothing a user or a file controls may reach a panic. Library code does not
// unwrap, expect or panic (unit tests may); `.ci/run` runs clippy with `-D warnings`, so this is
// checked on every change. Indexing is not linted: the remaining indexes are into buffers whose
// lengths the same code established (pixel kernels, checked headers), and the fuzz targets and the
// hostile-input tests exercise them with arbitrary input.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::todo,
        clippy::unimplemented,
        clippy::unreachable
    )
)]

pub mod alloc;
pub mod app;
pub mod aspects;
pub mod cache;
pub mod classify;
pub mod cli;
pub mod error;
pub mod hub;
pub mod images;
pub mod inputs;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod tag;
pub mod text;

pub use error::Error;
