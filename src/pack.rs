//! Conversion: a Hugging Face checkpoint to a `.bnet` container (streaming, tensor by tensor,
//! rows in parallel, hashed as written), and a container back to safetensors.

use crate::error::{Error, Result};
use crate::format::bnet::{self, DType, Index, Scale, ScaleOp, Writer};
use crate::hf::{Checkpoint, SrcDType, SrcTensor};
use crate::model::{source_name, Role};
use crate::quant::{self, Float};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{Seek, Write};
use std::path::Path;

/// Weight quantization for latent (float) checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantKind {
    /// Absmean ternary, 2 bits per weight.
    Ternary,
    /// Sign binary (original BitNet), 1 bit per weight.
    Binary,
}

/// How ternary projections are laid out (formats/bnet.md §4.1, §4.4).
/// Binary projections are B1 either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// 2 bits per weight, row by row (format version 1.0).
    T2,
    /// 5 bits per 3 weights in 32-row blocks (format version 1.2): 17% fewer bytes for
    /// decoding to stream, the same results bit for bit, prompts as fast. The default.
    #[default]
    TL,
}

/// How to store the embeddings and the lm_head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreAs {
    /// The checkpoint's own dtype, bit for bit.
    Keep,
    F16,
    /// int8 with one f32 scale per row.
    I8,
    /// 4-bit blocks of 32 with an f16 scale each (format version 1.1).
    Q4,
}

#[derive(Clone, Copy, Debug)]
pub struct PackOptions {
    pub quant: QuantKind,
    pub embeddings: StoreAs,
    pub lm_head: StoreAs,
    pub layout: Layout,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            quant: QuantKind::Ternary,
            embeddings: StoreAs::Keep,
            lm_head: StoreAs::Keep,
            layout: Layout::default(),
        }
    }
}

/// What a conversion did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PackReport {
    pub family: String,
    pub tensors: usize,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub quantized_weights: u64,
    pub packed_bytes: u64,
    pub skipped: Vec<String>,
}

/// Rows per work item when streaming large float tensors (bounded memory).
const CHUNK_BYTES: usize = 16 << 20;

fn float_of(name: &str, t: &SrcTensor) -> Result<Float> {
    match t.dtype {
        SrcDType::Float(f) => Ok(f),
        SrcDType::U8 => Err(Error::checkpoint(format!(
            "tensor {name} is uint8 but should hold floats"
        ))),
    }
}

fn non_finite(name: &str, i: usize) -> Error {
    Error::checkpoint(format!(
        "tensor {name} has a NaN or infinite value at element {i}; the checkpoint is damaged (re-download it or fix the training run)"
    ))
}

/// Packs a checkpoint. `progress` is called with the number of input bytes just consumed.
pub fn pack<W: Write + Seek>(
    ck: &Checkpoint,
    out: W,
    dest: &Path,
    opts: &PackOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(W, PackReport)> {
    // the runner and the GGUF export both refuse it: a container with it would be unusable
    if !ck.config.rope_scaling.is_null() {
        return Err(Error::checkpoint(format!(
            "RoPE scaling {} is not supported yet (neither the runner nor the GGUF export applies it)",
            ck.config.rope_scaling
        )));
    }
    if opts.quant == QuantKind::Binary && ck.family.is_packed() {
        return Err(Error::checkpoint(format!(
            "--quant binary needs latent (float) weights, but this {} checkpoint is already ternary-packed",
            ck.family.name()
        )));
    }
    let cfg = &ck.config;
    let expected = cfg.expected_tensors();
    let mut used = BTreeSet::new();
    // Resolve and shape-check everything before writing a byte.
    let mut plan = Vec::with_capacity(expected.len());
    for (canonical, shape, role) in expected {
        let src_name = source_name(ck.family, &canonical);
        let t = ck.tensors.get(&src_name).ok_or_else(|| {
            Error::checkpoint(format!(
                "tensor {src_name} is missing; config.json describes a model this checkpoint does not hold"
            ))
        })?;
        let mut scale_t = None;
        if role == Role::Projection && t.dtype == SrcDType::U8 {
            if shape[0] % 4 != 0 || t.shape != [shape[0] / 4, shape[1]] {
                return Err(shape_error(
                    &src_name,
                    &t.shape,
                    &[shape[0] / 4, shape[1]],
                    " (uint8-packed)",
                ));
            }
            let sname = format!("{}_scale", src_name);
            let st = ck.tensors.get(&sname).ok_or_else(|| {
                Error::checkpoint(format!(
                    "uint8 tensor {src_name} has no {sname}; a packed ternary weight is meaningless without its scale (is a shard missing?)"
                ))
            })?;
            used.insert(sname.clone());
            scale_t = Some((sname, st));
        } else {
            if t.shape != shape {
                return Err(shape_error(&src_name, &t.shape, &shape, ""));
            }
            float_of(&src_name, t)?;
        }
        used.insert(src_name.clone());
        plan.push((canonical, src_name, t, role, scale_t));
    }
    let mut skipped = Vec::new();
    for name in ck.tensors.keys().filter(|n| !used.contains(*n)) {
        if crate::model::is_ignorable(name) {
            skipped.push(format!("{name} (RoPE buffer, recomputed from rope_theta)"));
        } else if name == "lm_head.weight" && cfg.tie_word_embeddings {
            skipped.push(format!(
                "{name} (tie_word_embeddings: the embeddings are the head)"
            ));
        } else {
            return Err(Error::checkpoint(format!(
                "unexpected tensor {name}: the {} layout has no such tensor (biases, extra norms or another architecture are not supported)",
                ck.family.name()
            )));
        }
    }

    // Hash the input files for provenance on a thread of its own, overlapping the conversion.
    let cancel = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let hasher = scope.spawn(|| hash_sources(ck, &cancel));
        let res = convert(ck, plan, skipped, out, dest, opts, progress, || {
            hasher.join().expect("the hashing thread does not panic")
        });
        cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        res
    })
}

type Plan<'a> = Vec<(
    String,
    String,
    &'a SrcTensor,
    Role,
    Option<(String, &'a SrcTensor)>,
)>;

/// Writes the planned tensors, blobs and metadata; `sources` yields the provenance hashes.
#[allow(clippy::too_many_arguments)]
fn convert<W: Write + Seek>(
    ck: &Checkpoint,
    plan: Plan<'_>,
    skipped: Vec<String>,
    out: W,
    dest: &Path,
    opts: &PackOptions,
    progress: &(dyn Fn(u64) + Sync),
    sources: impl FnOnce() -> Result<Value>,
) -> Result<(W, PackReport)> {
    let cfg = &ck.config;
    let mut w = Writer::new(out, dest)?;
    let mut report = PackReport {
        family: ck.family.name().into(),
        tensors: 0,
        input_bytes: 0,
        output_bytes: 0,
        quantized_weights: 0,
        packed_bytes: 0,
        skipped,
    };
    let mut renamed = serde_json::Map::new();
    for (canonical, src_name, t, role, scale_t) in plan {
        if canonical != src_name {
            renamed.insert(canonical.clone(), Value::String(src_name.clone()));
        }
        let bytes = ck.bytes(t);
        let shard = &ck.shards[t.shard];
        let release = |a: usize, b: usize| shard.release(t.start + a, t.start + b);
        match role {
            Role::Projection => {
                let (dtype, scale, data) = match scale_t {
                    Some((sname, st)) => repack_hf(&src_name, t, bytes, &sname, st, ck)?,
                    None => quantize_latent(&src_name, t, bytes, opts.quant)?,
                };
                let shape = shape_of(t);
                let (dtype, data) = match (dtype, opts.layout) {
                    (DType::T2, Layout::TL) => (DType::TL, t2_to_tl(&data, &shape)),
                    other => (other.0, data),
                };
                report.quantized_weights += shape[0] * shape[1];
                report.packed_bytes += data.len() as u64;
                w.tensor(&canonical, dtype, &shape, scale, &data)?;
            }
            Role::Embedding | Role::LmHead => {
                let store = if role == Role::Embedding {
                    opts.embeddings
                } else {
                    opts.lm_head
                };
                write_float_tensor(&mut w, &canonical, t, bytes, store, &release)?;
                if role == Role::Embedding
                    && cfg.tie_word_embeddings
                    && opts.lm_head != StoreAs::Keep
                {
                    // a tied head stored apart, in the cheaper type the user asked for: decode
                    // reads the head in full every token, the embeddings one row per token
                    write_float_tensor(&mut w, "lm_head.weight", t, bytes, opts.lm_head, &release)?;
                }
            }
            Role::Norm => {
                write_float_tensor(&mut w, &canonical, t, bytes, StoreAs::Keep, &release)?
            }
        }
        ck.shards[t.shard].release(t.start, t.end);
        report.tensors += 1;
        report.input_bytes += bytes.len() as u64;
        progress(bytes.len() as u64);
    }
    w.tensor(
        "file:config.json",
        DType::U8,
        &[ck.config_bytes.len().max(1) as u64],
        Scale::NONE,
        nonempty(&ck.config_bytes),
    )?;
    for (name, path) in &ck.blobs {
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        w.tensor(
            &format!("file:{name}"),
            DType::U8,
            &[data.len().max(1) as u64],
            Scale::NONE,
            nonempty(&data),
        )?;
    }
    let sources = sources()?;
    let meta = json!({
        "format": "bnet",
        "format_version": w.format_version(),
        "family": ck.family.name(),
        "model": cfg,
        "quantization": {
            "weights": match opts.quant { QuantKind::Ternary => "ternary", QuantKind::Binary => "binary" },
            "method": match (ck.family.is_packed(), opts.quant) {
                (true, _) => "prepacked-uint8",
                (false, QuantKind::Ternary) => "absmean",
                (false, QuantKind::Binary) => "sign-mean",
            },
            "scale_op": match (ck.family.is_packed(), opts.quant) {
                (true, _) => cfg.linear_class.scale_op().name(),
                (false, QuantKind::Ternary) => ScaleOp::Divide.name(),
                (false, QuantKind::Binary) => ScaleOp::Multiply.name(),
            },
            "parameters": match (ck.family.is_packed(), opts.quant) {
                (true, _) => json!({"codes": "copied from the uint8 checkpoint", "scale": "weight_scale as stored"}),
                (false, QuantKind::Ternary) => json!({"scale": "s = 1/max(mean|W|, 1e-5) per tensor, f32 (mean accumulated in f64)", "rounding": "half to even", "clamp": [-1, 1]}),
                (false, QuantKind::Binary) => json!({"codes": "+1 where W - mean(W) > 0, else -1", "scale": "beta = mean|W| per tensor, f32"}),
            },
            "layout": match (opts.quant, opts.layout) {
                (QuantKind::Binary, _) => "B1",
                (_, Layout::T2) => "T2",
                (_, Layout::TL) => "TL",
            },
            "embeddings": store_name(opts.embeddings),
            "lm_head": match (cfg.tie_word_embeddings, opts.lm_head) {
                (true, StoreAs::Keep) => "tied".to_string(),
                (true, s) => format!("{} copy of the tied embeddings", store_name(s)),
                (false, s) => store_name(s).to_string(),
            },
        },
        "provenance": {
            "tool": format!("bitnet-tools {}", env!("CARGO_PKG_VERSION")),
            "sources": sources,
            "renamed": renamed,
            "skipped": report.skipped,
        },
    });
    let (out, len) = w.finish(&meta)?;
    report.output_bytes = len;
    Ok((out, report))
}

/// A T2 tensor `[rows, k]` re-laid out as TL, weight for weight.
fn t2_to_tl(t2: &[u8], shape: &[u64]) -> Vec<u8> {
    let (rows, k) = (shape[0] as usize, shape[1] as usize);
    let rb = DType::T2.row_bytes(k as u64).expect("small") as usize;
    quant::pack_tl(rows, k, |r, out| {
        quant::unpack_t2_row(&t2[r * rb..(r + 1) * rb], out)
    })
}

/// The stored (unpacked) shape of a projection.
fn shape_of(t: &SrcTensor) -> Vec<u64> {
    if t.dtype == SrcDType::U8 {
        vec![t.shape[0] * 4, t.shape[1]]
    } else {
        t.shape.clone()
    }
}

fn nonempty(b: &[u8]) -> &[u8] {
    if b.is_empty() {
        b" "
    } else {
        b
    }
}

/// How the metadata names a storage choice.
pub(crate) fn store_name(s: StoreAs) -> &'static str {
    match s {
        StoreAs::Keep => "source dtype",
        StoreAs::F16 => "f16",
        StoreAs::I8 => "int8 per-row",
        StoreAs::Q4 => "4-bit per-32-block (Q4)",
    }
}

fn shape_error(name: &str, got: &[u64], want: &[u64], what: &str) -> Error {
    Error::checkpoint(format!(
        "tensor {name} has shape {got:?} but config.json implies {want:?}{what}; the config does not belong to these weights"
    ))
}

/// Quantizes a latent float projection to T2 (absmean) or B1 (sign of W - mean).
fn quantize_latent(
    name: &str,
    t: &SrcTensor,
    bytes: &[u8],
    kind: QuantKind,
) -> Result<(DType, Scale, Vec<u8>)> {
    let f = float_of(name, t)?;
    let (rows, k) = (t.shape[0] as usize, t.shape[1] as usize);
    let row_src = k * f.size();
    let binary = kind == QuantKind::Binary;
    // Pass 1: sums over rows in parallel, added in row order so the result is deterministic.
    let partial: Vec<(f64, f64)> = bytes
        .par_chunks(row_src)
        .map_init(
            || quant::RowScratch::new(k),
            |sc, r| quant::row_sums(f, r, sc, binary),
        )
        .collect();
    let (abs_sum, sum) = partial
        .iter()
        .fold((0f64, 0f64), |(a, s), p| (a + p.0, s + p.1));
    if !abs_sum.is_finite() {
        // only a NaN or an infinity gets here: name it
        let i = quant::first_non_finite(f, bytes).unwrap_or(0);
        return Err(non_finite(name, i));
    }
    let n = (rows * k) as u64;
    let (dtype, rq, scale) = match kind {
        QuantKind::Ternary => {
            let s = quant::absmean_scale(abs_sum, n);
            (
                DType::T2,
                quant::RowQuant::Ternary(s),
                Scale {
                    value: s,
                    op: ScaleOp::Divide,
                    source_dtype: DType::F32,
                },
            )
        }
        QuantKind::Binary => {
            let beta = (abs_sum / n as f64) as f32;
            if !(beta.is_finite() && beta > 0.0) {
                return Err(Error::checkpoint(format!(
                    "tensor {name} is all zeros: binary quantization needs mean|W| > 0"
                )));
            }
            let mean = (sum / n as f64) as f32;
            (
                DType::B1,
                quant::RowQuant::Binary(mean),
                Scale {
                    value: beta,
                    op: ScaleOp::Multiply,
                    source_dtype: DType::F32,
                },
            )
        }
    };
    let row_out = dtype.row_bytes(k as u64).expect("small") as usize;
    let mut data = vec![0u8; rows * row_out];
    data.par_chunks_mut(row_out)
        .zip(bytes.par_chunks(row_src))
        .for_each_init(
            || quant::RowScratch::new(k),
            |sc, (o, r)| quant::quantize_row(f, r, rq, sc, o),
        );
    Ok((dtype, scale, data))
}

/// Re-packs a Hugging Face uint8 ternary weight `[out/4, in]` into T2, code for code.
fn repack_hf(
    name: &str,
    t: &SrcTensor,
    bytes: &[u8],
    sname: &str,
    st: &SrcTensor,
    ck: &Checkpoint,
) -> Result<(DType, Scale, Vec<u8>)> {
    let sf = float_of(sname, st)?;
    if st.numel() != 1 {
        return Err(Error::checkpoint(format!(
            "{sname} has shape {:?}; only one scale per tensor (shape [1]) is supported",
            st.shape
        )));
    }
    let mut v = [0f32];
    quant::decode(sf, ck.bytes(st), &mut v);
    let value = v[0];
    if !value.is_finite() || value <= 0.0 {
        return Err(Error::checkpoint(format!(
            "{sname} is {value}; a weight scale must be finite and positive (damaged checkpoint?)"
        )));
    }
    let (pr, k) = (t.shape[0] as usize, t.shape[1] as usize);
    let out_rows = pr * 4;
    let row_out = DType::T2.row_bytes(k as u64).expect("small") as usize;
    let mut data = vec![0u8; out_rows * row_out];
    let bad = data
        .par_chunks_mut(row_out)
        .enumerate()
        .find_map_any(|(o, dst)| {
            let mut codes = vec![0i8; k];
            for (c, code) in codes.iter_mut().enumerate() {
                let f = quant::hf_field(bytes, pr, k, o, c);
                if f == 3 {
                    return Some((o, c));
                }
                *code = f as i8 - 1;
            }
            quant::pack_t2_row(&codes, dst);
            None
        });
    if let Some((o, c)) = bad {
        return Err(Error::checkpoint(format!(
            "tensor {name} holds the invalid 2-bit code 3 (row {o}, column {c}); the packed checkpoint is damaged"
        )));
    }
    let scale = Scale {
        value,
        op: ck.config.linear_class.scale_op(),
        source_dtype: sf.dtype(),
    };
    Ok((DType::T2, scale, data))
}

/// Writes a float tensor as is, as f16, as Q4 blocks, or as per-row int8 (plus its `.row_scale`
/// companion),
/// chunk by chunk: each chunk is checked for NaN/Inf, written, and its source pages released,
/// so memory stays flat however large the tensor.
fn write_float_tensor<W: Write + Seek>(
    w: &mut Writer<W>,
    name: &str,
    t: &SrcTensor,
    bytes: &[u8],
    store: StoreAs,
    release: &dyn Fn(usize, usize),
) -> Result<()> {
    let f = float_of(name, t)?;
    let k = *t.shape.last().expect("non-empty shape") as usize;
    let row_src = k * f.size();
    let chunk = (CHUNK_BYTES / row_src).max(1) * row_src;
    let dtype = match store {
        StoreAs::Keep => f.dtype(),
        StoreAs::F16 => DType::F16,
        StoreAs::I8 => DType::I8,
        StoreAs::Q4 => DType::Q4,
    };
    let out_row = dtype.row_bytes(k as u64).expect("row of a mapped tensor") as usize;
    let mut scales = Vec::new();
    w.begin_tensor(name, dtype, &t.shape, Scale::NONE)?;
    for (ci, c) in bytes.chunks(chunk).enumerate() {
        if let Some(i) = quant::first_non_finite(f, c) {
            return Err(non_finite(name, ci * (chunk / f.size()) + i));
        }
        match store {
            StoreAs::Keep => w.write(c)?,
            StoreAs::F16 => {
                let mut x = vec![0f32; c.len() / f.size()];
                quant::decode(f, c, &mut x);
                let mut o = Vec::with_capacity(x.len() * 2);
                quant::encode(Float::F16, &x, &mut o);
                w.write(&o)?;
            }
            StoreAs::I8 | StoreAs::Q4 => {
                let rows: Vec<(Vec<u8>, f32)> = c
                    .par_chunks(row_src)
                    .enumerate()
                    .map(|(r, src)| {
                        let mut x = vec![0f32; k];
                        quant::decode(f, src, &mut x);
                        let mut q = vec![0u8; out_row];
                        if store == StoreAs::Q4 {
                            quant::quantize_q4_row(&x, &mut q).map_err(|b| {
                                let row = ci * (chunk / row_src) + r;
                                Error::checkpoint(format!(
                                    "tensor {name} row {row} block {b} has values too large for \
                                     a Q4 block's f16 scale; store it as i8 or f16 instead"
                                ))
                            })?;
                            return Ok((q, 0.0));
                        }
                        let mut qi = vec![0i8; k];
                        let s = quant::quantize_i8_row(&x, &mut qi);
                        q.iter_mut().zip(qi).for_each(|(o, v)| *o = v as u8);
                        Ok((q, s))
                    })
                    .collect::<Result<_>>()?;
                for (q, s) in rows {
                    w.write(&q)?;
                    scales.push(s);
                }
            }
        }
        release(ci * chunk, ci * chunk + c.len());
    }
    w.end_tensor()?;
    if store == StoreAs::I8 {
        let mut sb = Vec::with_capacity(scales.len() * 4);
        quant::encode(Float::F32, &scales, &mut sb);
        w.tensor(
            &format!("{name}.row_scale"),
            DType::F32,
            &[scales.len() as u64],
            Scale::NONE,
            &sb,
        )?;
    }
    Ok(())
}

/// BLAKE3 of every input file, for provenance. Large files are hashed through the checkpoint's
/// own mappings, window by window, releasing pages behind us to keep memory flat.
fn hash_sources(ck: &Checkpoint, cancel: &std::sync::atomic::AtomicBool) -> Result<Value> {
    let mut out = Vec::new();
    let mut small = vec![("config.json".to_string(), ck.config_path.clone())];
    small.extend(ck.blobs.iter().cloned());
    for (name, path) in small {
        let data = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        out.push(json!({"file": name, "bytes": data.len(), "blake3": blake3::hash(&data).to_hex().to_string()}));
    }
    for s in &ck.shards {
        let mut h = blake3::Hasher::new();
        const WIN: usize = 64 << 20;
        let mut at = 0;
        while at < s.map.len() {
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(Value::Null);
            }
            let end = (at + WIN).min(s.map.len());
            h.update(&s.map[at..end]);
            s.release(at, end);
            at = end;
        }
        let name = s
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(json!({"file": name, "bytes": s.map.len(), "blake3": h.finalize().to_hex().to_string()}));
    }
    Ok(Value::Array(out))
}

/// Writes the tensors of a container as a safetensors file: packed weights dequantized to f32
/// exactly as formats/bnet.md §5 says, int8 rows times their scales in f32, floats as stored.
/// The original config.json travels in `__metadata__`.
pub fn unpack<W: Write>(
    index: &Index,
    bytes: &[u8],
    mut out: W,
    dest: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(W, usize)> {
    let io = |e| crate::output::write_error(dest, e);
    // a tied model's lm_head is a copy for decoding (--lm-head); transformers ties the head to
    // the embeddings and would drop it, so the unpacked model is the checkpoint's own
    let tied = index.meta["model"]["tie_word_embeddings"] == true;
    let tensors: Vec<&bnet::Entry> = index
        .entries
        .iter()
        .filter(|e| !e.name.starts_with("file:") && !e.name.ends_with(".row_scale"))
        .filter(|e| !(tied && e.name == "lm_head.weight"))
        .collect();
    let out_dtype = |e: &bnet::Entry| match e.dtype {
        DType::T2 | DType::B1 | DType::TL | DType::I8 | DType::Q4 => DType::F32,
        d => d,
    };
    let mut list = Vec::with_capacity(tensors.len());
    for e in &tensors {
        let d = out_dtype(e);
        let len = d
            .data_len(&e.shape)
            .ok_or_else(|| Error::format("tensor too large"))?;
        list.push((e.name.clone(), d.name(), e.shape.clone(), len));
    }
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), "pt".into());
    if let Some(c) = index.get("file:config.json") {
        meta.insert(
            "config.json".into(),
            String::from_utf8_lossy(index.data(bytes, c))
                .into_owned()
                .into(),
        );
    }
    if let Some(f) = index.meta.get("family").and_then(Value::as_str) {
        meta.insert("bnet.family".into(), f.into());
    }
    out.write_all(&crate::format::safetensors_header(&list, &meta))
        .map_err(io)?;
    for e in &tensors {
        let data = index.data(bytes, e);
        let (rows, k) = e.rows_cols();
        let (rows, k) = (rows as usize, k as usize);
        match e.dtype {
            DType::T2 | DType::B1 | DType::TL => {
                quant::check_packed(e, data)?;
                let rows_per_chunk = (CHUNK_BYTES / (4 * k)).max(1);
                for start in (0..rows).step_by(rows_per_chunk) {
                    let buf: Vec<u8> = (start..(start + rows_per_chunk).min(rows))
                        .into_par_iter()
                        .flat_map_iter(|r| {
                            let mut v = vec![0i8; k];
                            quant::unpack_tensor_row(e.dtype, data, k, r, &mut v);
                            v.into_iter()
                                .flat_map(|c| e.scale.apply(c as f32).to_le_bytes())
                        })
                        .collect();
                    out.write_all(&buf).map_err(io)?;
                }
            }
            DType::Q4 => {
                let row_bytes = e.dtype.row_bytes(k as u64).expect("checked at open") as usize;
                for row in data.chunks(row_bytes) {
                    let mut x = vec![0f32; k];
                    quant::dequantize_q4_row(row, &mut x);
                    let mut o = Vec::with_capacity(k * 4);
                    quant::encode(Float::F32, &x, &mut o);
                    out.write_all(&o).map_err(io)?;
                }
            }
            DType::I8 => {
                let s = index
                    .get(&format!("{}.row_scale", e.name))
                    .ok_or_else(|| Error::format(format!("{} has no .row_scale tensor", e.name)))?;
                let sdata = index.data(bytes, s);
                let mut scales = vec![0f32; rows];
                if sdata.len() != rows * 4 {
                    return Err(Error::format(format!(
                        "{}.row_scale has the wrong length",
                        e.name
                    )));
                }
                quant::decode(Float::F32, sdata, &mut scales);
                for (r, row) in data.chunks(k).enumerate() {
                    let x: Vec<f32> = row.iter().map(|&q| q as i8 as f32 * scales[r]).collect();
                    let mut o = Vec::with_capacity(k * 4);
                    quant::encode(Float::F32, &x, &mut o);
                    out.write_all(&o).map_err(io)?;
                }
            }
            _ => out.write_all(data).map_err(io)?,
        }
        progress(e.len);
    }
    out.flush().map_err(io)?;
    Ok((out, tensors.len()))
}

/// config.json for an unpacked model directory that transformers can load: the original,
/// without `quantization_config` (the weights are now plain dequantized floats, so the quantizer
/// must not run again), marked with [`crate::model::UNPACKED_KEY`], and for 1bitLLM
/// checkpoints, whose sub-norms are stored under the BitNet names, declared as the equivalent
/// transformers BitNet model.
pub fn unpacked_config(index: &Index, bytes: &[u8]) -> Result<Vec<u8>> {
    let e = index
        .get("file:config.json")
        .ok_or_else(|| Error::format("the blob file:config.json is missing"))?;
    let mut cfg: Value = serde_json::from_slice(index.data(bytes, e))
        .map_err(|e| Error::format(format!("the stored config.json is not valid JSON: {e}")))?;
    let obj = cfg
        .as_object_mut()
        .ok_or_else(|| Error::format("the stored config.json is not a JSON object"))?;
    obj.remove("quantization_config");
    // so that bitnet-pack refuses to pack it again as if it were a latent checkpoint
    obj.insert(
        crate::model::UNPACKED_KEY.into(),
        json!("dequantized weights of a .bnet; not a BitNet checkpoint to pack"),
    );
    if index.meta.get("family").and_then(Value::as_str) == Some("1bitllm-latent") {
        obj.insert("model_type".into(), "bitnet".into());
        obj.insert("architectures".into(), json!(["BitNetForCausalLM"]));
    }
    Ok(serde_json::to_vec_pretty(&cfg).expect("serializes"))
}

/// Writes a loadable Hugging Face model directory into `dir` (which must exist and be empty):
/// `model.safetensors` (as [`unpack`]), `config.json` (as [`unpacked_config`]) and every stored
/// tokenizer / generation file verbatim.
pub fn unpack_dir(
    index: &Index,
    bytes: &[u8],
    dir: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<usize> {
    let st = dir.join("model.safetensors");
    let file = std::fs::File::create(&st).map_err(|e| crate::output::write_error(&st, e))?;
    let (w, n) = unpack(
        index,
        bytes,
        std::io::BufWriter::with_capacity(8 << 20, file),
        &st,
        progress,
    )?;
    w.into_inner()
        .map_err(|e| crate::output::write_error(&st, e.into_error()))?
        .sync_all()
        .map_err(|e| crate::output::write_error(&st, e))?;
    let write = |name: &str, data: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, data).map_err(|e| crate::output::write_error(&p, e))
    };
    write("config.json", &unpacked_config(index, bytes)?)?;
    for e in &index.entries {
        if let Some(name) = e.name.strip_prefix("file:").filter(|n| *n != "config.json") {
            // blob names come from a fixed list at pack time, but the file is untrusted
            if name.contains('/') || name.contains('\\') || name.starts_with('.') {
                return Err(Error::format(format!(
                    "blob name {name:?} is not a plain file name"
                )));
            }
            write(name, index.data(bytes, e))?;
        }
    }
    Ok(n)
}
