//! vlm: zero-shot image classification and tagging with CLIP, SigLIP and OpenCLIP models.
//!
//! `main.rs` only parses arguments and maps the outcome to an exit code ([`exit_codes`]); the work
//! lives here:
//!
//! - `cli` (arguments, one file per command, converted to typed options) -> `commands` (one file
//!   per command, over the engine; they never import each other or clap);
//! - `engine` (model plan and loading, the text side, image batches) over `model` (the family seam:
//!   shared tower pieces and checks, one folder per family; nothing outside it names a family),
//!   `kernels` (CPU matrix kernels, chosen once per process) and `hub` (the only network access);
//! - `inputs` (which files a run reads), `images` (file + preprocessing config -> pixels), `pool`
//!   (decoding on worker threads), `text` (tokenizer, templates, labels, the text-embedding cache),
//!   `score` (embeddings -> scores), `tagging` (aspect files and tag rules), `evaluation` (ground
//!   truth and metrics), `index` (the SQLite search index);
//! - `output` (records, formats, destinations: the only place that prints), `error` (the kinds
//!   users and tests match on), `alloc` (the global allocator that lets weights stay in the mapped checkpoint).
//!
//! The README's "Architecture" section follows one image and one query through them.

// README "Guarantees": nothing a user or a file controls may reach a panic. Library code does not
// unwrap, expect or panic (unit tests may); `.ci/run` runs clippy with `-D warnings`, so this is
// checked on every change. Indexing is not linted: the remaining indexes are into buffers whose
// lengths the same code established (pixel kernels, checked headers), and the fuzz targets and the
// hostile-input tests exercise them with arbitrary input.
#![deny(
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc,
    unsafe_op_in_unsafe_fn
)]
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
pub(crate) mod cache;
pub mod cli;
pub mod commands;
pub mod engine;
pub mod error;
pub(crate) mod evaluation;
pub mod exit_codes;
pub(crate) mod hub;
pub mod images;
pub mod index;
pub(crate) mod inputs;
pub mod kernels;
pub mod model;
pub mod output;
pub mod pool;
pub mod score;
pub mod tagging;
pub mod text;

pub use error::Error;
