//! The container's tokenizer (`file:tokenizer.json`, stored verbatim by bitnet-pack), through
//! the Hugging Face `tokenizers` crate.

use crate::error::{Error, Result};
use crate::format::BnetFile;

pub struct Tokenizer(tokenizers::Tokenizer);

impl Tokenizer {
    pub fn from_container(f: &BnetFile) -> Result<Tokenizer> {
        let e = f.index.get("file:tokenizer.json").ok_or_else(|| {
            Error::Usage(
                "this container has no tokenizer.json: pass token ids with --ids, or re-pack the model with --tokenizer FILE".into(),
            )
        })?;
        tokenizers::Tokenizer::from_bytes(f.data(e))
            .map(Tokenizer)
            .map_err(|e| Error::format(format!("the stored tokenizer.json does not load: {e}")))
    }

    /// Token ids of `text`, with the tokenizer's own special tokens (e.g. BOS) added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Err(Error::Usage(
                "the prompt is empty: give some text with --prompt".into(),
            ));
        }
        let enc = self
            .0
            .encode(text, true)
            .map_err(|e| Error::Usage(format!("cannot tokenize the prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.0
            .decode(ids, true)
            .map_err(|e| Error::Usage(format!("cannot decode tokens: {e}")))
    }
}

/// The token ids to run: `--ids` as given, or `--prompt` through the container's tokenizer
/// (whose absence is then the error). `None` when neither was given.
pub fn prompt_ids(
    ids: Option<&[u32]>,
    prompt: Option<&str>,
    tok: &Result<Tokenizer>,
) -> Result<Option<Vec<u32>>> {
    match (ids, prompt) {
        (Some(ids), _) => Ok(Some(ids.to_vec())),
        (None, Some(p)) => match tok {
            Ok(t) => t.encode(p).map(Some),
            Err(e) => Err(Error::Usage(e.to_string())),
        },
        (None, None) => Ok(None),
    }
}
