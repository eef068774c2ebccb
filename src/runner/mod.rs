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
        let bad = |why: String| {
            Error::format(format!(
                "the stored generation_config.json {why}; re-pack the model with a valid one"
            ))
        };
        let v: serde_json::Value =
            serde_json::from_slice(f.data(e)).map_err(|e| bad(format!("is not JSON ({e})")))?;
        match v.get("eos_token_id") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Array(a)) => {
                for t in a {
                    ids.push(t.as_u64().ok_or_else(|| bad(format!("has eos id {t}")))?);
                }
            }
            Some(t) => ids.push(t.as_u64().ok_or_else(|| bad(format!("has eos id {t}")))?),
        }
    }
    if let Some(t) = ids.iter().find(|&&t| t >= cfg.vocab_size) {
        return Err(Error::format(format!(
            "end-of-sequence id {t} is outside the vocabulary (vocab_size {}); re-pack the model",
            cfg.vocab_size
        )));
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids.into_iter().map(|t| t as u32).collect())
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
