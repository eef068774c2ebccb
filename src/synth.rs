//! Synthetic checkpoints with random weights, for tests and benchmarks (for example a model of
//! the BitNet b1.58 2B-4T shape, `examples/synth_checkpoint.rs`). Weights are random, so these
//! say nothing about model quality; fixtures/ holds the real trained ones.

use crate::error::{Error, Result};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::io::{BufWriter, Write};
use std::path::Path;

/// The shape and kind of a synthetic checkpoint.
#[derive(Clone, Debug)]
pub struct SynthSpec {
    pub hidden: u64,
    pub intermediate: u64,
    pub layers: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub vocab: u64,
    pub tied: bool,
    /// uint8-packed projections plus `weight_scale` (autobitlinear offline) instead of bf16 latent.
    pub packed: bool,
    /// SiLU instead of relu2 (1bitLLM-style: what mainline llama.cpp's `bitnet` graph runs).
    pub silu: bool,
}

impl SynthSpec {
    /// microsoft/bitnet-b1.58-2B-4T-bf16's shape: ~4.8 GB of bf16 latent weights.
    pub fn bitnet_2b4t() -> SynthSpec {
        SynthSpec {
            hidden: 2560,
            intermediate: 6912,
            layers: 30,
            heads: 20,
            kv_heads: 5,
            vocab: 128256,
            tied: true,
            packed: false,
            silu: false,
        }
    }
    /// A small model with row lengths that are not multiples of 256.
    pub fn tiny_odd() -> SynthSpec {
        SynthSpec {
            hidden: 72,
            intermediate: 200,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            vocab: 300,
            tied: false,
            packed: false,
            silu: false,
        }
    }

    pub fn config(&self) -> Value {
        let mut c = json!({
            "architectures": ["BitNetForCausalLM"],
            "model_type": "bitnet",
            "hidden_act": if self.silu { "silu" } else { "relu2" },
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "tie_word_embeddings": self.tied,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "torch_dtype": "bfloat16",
            "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
        });
        if self.packed {
            c["quantization_config"]["quantization_mode"] = "offline".into();
        }
        c
    }
}

/// Deterministic pseudo-random bf16 values, roughly N(0, 0.02)-sized, filled in parallel.
fn random_bf16(seed: u64, n: usize, out: &mut Vec<u8>) {
    out.resize(n * 2, 0);
    out.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut s = seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for v in chunk.chunks_exact_mut(2) {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                let x = (u - 0.5) * 0.07;
                v.copy_from_slice(&half::bf16::from_f32(x).to_le_bytes());
            }
        });
}

/// Writes `config.json`, `model.safetensors` and a tiny `tokenizer.json` into `dir`.
pub fn write_checkpoint(dir: &Path, spec: &SynthSpec, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg = spec.config();
    let io = |p: &Path, e| Error::io(p, e);
    let cp = dir.join("config.json");
    std::fs::write(&cp, serde_json::to_vec_pretty(&cfg).expect("json")).map_err(|e| io(&cp, e))?;
    let tp = dir.join("tokenizer.json");
    let tok = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "hello": 1, "world": 2}, "unk_token": "<unk>"}});
    std::fs::write(&tp, serde_json::to_vec(&tok).expect("json")).map_err(|e| io(&tp, e))?;

    let (cfg, _) = crate::model::ModelConfig::from_hf(&cfg).map_err(Error::Checkpoint)?;
    let mut list = Vec::new();
    for (name, shape, role) in cfg.expected_tensors() {
        let n: u64 = shape.iter().product();
        if role == crate::model::Role::Projection && spec.packed {
            list.push((name.clone(), "U8", vec![shape[0] / 4, shape[1]], n / 4));
            list.push((format!("{name}_scale"), "BF16", vec![1], 2));
        } else {
            list.push((name, "BF16", shape, n * 2));
        }
    }
    let mp = dir.join("model.safetensors");
    let f = std::fs::File::create(&mp).map_err(|e| io(&mp, e))?;
    let mut w = BufWriter::with_capacity(8 << 20, f);
    w.write_all(&crate::format::safetensors_header(
        &list,
        &serde_json::Map::new(),
    ))
    .map_err(|e| io(&mp, e))?;
    let mut buf = Vec::new();
    for (i, (name, dtype, shape, len)) in list.iter().enumerate() {
        let seed = seed.wrapping_add(i as u64 * 7919);
        match *dtype {
            "U8" => {
                buf.clear();
                buf.extend((0..*len).map(|j| {
                    let x = (j.wrapping_mul(2654435761) ^ seed) as u8;
                    // four fields, each 0..=2
                    (0..4).fold(0u8, |a, f| a | (((x >> (2 * f)) % 3) << (2 * f)))
                }));
            }
            _ if name.ends_with("_scale") => {
                buf = half::bf16::from_f32(0.5 + (i % 7) as f32 * 0.125)
                    .to_le_bytes()
                    .to_vec();
            }
            _ if name.contains("norm") => {
                buf.clear();
                let one = half::bf16::from_f32(1.0).to_le_bytes();
                (0..shape[0]).for_each(|_| buf.extend_from_slice(&one));
            }
            _ => random_bf16(seed, (*len / 2) as usize, &mut buf),
        }
        w.write_all(&buf).map_err(|e| io(&mp, e))?;
    }
    w.flush().map_err(|e| io(&mp, e))?;
    Ok(())
}
