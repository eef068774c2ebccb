//! A `.bnet` whose checksums are valid but whose model configuration is hostile (written by
//! hand, not by bitnet-pack) is refused with an error naming the field by the runner, verify and
//! the GGUF export, never run into a panic, a huge allocation, NaN logits or plausible garbage
//! (before `ModelConfig::check` ran on containers, an odd head size or a non-positive epsilon or
//! RoPE base ran without complaint).

use bitnet::format::bnet::Writer;
use bitnet::format::BnetFile;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The bitnet-latent fixture packed, then rewritten with `patch` applied to its `model` config.
fn rewritten(tmp: &Path, tag: &str, patch: &Value) -> PathBuf {
    let src = tmp.join("base.bnet");
    if !src.exists() {
        let st = assert_cmd::Command::cargo_bin("bitnet-pack")
            .unwrap()
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bitnet-latent"))
            .arg(&src)
            .arg("--quiet")
            .output()
            .unwrap();
        assert!(st.status.success());
    }
    let f = BnetFile::open(&src).unwrap();
    let out = tmp.join(format!("{tag}.bnet"));
    let mut w = Writer::new(std::fs::File::create(&out).unwrap(), &out).unwrap();
    for e in &f.index.entries {
        w.tensor(&e.name, e.dtype, &e.shape, e.scale, f.data(e))
            .unwrap();
    }
    let mut meta = f.index.meta.clone();
    for (k, v) in patch.as_object().unwrap() {
        meta["model"][k] = v.clone();
    }
    w.finish(&meta).unwrap();
    out
}

#[test]
fn hostile_configs_are_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    // every case keeps the tensors' shapes consistent (the fixture: hidden 64, 4 heads of 16,
    // 2 kv heads), so only the config's own rules can catch it
    let cases: &[(&str, Value, &str)] = &[
        (
            "odd-head-dim",
            json!({"num_attention_heads": 64, "num_key_value_heads": 32, "head_dim": 1}),
            "head_dim 1 must be even",
        ),
        (
            "zero-eps",
            json!({"rms_norm_eps": 0.0}),
            "rms_norm_eps 0 must be a positive number",
        ),
        (
            "negative-eps",
            json!({"rms_norm_eps": -1.0}),
            "rms_norm_eps -1 must be a positive number",
        ),
        (
            "zero-theta",
            json!({"rope_theta": 0.0}),
            "rope_theta 0 must be a positive number",
        ),
        (
            "negative-theta",
            json!({"rope_theta": -10000.0}),
            "rope_theta -10000 must be a positive number",
        ),
        (
            "zero-context",
            json!({"max_position_embeddings": 0}),
            "max_position_embeddings must be positive",
        ),
        (
            "huge-layers",
            json!({"num_hidden_layers": 1u64 << 40}),
            "num_hidden_layers 1099511627776 exceeds",
        ),
        (
            "zero-kv-heads",
            json!({"num_key_value_heads": 0}),
            "num_key_value_heads 0",
        ),
        (
            "uneven-kv-heads",
            json!({"num_key_value_heads": 3}),
            "num_key_value_heads 3",
        ),
    ];
    for (tag, patch, says) in cases {
        let m = rewritten(d.path(), tag, patch);
        let gguf = d.path().join(format!("{tag}.gguf"));
        let gguf = gguf.to_str().unwrap();
        for (bin, args) in [
            ("bitnet-run", vec!["--ids", "1,2,3", "-n", "2"]),
            ("bitnet-verify", vec!["--ids", "1,2,3"]),
            ("bitnet-pack", vec![gguf, "--gguf-type", "tq2_0", "--quiet"]),
        ] {
            let o = assert_cmd::Command::cargo_bin(bin)
                .unwrap()
                .arg(&m)
                .args(&args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{bin} {tag}: {err}");
            assert!(err.contains(says), "{bin} {tag}: {err}");
            assert!(err.contains("re-pack"), "{bin} {tag}: {err}");
            assert!(!Path::new(gguf).exists());
        }
    }
}
