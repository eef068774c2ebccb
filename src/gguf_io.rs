//! GGUF interop (formats/gguf.md): `.bnet` → GGUF for llama.cpp (TQ1_0, TQ2_0) and
//! bitnet.cpp (I2_S), and GGUF → `.bnet`. The architecture written is the one whose graph
//! runs the model correctly in the target tool; where none does, the export is refused.

use crate::error::{Error, Result};
use crate::format::bnet::{DType, Entry, Scale, ScaleOp, Writer};
use crate::format::ggml::{self, GgmlType};
use crate::format::gguf::{Gguf, PlannedTensor, TensorInfo, Value};
use crate::format::BnetFile;
use crate::model::{Activation, Arch, LinearClass, ModelConfig};
use crate::pack::Layout;
use crate::quant::{self, Float};
use crate::runner::weights::Dense;
use rayon::prelude::*;
use serde_json::{json, Value as Json};
use std::io::{Seek, Write};
use std::path::Path;

/// The ternary GGUF types we write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TernaryType {
    /// llama.cpp, 1.69 bits per weight, rows a multiple of 256.
    Tq1_0,
    /// llama.cpp, 2.06 bits per weight, rows a multiple of 256.
    Tq2_0,
    /// bitnet.cpp, 2 bits per weight and one f32 scale per tensor.
    I2s,
}

impl TernaryType {
    fn ggml(self) -> GgmlType {
        let dialect = match self {
            TernaryType::I2s => ggml::Dialect::BitnetCpp,
            _ => ggml::Dialect::Mainline,
        };
        let id = match self {
            TernaryType::Tq1_0 => ggml::TQ1_0,
            TernaryType::Tq2_0 => ggml::TQ2_0,
            TernaryType::I2s => ggml::I2_S,
        };
        GgmlType::from_id(id, dialect).expect("known type")
    }
    /// `general.file_type` (llama.cpp's `LLAMA_FTYPE_MOSTLY_*`).
    fn file_type(self) -> u32 {
        match self {
            TernaryType::Tq1_0 => 36,
            TernaryType::Tq2_0 => 37,
            TernaryType::I2s => 40,
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    pub architecture: String,
    pub ggml_type: String,
    pub tensors: usize,
    pub output_bytes: u64,
    /// Things the user should know (which tools load the file, what was converted).
    pub notes: Vec<String>,
}

/// A canonical (Hugging Face) tensor name and its GGUF name.
fn gguf_name(canonical: &str) -> Option<String> {
    let fixed = match canonical {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.into());
    }
    let rest = canonical.strip_prefix("model.layers.")?;
    let (i, tail) = rest.split_once('.')?;
    let g = match tail {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "self_attn.attn_sub_norm.weight" => "attn_sub_norm",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        "mlp.ffn_sub_norm.weight" => "ffn_sub_norm",
        _ => return None,
    };
    Some(format!("blk.{i}.{g}.weight"))
}

/// The GGUF architecture that runs `cfg` correctly, or why none does.
fn target_arch(cfg: &ModelConfig) -> Result<(&'static str, Option<String>)> {
    let refuse = |why: &str| Err(Error::Usage(format!("cannot export to GGUF: {why}")));
    match (cfg.architecture, cfg.hidden_act) {
        (Arch::Llama, Activation::Silu) => Ok(("llama", None)),
        (Arch::Llama, Activation::Relu2) => refuse(
            "a llama-architecture model with relu2 has no graph in llama.cpp or bitnet.cpp (their llama graph uses SiLU)",
        ),
        (Arch::Bitnet, _) if !cfg.tie_word_embeddings => refuse(
            "this model has an untied lm_head, but the BitNet graphs of llama.cpp and bitnet.cpp always compute logits with token_embd; it would run wrong",
        ),
        (Arch::Bitnet, Activation::Silu) => Ok(("bitnet", None)),
        (Arch::Bitnet, Activation::Relu2) => Ok((
            "bitnet-b1.58",
            Some("relu2 FFN: written as architecture bitnet-b1.58, bitnet.cpp's relu² graph; mainline llama.cpp has no relu² BitNet graph (its 'bitnet' hard-codes SiLU) and refuses this file instead of running it wrong".into()),
        )),
    }
}

/// Rows of a q or k projection in llama.cpp's order for arch `llama` (rope NORM): within
/// each head, HF's halves [0, d/2) and [d/2, d) are interleaved. `order[gguf_row] = hf_row`.
fn llama_qk_order(rows: usize, heads: usize) -> Vec<usize> {
    let d = rows / heads;
    (0..rows)
        .map(|r| {
            let (h, w) = (r / d, r % d);
            h * d + (w % 2) * (d / 2) + w / 2
        })
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `.bnet` → GGUF with the projections as `ty`.
pub fn export<W: Write>(
    f: &BnetFile,
    out: W,
    dest: &Path,
    ty: TernaryType,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(W, ExportReport)> {
    let cfg = ModelConfig::from_container(&f.index.meta)?;
    if !cfg.rope_scaling.is_null() {
        return Err(Error::Usage(format!(
            "cannot export to GGUF: rope_scaling {} is not supported yet",
            cfg.rope_scaling
        )));
    }
    // every tensor with the dtype and shape the config implies, and canonical codes: the same
    // checks that let the runner trust a container (the plan below relies on them)
    crate::runner::weights::Weights::load(f)?;
    let (arch, arch_note) = target_arch(&cfg)?;
    let mut notes: Vec<String> = arch_note.into_iter().collect();
    let gt = ty.ggml();

    // Plan every tensor (and refuse what the type cannot hold) before writing a byte.
    let mut plan: Vec<(PlannedTensor, &Entry)> = Vec::new();
    for (canonical, _, _) in cfg.expected_tensors() {
        let e = f.index.get(&canonical).ok_or_else(|| {
            Error::format(format!("tensor {canonical} is missing from the container"))
        })?;
        let name = gguf_name(&canonical).expect("every expected tensor has a GGUF name");
        let dims: Vec<u64> = e.shape.iter().rev().copied().collect();
        let pty = if e.dtype.is_packed() {
            gt.data_len(&dims).map_err(|why| {
                let alt = if ty == TernaryType::I2s {
                    ""
                } else {
                    "; --gguf-type i2_s (bitnet.cpp) can hold it"
                };
                Error::Usage(format!(
                    "cannot export tensor {canonical} ({name}, shape {:?}) as {}: {why}{}",
                    e.shape,
                    gt.name,
                    if dims.iter().product::<u64>() % ggml::I2S_BLOCK as u64 == 0 {
                        alt
                    } else {
                        ""
                    }
                ))
            })?;
            gt
        } else if e.shape.len() == 1 {
            GgmlType::from_id(ggml::F32, ggml::Dialect::Mainline).expect("F32")
        } else {
            let id = match e.dtype {
                DType::F32 => ggml::F32,
                DType::BF16 => ggml::BF16,
                // the same 18-byte blocks; ggml needs whole blocks per row
                DType::Q4 if e.rows_cols().1 % 32 == 0 => ggml::Q4_0,
                _ => ggml::F16,
            };
            if matches!(e.dtype, DType::I8 | DType::Q4) && id == ggml::F16 {
                notes.push(format!(
                    "{canonical}: {} rows dequantized to F16",
                    e.dtype.name()
                ));
            }
            GgmlType::from_id(id, ggml::Dialect::Mainline).expect("float type")
        };
        plan.push((
            PlannedTensor {
                name,
                dims,
                ty: pty,
            },
            e,
        ));
    }
    if f.index.get("lm_head.weight").is_some() && cfg.tie_word_embeddings {
        notes.push("the container's separate copy of the tied lm_head is not exported; token_embd is the head".into());
    }

    let mut kv = model_kv(&cfg, arch, ty);
    kv.extend(tokenizer_kv(f, &cfg, &mut notes)?);
    let planned: Vec<PlannedTensor> = plan.iter().map(|(p, _)| p.clone()).collect();
    let mut w = crate::format::gguf::Writer::new(out, dest, &kv, &planned)?;
    for (p, e) in &plan {
        let data = f.data(e);
        if e.dtype.is_packed() {
            let permute = if arch == "llama" && p.name.ends_with("attn_q.weight") {
                Some(cfg.num_attention_heads)
            } else if arch == "llama" && p.name.ends_with("attn_k.weight") {
                Some(cfg.num_key_value_heads)
            } else {
                None
            };
            w.write(&encode_projection(e, data, ty, permute)?)?;
        } else if p.ty.id == ggml::F32 && e.dtype != DType::F32 {
            let mut v = vec![0f32; e.numel() as usize];
            decode_dense(f, e, data, &mut v)?;
            w.write(&f32_bytes(&v))?;
        } else if e.dtype == DType::I8 || (e.dtype == DType::Q4 && p.ty.id == ggml::F16) {
            let (rows, k) = e.rows_cols();
            let mut row = vec![0f32; k as usize];
            let dense = Dense::from_container(f, &e.name, rows, k)?;
            let mut buf = Vec::new();
            for r in 0..dense.rows {
                dense.row(r, &mut row);
                buf.clear();
                quant::encode(Float::F16, &row, &mut buf);
                w.write(&buf)?;
            }
        } else {
            for chunk in data.chunks(16 << 20) {
                w.write(chunk)?;
            }
        }
        progress(e.len);
    }
    let out = w.finish()?;
    Ok((
        out,
        ExportReport {
            architecture: arch.into(),
            ggml_type: gt.name.into(),
            tensors: plan.len(),
            output_bytes: 0,
            notes,
        },
    ))
}

/// Any float tensor of the container decoded to f32.
fn decode_dense(f: &BnetFile, e: &Entry, data: &[u8], out: &mut [f32]) -> Result<()> {
    match Float::from_dtype(e.dtype) {
        Some(fl) => {
            quant::decode(fl, data, out);
            Ok(())
        }
        None => {
            let (rows, k) = e.rows_cols();
            let dense = Dense::from_container(f, &e.name, rows, k)?;
            for (r, row) in out.chunks_mut(k as usize).enumerate() {
                dense.row(r, row);
            }
            Ok(())
        }
    }
}

/// The multiplier a code of 1 stands for: the ggml scale of the tensor.
fn multiplier(name: &str, s: &Scale) -> Result<f32> {
    let m = s.apply(1.0);
    if !m.is_finite() || m <= 0.0 {
        return Err(Error::format(format!(
            "tensor {name} has an unusable scale {}",
            s.value
        )));
    }
    Ok(m)
}

/// A packed projection re-encoded as `ty`, rows permuted when `permute_heads` is given.
fn encode_projection(
    e: &Entry,
    data: &[u8],
    ty: TernaryType,
    permute_heads: Option<u64>,
) -> Result<Vec<u8>> {
    let (rows, k) = e.rows_cols();
    let (rows, k) = (rows as usize, k as usize);
    let order: Vec<usize> = match permute_heads {
        Some(h) => llama_qk_order(rows, h as usize),
        None => (0..rows).collect(),
    };
    let mut vals = vec![0i8; rows * k];
    vals.par_chunks_mut(k)
        .zip(order.par_iter())
        .for_each(|(out, &src)| {
            quant::unpack_tensor_row(e.dtype, data, k, src, out);
        });
    let m = multiplier(&e.name, &e.scale)?;
    let h = half::f16::from_f32(m).to_f32();
    if ty != TernaryType::I2s && !(h.is_finite() && (h - m).abs() <= m * 1e-3) {
        return Err(Error::Usage(format!(
            "tensor {}: its scale {m} is outside the normal range of the fp16 block scale of TQ types (it would become {h}); use --gguf-type i2_s",
            e.name
        )));
    }
    Ok(match ty {
        TernaryType::Tq2_0 | TernaryType::Tq1_0 => {
            let bb = if ty == TernaryType::Tq2_0 {
                ggml::TQ2_BYTES
            } else {
                ggml::TQ1_BYTES
            };
            let row_out = k / 256 * bb;
            let mut out = vec![0u8; rows * row_out];
            out.par_chunks_mut(row_out)
                .zip(vals.par_chunks(k))
                .for_each(|(o, v)| {
                    if ty == TernaryType::Tq2_0 {
                        ggml::encode_tq2_0(v, m, o)
                    } else {
                        ggml::encode_tq1_0(v, m, o)
                    }
                });
            out
        }
        TernaryType::I2s => {
            let mut out = vec![0u8; vals.len() / 4];
            out.par_chunks_mut(32 * 1024)
                .zip(vals.par_chunks(128 * 1024))
                .for_each(|(o, v)| ggml::encode_i2_s(v, o));
            out.extend_from_slice(&ggml::i2_s_tail(m));
            out
        }
    })
}

/// Architecture hyperparameters, the keys llama.cpp reads (formats/gguf.md §3). The `as u32`
/// casts are lossless: `ModelConfig` parsing caps every dimension below `u32::MAX`.
fn model_kv(cfg: &ModelConfig, arch: &str, ty: TernaryType) -> Vec<(String, Value)> {
    let a = |k: &str| format!("{arch}.{k}");
    let act = cfg.hidden_act.name();
    let mut kv = vec![
        ("general.architecture".to_string(), Value::Str(arch.into())),
        (
            "general.name".into(),
            Value::Str(format!("{arch} (bitnet-tools export)")),
        ),
        ("general.file_type".into(), Value::U32(ty.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        (a("vocab_size"), Value::U32(cfg.vocab_size as u32)),
        (
            a("context_length"),
            Value::U32(cfg.max_position_embeddings as u32),
        ),
        (a("embedding_length"), Value::U32(cfg.hidden_size as u32)),
        (a("block_count"), Value::U32(cfg.num_hidden_layers as u32)),
        (
            a("feed_forward_length"),
            Value::U32(cfg.intermediate_size as u32),
        ),
        (
            a("attention.head_count"),
            Value::U32(cfg.num_attention_heads as u32),
        ),
        (
            a("attention.head_count_kv"),
            Value::U32(cfg.num_key_value_heads as u32),
        ),
        (
            a("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (a("attention.key_length"), Value::U32(cfg.head_dim as u32)),
        (a("attention.value_length"), Value::U32(cfg.head_dim as u32)),
        (a("rope.dimension_count"), Value::U32(cfg.head_dim as u32)),
        (a("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        // read by no llama.cpp graph (they hard-code theirs); written so readers can check
        (a("hidden_activation"), Value::Str(act.into())),
    ];
    if ty == TernaryType::I2s {
        kv.push((
            crate::format::gguf::TYPE_IDS_KEY.into(),
            Value::Str("bitnet.cpp".into()),
        ));
    }
    kv
}

/// The container's tokenizer as `tokenizer.ggml.*` keys (GPT-2-style byte-level BPE).
fn tokenizer_kv(
    f: &BnetFile,
    cfg: &ModelConfig,
    notes: &mut Vec<String>,
) -> Result<Vec<(String, Value)>> {
    let Some(e) = f.index.get("file:tokenizer.json") else {
        return Err(Error::Usage(
            "cannot export to GGUF: the container has no tokenizer.json, and llama.cpp needs the vocabulary to load a model; re-pack with --tokenizer FILE".into(),
        ));
    };
    let tj: Json = serde_json::from_slice(f.data(e))
        .map_err(|e| Error::format(format!("the stored tokenizer.json is not valid JSON: {e}")))?;
    let model = &tj["model"];
    if model["type"] != "BPE" || model["byte_fallback"] == true {
        return Err(Error::Usage(format!(
            "cannot export to GGUF: only byte-level BPE tokenizers (GPT-2 / Llama 3 style) are exported so far, and this one is {} {}",
            model["type"],
            if model["byte_fallback"] == true { "with byte fallback (SentencePiece style)" } else { "" }
        )));
    }
    let n = cfg.vocab_size as usize;
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![1i32; n];
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| Error::format("tokenizer.json has no model.vocab"))?;
    let mut place = |id: u64, s: &str, ty: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            Error::Usage(format!("cannot export to GGUF: token {s:?} has id {id}, outside the model's vocabulary of {n}"))
        })?;
        *slot = Some(s.to_string());
        types[id as usize] = ty;
        Ok(())
    };
    for (s, id) in vocab {
        place(
            id.as_u64()
                .ok_or_else(|| Error::format("tokenizer.json vocab ids must be integers"))?,
            s,
            1,
        )?;
    }
    for t in tj["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(s)) = (t["id"].as_u64(), t["content"].as_str()) else {
            continue;
        };
        place(id, s, if t["special"] == true { 3 } else { 4 })?;
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = tokens.iter().flatten().find(|t| !seen.insert(t.as_str())) {
        return Err(Error::Usage(format!(
            "cannot export to GGUF: the tokenizer holds {dup:?} at two ids, and llama.cpp needs unique tokens"
        )));
    }
    let mut holes = 0;
    let tokens: Vec<Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            Value::Str(t.unwrap_or_else(|| {
                holes += 1;
                types[i] = 5;
                format!("[PAD{i}]")
            }))
        })
        .collect();
    if holes > 0 {
        notes.push(format!(
            "{holes} vocabulary slots without a token written as unused [PAD<id>] tokens"
        ));
    }
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Json::String(s) => Some(Value::Str(s.clone())),
            Json::Array(p) => Some(Value::Str(format!(
                "{} {}",
                p.first()?.as_str()?,
                p.get(1)?.as_str()?
            ))),
            _ => None,
        })
        .collect();
    let pre = pre_tokenizer_name(&tj["pre_tokenizer"]);
    if pre == "default" && !is_gpt2_byte_level(&tj["pre_tokenizer"]) {
        notes.push("the tokenizer's pre-tokenizer has no llama.cpp equivalent; written as 'default' (GPT-2): text may tokenize differently in llama.cpp".into());
    }
    let mut kv = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::Str("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".into(), Value::Str(pre.into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(8, tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(5, types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(8, merges)),
    ];
    if let Some(b) = cfg.bos_token_id {
        kv.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b as u32)));
    }
    if let Some(&eos) = cfg.eos_token_id.first() {
        kv.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(eos as u32)));
    }
    kv.push((
        "tokenizer.ggml.add_bos_token".into(),
        Value::Bool(adds_bos(&tj, cfg)),
    ));
    if let Some(t) = crate::tokenizer::ChatTemplate::from_container(f)? {
        kv.push((
            "tokenizer.chat_template".into(),
            Value::Str(t.source().into()),
        ));
    }
    Ok(kv)
}

/// Llama 3's pre-tokenizer split pattern (llama.cpp `llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn is_gpt2_byte_level(p: &Json) -> bool {
    p["type"] == "ByteLevel" && p["use_regex"] != false
}

fn pre_tokenizer_name(p: &Json) -> &'static str {
    let split_regex = p["pretokenizers"]
        .as_array()
        .and_then(|l| l.first())
        .and_then(|s| s["pattern"]["Regex"].as_str());
    if split_regex == Some(LLAMA3_REGEX) {
        "llama-bpe"
    } else {
        "default"
    }
}

/// Whether encoding adds BOS: tokenizer.json's post-processor puts the BOS token first.
fn adds_bos(tj: &Json, cfg: &ModelConfig) -> bool {
    let Some(bos) = cfg.bos_token_id else {
        return false;
    };
    let pp = &tj["post_processor"];
    let procs: Vec<&Json> = match pp["processors"].as_array() {
        Some(l) => l.iter().collect(),
        None => vec![pp],
    };
    procs.iter().any(|p| {
        p["type"] == "TemplateProcessing"
            && p["special_tokens"].as_object().is_some_and(|m| {
                m.values().any(|t| {
                    t["ids"]
                        .as_array()
                        .is_some_and(|ids| ids.first().and_then(Json::as_u64) == Some(bos))
                })
            })
    })
}

/// Options of a GGUF import.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions {
    /// The FFN activation when the file does not say (arch `bitnet` from llama.cpp's
    /// converter: SiLU there, but BitNet b1.58 2B-4T needs relu2).
    pub activation: Option<Activation>,
    /// How to store the ternary projections.
    pub layout: Layout,
}

/// What an import did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    pub architecture: String,
    pub tensors: usize,
    pub output_bytes: u64,
    pub notes: Vec<String>,
}

fn parse_act(s: &str) -> Option<Activation> {
    match s {
        "relu2" | "relu_sqr" | "relu²" => Some(Activation::Relu2),
        "silu" | "swiglu" => Some(Activation::Silu),
        _ => None,
    }
}

/// The model config a GGUF file describes.
fn import_config(g: &Gguf, opts: &ImportOptions) -> Result<ModelConfig> {
    let arch = g
        .architecture()
        .ok_or_else(|| Error::gguf("general.architecture is missing"))?
        .to_string();
    let key = |k: &str| g.get(&format!("{arch}.{k}"));
    let need = |k: &str| {
        key(k)
            .and_then(Value::as_u64)
            .filter(|&v| v > 0)
            .ok_or_else(|| Error::gguf(format!("{arch}.{k} is missing or not a positive integer")))
    };
    let stated = match key("hidden_activation") {
        Some(v) => Some(v.as_str().and_then(parse_act).ok_or_else(|| {
            Error::gguf(format!(
                "{arch}.hidden_activation {} is not relu2 or silu",
                v.summary()
            ))
        })?),
        None => None,
    };
    let (architecture, sub_norms, graph_act) = match arch.as_str() {
        "llama" => (Arch::Llama, false, Some(Activation::Silu)),
        "bitnet-b1.58" | "bitnet-25" => (Arch::Bitnet, true, Some(Activation::Relu2)),
        "bitnet" => (Arch::Bitnet, true, None),
        other => {
            return Err(Error::Usage(format!(
                "GGUF architecture {other:?} is not a BitNet or ternary llama model (supported: llama, bitnet, bitnet-b1.58, bitnet-25)"
            )))
        }
    };
    let hidden_act = match (stated, opts.activation, graph_act) {
        (Some(s), Some(o), _) if s != o => {
            return Err(Error::Usage(format!(
                "--activation {} contradicts the file's {arch}.hidden_activation {}; drop --activation",
                o.name(),
                s.name()
            )))
        }
        (Some(s), _, _) | (None, Some(s), _) | (None, None, Some(s)) => s,
        (None, None, None) => {
            return Err(Error::Usage(
                "this GGUF has architecture 'bitnet' and does not say its FFN activation: llama.cpp runs it with SiLU, but BitNet b1.58 2B-4T-style models need relu2 (1bitLLM-style models use SiLU). Pass --activation relu2 or --activation silu".into(),
            ))
        }
    };
    let heads = need("attention.head_count")?;
    let hidden = need("embedding_length")?;
    let head_dim = match key("attention.key_length").and_then(Value::as_u64) {
        Some(d) => d,
        None if hidden % heads == 0 => hidden / heads,
        None => {
            return Err(Error::gguf(
                "embedding_length is not a multiple of attention.head_count",
            ))
        }
    };
    let kv_heads = key("attention.head_count_kv")
        .and_then(Value::as_u64)
        .unwrap_or(heads);
    if let Some(r) = key("rope.dimension_count").and_then(Value::as_u64) {
        if r != head_dim {
            return Err(Error::gguf(format!(
                "partial rotary embedding (rope.dimension_count {r} of head size {head_dim}) is not supported"
            )));
        }
    }
    if let Some(s) = key("rope.scaling.type").and_then(Value::as_str) {
        let factor = key("rope.scaling.factor")
            .and_then(Value::as_f64)
            .unwrap_or(1.0);
        if !(s == "none" || (s == "linear" && factor == 1.0)) {
            return Err(Error::gguf(format!(
                "rope scaling {s} (factor {factor}) is not supported"
            )));
        }
    }
    let embd = g
        .tensor("token_embd.weight")
        .ok_or_else(|| Error::gguf("token_embd.weight is missing"))?;
    let vocab = *embd
        .dims
        .get(1)
        .ok_or_else(|| Error::gguf("token_embd.weight is not a matrix"))?;
    let tok = |k: &str| {
        g.get(&format!("tokenizer.ggml.{k}"))
            .and_then(Value::as_u64)
    };
    let cfg = ModelConfig {
        architecture,
        hidden_act,
        sub_norms,
        hidden_size: hidden,
        intermediate_size: need("feed_forward_length")?,
        num_hidden_layers: need("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        vocab_size: vocab,
        rms_norm_eps: key("attention.layer_norm_rms_epsilon")
            .and_then(Value::as_f64)
            .unwrap_or(1e-5),
        rope_theta: key("rope.freq_base")
            .and_then(Value::as_f64)
            .unwrap_or(10000.0),
        rope_scaling: Json::Null,
        max_position_embeddings: need("context_length")?,
        tie_word_embeddings: g.tensor("output.weight").is_none(),
        bos_token_id: tok("bos_token_id"),
        // llama.cpp's end of turn (Llama 3's <|eot_id|>) ends generation too, where it is a
        // token of the vocabulary other than eos
        eos_token_id: {
            let eos = tok("eos_token_id");
            let eot = tok("eot_token_id").filter(|&t| t < vocab && Some(t) != eos);
            eos.into_iter().chain(eot).collect()
        },
        linear_class: LinearClass::AutoBitLinear,
    };
    cfg.check().map_err(Error::gguf)?;
    Ok(cfg)
}

/// A GGUF projection's ternary values and its one multiplier, or why it is not ternary.
fn import_projection(
    t: &TensorInfo,
    data: &[u8],
    rows: usize,
    k: usize,
) -> Result<(Vec<i8>, f32, DType)> {
    let name = &t.name;
    let mut vals = vec![0i8; rows * k];
    let mut scales = Vec::new();
    let src_dtype;
    match t.ty.id {
        ggml::TQ2_0 | ggml::TQ1_0 => {
            src_dtype = DType::F16;
            let bb = if t.ty.id == ggml::TQ2_0 { ggml::TQ2_BYTES } else { ggml::TQ1_BYTES };
            let rb = k / 256 * bb;
            for (r, (row, v)) in data.chunks_exact(rb).zip(vals.chunks_mut(k)).enumerate() {
                let before = scales.len();
                if t.ty.id == ggml::TQ2_0 {
                    ggml::decode_tq2_0(row, v, &mut scales).map_err(|b| {
                        Error::gguf(format!("tensor {name} row {r} block {b} holds the unused TQ2_0 code 3"))
                    })?;
                } else {
                    ggml::decode_tq1_0(row, v, &mut scales);
                }
                // a block of zeros says nothing about the scale
                for (b, blk) in v.chunks(256).enumerate() {
                    if blk.iter().all(|&x| x == 0) {
                        scales[before + b] = f32::NAN;
                    }
                }
            }
        }
        ggml::I2_S => {
            src_dtype = DType::F32;
            let n = rows * k;
            ggml::decode_i2_s(&data[..n / 4], &mut vals)
                .map_err(|i| Error::gguf(format!("tensor {name} element {i} holds the unused I2_S code 3")))?;
            scales.push(f32::from_le_bytes(data[n / 4..n / 4 + 4].try_into().expect("4 bytes")));
        }
        ggml::F32 | ggml::F16 | ggml::BF16 => {
            let fl = match t.ty.id {
                ggml::F32 => Float::F32,
                ggml::F16 => Float::F16,
                _ => Float::BF16,
            };
            src_dtype = fl.dtype();
            let mut x = vec![0f32; rows * k];
            quant::decode(fl, data, &mut x);
            let m = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (v, &w) in vals.iter_mut().zip(&x) {
                *v = if w == 0.0 {
                    0
                } else if w == m {
                    1
                } else if w == -m {
                    -1
                } else {
                    return Err(Error::gguf(format!(
                        "tensor {name} is {} but not ternary-valued (values other than 0 and ±{m}); only ternary models are imported — quantize the original checkpoint with bitnet-pack instead",
                        t.ty.name
                    )));
                };
            }
            scales.push(m);
        }
        _ => {
            return Err(Error::gguf(format!(
                "projection {name} is {}, which is not a ternary type (TQ1_0, TQ2_0, I2_S, or ternary-valued F32/F16/BF16)",
                t.ty.name
            )))
        }
    }
    if vals.iter().all(|&v| v == 0) {
        // an all-zero weight has no scale to keep; 1 is as good as any
        return Ok((vals, 1.0, src_dtype));
    }
    let mut distinct: Vec<f32> = scales.iter().copied().filter(|s| !s.is_nan()).collect();
    distinct.sort_by(f32::total_cmp);
    distinct.dedup();
    let scale = match distinct.as_slice() {
        [] => 1.0,
        [s] if s.is_finite() && *s > 0.0 => *s,
        [s] => return Err(Error::gguf(format!("tensor {name} has an unusable scale {s}"))),
        _ => {
            return Err(Error::gguf(format!(
                "tensor {name} has {} different block scales; a BitNet ternary weight has one scale per tensor (was this file quantized from a non-ternary model?)",
                distinct.len()
            )))
        }
    };
    Ok((vals, scale, src_dtype))
}

/// HF-style rows of a llama q/k projection from GGUF order (the inverse of the export).
fn unpermute(vals: Vec<i8>, rows: usize, k: usize, heads: usize) -> Vec<i8> {
    let order = llama_qk_order(rows, heads);
    let mut out = vec![0i8; vals.len()];
    for (g, &hf) in order.iter().enumerate() {
        out[hf * k..(hf + 1) * k].copy_from_slice(&vals[g * k..(g + 1) * k]);
    }
    out
}

/// A checked import: the config and, for each expected tensor, its GGUF tensor.
pub struct ImportPlan<'g> {
    pub cfg: ModelConfig,
    pub arch: String,
    items: Vec<(String, Vec<u64>, crate::model::Role, &'g TensorInfo)>,
    pub notes: Vec<String>,
    /// Must hold only ones (no per-frequency RoPE scaling), checked at import.
    rope_freqs: Option<&'g TensorInfo>,
}

/// Everything about an import that can be checked without reading tensor data: the
/// metadata, every tensor's presence, dims and type, and that nothing is left over.
pub fn plan_import<'g>(g: &'g Gguf, opts: &ImportOptions) -> Result<ImportPlan<'g>> {
    use crate::model::Role;
    let cfg = import_config(g, opts)?;
    let arch = g.architecture().unwrap_or_default().to_string();
    let mut notes = Vec::new();
    let mut items = Vec::new();
    let mut used = std::collections::HashSet::new();
    let mut rope_freqs = None;
    for (canonical, shape, role) in cfg.expected_tensors() {
        let gname = gguf_name(&canonical).expect("named");
        let t = g
            .tensor(&gname)
            .ok_or_else(|| Error::gguf(format!("tensor {gname} is missing")))?;
        used.insert(gname.clone());
        let want: Vec<u64> = shape.iter().rev().copied().collect();
        if t.dims != want {
            return Err(Error::gguf(format!(
                "tensor {gname} has dims {:?}, but the metadata implies {want:?}",
                t.dims
            )));
        }
        let ok = match role {
            Role::Projection => matches!(
                t.ty.id,
                ggml::TQ1_0 | ggml::TQ2_0 | ggml::I2_S | ggml::F32 | ggml::F16 | ggml::BF16
            ),
            // Q4_0 is the .bnet Q4 dtype byte for byte (a 4-bit head or embeddings)
            _ => {
                matches!(t.ty.id, ggml::F32 | ggml::F16 | ggml::BF16 | ggml::Q8_0)
                    || (t.ty.id == ggml::Q4_0 && shape.len() == 2)
            }
        };
        if !ok && role == Role::Projection {
            return Err(Error::gguf(format!(
                "projection {gname} is {}, which is not a ternary type (TQ1_0, TQ2_0, I2_S, or ternary-valued F32/F16/BF16)",
                t.ty.name
            )));
        }
        if !ok {
            return Err(Error::gguf(format!(
                "tensor {gname} is {}; only F32, F16, BF16, Q8_0 (and Q4_0 for 2-D tensors) are imported for embeddings, norms and the output head (re-make the file with llama-quantize --token-embedding-type f16 --output-tensor-type f16)",
                t.ty.name
            )));
        }
        if t.ty.id == ggml::Q8_0 {
            notes.push(format!("{gname}: Q8_0 dequantized to F32"));
        }
        items.push((canonical, shape, role, t));
    }
    for t in &g.tensors {
        if !used.contains(&t.name) {
            if t.name == "rope_freqs.weight" && t.ty.id == ggml::F32 {
                rope_freqs = Some(t);
                continue;
            }
            return Err(Error::gguf(format!(
                "unexpected tensor {} for architecture {arch}: biases, per-tensor .scale tensors and other extras are not supported",
                t.name
            )));
        }
    }
    Ok(ImportPlan {
        cfg,
        arch,
        items,
        notes,
        rope_freqs,
    })
}

/// Writes GGUF → `.bnet`. `bytes` is the whole mapped file.
pub fn import<W: Write + Seek>(
    g: &Gguf,
    bytes: &[u8],
    source: &Path,
    out: W,
    dest: &Path,
    opts: &ImportOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(W, ImportReport)> {
    let ImportPlan {
        cfg,
        arch,
        items,
        mut notes,
        rope_freqs,
    } = plan_import(g, opts)?;
    if let Some(t) = rope_freqs {
        let ones = bytes[t.range()]
            .chunks_exact(4)
            .all(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) == 1.0);
        if !ones {
            return Err(Error::gguf(
                "rope_freqs.weight holds per-frequency RoPE scaling (Llama 3.1 style), which is not supported",
            ));
        }
        notes.push("rope_freqs.weight (all ones) skipped".into());
    }
    let mut w = Writer::new(out, dest)?;
    // the stored dtypes of the embeddings and an untied head, for the metadata
    let (mut embeddings, mut lm_head) = (None, None);
    for (canonical, shape, role, t) in &items {
        let gname = &t.name;
        let data = &bytes[t.range()];
        let (rows, k) = t.rows_cols();
        if *role == crate::model::Role::Projection {
            let (mut vals, scale, src) = import_projection(t, data, rows as usize, k as usize)?;
            if arch == "llama" && gname.ends_with("attn_q.weight") {
                vals = unpermute(
                    vals,
                    rows as usize,
                    k as usize,
                    cfg.num_attention_heads as usize,
                );
            } else if arch == "llama" && gname.ends_with("attn_k.weight") {
                vals = unpermute(
                    vals,
                    rows as usize,
                    k as usize,
                    cfg.num_key_value_heads as usize,
                );
            }
            let (dtype, packed) = match opts.layout {
                Layout::TL => {
                    let k = k as usize;
                    let row = |r: usize, out: &mut [i8]| out.copy_from_slice(&vals[r * k..][..k]);
                    (DType::TL, quant::pack_tl(rows as usize, k, row))
                }
                Layout::T2 => {
                    let rb = DType::T2.row_bytes(k).expect("small") as usize;
                    let mut packed = vec![0u8; rows as usize * rb];
                    packed
                        .par_chunks_mut(rb)
                        .zip(vals.par_chunks(k as usize))
                        .for_each(|(o, v)| quant::pack_t2_row(v, o));
                    (DType::T2, packed)
                }
            };
            let sc = Scale {
                value: scale,
                op: ScaleOp::Multiply,
                source_dtype: src,
            };
            w.tensor(canonical, dtype, shape, sc, &packed)?;
        } else {
            let (dtype, stored) = match t.ty.id {
                ggml::Q4_0 => {
                    if let Some(r) = quant::q4_first_bad_row(data, k) {
                        return Err(Error::gguf(format!(
                            "tensor {} row {r} has a non-finite Q4_0 scale; the file is damaged",
                            t.name
                        )));
                    }
                    (DType::Q4, std::borrow::Cow::Borrowed(data))
                }
                ggml::Q8_0 => {
                    let mut x = vec![0f32; (rows * k) as usize];
                    ggml::decode_q8_0(data, &mut x);
                    (DType::F32, std::borrow::Cow::Owned(f32_bytes(&x)))
                }
                ggml::F32 => (DType::F32, data.into()),
                ggml::F16 => (DType::F16, data.into()),
                _ => (DType::BF16, data.into()),
            };
            w.tensor(canonical, dtype, shape, Scale::NONE, &stored)?;
            match canonical.as_str() {
                "model.embed_tokens.weight" => embeddings = Some(dtype),
                "lm_head.weight" => lm_head = Some(dtype),
                _ => {}
            }
        }
        progress(t.len);
    }
    let config_json = serde_json::to_vec_pretty(&hf_config(&cfg)).expect("serializes");
    w.tensor(
        "file:config.json",
        DType::U8,
        &[config_json.len() as u64],
        Scale::NONE,
        &config_json,
    )?;
    match tokenizer_json(g, &cfg, &mut notes)? {
        Some((tj, tc)) => {
            w.tensor("file:tokenizer.json", DType::U8, &[tj.len() as u64], Scale::NONE, &tj)?;
            w.tensor("file:tokenizer_config.json", DType::U8, &[tc.len() as u64], Scale::NONE, &tc)?;
        }
        None => notes.push(format!(
            "no tokenizer imported (tokenizer.ggml.model is {}; only gpt2 BPE is converted): run with --ids",
            g.get("tokenizer.ggml.model").map_or("missing".into(), Value::summary)
        )),
    }
    let src_hash = blake3::hash(bytes);
    let ty_names: std::collections::BTreeSet<&str> = g
        .tensors
        .iter()
        .filter(|t| t.dims.len() == 2 && t.name.starts_with("blk."))
        .map(|t| t.ty.name)
        .collect();
    let meta = json!({
        "format": "bnet",
        "format_version": w.format_version(),
        "family": format!("gguf-{arch}"),
        "model": cfg,
        "quantization": {
            "weights": "ternary",
            "method": format!("imported from GGUF ({})", ty_names.into_iter().collect::<Vec<_>>().join(", ")),
            "scale_op": "multiply",
            "parameters": {"scale": "the tensor's one block scale (fp16 in TQ types, f32 in I2_S)"},
            "layout": match opts.layout { Layout::TL => "TL", Layout::T2 => "T2" },
            "embeddings": embeddings.map_or("?", stored_name),
            "lm_head": lm_head.map_or("tied", stored_name),
        },
        "provenance": {
            "tool": format!("bitnet-tools {}", env!("CARGO_PKG_VERSION")),
            "sources": [{"file": source.file_name().map(|n| n.to_string_lossy().into_owned()), "bytes": bytes.len(), "blake3": src_hash.to_hex().to_string()}],
            "gguf_architecture": arch,
        },
    });
    let (out, len) = w.finish(&meta)?;
    Ok((
        out,
        ImportReport {
            architecture: arch,
            tensors: items.len(),
            output_bytes: len,
            notes,
        },
    ))
}

/// A Hugging Face config.json for an imported model (so it can be unpacked and loaded).
fn hf_config(cfg: &ModelConfig) -> Json {
    let llama = cfg.architecture == Arch::Llama;
    json!({
        "architectures": [if llama { "LlamaForCausalLM" } else { "BitNetForCausalLM" }],
        "model_type": if llama { "llama" } else { "bitnet" },
        "hidden_act": cfg.hidden_act.name(),
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id.first(),
        "torch_dtype": "float32",
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"},
    })
}

/// tokenizer.json and tokenizer_config.json rebuilt from `tokenizer.ggml.*` (gpt2 BPE only).
fn tokenizer_json(
    g: &Gguf,
    cfg: &ModelConfig,
    notes: &mut Vec<String>,
) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    if g.get("tokenizer.ggml.model").and_then(Value::as_str) != Some("gpt2") {
        return Ok(None);
    }
    let strings = |k: &str| -> Result<Vec<&str>> {
        g.get(k)
            .and_then(Value::as_array)
            .ok_or_else(|| Error::gguf(format!("{k} is missing")))?
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| Error::gguf(format!("{k} holds a non-string")))
            })
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a
            .iter()
            .map(|v| match v {
                Value::I32(x) => *x as i64,
                v => v.as_u64().unwrap_or(1) as i64,
            })
            .collect(),
        None => vec![1; tokens.len()],
    };
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = tokens.iter().find(|t| !seen.insert(**t)) {
        return Err(Error::gguf(format!(
            "tokenizer.ggml.tokens holds {dup:?} twice; llama.cpp refuses such a vocabulary too"
        )));
    }
    for (id, (&tok, &ty)) in tokens
        .iter()
        .zip(types.iter().chain(std::iter::repeat(&1)))
        .enumerate()
    {
        if ty == 3 || ty == 4 {
            added.push(json!({"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false, "normalized": ty == 4, "special": ty == 3}));
        }
        vocab.insert(tok.to_string(), json!(id));
    }
    let pre = g
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    if !matches!(pre, "default" | "gpt2" | "llama-bpe") {
        notes.push(format!(
            "tokenizer.ggml.pre {pre:?} has no exact tokenizers equivalent here: text is pre-split the GPT-2 way (token ids given with --ids are unaffected)"
        ));
    }
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let pre_tok = if pre == "llama-bpe" {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
            byte_level(false)]})
    } else {
        byte_level(true)
    };
    let add_bos = g.get("tokenizer.ggml.add_bos_token") == Some(&Value::Bool(true));
    let bos = cfg
        .bos_token_id
        .and_then(|b| tokens.get(b as usize).map(|t| (b, *t)));
    let post = match (add_bos, bos) {
        (true, Some((id, tok))) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tok: {"id": tok, "ids": [id], "tokens": [tok]}}}),
        _ => byte_level(true),
    };
    let tj = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tok,
        "post_processor": post,
        "decoder": byte_level(true),
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": pre == "llama-bpe",
                  "vocab": vocab, "merges": merges},
    });
    let name = |id: Option<u64>| {
        id.and_then(|i| tokens.get(i as usize))
            .map(|t| t.to_string())
    };
    let mut tc = json!({
        "add_bos_token": add_bos,
        "bos_token": name(cfg.bos_token_id),
        "eos_token": name(cfg.eos_token_id.first().copied()),
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let Some(t) = g.get("tokenizer.chat_template").and_then(Value::as_str) {
        tc["chat_template"] = json!(t);
    }
    let tj = serde_json::to_vec(&tj).expect("serializes");
    // the rebuilt tokenizer must load, or the container would carry a broken one
    tokenizers::Tokenizer::from_bytes(&tj).map_err(|e| {
        Error::gguf(format!(
            "the vocabulary does not form a valid tokenizer: {e}"
        ))
    })?;
    Ok(Some((
        tj,
        serde_json::to_vec_pretty(&tc).expect("serializes"),
    )))
}

/// How the metadata names an embedding or head dtype, in the words `pack` uses.
fn stored_name(d: DType) -> &'static str {
    match d {
        DType::Q4 => crate::pack::store_name(crate::pack::StoreAs::Q4),
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// Opens a model to run: a `.bnet` as it is; a GGUF file through an import into an unlinked
/// temporary file (the kernels read the `.bnet` layout; nothing is left on disk, whatever
/// happens). Returns the container and whether it was imported.
pub fn open_model(path: &Path) -> Result<(BnetFile, bool)> {
    if !crate::format::gguf::is_gguf(path) {
        return Ok((BnetFile::open(path)?, false));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only mapping of a file we do not modify (see BnetFile::open).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let g = Gguf::parse(&map, false)?;
    let import_to = |sink, dest: &Path| {
        let opts = ImportOptions::default();
        Ok(import(&g, &map, path, sink, dest, &opts, &|_| {})?.0)
    };
    let f = BnetFile::unlinked("the on-the-fly GGUF import", path, import_to)?;
    Ok((f, true))
}
