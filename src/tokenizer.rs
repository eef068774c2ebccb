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
        Tokenizer::from_json(f.data(e)).map_err(stored)
    }

    /// Loads a tokenizer.json (untrusted bytes); the error is what is wrong with it. bitnet-pack
    /// loads the file it stores, so a file that is not a tokenizer is refused at packing.
    pub fn from_json(bytes: &[u8]) -> std::result::Result<Tokenizer, String> {
        // a second parse only for the rare files that have a precompiled charsmap (a Llama 3
        // tokenizer.json is 9 MB)
        if bytes.windows(11).any(|w| w == b"Precompiled") {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
                check_precompiled(&v)?;
            }
        }
        let bad = |e: tokenizers::Error| format!("it does not load: {e}");
        let mut t =
            guarded("loading", || tokenizers::Tokenizer::from_bytes(bytes))?.map_err(bad)?;
        // as transformers does for a plain call: no padding, no truncation (a file's own
        // settings could also pad every prompt to 2^40 tokens)
        t.with_padding(None);
        t.with_truncation(None).map_err(bad)?;
        Ok(Tokenizer(t))
    }

    /// Token ids of `text`, with the tokenizer's own special tokens (e.g. BOS) added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        non_empty(text)?;
        self.encode_with(text, true)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        guarded("decoding", || self.0.decode(ids, true))
            .map_err(stored)?
            .map_err(|e| Error::Usage(format!("cannot decode tokens: {e}")))
    }

    fn encode_with(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = guarded("tokenizing", || self.0.encode(text, special))
            .map_err(stored)?
            .map_err(|e| Error::Usage(format!("cannot tokenize the prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }
}

/// An empty prompt is a usage error, templated or not.
fn non_empty(prompt: &str) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::Usage(
            "the prompt is empty: give some text with --prompt".into(),
        ));
    }
    Ok(())
}

/// A `Precompiled` normalizer's charsmap starts with the byte size of its trie, which the
/// tokenizers library reserves memory for before reading it: a tiny file declaring 4 GiB made it
/// ask for 8 GiB (an abort, not an error, wherever memory is limited). Refuse a size larger than
/// the charsmap itself.
fn check_precompiled(v: &serde_json::Value) -> std::result::Result<(), String> {
    match v {
        serde_json::Value::Object(o) => {
            if o.get("type").and_then(|t| t.as_str()) == Some("Precompiled") {
                if let Some(map) = o.get("precompiled_charsmap").and_then(|m| m.as_str()) {
                    let len = map.trim_end_matches('=').len() * 3 / 4;
                    let head = base64_prefix(map);
                    let trie = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
                    if len < 4 || trie > len - 4 {
                        return Err(format!(
                            "its precompiled charsmap declares a {trie}-byte trie in {len} bytes"
                        ));
                    }
                }
            }
            o.values().try_for_each(check_precompiled)
        }
        serde_json::Value::Array(a) => a.iter().try_for_each(check_precompiled),
        _ => Ok(()),
    }
}

/// The first 6 bytes that the first 8 characters of standard base64 `s` encode (zeros where
/// `s` is shorter or not base64: the length check then refuses it or the library does).
fn base64_prefix(s: &str) -> [u8; 6] {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => 0,
        }
    };
    let mut out = [0u8; 6];
    for (g, quad) in s.as_bytes().chunks(4).take(2).enumerate() {
        let n = (0..4).fold(0u32, |acc, i| {
            (acc << 6) | quad.get(i).map_or(0, |&c| val(c))
        });
        out[3 * g..3 * g + 3].copy_from_slice(&n.to_be_bytes()[1..]);
    }
    out
}

/// The error for a container whose tokenizer.json is malformed, saying why (`reason`).
fn stored(reason: String) -> Error {
    Error::format(format!(
        "the stored tokenizer.json is malformed: {reason}; re-pack the model with a working tokenizer.json (or pass token ids with --ids)"
    ))
}

/// Runs a `tokenizers` call on a tokenizer.json, which is untrusted input: the library panics
/// on some malformed files (a short precompiled charsmap, a template naming a missing special
/// token, ...). A panic becomes an error saying what the call was doing, and the library's own
/// panic message is not printed (see [`quiet_panics`]).
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    quiet_panics();
    let was = GUARDED.with(|g| g.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    r.map_err(|_| format!("the tokenizer failed while {what}"))
}

thread_local! {
    /// Whether this thread is inside [`guarded`].
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs, once per process, a panic hook that is silent for a panic inside [`guarded`] on
/// the same thread (it becomes a clear error) and hands every other panic to the hook that was
/// there before. Installed once rather than swapped around each call: swapping races with
/// panics on other threads.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| g.get()) {
                previous(info)
            }
        }));
    });
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

impl Tokenizer {
    /// Token ids of already templated text: no special tokens are added (the chat template
    /// writes them itself), as transformers' `apply_chat_template(tokenize=True)` does.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, false)
    }
}

/// Instructions a chat template may execute per render (minijinja fuel).
const FUEL: u64 = 1_000_000;

/// The prompt as a user message in the container's chat template, tokenized without adding
/// special tokens (the template writes them), as transformers' `apply_chat_template` does.
pub fn chat_prompt_ids(f: &BnetFile, tok: &Result<Tokenizer>, prompt: &str) -> Result<Vec<u32>> {
    non_empty(prompt)?;
    let tok = tok.as_ref().map_err(|e| Error::Usage(e.to_string()))?;
    let tpl = ChatTemplate::from_container(f)?.ok_or_else(|| {
        Error::Usage(
            "this model has no chat template (no chat_template.jinja, and none in tokenizer_config.json): run without --chat and write the prompt format yourself".into(),
        )
    })?;
    tok.encode_raw(&tpl.render(&[("user", prompt)], true)?)
}

/// The model's chat template: `chat_template.jinja`, or `chat_template` in
/// `tokenizer_config.json`, rendered with minijinja the way transformers renders it.
pub struct ChatTemplate {
    source: String,
    bos: String,
    eos: String,
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn token_text(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string(),
        None => String::new(),
    }
}

impl ChatTemplate {
    /// `None` when the model has no chat template.
    pub fn from_container(f: &BnetFile) -> Result<Option<ChatTemplate>> {
        let cfg: serde_json::Value = match f.index.get("file:tokenizer_config.json") {
            Some(e) => serde_json::from_slice(f.data(e)).map_err(|e| {
                Error::format(format!(
                    "the stored tokenizer_config.json is not valid JSON: {e}"
                ))
            })?,
            None => serde_json::Value::Null,
        };
        let from_cfg = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // a list of named templates: take "default"
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template").and_then(|s| s.as_str()))
                .map(str::to_string),
            _ => None,
        };
        let source = match f.index.get("file:chat_template.jinja") {
            Some(e) => Some(String::from_utf8_lossy(f.data(e)).into_owned()),
            None => from_cfg,
        };
        Ok(source.map(|source| ChatTemplate {
            source,
            bos: token_text(cfg.get("bos_token")),
            eos: token_text(cfg.get("eos_token")),
        }))
    }

    /// A template from its source, without BOS/EOS texts (for tests and tools).
    pub fn new(source: &str) -> ChatTemplate {
        ChatTemplate {
            source: source.to_string(),
            bos: String::new(),
            eos: String::new(),
        }
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `(role, content)` messages, ending with the assistant's turn when
    /// `add_generation_prompt`.
    pub fn render(&self, messages: &[(&str, &str)], add_generation_prompt: bool) -> Result<String> {
        let mut env = minijinja::Environment::new();
        // a template is untrusted input: real ones render in a few thousand steps
        env.set_fuel(Some(FUEL));
        // transformers renders with Python's Jinja2, so templates call Python string and dict
        // methods (`.strip()`, `.startswith(...)`, `.items()`) and use `tojson`
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        let bad = |e: minijinja::Error| {
            Error::Usage(format!(
                "the model's chat template cannot be rendered ({e}); run without --chat and write the prompt format yourself"
            ))
        };
        env.add_template("chat", &self.source).map_err(bad)?;
        let msgs: Vec<_> = messages
            .iter()
            .map(|(r, c)| minijinja::context! { role => *r, content => *c })
            .collect();
        env.get_template("chat")
            .map_err(bad)?
            .render(minijinja::context! {
                messages => msgs,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos,
                eos_token => &self.eos,
            })
            .map_err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_prefix_decodes_standard_base64() {
        // "AQIDBAUG" is [1, 2, 3, 4, 5, 6]; "/w==" is [255]
        assert_eq!(base64_prefix("AQIDBAUG"), [1, 2, 3, 4, 5, 6]);
        assert_eq!(base64_prefix("/w=="), [255, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn oversized_precompiled_trie_is_refused() {
        let t = |map: &str| {
            serde_json::json!({"normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Precompiled", "precompiled_charsmap": map}]}})
        };
        // trie size 0xFFFFFFF0 in an 8-byte charsmap
        let e = check_precompiled(&t("8P///wAAAAA=")).unwrap_err();
        assert!(e.to_string().contains("4294967280-byte trie"), "{e}");
        // trie size 4 followed by 4 bytes: consistent
        assert!(check_precompiled(&t("BAAAAAECAwQ=")).is_ok());
    }
}
