//! The binaries end to end on synthetic checkpoints: the happy path, and every bad input of
//! the pack issue with its one-line error, exit code and nothing left behind.

use assert_cmd::Command;
use bitnet::synth::{write_checkpoint, SynthSpec};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn cmd(bin: &str) -> Command {
    Command::cargo_bin(bin).unwrap()
}

fn synth(dir: &Path, packed: bool) -> PathBuf {
    let spec = SynthSpec {
        packed,
        ..SynthSpec::tiny_odd()
    };
    let m = dir.join(if packed { "packed" } else { "latent" });
    write_checkpoint(&m, &spec, 7).unwrap();
    m
}

/// Exit code 2, one `error:` line that contains `needle`, no panic, nothing under `out` and no
/// temporary file beside it.
fn assert_clean_failure(out: std::process::Output, needle: &str, out_path: &Path) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!out_path.exists(), "{} was left behind", out_path.display());
    if let Some(parent) = out_path.parent().filter(|p| p.is_dir()) {
        let tmp: Vec<_> = std::fs::read_dir(parent)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
    }
}

fn pack(input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    cmd("bitnet-pack")
        .arg(input)
        .arg(out)
        .args(extra)
        .arg("--quiet")
        .output()
        .unwrap()
}

fn safetensors_tensors(path: &Path) -> (usize, serde_json::Map<String, Value>) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    (8 + n, h.as_object().unwrap().clone())
}

fn read_f32s(path: &Path, name: &str) -> Vec<f32> {
    let (base, h) = safetensors_tensors(path);
    let b = std::fs::read(path).unwrap();
    let off = &h[name]["data_offsets"];
    let (s, e) = (
        off[0].as_u64().unwrap() as usize,
        off[1].as_u64().unwrap() as usize,
    );
    assert_eq!(h[name]["dtype"], "F32");
    b[base + s..base + e]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn pack_inspect_verify_unpack_latent() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), false);
    let out = d.path().join("m.bnet");
    let o = pack(&m, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cmd("bitnet-inspect")
        .arg(&out)
        .args(["--json", "--tensors", "--verify"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["family"], "bitnet-b1.58-latent");
    assert_eq!(j["verify"]["ok"], true);
    assert_eq!(j["model"]["hidden_act"], "relu2");
    // TL (the default layout): 72 rows are 3 blocks of 32, 200 columns 9 chunks of 24, 160
    // bytes per block and chunk
    let q = j["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "model.layers.0.mlp.down_proj.weight")
        .unwrap();
    assert_eq!(q["dtype"], "TL");
    assert_eq!(q["bytes"], 3 * 9 * 160);
    // human output names the bits per weight
    let o = cmd("bitnet-inspect").arg(&out).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("bits per weight"));

    let st = d.path().join("u.safetensors");
    let o = pack(&out, &st, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let w = read_f32s(&st, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(w.len(), 72 * 72);
    // one scale per tensor: every weight is 0 or +-1/s with the same magnitude
    let mag = w.iter().find(|v| **v != 0.0).unwrap().abs();
    assert!(w.iter().all(|v| *v == 0.0 || v.abs() == mag));
}

/// uint8-packed codes survive pack -> unpack exactly, and the scale multiplies (autobitlinear).
#[test]
fn packed_checkpoint_codes_are_reproduced_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), true);
    let out = d.path().join("m.bnet");
    assert!(pack(&m, &out, &[]).status.success());
    let st = d.path().join("u.safetensors");
    assert!(pack(&out, &st, &[]).status.success());
    let src = m.join("model.safetensors");
    let (base, h) = safetensors_tensors(&src);
    let raw = std::fs::read(&src).unwrap();
    let name = "model.layers.1.mlp.gate_proj.weight";
    let off = |n: &str| {
        let o = &h[n]["data_offsets"];
        (
            base + o[0].as_u64().unwrap() as usize,
            base + o[1].as_u64().unwrap() as usize,
        )
    };
    let (s, e) = off(name);
    let packed = &raw[s..e];
    let (ss, _) = off(&format!("{name}_scale"));
    let scale = half::bf16::from_le_bytes([raw[ss], raw[ss + 1]]).to_f32();
    let w = read_f32s(&st, name);
    let (out_f, cols) = (200, 72);
    let mut codes = vec![0i8; out_f * cols];
    for o in 0..out_f {
        for c in 0..cols {
            let v = w[o * cols + c];
            codes[o * cols + c] = if v == 0.0 {
                0
            } else if v == scale {
                1
            } else if v == -scale {
                -1
            } else {
                panic!("{v} is not 0 or +-{scale}")
            };
        }
    }
    assert_eq!(bitnet::quant::hf_pack(&codes, out_f, cols), packed);
}

#[test]
fn binary_quantization_packs_one_bit_per_weight() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), false);
    let out = d.path().join("b.bnet");
    assert!(pack(&m, &out, &["--quant", "binary"]).status.success());
    let o = cmd("bitnet-inspect")
        .arg(&out)
        .args(["--json", "--tensors"])
        .output()
        .unwrap();
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["quantization"]["weights"], "binary");
    let q = j["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "model.layers.0.mlp.up_proj.weight")
        .unwrap();
    assert_eq!(
        (q["dtype"].as_str(), q["bytes"].as_u64()),
        (Some("B1"), Some(200 * 32))
    );
    // binary needs latent weights
    let p = synth(d.path(), true);
    let out2 = d.path().join("x.bnet");
    assert_clean_failure(pack(&p, &out2, &["--quant", "binary"]), "latent", &out2);
    // 4-bit embeddings for a GGUF need rows of whole 32-blocks (this model's hidden size is 72)
    let gg = d.path().join("x.gguf");
    let o = pack(&m, &gg, &["--embeddings", "q4", "--gguf-type", "i2_s"]);
    assert_clean_failure(
        o,
        "is not a multiple of 32, so they would come out as F16",
        &gg,
    );
    // binary weights are B1 whatever the ternary layout; asking for one is refused, not ignored
    for layout in ["tl", "t2"] {
        let args = ["--quant", "binary", "--ternary-layout", layout];
        assert_clean_failure(pack(&m, &out2, &args), "always B1", &out2);
    }
}

#[test]
fn embeddings_as_i8_and_f16() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), false);
    let out = d.path().join("e.bnet");
    assert!(pack(&m, &out, &["--embeddings", "i8", "--lm-head", "f16"])
        .status
        .success());
    let o = cmd("bitnet-inspect")
        .arg(&out)
        .args(["--json", "--tensors", "--verify"])
        .output()
        .unwrap();
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = j["tensors"].as_array().unwrap();
    let find = |n: &str| {
        t.iter().find(|x| x["name"] == n).unwrap()["dtype"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(find("model.embed_tokens.weight"), "I8");
    assert_eq!(find("model.embed_tokens.weight.row_scale"), "F32");
    assert_eq!(find("lm_head.weight"), "F16");
    let st = d.path().join("u.safetensors");
    assert!(pack(&out, &st, &[]).status.success());
    assert_eq!(read_f32s(&st, "model.embed_tokens.weight").len(), 300 * 72);
}

#[test]
fn error_truncated_safetensors() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), false);
    let f = m.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let out = d.path().join("o.bnet");
    assert_clean_failure(
        pack(&m, &out, &[]),
        "truncated or corrupt safetensors",
        &out,
    );
}

#[test]
fn error_corrupt_safetensors_header() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), false);
    let f = m.join("model.safetensors");
    let mut b = std::fs::read(&f).unwrap();
    b[9] = b'!';
    std::fs::write(&f, b).unwrap();
    let out = d.path().join("o.bnet");
    assert_clean_failure(pack(&m, &out, &[]), "model.safetensors", &out);
}

fn packed_bnet(d: &Path) -> PathBuf {
    let m = synth(d, false);
    let out = d.join("m.bnet");
    assert!(pack(&m, &out, &[]).status.success());
    out
}

#[test]
fn error_wrong_magic_and_unknown_version() {
    let d = tempfile::tempdir().unwrap();
    let b = packed_bnet(d.path());
    let mut bytes = std::fs::read(&b).unwrap();
    bytes[0] = b'G';
    let bad = d.path().join("bad.bnet");
    std::fs::write(&bad, &bytes).unwrap();
    let o = cmd("bitnet-inspect").arg(&bad).output().unwrap();
    assert_clean_failure(o, "magic", &d.path().join("none"));
    bytes[0] = 0x89;
    bytes[8] = 9; // major version 9
    std::fs::write(&bad, &bytes).unwrap();
    let o = cmd("bitnet-inspect").arg(&bad).output().unwrap();
    assert_clean_failure(o, "version 9", &d.path().join("none"));
    // unpacking it fails the same way and leaves nothing behind
    let st = d.path().join("u.safetensors");
    assert_clean_failure(pack(&bad, &st, &[]), "version 9", &st);
}

#[test]
fn error_flipped_byte_in_tensor_data_is_named_by_verify() {
    let d = tempfile::tempdir().unwrap();
    let b = packed_bnet(d.path());
    let o = cmd("bitnet-inspect")
        .arg(&b)
        .args(["--json", "--tensors"])
        .output()
        .unwrap();
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = j["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "model.layers.1.self_attn.v_proj.weight")
        .unwrap();
    let at = t["offset"].as_u64().unwrap() as usize + 17;
    let mut bytes = std::fs::read(&b).unwrap();
    bytes[at] ^= 0x04;
    std::fs::write(&b, &bytes).unwrap();
    // open still works (it does not read tensor data) ...
    assert!(cmd("bitnet-inspect")
        .arg(&b)
        .output()
        .unwrap()
        .status
        .success());
    // ... and verify names the tensor, exit 1
    let o = cmd("bitnet-inspect")
        .arg(&b)
        .arg("--verify")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("checksum mismatch in tensor model.layers.1.self_attn.v_proj.weight"),
        "{s}"
    );
}

#[test]
fn error_missing_config_and_tokenizer() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), false);
    let out = d.path().join("o.bnet");
    std::fs::remove_file(m.join("tokenizer.json")).unwrap();
    assert_clean_failure(pack(&m, &out, &[]), "no tokenizer.json", &out);
    // a sentencepiece model alone cannot be run: refused beside the weights and as --tokenizer
    let sp = m.join("tokenizer.model");
    std::fs::write(&sp, b"sentencepiece bytes").unwrap();
    assert_clean_failure(
        pack(&m, &out, &[]),
        "only a sentencepiece tokenizer.model",
        &out,
    );
    let o = pack(&m, &out, &["--tokenizer", sp.to_str().unwrap()]);
    assert_clean_failure(
        o,
        "a sentencepiece tokenizer.model, which the runner cannot read",
        &out,
    );
    assert!(pack(&m, &out, &["--no-tokenizer"]).status.success());
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(m.join("config.json")).unwrap();
    assert_clean_failure(pack(&m, &out, &[]), "config.json not found", &out);
}

/// A tokenizer.json that the tokenizer library cannot load (another JSON file given as
/// --tokenizer, a damaged download) is refused at pack, naming the file; it had been stored and
/// failed only when the model was run.
#[test]
fn error_unusable_tokenizer() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), false);
    let out = d.path().join("o.bnet");
    let says = "not a usable tokenizer.json";
    let wrong = m.join("config.json");
    let o = pack(&m, &out, &["--tokenizer", wrong.to_str().unwrap()]);
    assert_clean_failure(o, says, &out);
    let good = d.path().join("good-tokenizer.json");
    std::fs::copy(m.join("tokenizer.json"), &good).unwrap();
    std::fs::write(m.join("tokenizer.json"), b"{\"model\": 1}").unwrap();
    // a tokenizer given with --tokenizer replaces the one beside the weights
    assert!(pack(&m, &out, &["--tokenizer", good.to_str().unwrap()])
        .status
        .success());
    std::fs::remove_file(&out).unwrap();
    let o = pack(&m, &out, &[]);
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(e.contains("tokenizer.json: not a usable"), "{e}");
    assert_clean_failure(o, says, &out);
    // --no-tokenizer stores none, whatever lies beside the weights
    assert!(pack(&m, &out, &["--no-tokenizer"]).status.success());
    let f = bitnet::format::BnetFile::open(&out).unwrap();
    assert!(f.index.get("file:tokenizer.json").is_none());
}

fn edit_config(m: &Path, f: impl FnOnce(&mut Value)) {
    let p = m.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// A dimension that would not fit GGUF's u32 (or is otherwise absurd) is refused at pack, naming
/// the field, rather than truncated later.
#[test]
fn error_implausible_dimensions() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), false);
    let out = d.path().join("o.bnet");
    edit_config(&m, |v| v["max_position_embeddings"] = (1u64 << 40).into());
    assert_clean_failure(
        pack(&m, &out, &[]),
        "max_position_embeddings 1099511627776 exceeds 4294967295",
        &out,
    );
}

#[test]
fn error_unsupported_architecture_and_activation() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), false);
    let out = d.path().join("o.bnet");
    edit_config(&m, |v| v["hidden_act"] = "gelu".into());
    assert_clean_failure(
        pack(&m, &out, &[]),
        "unsupported activation hidden_act \"gelu\"",
        &out,
    );
    edit_config(&m, |v| v["hidden_act"] = "relu2".into());
    // RoPE scaling is refused at packing, not only by the runner and the export later
    edit_config(&m, |v| {
        v["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 2.0})
    });
    assert_clean_failure(pack(&m, &out, &[]), "RoPE scaling", &out);
    edit_config(&m, |v| v["model_type"] = "gpt2".into());
    assert_clean_failure(pack(&m, &out, &[]), "unsupported architecture", &out);
}

#[test]
fn error_shape_mismatch() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), false);
    let out = d.path().join("o.bnet");
    edit_config(&m, |v| v["intermediate_size"] = 208.into());
    assert_clean_failure(
        pack(&m, &out, &[]),
        "config does not belong to these weights",
        &out,
    );
}

#[test]
fn error_nan_weights() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), false);
    let f = m.join("model.safetensors");
    let (base, h) = safetensors_tensors(&f);
    let s = base
        + h["model.layers.1.mlp.up_proj.weight"]["data_offsets"][0]
            .as_u64()
            .unwrap() as usize;
    let mut b = std::fs::read(&f).unwrap();
    b[s + 10..s + 12].copy_from_slice(&half::bf16::NAN.to_le_bytes());
    std::fs::write(&f, b).unwrap();
    let out = d.path().join("o.bnet");
    assert_clean_failure(
        pack(&m, &out, &[]),
        "model.layers.1.mlp.up_proj.weight has a NaN or infinite value at element 5",
        &out,
    );
}

#[test]
fn error_uint8_without_scale() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), true);
    let f = m.join("model.safetensors");
    let (base, h) = safetensors_tensors(&f);
    let raw = std::fs::read(&f).unwrap();
    // rewrite the file without one weight_scale
    let drop = "model.layers.0.self_attn.k_proj.weight_scale";
    let mut list = Vec::new();
    let mut data = Vec::new();
    let mut names: Vec<&String> = h
        .keys()
        .filter(|k| *k != drop && *k != "__metadata__")
        .collect();
    names.sort();
    for n in names {
        let t = &h[n];
        let o = &t["data_offsets"];
        let (s, e) = (
            base + o[0].as_u64().unwrap() as usize,
            base + o[1].as_u64().unwrap() as usize,
        );
        let shape: Vec<u64> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        let dtype = if t["dtype"] == "U8" { "U8" } else { "BF16" };
        list.push((n.clone(), dtype, shape, (e - s) as u64));
        data.extend_from_slice(&raw[s..e]);
    }
    let mut out_bytes = bitnet::format::safetensors_header(&list, &Default::default());
    out_bytes.extend(data);
    std::fs::write(&f, out_bytes).unwrap();
    let out = d.path().join("o.bnet");
    assert_clean_failure(
        pack(&m, &out, &[]),
        "has no model.layers.0.self_attn.k_proj.weight_scale",
        &out,
    );
}

#[test]
fn error_output_directory_missing_and_output_exists() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), false);
    let out = d.path().join("no/such/dir/o.bnet");
    assert_clean_failure(pack(&m, &out, &[]), "does not exist", &out);
    let file = d.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("o.bnet");
    assert_clean_failure(pack(&m, &out, &[]), "is a file, not a directory", &out);
    let out = d.path().join("o.bnet");
    std::fs::write(&out, b"precious").unwrap();
    let o = pack(&m, &out, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists; pass --force"));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        b"precious",
        "the existing file must be untouched"
    );
    // a directory as the output: refused before packing (it had printed "wrote" first, then
    // failed at the rename), with or without --force
    let dir = d.path().join("d.bnet");
    std::fs::create_dir(&dir).unwrap();
    for force in [&[][..], &["--force"][..]] {
        let o = pack(&m, &dir, force);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(
            e.contains("is a directory; give the path of the output file"),
            "{e}"
        );
        assert!(!e.contains("wrote"), "{e}");
    }
    assert!(pack(&m, &out, &["--force"]).status.success());
    assert!(cmd("bitnet-inspect")
        .arg(&out)
        .arg("--verify")
        .output()
        .unwrap()
        .status
        .success());
}

/// A full disk: a 64 KiB tmpfs in a private mount namespace (unshare), or, where namespaces
/// are not allowed, a file-size limit (`ulimit -f`) which fails the same write path.
#[test]
fn error_disk_full() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), false);
    let bin = assert_cmd::cargo::cargo_bin("bitnet-pack");
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs {mnt} || exit 77; {bin} {m} {mnt}/o.bnet --quiet; rc=$?; ls -A {mnt}; exit $rc",
        mnt = mnt.display(), bin = bin.display(), m = m.display()
    );
    // no `unshare` program at all counts as "namespaces unavailable" too
    let o = std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .output()
        .ok();
    let (o, fallback) = if let Some(o) = o.filter(|o| {
        o.status.code() != Some(77)
            && o.status.code().is_some()
            && !String::from_utf8_lossy(&o.stderr).contains("unshare:")
    }) {
        (o, false)
    } else {
        eprintln!(
            "NOTE: mount namespaces unavailable; testing the full-disk path with ulimit -f instead"
        );
        let out = d.path().join("o.bnet");
        let script = format!(
            "trap '' XFSZ; ulimit -f 64; exec {} {} {} --quiet",
            bin.display(),
            m.display(),
            out.display()
        );
        (
            std::process::Command::new("sh")
                .args(["-c", &script])
                .output()
                .unwrap(),
            true,
        )
    };
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    if fallback {
        assert!(
            err.contains("file too large") || err.contains("disk full"),
            "{err}"
        );
        assert!(!d.path().join("o.bnet").exists());
    } else {
        assert!(err.contains("disk full while writing"), "{err}");
        // `ls -A` of the mount printed nothing: no output and no temporary file remain
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "",
            "files left on the full disk"
        );
    }
}

/// A checkpoint big enough (~190 MB) that packing takes long enough to be interrupted.
fn medium(dir: &Path) -> PathBuf {
    let spec = SynthSpec {
        hidden: 1024,
        intermediate: 2816,
        layers: 6,
        heads: 8,
        kv_heads: 4,
        vocab: 32000,
        tied: true,
        packed: false,
        silu: false,
    };
    let m = dir.join("medium");
    write_checkpoint(&m, &spec, 3).unwrap();
    m
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let _ = ok; // the process may already have finished
}

/// `bitnet-inspect --verify` accepts `f`: every checksum matches.
fn assert_whole(f: &Path) {
    let o = cmd("bitnet-inspect")
        .arg(f)
        .arg("--verify")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// SIGKILL at different points never leaves a file under the output name (only, possibly, a
/// `.NAME.PID.XXXXXX.tmp`), and a later run succeeds and removes those; SIGINT removes the
/// temporary file itself.
#[test]
fn interrupted_pack_never_leaves_a_partial_output() {
    let d = tempfile::tempdir().unwrap();
    let m = medium(d.path());
    let outdir = d.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("m.bnet");
    let bin = assert_cmd::cargo::cargo_bin("bitnet-pack");
    for delay_ms in [0u64, 20, 60, 150, 300] {
        let mut child = std::process::Command::new(&bin)
            .arg(&m)
            .arg(&out)
            .arg("--quiet")
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        signal(child.id(), "-KILL");
        child.wait().unwrap();
        if out.exists() {
            // the rename happened before the kill (the process may still have been killed on
            // its way out): then the file must be whole
            assert_whole(&out);
            std::fs::remove_file(&out).unwrap();
        }
        for name in leftovers(&outdir) {
            assert!(
                name.starts_with(".m.bnet.") && name.ends_with(".tmp"),
                "{name}"
            );
        }
    }
    // interrupted politely: exit 130 and nothing of its own left behind (it may also have
    // removed the killed runs' files)
    let mut child = std::process::Command::new(&bin)
        .arg(&m)
        .arg(&out)
        .arg("--quiet")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // SIGINT only once the handler is in place (it is installed before the temporary file is
    // created): earlier, the default action kills the process with nothing to clean up, which a
    // loaded CI machine can hit with any fixed delay
    let pid = child.id();
    let own = format!(".m.bnet.{}.", pid);
    let started = std::time::Instant::now();
    while !leftovers(&outdir).iter().any(|n| n.starts_with(&own))
        && matches!(child.try_wait(), Ok(None))
        && started.elapsed() < std::time::Duration::from_secs(60)
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    signal(pid, "-INT");
    let o = child.wait_with_output().unwrap();
    if o.status.code() == Some(130) {
        // a signal delayed past the rename finds nothing left to remove: the output is whole
        if out.exists() {
            assert_whole(&out);
            std::fs::remove_file(&out).unwrap();
        }
        assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted"));
    } else {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::remove_file(&out).unwrap();
    }
    assert!(
        !leftovers(&outdir).iter().any(|n| n.starts_with(&own)),
        "SIGINT left a temporary file"
    );
    // and a clean run afterwards works and removes the killed runs' temporaries (one planted
    // for certain: pid 4000000000 does not exist), but not a live process's or a foreign file
    let dead = outdir.join(".m.bnet.4000000000.AbCdEf.tmp");
    let live = outdir.join(format!(".m.bnet.{}.AbCdEf.tmp", std::process::id()));
    let foreign = outdir.join(".m.bnet.notapid.tmp");
    for f in [&dead, &live, &foreign] {
        std::fs::write(f, b"partial").unwrap();
    }
    let o = pack(&m, &out, &[]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("left by an interrupted run"));
    let mut left = leftovers(&outdir);
    left.sort();
    let mut want = vec![
        ".m.bnet.notapid.tmp".to_string(),
        format!(".m.bnet.{}.AbCdEf.tmp", std::process::id()),
    ];
    want.sort();
    assert_eq!(left, want, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(cmd("bitnet-inspect")
        .arg(&out)
        .arg("--verify")
        .output()
        .unwrap()
        .status
        .success());
}

/// Many threads and processes verifying and running the same file at once agree.
#[test]
fn concurrent_readers_agree() {
    let d = tempfile::tempdir().unwrap();
    let b = packed_bnet(d.path());
    let outs: Vec<_> = (0..6)
        .map(|_| {
            std::process::Command::new(assert_cmd::cargo::cargo_bin("bitnet-inspect"))
                .arg(&b)
                .args(["--verify", "--json"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut hashes = std::collections::BTreeSet::new();
    for c in outs {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success());
        let j: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(j["verify"]["ok"], true);
        hashes.insert(j["file_bytes"].to_string());
    }
    assert_eq!(hashes.len(), 1);
    let f = bitnet::format::BnetFile::open(&b).unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| s.spawn(|| bitnet::format::bnet::verify(&f.index, &f.map).ok()))
            .collect();
        assert!(hs.into_iter().all(|h| h.join().unwrap()));
    });
}

/// Runs a binary under a 1 GiB address-space limit: a reader that trusted a declared size and
/// allocated it would abort instead of printing a clean error.
fn limited(bin: &str, args: &[&Path]) -> std::process::Output {
    let mut script = format!(
        "ulimit -v 1048576; exec {}",
        assert_cmd::cargo::cargo_bin(bin).display()
    );
    for a in args {
        script.push_str(&format!(" '{}'", a.display()));
    }
    // few threads and malloc arenas, so a many-core machine's thread stacks and per-thread
    // arenas do not reach the limit by themselves
    std::process::Command::new("sh")
        .args(["-c", &script])
        .env("RAYON_NUM_THREADS", "1")
        .env("MALLOC_ARENA_MAX", "2")
        .output()
        .unwrap()
}

/// Declared sizes far larger than the file are rejected before any large allocation.
#[test]
fn huge_declared_sizes_are_rejected_cheaply() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), false);
    // safetensors: a header that declares a 1 TB tensor in a tiny file
    let f = m.join("model.safetensors");
    let hdr = br#"{"model.embed_tokens.weight":{"dtype":"BF16","shape":[500000000,1000],"data_offsets":[0,1000000000000]}}"#;
    let mut bytes = (hdr.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(hdr);
    bytes.extend_from_slice(&[0u8; 64]);
    std::fs::write(&f, &bytes).unwrap();
    let out = d.path().join("o.bnet");
    let o = limited("bitnet-pack", &[&m, &out]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("truncated or corrupt safetensors"));
    // safetensors: a header length of 2^60
    let mut bytes = (1u64 << 60).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&f, &bytes).unwrap();
    let o = limited("bitnet-pack", &[&m, &out]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // .bnet: an index that claims a million tensors and 64 MiB of names in a small file
    let b = packed_bnet(d.path());
    let mut bytes = std::fs::read(&b).unwrap();
    bytes[32..40].copy_from_slice(&(1u64 << 20).to_le_bytes());
    bytes[40..48].copy_from_slice(&(64u64 << 20).to_le_bytes());
    let h = blake3::hash(&bytes[..112]);
    bytes[112..128].copy_from_slice(&h.as_bytes()[..16]); // a valid header check: only the sizes lie
    let bad = d.path().join("huge.bnet");
    std::fs::write(&bad, &bytes).unwrap();
    let o = limited("bitnet-inspect", &[&bad]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("do not tile the end of the file"));
}

/// Unpacking into a directory gives a model transformers can load: dequantized weights,
/// config.json without quantization_config, tokenizer files; an existing directory is refused.
#[test]
fn unpack_to_model_directory() {
    let d = tempfile::tempdir().unwrap();
    let b = packed_bnet(d.path());
    let out = d.path().join("unpacked");
    let o = pack(&b, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert!(cfg.get("quantization_config").is_none());
    assert_eq!(cfg["hidden_size"], 72);
    assert_eq!(
        read_f32s(
            &out.join("model.safetensors"),
            "model.layers.0.self_attn.q_proj.weight"
        )
        .len(),
        72 * 72
    );
    let o = pack(&b, &out, &["--force"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("never overwrites"));
    // packing it again is refused: re-quantizing its dequantized weights had silently changed
    // every scale
    let again = d.path().join("again.bnet");
    assert_clean_failure(
        pack(&out, &again, &[]),
        "bitnet-pack unpacked from a .bnet",
        &again,
    );
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

/// A lone .safetensors file with its config and tokenizer passed from elsewhere.
#[test]
fn pack_single_file_with_explicit_config_and_tokenizer() {
    let d = tempfile::tempdir().unwrap();
    let m = synth(d.path(), false);
    let (w, c, t) = (
        d.path().join("weights"),
        d.path().join("meta"),
        d.path().join("tok"),
    );
    for dir in [&w, &c, &t] {
        std::fs::create_dir(dir).unwrap();
    }
    std::fs::rename(m.join("model.safetensors"), w.join("weights.safetensors")).unwrap();
    std::fs::rename(m.join("config.json"), c.join("config.json")).unwrap();
    std::fs::rename(m.join("tokenizer.json"), t.join("tokenizer.json")).unwrap();
    let out = d.path().join("o.bnet");
    let o = cmd("bitnet-pack")
        .arg(w.join("weights.safetensors"))
        .arg(&out)
        .arg("--config")
        .arg(c.join("config.json"))
        .arg("--tokenizer")
        .arg(t.join("tokenizer.json"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: Value = serde_json::from_slice(
        &cmd("bitnet-inspect")
            .arg(&out)
            .arg("--json")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(j["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "tokenizer.json"));
    let srcs: Vec<&str> = j["provenance"]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["file"].as_str().unwrap())
        .collect();
    assert_eq!(
        srcs,
        ["config.json", "tokenizer.json", "weights.safetensors"]
    );
    assert!(j["quantization"]["parameters"]["rounding"] == "half to even");
}

/// Sharded checkpoints: the index or one shard given as the input is told to give the
/// directory; a directory holding model.safetensors uses it first, as transformers does, even
/// beside a stale index whose shards are gone (that had failed on the missing shards).
#[test]
fn shards_and_index_resolve_as_transformers_does() {
    let d = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let out = d.path().join("o.bnet");
    let sharded = fixtures.join("bitnet-latent");
    let o = pack(&sharded.join("model.safetensors.index.json"), &out, &[]);
    assert_clean_failure(o, "part of a sharded checkpoint; pass its directory", &out);
    let o = pack(&sharded.join("model-00001-of-00002.safetensors"), &out, &[]);
    assert_clean_failure(o, "part of a sharded checkpoint; pass its directory", &out);
    let both = d.path().join("both");
    std::fs::create_dir(&both).unwrap();
    for e in std::fs::read_dir(fixtures.join("llama-bitlinear")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), both.join(e.file_name())).unwrap();
    }
    std::fs::copy(
        sharded.join("model.safetensors.index.json"),
        both.join("model.safetensors.index.json"),
    )
    .unwrap();
    let o = pack(&both, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Unpacking a tied model leaves out the head copy that `--lm-head` added for decoding:
/// transformers ties the head to the embeddings and would drop it, so the unpacked weights
/// are the checkpoint's own.
#[test]
fn unpack_of_a_tied_model_leaves_out_the_decode_head_copy() {
    let d = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let (b, st) = (d.path().join("q4.bnet"), d.path().join("u.safetensors"));
    assert!(
        pack(&fixtures.join("bitnet-latent"), &b, &["--lm-head", "q4"])
            .status
            .success()
    );
    let f = bitnet::format::BnetFile::open(&b).unwrap();
    assert!(
        f.index.get("lm_head.weight").is_some(),
        "the q4 copy is stored"
    );
    assert!(pack(&b, &st, &[]).status.success());
    let bytes = std::fs::read(&st).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(t.tensor("lm_head.weight").is_err(), "{:?}", t.names());
    assert!(t.tensor("model.embed_tokens.weight").is_ok());
    // an untied model keeps its own head
    let (b, st) = (
        d.path().join("untied.bnet"),
        d.path().join("untied.safetensors"),
    );
    assert!(pack(&fixtures.join("llama-bitlinear"), &b, &[])
        .status
        .success());
    assert!(pack(&b, &st, &[]).status.success());
    let bytes = std::fs::read(&st).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(t.tensor("lm_head.weight").is_ok(), "{:?}", t.names());
}

/// Unpacking into a directory builds it beside the target as `.NAME.PID.XXXXXX.tmp`: SIGINT
/// removes it, and a later run removes a dead run's (an interrupted unpack had left its
/// temporary directory behind for good).
#[test]
fn interrupted_unpack_to_a_directory_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let b = d.path().join("m.bnet");
    assert!(pack(&medium(d.path()), &b, &[]).status.success());
    let outdir = d.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("un");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("bitnet-pack"))
        .args([&b, &out])
        .arg("--quiet")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let own = format!(".un.{}.", child.id());
    let started = std::time::Instant::now();
    while !leftovers(&outdir).iter().any(|n| n.starts_with(&own))
        && matches!(child.try_wait(), Ok(None))
        && started.elapsed() < std::time::Duration::from_secs(60)
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    signal(child.id(), "-INT");
    let o = child.wait_with_output().unwrap();
    assert!(matches!(o.status.code(), Some(130) | Some(0)), "{o:?}");
    assert!(
        !leftovers(&outdir).iter().any(|n| n.starts_with(&own)),
        "SIGINT left a temporary directory"
    );
    if out.exists() {
        std::fs::remove_dir_all(&out).unwrap();
    }
    let dead = outdir.join(".un.4000000000.AbCdEf.tmp");
    std::fs::create_dir(&dead).unwrap();
    std::fs::write(dead.join("model.safetensors"), b"partial").unwrap();
    assert!(pack(&b, &out, &[]).status.success());
    assert!(!dead.exists(), "a dead run's temporary directory stays");
    assert!(out.join("model.safetensors").is_file());
}
