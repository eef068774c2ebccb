//! Running a packed model: weights as views into the mapping ([`weights`]), the float
//! operations ([`ops`]), the f32 reference ([`reference`]) and the fast runner ([`fast`]).

pub mod bench;
pub mod compare;
mod decode;
pub mod fast;
pub mod ops;
pub mod reference;
pub mod sample;
pub mod weights;

use crate::error::{Error, Result};
use crate::model::ModelConfig;

/// Token ids must be non-empty and inside the vocabulary.
pub fn check_ids(cfg: &ModelConfig, ids: &[u32]) -> Result<()> {
    if ids.is_empty() {
        return Err(Error::Usage("no tokens to run: the prompt is empty".into()));
    }
    if let Some(&bad) = ids.iter().find(|&&t| t as u64 >= cfg.vocab_size) {
        return Err(Error::Usage(format!(
            "token id {bad} is outside the vocabulary (0..{})",
            cfg.vocab_size
        )));
    }
    Ok(())
}
