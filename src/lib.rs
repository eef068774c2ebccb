//! bitnet-tools: pack, inspect and verify 1-bit and ternary (BitNet b1.58) language models.
//!
//! Modules: [`format`] (the `.bnet` container, `formats/bnet.md`), [`quant`] (quantizers and
//! bit layouts), [`hf`] (Hugging Face checkpoints), [`model`] (normalized config and families),
//! [`pack`] (conversion both ways), [`inspect`] (summaries), [`output`] (atomic files),
//! [`cli`] (what the binaries share).

pub mod cli;
pub mod error;
pub mod format;
pub mod gguf_io;
pub mod hf;
pub mod inspect;
pub mod kernels;
pub mod model;
pub mod output;
pub mod pack;
pub mod quant;
pub mod runner;
pub mod synth;
pub mod tokenizer;

pub use error::{Error, Result};
