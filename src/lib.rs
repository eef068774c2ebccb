//! bitnet-tools: pack, inspect, verify and run 1-bit and ternary (BitNet b1.58) language
//! models.
//!
//! Modules: [`format`] (the `.bnet` container, `formats/bnet.md`, and GGUF), [`quant`]
//! (quantizers and bit layouts), [`hf`] (Hugging Face checkpoints), [`model`] (normalized config
//! and families), [`pack`] (conversion both ways), [`gguf_io`] (GGUF export and import),
//! [`inspect`] (summaries), [`output`] (atomic files), [`kernels`] (integer and float dot
//! products per CPU path), [`runner`] (the f32 reference and the fast runner), [`tokenizer`],
//! [`synth`] (synthetic checkpoints for tests and benchmarks), [`memory`] (resident-memory
//! figures), [`cli`] (what the binaries share).

pub mod cli;
pub mod error;
pub mod format;
pub mod gguf_io;
pub mod hf;
pub mod inspect;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod output;
pub mod pack;
pub mod quant;
pub mod runner;
pub mod synth;
pub mod tokenizer;

pub use error::{Error, Result};
