//! What is inside a container, for people and for scripts.

use crate::format::bnet::{DType, Entry};
use crate::format::BnetFile;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One tensor as listed by `bitnet-inspect --tensors`.
#[derive(Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<u64>,
    pub offset: u64,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_op: Option<&'static str>,
    pub blake3: String,
}

impl TensorInfo {
    fn new(e: &Entry) -> TensorInfo {
        let packed = e.dtype.is_packed();
        TensorInfo {
            name: e.name.clone(),
            dtype: e.dtype.name(),
            shape: e.shape.clone(),
            offset: e.offset,
            bytes: e.len,
            scale: packed.then_some(e.scale.value),
            scale_op: packed.then_some(e.scale.op.name()),
            blake3: e.blake3.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// Summary of a container (`bitnet-inspect`, `--json`).
#[derive(Serialize)]
pub struct Summary {
    pub file_bytes: u64,
    pub format_version: String,
    pub family: Value,
    pub model: Value,
    pub quantization: Value,
    pub tensor_count: usize,
    /// Bytes by stored dtype.
    pub bytes_by_dtype: BTreeMap<&'static str, u64>,
    pub quantized_weights: u64,
    pub packed_bytes: u64,
    /// 8 · packed bytes / quantized weights (formats/bnet.md §9).
    pub bits_per_quantized_weight: f64,
    pub files: Vec<String>,
    pub provenance: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<TensorInfo>>,
}

impl Summary {
    pub fn new(f: &BnetFile, with_tensors: bool) -> Summary {
        let idx = &f.index;
        let mut by = BTreeMap::new();
        let (mut qw, mut pb) = (0u64, 0u64);
        for e in &idx.entries {
            *by.entry(e.dtype.name()).or_insert(0) += e.len;
            if e.dtype.is_packed() {
                qw += e.numel();
                pb += e.len;
            }
        }
        let get = |k: &str| idx.meta.get(k).cloned().unwrap_or(Value::Null);
        Summary {
            file_bytes: idx.file_len,
            format_version: format!("{}.{}", idx.version.0, idx.version.1),
            family: get("family"),
            model: get("model"),
            quantization: get("quantization"),
            tensor_count: idx.entries.iter().filter(|e| e.dtype != DType::U8).count(),
            bytes_by_dtype: by,
            quantized_weights: qw,
            packed_bytes: pb,
            bits_per_quantized_weight: if qw == 0 {
                0.0
            } else {
                8.0 * pb as f64 / qw as f64
            },
            files: idx
                .entries
                .iter()
                .filter_map(|e| e.name.strip_prefix("file:").map(str::to_string))
                .collect(),
            provenance: get("provenance"),
            tensors: with_tensors.then(|| idx.entries.iter().map(TensorInfo::new).collect()),
        }
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let m = &self.model;
        let q = &self.quantization;
        let g = |v: &Value, k: &str| {
            v.get(k)
                .map(|x| x.to_string().trim_matches('"').to_string())
                .unwrap_or_else(|| "?".into())
        };
        let _ = writeln!(
            s,
            "format        .bnet {}, {} bytes ({})",
            self.format_version,
            self.file_bytes,
            human(self.file_bytes)
        );
        let _ = writeln!(s, "family        {}", self.family.as_str().unwrap_or("?"));
        let _ = writeln!(
            s,
            "model         {} ({} activation, sub-norms {}), {} layers, hidden {}, ffn {}, heads {}/{} kv, head_dim {}, vocab {}",
            g(m, "architecture"), g(m, "hidden_act"), g(m, "sub_norms"), g(m, "num_hidden_layers"), g(m, "hidden_size"),
            g(m, "intermediate_size"), g(m, "num_attention_heads"), g(m, "num_key_value_heads"), g(m, "head_dim"), g(m, "vocab_size")
        );
        let _ = writeln!(
            s,
            "              rope_theta {}, rms_norm_eps {}, tied embeddings {}, context {}",
            g(m, "rope_theta"),
            g(m, "rms_norm_eps"),
            g(m, "tie_word_embeddings"),
            g(m, "max_position_embeddings")
        );
        let _ = writeln!(
            s,
            "quantization  {} weights ({}), scale op {}; embeddings {}, lm_head {}",
            g(q, "weights"),
            g(q, "method"),
            g(q, "scale_op"),
            g(q, "embeddings"),
            g(q, "lm_head")
        );
        let _ = writeln!(
            s,
            "packed        {} quantized weights in {} ({:.4} bits per weight)",
            self.quantized_weights,
            human(self.packed_bytes),
            self.bits_per_quantized_weight
        );
        let by: Vec<String> = self
            .bytes_by_dtype
            .iter()
            .map(|(k, v)| format!("{k} {}", human(*v)))
            .collect();
        let _ = writeln!(s, "tensors       {} ({})", self.tensor_count, by.join(", "));
        let _ = writeln!(s, "files         {}", self.files.join(", "));
        if let Some(src) = self.provenance.get("sources").and_then(Value::as_array) {
            let names: Vec<String> = src
                .iter()
                .filter_map(|x| x.get("file").and_then(Value::as_str).map(str::to_string))
                .collect();
            let _ = writeln!(
                s,
                "sources       {} ({})",
                names.join(", "),
                g(&self.provenance, "tool")
            );
        }
        if let Some(ts) = &self.tensors {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "{:<52} {:>5} {:>18} {:>12}  scale",
                "tensor", "dtype", "shape", "bytes"
            );
            for t in ts {
                let shape = t
                    .shape
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join("x");
                let scale = match (t.scale, t.scale_op) {
                    (Some(v), Some(op)) => format!("{op} {v:e}"),
                    _ => String::new(),
                };
                let _ = writeln!(
                    s,
                    "{:<52} {:>5} {:>18} {:>12}  {}",
                    t.name, t.dtype, shape, t.bytes, scale
                );
            }
        }
        s
    }
}

/// Bytes for people: 1.5 GiB.
pub fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", U[i])
    }
}

/// A summary of a GGUF file: metadata, tensors by type, and whether it converts to `.bnet`.
pub fn gguf_summary(
    g: &crate::format::gguf::Gguf,
    file_len: u64,
    with_tensors: bool,
    convertible: std::result::Result<&crate::gguf_io::ImportPlan, String>,
) -> Value {
    use crate::format::gguf::Value as V;
    let mut by_type = serde_json::Map::new();
    for t in &g.tensors {
        let e = by_type
            .entry(t.ty.name.to_string())
            .or_insert_with(|| serde_json::json!({"tensors": 0, "bytes": 0}));
        e["tensors"] = (e["tensors"].as_u64().unwrap_or(0) + 1).into();
        e["bytes"] = (e["bytes"].as_u64().unwrap_or(0) + t.len).into();
    }
    let meta: serde_json::Map<String, Value> =
        g.kv.iter()
            .map(|(k, v)| {
                let j = match v {
                    V::Str(t) => Value::String(t.clone()),
                    V::Array(..) => Value::String(v.summary()),
                    V::Bool(b) => Value::Bool(*b),
                    V::F32(_) | V::F64(_) => v.as_f64().map_or(Value::Null, Value::from),
                    _ => v
                        .as_u64()
                        .map_or_else(|| Value::String(v.summary()), Value::from),
                };
                (k.clone(), j)
            })
            .collect();
    let mut j = serde_json::json!({
        "format": "gguf",
        "gguf_version": g.version,
        "file_bytes": file_len,
        "alignment": g.alignment,
        "type_ids": match g.dialect { crate::format::ggml::Dialect::Mainline => "mainline ggml", _ => "bitnet.cpp" },
        "architecture": g.architecture(),
        "metadata": meta,
        "tensor_count": g.tensors.len(),
        "by_type": by_type,
        "convertible_to_bnet": match &convertible {
            Ok(p) => serde_json::json!({
                "ok": true,
                "command": format!("bitnet-pack FILE OUT.bnet{}", if g.dialect_forced { " --bitnet-cpp" } else { "" }),
                "model": p.cfg,
                "notes": p.notes,
            }),
            Err(e) => serde_json::json!({"ok": false, "blocker": e}),
        },
    });
    // as for a .bnet, the key is there only with --tensors
    if with_tensors {
        j["tensors"] = g.tensors.iter().map(|t| serde_json::json!({
            "name": t.name, "type": t.ty.name, "dims": t.dims, "offset": t.offset, "bytes": t.len,
        })).collect();
    }
    j
}

/// The human-readable GGUF report.
pub fn render_gguf(j: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "format        GGUF v{}, {} bytes ({}), alignment {}, type ids: {}",
        j["gguf_version"],
        j["file_bytes"],
        human(j["file_bytes"].as_u64().unwrap_or(0)),
        j["alignment"],
        j["type_ids"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "architecture  {}",
        j["architecture"].as_str().unwrap_or("(missing)")
    );
    let _ = writeln!(
        s,
        "metadata      {} keys",
        j["metadata"].as_object().map_or(0, |m| m.len())
    );
    for (k, v) in j["metadata"].as_object().into_iter().flatten() {
        let v = match v.as_str() {
            Some(t) if t.starts_with('[') => t.to_string(),
            Some(t) => crate::format::gguf::Value::Str(t.into()).summary(),
            None => v.to_string(),
        };
        let _ = writeln!(s, "  {k:<44} {v}");
    }
    let _ = writeln!(s, "tensors       {}", j["tensor_count"]);
    for (ty, e) in j["by_type"].as_object().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  {ty:<8} {:>5} tensors  {}",
            e["tensors"],
            human(e["bytes"].as_u64().unwrap_or(0))
        );
    }
    for t in j["tensors"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  {:<40} {:<6} {:<20} {}",
            t["name"].as_str().unwrap_or(""),
            t["type"].as_str().unwrap_or(""),
            t["dims"].to_string(),
            human(t["bytes"].as_u64().unwrap_or(0))
        );
    }
    let c = &j["convertible_to_bnet"];
    if c["ok"] == true {
        let _ = writeln!(
            s,
            "to .bnet      yes: {}",
            c["command"].as_str().unwrap_or("")
        );
        for n in c["notes"].as_array().into_iter().flatten() {
            let _ = writeln!(s, "  note: {}", n.as_str().unwrap_or(""));
        }
    } else {
        let _ = writeln!(
            s,
            "to .bnet      blocked: {}",
            c["blocker"].as_str().unwrap_or("?")
        );
    }
    s
}
