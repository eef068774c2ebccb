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

/// The ids that end generation: config.json's `eos_token_id` and those of the stored
/// generation_config.json, where chat models list their end of turn (Llama 3's `<|eot_id|>`
/// is only there). Ids outside the vocabulary are an error, as in config.json.
pub fn stop_tokens(f: &crate::format::BnetFile, cfg: &ModelConfig) -> Result<Vec<u32>> {
    let mut ids = cfg.eos_token_id.clone();
    if let Some(e) = f.index.get("file:generation_config.json") {
        let more = generation_eos(f.data(e), cfg.vocab_size).map_err(|why| {
            Error::format(format!(
                "the stored generation_config.json: {why}; fix the checkpoint's generation_config.json and re-pack"
            ))
        })?;
        ids.extend(more);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids.into_iter().map(|t| t as u32).collect())
}

/// The end-of-sequence ids of a generation_config.json (bytes): each an id inside the
/// vocabulary. bitnet-pack checks the file with this before storing it.
pub fn generation_eos(bytes: &[u8], vocab_size: u64) -> std::result::Result<Vec<u64>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON ({e})"))?;
    let ids = crate::model::token_ids(&v, "eos_token_id")?;
    match ids.iter().find(|&&t| t >= vocab_size) {
        Some(t) => Err(format!(
            "eos_token_id {t} is outside the vocabulary (vocab_size {vocab_size})"
        )),
        None => Ok(ids),
    }
}

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
