//! vlm: zero-shot image classification and tagging with CLIP, SigLIP and OpenCLIP models.
//!
//! `main.rs` only parses arguments and maps the outcome to an exit code; the work lives here:
//! `cli` (arguments, converted to typed options), `commands` (one file per command), `engine`
//! (model loading, the text side, image batches), `model` (the family seam; one folder per family),
//! `hub` (the only network access), `images` (image file + config -> pixels), `text` (tokenizer,
//! templates, labels), `score` (embeddings -> scores), `metrics` (eval and calibrate's numbers), `truth`
//! (ground-truth files), `output` (records, formats; the only place
//! that prints). The README's "Architecture" section follows one image through them.

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
pub mod cli;
pub mod commands;
pub mod engine;
pub mod error;
pub mod exit_codes;
pub mod hub;
pub mod images;
pub mod index;
pub mod inputs;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod score;
pub mod tagging;
pub mod text;
pub mod truth;

pub use error::Error;
