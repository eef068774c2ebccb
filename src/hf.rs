//! Hugging Face checkpoints: config.json, single or sharded safetensors (memory-mapped,
//! validated), tokenizer files, and the detection of the checkpoint family.

use crate::error::{Error, Result};
use crate::model::{Family, ModelConfig};
use crate::quant::Float;
use memmap2::Mmap;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// What to do without a usable tokenizer.json.
const TOKENIZER_JSON: &str = "pass the model's tokenizer.json with --tokenizer (transformers writes one: AutoTokenizer.from_pretrained(DIR).save_pretrained(OUT)), or --no-tokenizer to pack without one (the model then runs on token ids only)";

/// Files copied verbatim into the container when the checkpoint has them.
pub const BLOB_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
];

/// Element type of a source tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrcDType {
    Float(Float),
    U8,
}

/// A tensor inside one memory-mapped shard.
#[derive(Clone, Debug)]
pub struct SrcTensor {
    pub shard: usize,
    pub dtype: SrcDType,
    pub shape: Vec<u64>,
    /// Absolute byte range in the shard file.
    pub start: usize,
    pub end: usize,
}

impl SrcTensor {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// One safetensors file, mapped.
pub struct Shard {
    pub path: PathBuf,
    pub map: Mmap,
}

impl Shard {
    /// Tells the kernel we are done with a byte range, so converting a model larger than RAM
    /// does not keep every page of it resident.
    pub fn release(&self, start: usize, end: usize) {
        const PAGE: usize = 4096;
        let s = start / PAGE * PAGE;
        let e = end.min(self.map.len());
        if e > s {
            // SAFETY: DontNeed on a read-only file mapping only drops cached pages; later
            // reads fault them back in from the file, so no data is lost.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, s, e - s)
            };
        }
    }
}

/// A checkpoint opened for conversion.
pub struct Checkpoint {
    pub config_path: PathBuf,
    pub config_bytes: Vec<u8>,
    pub config: ModelConfig,
    pub family: Family,
    /// (file name as stored, path) of tokenizer and other verbatim files.
    pub blobs: Vec<(String, PathBuf)>,
    pub shards: Vec<Shard>,
    pub tensors: BTreeMap<String, SrcTensor>,
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Where to find the parts of a checkpoint.
#[derive(Default, Debug, Clone)]
pub struct Sources {
    pub config: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    pub tokenizer_files: TokenizerFiles,
}

/// Whether a checkpoint's tokenizer.json is stored (a sentencepiece tokenizer.model, which the
/// runner cannot read, is kept verbatim like the other files).
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerFiles {
    /// Stored when the checkpoint has one.
    #[default]
    IfPresent,
    /// A checkpoint without one is an error (bitnet-pack's default: a model that cannot encode
    /// text is rarely what is wanted).
    Required,
    /// Never stored, even when the checkpoint has one (`--no-tokenizer`).
    Without,
}

impl Checkpoint {
    /// Opens a model directory or a single `.safetensors` file.
    pub fn open(input: &Path, src: &Sources) -> Result<Checkpoint> {
        let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
        let (dir, shard_paths) = if meta.is_dir() {
            (input.to_path_buf(), find_shards(input)?)
        } else {
            let dir = input.parent().unwrap_or(Path::new(".")).to_path_buf();
            let name = input.file_name().unwrap_or_default().to_string_lossy();
            let sharded = dir.join("model.safetensors.index.json").is_file();
            if name.ends_with(".index.json") || (sharded && name != "model.safetensors") {
                return Err(Error::checkpoint(format!(
                    "{}: part of a sharded checkpoint; pass its directory ({})",
                    input.display(),
                    if dir.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        &dir
                    }
                    .display()
                )));
            }
            (dir, vec![input.to_path_buf()])
        };
        let config_path = src
            .config
            .clone()
            .unwrap_or_else(|| dir.join("config.json"));
        if !config_path.exists() {
            let advice = match src.config {
                Some(_) => "check the path given with --config",
                None => "every checkpoint needs its config.json (pass --config FILE if it lives elsewhere)",
            };
            return Err(Error::checkpoint(format!(
                "{}: config.json not found; {advice}",
                config_path.display()
            )));
        }
        let config_bytes = read_file(&config_path)?;
        let raw: Value = serde_json::from_slice(&config_bytes).map_err(|e| {
            Error::checkpoint(format!(
                "{}: not valid JSON ({e}); re-download config.json",
                config_path.display()
            ))
        })?;
        let (config, family_hint) = ModelConfig::from_hf(&raw)
            .map_err(|m| Error::checkpoint(format!("{}: {m}", config_path.display())))?;

        let mut blobs = Vec::new();
        let tok_dir = src
            .tokenizer
            .as_ref()
            .and_then(|t| t.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| dir.clone());
        if let Some(t) = &src.tokenizer {
            if !t.exists() {
                return Err(Error::checkpoint(format!(
                    "{}: tokenizer file not found",
                    t.display()
                )));
            }
            if t.extension().is_some_and(|e| e == "model") {
                return Err(Error::checkpoint(format!(
                    "{}: a sentencepiece tokenizer.model, which the runner cannot read; {TOKENIZER_JSON}",
                    t.display()
                )));
            }
            blobs.push(("tokenizer.json".to_string(), t.clone()));
        }
        // no tokenizer.json beside the weights when the caller said which one, or none
        let own = src.tokenizer.is_some() || src.tokenizer_files == TokenizerFiles::Without;
        for name in BLOB_FILES {
            if blobs.iter().any(|(n, _)| n == name) || (*name == "tokenizer.json" && own) {
                continue;
            }
            for d in [&dir, &tok_dir] {
                let p = d.join(name);
                if p.is_file() {
                    blobs.push((name.to_string(), p));
                    break;
                }
            }
        }
        let has_tok = blobs.iter().any(|(n, _)| n == "tokenizer.json");
        // generation stops at its eos ids: a bad one is refused here, where it can be fixed
        if let Some((_, path)) = blobs.iter().find(|(n, _)| n == "generation_config.json") {
            crate::runner::generation_eos(&read_file(path)?, config.vocab_size).map_err(|why| {
                Error::checkpoint(format!("{}: {why}; correct it", path.display()))
            })?;
        }
        // the runner loads the stored file as it is: one that is not a tokenizer (a
        // tokenizer_config.json given as --tokenizer, a damaged download) is refused here,
        // where the source can still be named and fixed (only when packing for use: a
        // reference packed for bitnet-verify never tokenizes)
        let required = src.tokenizer_files == TokenizerFiles::Required;
        let stored = blobs
            .iter()
            .filter(|(n, _)| required && n == "tokenizer.json");
        for (_, path) in stored {
            crate::tokenizer::Tokenizer::from_json(&read_file(path)?).map_err(|why| {
                Error::checkpoint(format!(
                    "{}: not a usable tokenizer.json ({why}); {TOKENIZER_JSON}",
                    path.display()
                ))
            })?;
        }
        if src.tokenizer_files == TokenizerFiles::Required && !has_tok {
            let only_model = blobs.iter().any(|(n, _)| n == "tokenizer.model");
            return Err(Error::checkpoint(format!(
                "{}: no tokenizer.json found{}; {TOKENIZER_JSON}",
                dir.display(),
                if only_model {
                    " (only a sentencepiece tokenizer.model, which the runner cannot read)"
                } else {
                    ""
                }
            )));
        }

        let mut shards = Vec::new();
        let mut tensors = BTreeMap::new();
        for path in shard_paths {
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the mapping is read-only; like every mmap-based reader we assume the
            // input is not truncated by another process while we convert it.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let idx = shards.len();
            for (name, t) in parse_safetensors(&map, idx)
                .map_err(|m| Error::checkpoint(format!("{}: {m}", path.display())))?
            {
                if tensors.insert(name.clone(), t).is_some() {
                    return Err(Error::checkpoint(format!(
                        "{}: tensor {name} also appears in another shard",
                        path.display()
                    )));
                }
            }
            shards.push(Shard { path, map });
        }
        let family = Family::detect(family_hint, &tensors)
            .map_err(|m| Error::checkpoint(format!("{}: {m}", config_path.display())))?;
        Ok(Checkpoint {
            config_path,
            config_bytes,
            config,
            family,
            blobs,
            shards,
            tensors,
        })
    }

    /// Raw bytes of a source tensor.
    pub fn bytes(&self, t: &SrcTensor) -> &[u8] {
        &self.shards[t.shard].map[t.start..t.end]
    }
}

/// The safetensors files of a directory: model.safetensors, or the shards of its index.
fn find_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    // transformers' order: one model.safetensors first, then a sharded index
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let v: Value = serde_json::from_slice(&read_file(&index)?)
            .map_err(|e| Error::checkpoint(format!("{}: not valid JSON ({e})", index.display())))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                Error::checkpoint(format!("{}: no \"weight_map\" object", index.display()))
            })?;
        let mut files: Vec<&str> = Vec::new();
        for f in map.values() {
            let f = f.as_str().ok_or_else(|| {
                Error::checkpoint(format!(
                    "{}: weight_map values must be file names",
                    index.display()
                ))
            })?;
            if f.contains('/') || f.contains('\\') || f == ".." {
                return Err(Error::checkpoint(format!(
                    "{}: shard name {f:?} must be a plain file name",
                    index.display()
                )));
            }
            if !files.contains(&f) {
                files.push(f);
            }
        }
        files.sort_unstable();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(Error::checkpoint(format!(
                "{}: shard listed in model.safetensors.index.json is missing; download every shard",
                missing.display()
            )));
        }
        return Ok(paths);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    match found.len() {
        1 => Ok(found.pop().expect("one")),
        0 => Err(Error::checkpoint(format!(
            "{}: no model.safetensors (or model.safetensors.index.json) in this directory",
            dir.display()
        ))),
        _ => Err(Error::checkpoint(format!(
            "{}: several .safetensors files but no model.safetensors.index.json; pass the file to convert",
            dir.display()
        ))),
    }
    .map(|p| vec![p])
}

/// Validates a safetensors file (over its bytes) and lists its tensors with absolute byte
/// ranges, which are checked to lie inside `buf`. Errors say what is wrong.
pub fn parse_safetensors(
    buf: &[u8],
    shard: usize,
) -> std::result::Result<Vec<(String, SrcTensor)>, String> {
    let corrupt =
        |m: String| format!("truncated or corrupt safetensors file ({m}); re-download it");
    let (n, meta) =
        safetensors::SafeTensors::read_metadata(buf).map_err(|e| corrupt(e.to_string()))?;
    let base = 8 + n;
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        let dtype = match info.dtype {
            safetensors::Dtype::F32 => SrcDType::Float(Float::F32),
            safetensors::Dtype::F16 => SrcDType::Float(Float::F16),
            safetensors::Dtype::BF16 => SrcDType::Float(Float::BF16),
            safetensors::Dtype::U8 => SrcDType::U8,
            other => {
                return Err(format!(
                    "tensor {name} has dtype {other:?}; supported are F32, F16, BF16 and U8"
                ))
            }
        };
        let (s, e) = info.data_offsets;
        let (start, end) = (base + s, base + e);
        if end > buf.len() {
            return Err(corrupt(format!(
                "tensor {name} runs past the end of the file"
            )));
        }
        out.push((
            name,
            SrcTensor {
                shard,
                dtype,
                shape: info.shape.iter().map(|&d| d as u64).collect(),
                start,
                end,
            },
        ));
    }
    Ok(out)
}
