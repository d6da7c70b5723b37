//! The integration tests: one test binary, so that the suite links once (each file under `tests/`
//! used to be a binary of its own, linked against all of vlm and Candle: most of the tests' build
//! time). Each module drives the built `vlm` binary against the fixture models.
//! `tests/alloc.rs`, `tests/caught_panics.rs` and `tests/memory.rs` stay separate: one installs its
//! own global allocator, one re-runs its own executable as a child, and one measures children's
//! peak memory, which starts at the parent's size.

mod common;

mod batch;
mod bf16;
mod calibrate;
mod checks;
mod cli;
mod eval;
mod explain;
mod first_minutes;
mod hostile;
mod hostile_models;
mod hub;
mod hub_bin;
mod index_trust;
mod int8;
mod invariance;
mod kernels;
mod newcomer;
mod openclip;
mod outputs;
mod packs;
mod parity;
mod pytorch_bin;
mod search;
mod siglip;
mod tag;
