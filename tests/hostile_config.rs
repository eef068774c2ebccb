//! A `.bnet` whose checksums are valid but whose model configuration is hostile (written by
//! hand, not by bitnet-pack) is refused with an error naming the field by the runner, verify and
//! the GGUF export, never run into a panic, a huge allocation, NaN logits or plausible garbage
//! (before `ModelConfig::check` ran on containers, an odd head size or a non-positive epsilon or
//! RoPE base ran without complaint).

use bitnet::format::bnet::{DType, Entry, Writer};
use bitnet::format::BnetFile;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A tensor's replacement: dtype, shape and bytes.
type Swap = Option<(DType, Vec<u64>, Vec<u8>)>;

/// The bitnet-latent fixture packed, then rewritten with `patch` applied to its `model` config.
fn rewritten(tmp: &Path, tag: &str, patch: &Value) -> PathBuf {
    rewritten_with(tmp, tag, patch, |_, _| None)
}

/// As [`rewritten`], with tensors replaced where `swap` says so.
fn rewritten_with(
    tmp: &Path,
    tag: &str,
    patch: &Value,
    swap: impl Fn(&Entry, &[u8]) -> Swap,
) -> PathBuf {
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
        match swap(e, f.data(e)) {
            Some((dtype, shape, data)) => w.tensor(&e.name, dtype, &shape, e.scale, &data),
            None => w.tensor(&e.name, e.dtype, &e.shape, e.scale, f.data(e)),
        }
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
        (
            "eos-beyond-vocab",
            json!({"eos_token_id": [700]}),
            "eos_token_id 700 is outside",
        ),
        (
            "bos-beyond-u32",
            json!({"bos_token_id": (1u64 << 32) + 5}),
            "bos_token_id 4294967301 is outside",
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
            let (code, err) = run(bin, &m, &args);
            assert_eq!(code, Some(2), "{bin} {tag}: {err}");
            assert!(err.contains(says), "{bin} {tag}: {err}");
            assert!(err.contains("re-pack"), "{bin} {tag}: {err}");
            assert!(!Path::new(gguf).exists());
        }
    }
}

/// Runs `bin` on `m` with `args` and returns (exit code, stderr).
fn run(bin: &str, m: &Path, args: &[&str]) -> (Option<i32>, String) {
    let o = assert_cmd::Command::cargo_bin(bin)
        .unwrap()
        .arg(m)
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Damaged contents behind valid checksums: NaN weights fail verify and stop generation and
/// perplexity with an error (they used to PASS with "max |delta| 0" and print token 0); a
/// tokenizer.json that makes the tokenizers library panic is an error, not a crash; the GGUF
/// export checks every tensor's shape and dtype before planning (a short q_proj divided by
/// zero there).
#[test]
fn damaged_contents_are_errors_not_crashes() {
    let d = tempfile::tempdir().unwrap();
    let none = json!({});
    let nan_norm = rewritten_with(d.path(), "nan-norm", &none, |e, _| {
        (e.name == "model.norm.weight").then(|| {
            let data = f32::NAN.to_le_bytes().repeat(64);
            (DType::F32, vec![64], data)
        })
    });
    let (code, err) = run("bitnet-verify", &nan_norm, &["--ids", "1,2,3"]);
    assert_eq!(code, Some(1), "{err}");
    let o = assert_cmd::Command::cargo_bin("bitnet-inspect")
        .unwrap()
        .arg(&nan_norm)
        .arg("--verify")
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{all}");
    assert!(
        all.contains("model.norm.weight: element 0 is NaN or infinite"),
        "{all}"
    );
    let (code, err) = run("bitnet-run", &nan_norm, &["--ids", "1,2,3", "-n", "3"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("NaN or infinite"), "{err}");
    let (code, err) = run("bitnet-run", &nan_norm, &["--ppl", "fixtures/heldout.txt"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("NaN or infinite"), "{err}");
    let (code, err) = run(
        "bitnet-run",
        &nan_norm,
        &["--ppl", "fixtures/heldout.txt", "--ctx", "1"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("windows of at least 2 tokens"), "{err}");

    // tokenizer.json files the tokenizers library panics on (while tokenizing: a template
    // naming a special token it does not define) or would reserve gigabytes for (a charsmap
    // declaring a 4 GiB trie in 8 bytes; refused before the library sees it)
    let broken: [(&str, Value, &str); 2] = [
        (
            "post_processor",
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<nope>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {}}),
            "the tokenizer failed while tokenizing",
        ),
        (
            "normalizer",
            json!({"type": "Precompiled", "precompiled_charsmap": "8P///wAAAAA="}),
            "declares a 4294967280-byte trie",
        ),
    ];
    for (i, (key, val, says)) in broken.iter().enumerate() {
        let bad_tok = rewritten_with(d.path(), &format!("bad-tokenizer-{i}"), &none, |e, data| {
            (e.name == "file:tokenizer.json").then(|| {
                let mut t: Value = serde_json::from_slice(data).unwrap();
                t[*key] = val.clone();
                let b = serde_json::to_vec(&t).unwrap();
                (DType::U8, vec![b.len() as u64], b)
            })
        });
        for bin in ["bitnet-run", "bitnet-verify"] {
            let (code, err) = run(bin, &bad_tok, &["--prompt", "hello"]);
            assert_eq!(code, Some(2), "{bin}: {err}");
            assert!(err.contains("tokenizer.json is malformed"), "{bin}: {err}");
            assert!(err.contains(says), "{bin}: {err}");
            assert!(
                !err.contains("panicked"),
                "{bin}: the library's panic line: {err}"
            );
        }
    }

    // q_proj with two rows where the config says 64
    let short_q = rewritten_with(d.path(), "short-q", &none, |e, _| {
        (e.name == "model.layers.0.self_attn.q_proj.weight")
            .then(|| (DType::T2, vec![2, 64], vec![0x55; 2 * 64]))
    });
    let gguf = d.path().join("short-q.gguf");
    let (code, err) = run(
        "bitnet-pack",
        &short_q,
        &[gguf.to_str().unwrap(), "--gguf-type", "tq2_0", "--quiet"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("q_proj.weight is T2 [2, 64]"), "{err}");
    assert!(!gguf.exists());
}
