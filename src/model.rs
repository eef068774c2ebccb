//! The model as the toolchain understands it: the normalized configuration stored in every
//! container, the checkpoint families, and the tensors each family must have.

use crate::hf::{SrcDType, SrcTensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Decoder architecture. `bitnet` is Llama plus the two sub-norms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Bitnet,
    Llama,
}

/// FFN activation: `act(gate) * up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `relu(x)^2`, BitNet b1.58 2B-4T.
    Relu2,
    /// `x * sigmoid(x)`, Llama and 1bitLLM.
    Silu,
}

impl Activation {
    /// The name in config.json, the container and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu2 => "relu2",
            Activation::Silu => "silu",
        }
    }
}

/// transformers' BitNet linear class, which decides whether `weight_scale` multiplies or divides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinearClass {
    #[serde(rename = "autobitlinear")]
    AutoBitLinear,
    #[serde(rename = "bitlinear")]
    BitLinear,
}

/// The normalized configuration (formats/bnet.md §7, key `model`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Arch,
    pub hidden_act: Activation,
    pub sub_norms: bool,
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_hidden_layers: u64,
    pub num_attention_heads: u64,
    pub num_key_value_heads: u64,
    pub head_dim: u64,
    pub vocab_size: u64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub rope_scaling: Value,
    pub max_position_embeddings: u64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Vec<u64>,
    pub linear_class: LinearClass,
}

/// Checkpoint families (formats/bnet.md §7, key `family`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    BitnetLatent,
    BitnetPacked,
    LlamaTernaryPacked,
    LlamaTernaryLatent,
    OneBitLlmLatent,
}

/// What config.json alone says about the family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyHint {
    Bitnet,
    LlamaTernary,
    OneBitLlm,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::BitnetLatent => "bitnet-b1.58-latent",
            Family::BitnetPacked => "bitnet-b1.58-packed",
            Family::LlamaTernaryPacked => "llama-ternary-packed",
            Family::LlamaTernaryLatent => "llama-ternary-latent",
            Family::OneBitLlmLatent => "1bitllm-latent",
        }
    }
    pub fn is_packed(self) -> bool {
        matches!(self, Family::BitnetPacked | Family::LlamaTernaryPacked)
    }

    /// Decides the family from the config hint and the dtype of the first projection.
    pub fn detect(
        hint: FamilyHint,
        tensors: &BTreeMap<String, SrcTensor>,
    ) -> Result<Family, String> {
        let probe = "model.layers.0.self_attn.q_proj.weight";
        let t = tensors.get(probe).ok_or_else(|| {
            format!("the checkpoint has no {probe}: is this a decoder-only causal LM checkpoint?")
        })?;
        let packed = t.dtype == SrcDType::U8;
        Ok(match (hint, packed) {
            (FamilyHint::Bitnet, false) => Family::BitnetLatent,
            (FamilyHint::Bitnet, true) => Family::BitnetPacked,
            (FamilyHint::LlamaTernary, true) => Family::LlamaTernaryPacked,
            (FamilyHint::LlamaTernary, false) => Family::LlamaTernaryLatent,
            (FamilyHint::OneBitLlm, false) => Family::OneBitLlmLatent,
            (FamilyHint::OneBitLlm, true) => {
                return Err(
                    "1bitLLM checkpoints hold float latent weights, but q_proj is uint8".into(),
                )
            }
        })
    }
}

/// The config.json key that marks a model directory written by `bitnet-pack` unpacking a `.bnet`
/// (transformers keeps unknown keys as attributes and ignores them).
pub const UNPACKED_KEY: &str = "bitnet_tools_unpacked";

/// What an absent config.json value means.
#[derive(Clone, Copy, PartialEq)]
enum Absent {
    /// An error (the caller says so).
    Required,
    /// The default.
    Default,
    /// The default, and so is `null`: transformers' config classes read `None` that way.
    DefaultOrNull,
}

/// The config.json value at `path` (a key, or `object.key` inside `obj`) read by `get`, `None`
/// when absent. A value of another type is an error naming it, never the default:
/// `"rms_norm_eps": "1e-5"` or `"hidden_act": 5` would otherwise pack a different model without
/// a word. (The caller prefixes the file's path.)
fn field<'a, T>(
    obj: Option<&'a Value>,
    path: &str,
    want: &str,
    absent: Absent,
    get: impl Fn(&'a Value) -> Option<T>,
) -> Result<Option<T>, String> {
    let key = path.rsplit('.').next().unwrap_or(path);
    match obj.and_then(|o| o.get(key)) {
        None => Ok(None),
        Some(Value::Null) if absent == Absent::DefaultOrNull => Ok(None),
        Some(v) => get(v).map(Some).ok_or_else(|| {
            let or = match absent {
                Absent::Required => "",
                _ => ", or remove the key to use the default",
            };
            format!("\"{path}\" is {v}, not {want}; correct it{or}")
        }),
    }
}

fn get_u64(raw: &Value, key: &str) -> Result<u64, String> {
    field(
        Some(raw),
        key,
        "a positive integer",
        Absent::Required,
        Value::as_u64,
    )?
    .filter(|&v| v > 0)
    .ok_or_else(|| format!("no positive integer \"{key}\": every config.json has one"))
}

/// `eos_token_id` (of config.json or generation_config.json): an id, a list of ids, or null.
pub(crate) fn token_ids(raw: &Value, key: &str) -> Result<Vec<u64>, String> {
    let ids = |v: &Value| match v {
        Value::Array(a) => a.iter().map(Value::as_u64).collect(),
        v => v.as_u64().map(|id| vec![id]),
    };
    Ok(field(
        Some(raw),
        key,
        "a token id or a list of them",
        Absent::DefaultOrNull,
        ids,
    )?
    .unwrap_or_default())
}

impl ModelConfig {
    /// Reads a Hugging Face config.json. Unknown architectures and activations are errors,
    /// never silent defaults: a runner that assumes the wrong activation produces plausible
    /// garbage.
    pub fn from_hf(raw: &Value) -> Result<(ModelConfig, FamilyHint), String> {
        let model_type = field(
            Some(raw),
            "model_type",
            "a string",
            Absent::Required,
            Value::as_str,
        )?
        .unwrap_or("");
        let archs: Vec<&str> = raw
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let qc = raw.get("quantization_config");
        let quant_method = qc
            .and_then(|q| q.get("quant_method"))
            .and_then(Value::as_str);
        if raw.get(UNPACKED_KEY).is_some() {
            return Err("this is a directory bitnet-pack unpacked from a .bnet: its weights are dequantized floats, and packing them again would re-quantize them with different scales (a different model); pack the original checkpoint, or keep using the .bnet".into());
        }
        let hint = match model_type {
            "bitnet" => FamilyHint::Bitnet,
            "llama" if archs.contains(&"BitnetForCausalLM") => FamilyHint::OneBitLlm,
            "llama" if quant_method == Some("bitnet") => FamilyHint::LlamaTernary,
            "llama" => {
                return Err("a llama checkpoint without quantization_config.quant_method \"bitnet\" is not a ternary model; only BitNet-quantized checkpoints can be packed".into())
            }
            other => {
                return Err(format!(
                    "unsupported architecture (model_type {other:?}, architectures {archs:?}); supported: model_type \"bitnet\", \"llama\" with quant_method \"bitnet\", and 1bitLLM's BitnetForCausalLM"
                ))
            }
        };
        let (arch, sub_norms, default_act, default_theta, default_eps) = match hint {
            FamilyHint::Bitnet => (Arch::Bitnet, true, "relu2", 500_000.0, 1e-5),
            FamilyHint::OneBitLlm => (Arch::Bitnet, true, "silu", 10_000.0, 1e-6),
            FamilyHint::LlamaTernary => (Arch::Llama, false, "silu", 10_000.0, 1e-6),
        };
        let act_name = field(
            Some(raw),
            "hidden_act",
            "a string",
            Absent::Default,
            Value::as_str,
        )?
        .unwrap_or(default_act);
        let hidden_act = match act_name {
            "relu2" => Activation::Relu2,
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(format!(
                    "unsupported activation hidden_act {other:?}; supported: \"relu2\", \"silu\""
                ))
            }
        };
        for key in ["attention_bias", "mlp_bias"] {
            if field(
                Some(raw),
                key,
                "true or false",
                Absent::DefaultOrNull,
                Value::as_bool,
            )? == Some(true)
            {
                return Err(format!(
                    "{key}: true is not supported (BitNet layers have no bias)"
                ));
            }
        }
        let class = "quantization_config.linear_class";
        let linear_class = match field(qc, class, "a string", Absent::DefaultOrNull, Value::as_str)?
        {
            None | Some("bitlinear") => LinearClass::BitLinear,
            Some("autobitlinear") => LinearClass::AutoBitLinear,
            Some(other) => {
                return Err(format!(
                    "unsupported quantization_config.linear_class {other:?}"
                ))
            }
        };
        let rms = "quantization_config.use_rms_norm";
        if field(
            qc,
            rms,
            "true or false",
            Absent::DefaultOrNull,
            Value::as_bool,
        )? == Some(true)
        {
            return Err("quantization_config.use_rms_norm: true is not supported yet".into());
        }
        let hidden_size = get_u64(raw, "hidden_size")?;
        let num_attention_heads = get_u64(raw, "num_attention_heads")?;
        let count = |key| {
            field(
                Some(raw),
                key,
                "a non-negative integer",
                Absent::DefaultOrNull,
                Value::as_u64,
            )
        };
        let num_key_value_heads = count("num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim =
            match count("head_dim")? {
                Some(d) if d > 0 => d,
                _ if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
                _ => return Err(
                    "hidden_size is not a multiple of num_attention_heads and head_dim is not set"
                        .into(),
                ),
            };
        let rope_params = raw.get("rope_parameters");
        let number = |obj, path| field(obj, path, "a number", Absent::Default, Value::as_f64);
        let rope_theta = number(Some(raw), "rope_theta")?
            .or(number(rope_params, "rope_parameters.rope_theta")?)
            .unwrap_or(default_theta);
        let rope_type = field(
            rope_params,
            "rope_parameters.rope_type",
            "a string",
            Absent::DefaultOrNull,
            Value::as_str,
        )?;
        let rope_scaling = match (raw.get("rope_scaling"), rope_params) {
            (Some(s), _) if !s.is_null() => s.clone(),
            (_, Some(p)) if rope_type.unwrap_or("default") != "default" => p.clone(),
            _ => Value::Null,
        };
        let cfg = ModelConfig {
            architecture: arch,
            hidden_act,
            sub_norms,
            hidden_size,
            intermediate_size: get_u64(raw, "intermediate_size")?,
            num_hidden_layers: get_u64(raw, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: get_u64(raw, "vocab_size")?,
            rms_norm_eps: number(Some(raw), "rms_norm_eps")?.unwrap_or(default_eps),
            rope_theta,
            rope_scaling,
            max_position_embeddings: field(
                Some(raw),
                "max_position_embeddings",
                "a positive integer",
                Absent::Default,
                Value::as_u64,
            )?
            .unwrap_or(2048),
            tie_word_embeddings: field(
                Some(raw),
                "tie_word_embeddings",
                "true or false",
                Absent::DefaultOrNull,
                Value::as_bool,
            )?
            .unwrap_or(false),
            bos_token_id: field(
                Some(raw),
                "bos_token_id",
                "a token id",
                Absent::DefaultOrNull,
                Value::as_u64,
            )?,
            eos_token_id: token_ids(raw, "eos_token_id")?,
            linear_class,
        };
        cfg.check()?;
        Ok((cfg, hint))
    }

    /// The `model` entry of a `.bnet` container's metadata (formats/bnet.md §7), checked like
    /// any other source: valid checksums only say the file is as its writer made it.
    pub fn from_container(meta: &Value) -> crate::Result<ModelConfig> {
        let cfg: ModelConfig =
            serde_json::from_value(meta.get("model").cloned().unwrap_or_default()).map_err(|e| {
                crate::Error::format(format!(
                    "the container's model configuration is unusable ({e}); re-pack the model with this version of bitnet-pack"
                ))
            })?;
        cfg.check().map_err(|e| {
            crate::Error::format(format!(
                "the container's model configuration is invalid: {e}; re-pack the model with bitnet-pack"
            ))
        })?;
        Ok(cfg)
    }

    /// The rules every configuration obeys, wherever it comes from (config.json, a GGUF file, a
    /// `.bnet` container, whose checksums say nothing about whether its writer was honest):
    /// each one keeps the runner from dividing by zero, indexing out of bounds or computing
    /// plausible garbage (an odd head size silently skips half a rotation; a zero or negative
    /// epsilon or RoPE base turns logits into NaN).
    pub fn check(&self) -> Result<(), String> {
        // caps far above any real model; they also keep every dimension inside the u32 that
        // GGUF stores it in (gguf_io's `as u32` relies on this)
        for (name, v, cap) in [
            ("num_hidden_layers", self.num_hidden_layers, 4096),
            ("hidden_size", self.hidden_size, 1 << 20),
            ("vocab_size", self.vocab_size, 1 << 24),
            ("intermediate_size", self.intermediate_size, 1 << 24),
            ("num_attention_heads", self.num_attention_heads, 1 << 16),
            ("head_dim", self.head_dim, 1 << 16),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                u32::MAX as u64,
            ),
        ] {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
            if v > cap {
                return Err(format!(
                    "model dimensions are implausibly large: {name} {v} exceeds {cap}"
                ));
            }
        }
        let (heads, kv) = (self.num_attention_heads, self.num_key_value_heads);
        if kv == 0 || heads % kv != 0 {
            return Err(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}"
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        for (name, id) in self
            .bos_token_id
            .iter()
            .map(|&t| ("bos_token_id", t))
            .chain(self.eos_token_id.iter().map(|&t| ("eos_token_id", t)))
        {
            if id >= self.vocab_size {
                return Err(format!(
                    "{name} {id} is outside the vocabulary (vocab_size {})",
                    self.vocab_size
                ));
            }
        }
        for (name, v) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} {v} must be a positive number"));
            }
        }
        Ok(())
    }

    /// Every tensor a checkpoint of this config must have: canonical name, shape, role.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<u64>, Role)> {
        let (h, ff, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let mut t = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![v, h],
            Role::Embedding,
        )];
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut layer = vec![
                (format!("{p}.input_layernorm.weight"), vec![h], Role::Norm),
                (
                    format!("{p}.self_attn.q_proj.weight"),
                    vec![q, h],
                    Role::Projection,
                ),
                (
                    format!("{p}.self_attn.k_proj.weight"),
                    vec![kv, h],
                    Role::Projection,
                ),
                (
                    format!("{p}.self_attn.v_proj.weight"),
                    vec![kv, h],
                    Role::Projection,
                ),
                (
                    format!("{p}.self_attn.o_proj.weight"),
                    vec![h, q],
                    Role::Projection,
                ),
                (
                    format!("{p}.post_attention_layernorm.weight"),
                    vec![h],
                    Role::Norm,
                ),
                (
                    format!("{p}.mlp.gate_proj.weight"),
                    vec![ff, h],
                    Role::Projection,
                ),
                (
                    format!("{p}.mlp.up_proj.weight"),
                    vec![ff, h],
                    Role::Projection,
                ),
                (
                    format!("{p}.mlp.down_proj.weight"),
                    vec![h, ff],
                    Role::Projection,
                ),
            ];
            if self.sub_norms {
                layer.push((
                    format!("{p}.self_attn.attn_sub_norm.weight"),
                    vec![q],
                    Role::Norm,
                ));
                layer.push((format!("{p}.mlp.ffn_sub_norm.weight"), vec![ff], Role::Norm));
            }
            t.extend(layer);
        }
        t.push(("model.norm.weight".to_string(), vec![h], Role::Norm));
        if !self.tie_word_embeddings {
            t.push(("lm_head.weight".to_string(), vec![v, h], Role::LmHead));
        }
        t
    }
}

/// What a tensor is for, which decides how it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Embedding,
    Norm,
    Projection,
    LmHead,
}

/// The checkpoint's own name for a canonical tensor name (1bitLLM spells the sub-norms
/// differently).
pub fn source_name(family: Family, canonical: &str) -> String {
    if family == Family::OneBitLlmLatent {
        if let Some(p) = canonical.strip_suffix(".self_attn.attn_sub_norm.weight") {
            return format!("{p}.self_attn.inner_attn_ln.weight");
        }
        if let Some(p) = canonical.strip_suffix(".mlp.ffn_sub_norm.weight") {
            return format!("{p}.mlp.ffn_layernorm.weight");
        }
    }
    canonical.to_string()
}

/// Source tensors that carry no model parameters and are skipped with a note.
pub fn is_ignorable(name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
}

impl LinearClass {
    /// How the stored weight_scale applies for this class (see formats/bnet.md §5).
    pub fn scale_op(self) -> crate::format::bnet::ScaleOp {
        match self {
            LinearClass::AutoBitLinear => crate::format::bnet::ScaleOp::Multiply,
            LinearClass::BitLinear => crate::format::bnet::ScaleOp::Divide,
        }
    }
}
