//! The model's tensors as views into a mapped `.bnet` file: packed projections are used in
//! place (never copied to the heap); only the small norm vectors are decoded to f32.

use crate::error::{Error, Result};
use crate::format::bnet::{DType, Scale};
use crate::format::BnetFile;
use crate::kernels::tl;
use crate::model::{Activation, ModelConfig};
use crate::quant::{self, Float};

/// A quantized projection `[rows, k]` (T2, B1 or TL), read straight from the mapping.
pub struct Linear<'a> {
    pub data: &'a [u8],
    pub dtype: DType,
    pub rows: usize,
    pub k: usize,
    /// Bytes of one row (T2, B1) or of one 32-row block (TL).
    pub unit_bytes: usize,
    pub scale: Scale,
}

impl Linear<'_> {
    /// Row `r` of a T2 or B1 projection.
    pub fn row(&self, r: usize) -> &[u8] {
        self.rows_from(r, 1)
    }
    /// Rows `r .. r + n` of a T2 or B1 projection, one after another.
    pub fn rows_from(&self, r: usize, n: usize) -> &[u8] {
        debug_assert_ne!(self.dtype, DType::TL);
        &self.data[r * self.unit_bytes..(r + n) * self.unit_bytes]
    }
    /// What the kernels compute one at a time: rows, or 32-row blocks for TL.
    pub fn units(&self) -> usize {
        match self.dtype {
            DType::TL => self.rows.div_ceil(tl::ROWS),
            _ => self.rows,
        }
    }
    /// Block `b` of a TL projection.
    pub fn block(&self, b: usize) -> &[u8] {
        &self.data[b * self.unit_bytes..(b + 1) * self.unit_bytes]
    }
    /// Chunks of 24 columns per TL row (the activation tables' length).
    pub fn tl_chunks(&self) -> usize {
        self.k.div_ceil(tl::CHUNK_COLS)
    }
    /// Row `r` as ternary (or binary) values.
    pub fn unpack_row(&self, r: usize, out: &mut [i8]) {
        quant::unpack_tensor_row(self.dtype, self.data, self.k, r, out)
    }
    /// Activations are padded to this many int8 values (whole 256-weight blocks).
    pub fn k_padded(&self) -> usize {
        self.k.div_ceil(256) * 256
    }
    /// Turns an exact integer dot product into the layer's output, as the checkpoint's own
    /// arithmetic does (formats/bnet.md §5): `divide` (BitLinear, absmean s) computes
    /// `dot / (s_a · scale)`, `multiply` (AutoBitLinear offline, binary β) `dot / s_a · scale`.
    #[inline]
    pub fn finish(&self, dot: i32, s_a: f32) -> f32 {
        match self.scale.op {
            crate::format::bnet::ScaleOp::Divide => dot as f32 / (s_a * self.scale.value),
            _ => dot as f32 / s_a * self.scale.value,
        }
    }
    /// [`finish`](Self::finish) for several dot products of one token; the loop compiles to
    /// packed divisions (the same IEEE results), where one `divss` per output was the prompt
    /// tile's hottest instruction in perf.
    #[inline]
    pub fn finish_into(&self, dots: &[i32], s_a: f32, out: &mut [f32]) {
        for (o, &d) in out.iter_mut().zip(dots) {
            *o = self.finish(d, s_a);
        }
    }
}

/// A float, per-row int8 or Q4 matrix: embeddings and lm_head.
pub struct Dense<'a> {
    pub data: &'a [u8],
    pub dtype: DType,
    pub rows: usize,
    pub k: usize,
    pub row_scale: Option<&'a [u8]>,
}

impl<'a> Dense<'a> {
    /// A float or per-row int8 matrix of the container, checked to be `[rows, k]`.
    pub fn from_container(f: &'a BnetFile, name: &str, rows: u64, k: u64) -> Result<Dense<'a>> {
        let e = f.index.get(name).ok_or_else(|| missing(name))?;
        if e.shape != [rows, k]
            || !matches!(
                e.dtype,
                DType::F32 | DType::F16 | DType::BF16 | DType::I8 | DType::Q4
            )
        {
            return Err(Error::format(format!(
                "{name} is {} {:?}; expected a float, int8 or Q4 [{rows}, {k}] matrix",
                e.dtype.name(),
                e.shape
            )));
        }
        let row_scale = match e.dtype {
            // the container's open checked that the companion is F32 of shape [rows]
            DType::I8 => {
                let s = format!("{name}.row_scale");
                Some(f.data(f.index.get(&s).ok_or_else(|| missing(&s))?))
            }
            _ => None,
        };
        Ok(Dense {
            data: f.data(e),
            dtype: e.dtype,
            rows: rows as usize,
            k: k as usize,
            row_scale,
        })
    }

    /// Bytes of one stored row.
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows
    }

    /// The stored bytes of row `r`.
    pub fn stored_row(&self, r: usize) -> &'a [u8] {
        self.stored_rows(r, 1)
    }

    /// Rows `r .. r + n` as stored, one after another.
    pub fn stored_rows(&self, r: usize, n: usize) -> &'a [u8] {
        let b = self.row_bytes();
        &self.data[r * b..(r + n) * b]
    }

    /// `y`, a dot product with stored row `r`, times the row's scale where it has one.
    pub fn scaled(&self, r: usize, y: f32) -> f32 {
        self.row_scale_of(r).map_or(y, |s| y * s)
    }

    /// The scale of int8 row `r` (`None` for other dtypes).
    pub fn row_scale_of(&self, r: usize) -> Option<f32> {
        let s = self.row_scale?;
        Some(f32::from_le_bytes(
            s[4 * r..4 * r + 4].try_into().expect("4"),
        ))
    }

    /// Row `r` decoded to f32.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let row = self.stored_row(r);
        match self.dtype {
            DType::Q4 => crate::quant::dequantize_q4_row(row, out),
            DType::I8 => {
                let scale = self.row_scale_of(r).expect("I8 tensors carry row scales");
                for (o, &q) in out.iter_mut().zip(row) {
                    *o = q as i8 as f32 * scale;
                }
            }
            d => quant::decode(Float::from_dtype(d).expect("float dtype"), row, out),
        }
    }
}

pub struct Layer<'a> {
    pub input_norm: Vec<f32>,
    pub post_norm: Vec<f32>,
    pub attn_sub_norm: Option<Vec<f32>>,
    pub ffn_sub_norm: Option<Vec<f32>>,
    pub q: Linear<'a>,
    pub k: Linear<'a>,
    pub v: Linear<'a>,
    pub o: Linear<'a>,
    pub gate: Linear<'a>,
    pub up: Linear<'a>,
    pub down: Linear<'a>,
}

/// Everything a forward pass needs.
pub struct Weights<'a> {
    pub cfg: ModelConfig,
    pub embed: Dense<'a>,
    pub layers: Vec<Layer<'a>>,
    pub norm: Vec<f32>,
    /// The embeddings again when tied.
    pub lm_head: Dense<'a>,
}

fn missing(name: &str) -> Error {
    Error::format(format!(
        "tensor {name} is missing from the container; re-pack the model with bitnet-pack"
    ))
}

impl<'a> Weights<'a> {
    pub fn load(f: &'a BnetFile) -> Result<Weights<'a>> {
        let cfg = ModelConfig::from_container(&f.index.meta)?;
        if !cfg.rope_scaling.is_null() {
            return Err(Error::Usage(format!(
                "RoPE scaling {} is not supported by the runner yet",
                cfg.rope_scaling
            )));
        }
        let entry = |name: &str| f.index.get(name).ok_or_else(|| missing(name));
        let linear = |name: &str, rows: u64, k: u64| -> Result<Linear<'a>> {
            let e = entry(name)?;
            if !e.dtype.is_packed() || e.shape != [rows, k] {
                return Err(Error::format(format!(
                    "{name} is {} {:?}; expected a packed [{rows}, {k}] weight",
                    e.dtype.name(),
                    e.shape
                )));
            }
            crate::quant::check_packed(e, f.data(e))?;
            Ok(Linear {
                data: f.data(e),
                dtype: e.dtype,
                rows: rows as usize,
                k: k as usize,
                unit_bytes: match e.dtype {
                    DType::TL => (k as usize).div_ceil(tl::CHUNK_COLS) * tl::CHUNK_BYTES,
                    d => d.row_bytes(k).expect("checked at open") as usize,
                },
                scale: e.scale,
            })
        };
        let vector = |name: &str, n: u64| -> Result<Vec<f32>> {
            let e = entry(name)?;
            let fl = Float::from_dtype(e.dtype)
                .filter(|_| e.shape == [n])
                .ok_or_else(|| {
                    Error::format(format!("{name} must be a float vector of {n} values"))
                })?;
            let mut v = vec![0f32; n as usize];
            quant::decode(fl, f.data(e), &mut v);
            Ok(v)
        };
        let dense = |name: &str, rows: u64, k: u64| Dense::from_container(f, name, rows, k);
        let (h, ff, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let q = cfg.num_attention_heads * cfg.head_dim;
        let kv = cfg.num_key_value_heads * cfg.head_dim;
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_norm: vector(&format!("{p}.input_layernorm.weight"), h)?,
                post_norm: vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
                attn_sub_norm: cfg
                    .sub_norms
                    .then(|| vector(&format!("{p}.self_attn.attn_sub_norm.weight"), q))
                    .transpose()?,
                ffn_sub_norm: cfg
                    .sub_norms
                    .then(|| vector(&format!("{p}.mlp.ffn_sub_norm.weight"), ff))
                    .transpose()?,
                q: linear(&format!("{p}.self_attn.q_proj.weight"), q, h)?,
                k: linear(&format!("{p}.self_attn.k_proj.weight"), kv, h)?,
                v: linear(&format!("{p}.self_attn.v_proj.weight"), kv, h)?,
                o: linear(&format!("{p}.self_attn.o_proj.weight"), h, q)?,
                gate: linear(&format!("{p}.mlp.gate_proj.weight"), ff, h)?,
                up: linear(&format!("{p}.mlp.up_proj.weight"), ff, h)?,
                down: linear(&format!("{p}.mlp.down_proj.weight"), h, ff)?,
            });
        }
        // decode forms act(gate)·up where both are computed, unit by unit: one layout for both
        if let Some(i) = layers.iter().position(|l| l.gate.dtype != l.up.dtype) {
            return Err(Error::format(format!(
                "layer {i}: gate_proj is {} but up_proj is {}; a container holds both in one \
                 layout (re-create it with bitnet-pack)",
                layers[i].gate.dtype.name(),
                layers[i].up.dtype.name()
            )));
        }
        let embed = dense("model.embed_tokens.weight", v, h)?;
        // a tied model may still carry a separately stored head (bitnet-pack --lm-head)
        let lm_head = if cfg.tie_word_embeddings && f.index.get("lm_head.weight").is_none() {
            dense("model.embed_tokens.weight", v, h)?
        } else {
            dense("lm_head.weight", v, h)?
        };
        Ok(Weights {
            norm: vector("model.norm.weight", h)?,
            embed,
            layers,
            lm_head,
            cfg,
        })
    }

    pub fn activation(&self) -> Activation {
        self.cfg.hidden_act
    }
}
