//! GGUF (formats/gguf.md): block codecs against gguf-py's encodings, reader/writer round trips,
//! hostile input, fixture round trips checkpoint → .bnet → GGUF → .bnet, refusals, and
//! gguf-rs as a second, independent reader of our exports.

use assert_cmd::Command;
use bitnet::format::ggml::{self, Dialect, GgmlType};
use bitnet::format::gguf::{Gguf, PlannedTensor, Value, Writer};
use bitnet::format::BnetFile;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bin(name: &str) -> Command {
    Command::cargo_bin(name).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Our TQ1_0 / TQ2_0 encoders give exactly gguf-py's bytes (tests/data/ggml_blocks.json, made
/// by tests/interop/make_block_goldens.py), and decoding gives the values and scale back.
#[test]
fn tq_blocks_match_gguf_py_byte_for_byte() {
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/data/ggml_blocks.json")).unwrap())
            .unwrap();
    let d = j["d"].as_f64().unwrap() as f32;
    for (r, row) in j["values"].as_array().unwrap().iter().enumerate() {
        let vals: Vec<i8> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as i8)
            .collect();
        for (ty, bb) in [("TQ1_0", ggml::TQ1_BYTES), ("TQ2_0", ggml::TQ2_BYTES)] {
            let want = hex(j[ty][r].as_str().unwrap());
            let mut got = vec![0u8; vals.len() / 256 * bb];
            let (mut back, mut scales) = (vec![0i8; vals.len()], Vec::new());
            if ty == "TQ1_0" {
                ggml::encode_tq1_0(&vals, d, &mut got);
                ggml::decode_tq1_0(&want, &mut back, &mut scales);
            } else {
                ggml::encode_tq2_0(&vals, d, &mut got);
                ggml::decode_tq2_0(&want, &mut back, &mut scales).unwrap();
            }
            assert_eq!(got, want, "{ty} row {r}");
            assert_eq!(back, vals, "{ty} row {r} decodes");
            assert!(scales.iter().all(|&s| s == d));
        }
    }
}

/// I2_S worked example (formats/gguf.md): byte m of a 128-block holds elements m, m+32, m+64,
/// m+96 in bits 7-6, 5-4, 3-2, 1-0, code = value + 1.
#[test]
fn i2_s_layout_worked_example() {
    let mut v = vec![0i8; 256];
    v[0] = 1; // byte 0 bits 7-6 = 2
    v[32] = -1; // byte 0 bits 5-4 = 0
    v[127] = 1; // byte 31 bits 1-0 = 2
    v[128 + 65] = -1; // second block, byte 32 + 1, bits 3-2 = 0
    let mut out = vec![0u8; 64];
    ggml::encode_i2_s(&v, &mut out);
    assert_eq!(out[0], 0b10_00_01_01);
    assert_eq!(out[31], 0b01_01_01_10);
    assert_eq!(out[33], 0b01_01_00_01);
    assert!(out
        .iter()
        .enumerate()
        .all(|(i, &b)| [0, 31, 33].contains(&i) || b == 0x55));
    let mut back = vec![0i8; 256];
    ggml::decode_i2_s(&out, &mut back).unwrap();
    assert_eq!(back, v);
    out[5] = 0xff;
    assert_eq!(ggml::decode_i2_s(&out, &mut back), Err(5));
    let tail = ggml::i2_s_tail(0.25);
    assert_eq!(&tail[..4], &0.25f32.to_le_bytes());
    assert!(tail[4..].iter().all(|&b| b == 0));
}

#[test]
fn type_table_sizes_and_the_36_to_39_collision() {
    let m = |id| GgmlType::from_id(id, Dialect::Mainline);
    assert_eq!(m(ggml::TQ2_0).unwrap().data_len(&[256, 3]), Ok(3 * 66));
    assert_eq!(m(ggml::TQ1_0).unwrap().data_len(&[512, 2]), Ok(4 * 54));
    assert_eq!(m(ggml::BF16).unwrap().data_len(&[256, 4]), Ok(2048));
    assert!(m(ggml::TQ2_0).unwrap().data_len(&[64, 2]).is_err());
    assert_eq!(m(39).unwrap().name, "MXFP4");
    let e = m(36).unwrap_err();
    assert!(
        e.contains("bitnet.cpp") && e.contains("--bitnet-cpp"),
        "{e}"
    );
    let i2s = GgmlType::from_id(36, Dialect::BitnetCpp).unwrap();
    assert_eq!(i2s.name, "I2_S");
    assert_eq!(i2s.data_len(&[256, 10]), Ok(640 + 32));
    assert!(i2s.data_len(&[64, 1]).is_err());
    assert!(GgmlType::from_id(39, Dialect::BitnetCpp)
        .unwrap_err()
        .contains("TL2"));
    assert!(m(99).unwrap_err().contains("unknown"));
}

fn write_gguf(kv: &[(String, Value)], tensors: &[(PlannedTensor, Vec<u8>)]) -> Vec<u8> {
    let plan: Vec<PlannedTensor> = tensors.iter().map(|(p, _)| p.clone()).collect();
    let mut w = Writer::new(Vec::new(), Path::new("mem.gguf"), kv, &plan).unwrap();
    for (_, data) in tensors {
        // in two pieces, as a streaming writer gets it
        let (a, b) = data.split_at(data.len() / 2);
        w.write(a).unwrap();
        w.write(b).unwrap();
    }
    w.finish().unwrap()
}

fn value_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        any::<f32>()
            .prop_filter("NaN != NaN", |f| !f.is_nan())
            .prop_map(Value::F32),
        any::<bool>().prop_map(Value::Bool),
        ".{0,20}".prop_map(Value::Str),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        any::<f64>()
            .prop_filter("NaN != NaN", |f| !f.is_nan())
            .prop_map(Value::F64),
    ];
    prop_oneof![
        3 => leaf,
        1 => prop::collection::vec(any::<i32>(), 0..20)
            .prop_map(|v| Value::Array(5, v.into_iter().map(Value::I32).collect())),
        1 => prop::collection::vec(".{0,8}", 0..10)
            .prop_map(|v| Value::Array(8, v.into_iter().map(Value::Str).collect())),
    ]
}

fn types() -> Vec<GgmlType> {
    [
        ggml::F32,
        ggml::F16,
        ggml::BF16,
        ggml::Q8_0,
        ggml::TQ1_0,
        ggml::TQ2_0,
    ]
    .iter()
    .map(|&id| GgmlType::from_id(id, Dialect::Mainline).unwrap())
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// write → parse gives back every key, value and tensor; writing the parsed file again
    /// gives the same bytes.
    #[test]
    fn write_read_round_trip(
        kv in prop::collection::vec(value_strategy(), 0..8),
        shapes in prop::collection::vec((0usize..6, 1u64..3, 1u64..4), 0..6),
        seed in any::<u8>(),
    ) {
        let kv: Vec<(String, Value)> =
            kv.into_iter().enumerate().map(|(i, v)| (format!("test.key_{i}"), v)).collect();
        let tys = types();
        let tensors: Vec<(PlannedTensor, Vec<u8>)> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(t, blocks, rows))| {
                let ty = tys[t];
                let dims = vec![ty.block * blocks, rows];
                let len = ty.data_len(&dims).unwrap() as usize;
                let data = (0..len).map(|j| (j as u8).wrapping_mul(31).wrapping_add(seed)).collect();
                (PlannedTensor { name: format!("t{i}.weight"), dims, ty }, data)
            })
            .collect();
        let bytes = write_gguf(&kv, &tensors);
        let g = Gguf::parse(&bytes, false).unwrap();
        prop_assert_eq!(g.alignment, 32);
        prop_assert_eq!(&g.kv[1..], &kv[..]);
        prop_assert_eq!(g.tensors.len(), tensors.len());
        for (t, (p, data)) in g.tensors.iter().zip(&tensors) {
            prop_assert_eq!(&t.name, &p.name);
            prop_assert_eq!(&t.dims, &p.dims);
            prop_assert_eq!(t.offset % 32, 0);
            prop_assert_eq!(&bytes[t.range()], &data[..]);
        }
        let again: Vec<(PlannedTensor, Vec<u8>)> = g
            .tensors
            .iter()
            .map(|t| (PlannedTensor { name: t.name.clone(), dims: t.dims.clone(), ty: t.ty }, bytes[t.range()].to_vec()))
            .collect();
        prop_assert_eq!(write_gguf(&g.kv[1..], &again), bytes);
    }

    /// Any single corrupted byte and any truncation: parsing never panics, and a file that
    /// still parses still satisfies every rule (tensors inside the file, aligned, disjoint).
    #[test]
    fn corruption_never_panics(pos in any::<prop::sample::Index>(), val in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let bytes = small_model_gguf();
        let mut bad = bytes.clone();
        let i = pos.index(bad.len());
        bad[i] = val;
        for b in [&bad[..], &bytes[..cut.index(bytes.len())]] {
            if let Ok(g) = Gguf::parse(b, false) {
                let mut spans: Vec<_> = g.tensors.iter().map(|t| t.range()).collect();
                spans.sort_by_key(|r| r.start);
                for w in spans.windows(2) {
                    prop_assert!(w[0].end <= w[1].start);
                }
                prop_assert!(spans.iter().all(|r| r.end <= b.len()));
                let _ = bitnet::gguf_io::plan_import(&g, &Default::default());
            }
        }
    }
}

/// A real export (the 256-wide 1bitLLM fixture as TQ2_0), made once.
fn small_model_gguf() -> Vec<u8> {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES
        .get_or_init(|| {
            let d = tempfile::tempdir().unwrap();
            let bnet = d.path().join("m.bnet");
            let gg = d.path().join("m.gguf");
            pack(&root().join("fixtures/onebitllm-256"), &bnet, &[]);
            pack(&bnet, &gg, &["--gguf-type", "tq2_0"]);
            std::fs::read(gg).unwrap()
        })
        .clone()
}

fn pack(input: &Path, out: &Path, extra: &[&str]) {
    bin("bitnet-pack")
        .arg(input)
        .arg(out)
        .args(["--quiet", "--force"])
        .args(extra)
        .assert()
        .success();
}

/// Huge declared counts and lengths are refused before any allocation of that size.
#[test]
fn hostile_counts_are_refused_early() {
    let mut h = b"GGUF".to_vec();
    h.extend(3u32.to_le_bytes());
    h.extend(0u64.to_le_bytes());
    h.extend(1u64.to_le_bytes());
    let key = |h: &mut Vec<u8>, k: &str| {
        h.extend((k.len() as u64).to_le_bytes());
        h.extend(k.as_bytes());
    };
    // an array claiming 2^40 u32 elements in a 60-byte file
    let mut a = h.clone();
    key(&mut a, "x");
    a.extend(9u32.to_le_bytes());
    a.extend(4u32.to_le_bytes());
    a.extend((1u64 << 40).to_le_bytes());
    let e = Gguf::parse(&a, false).unwrap_err().to_string();
    assert!(e.contains("larger than the file"), "{e}");
    // a string of 2^62 bytes
    let mut s = h.clone();
    key(&mut s, "x");
    s.extend(8u32.to_le_bytes());
    s.extend((1u64 << 62).to_le_bytes());
    let e = Gguf::parse(&s, false).unwrap_err().to_string();
    assert!(e.contains("over the limit"), "{e}");
    // nesting deeper than the cap
    let mut n = h.clone();
    key(&mut n, "x");
    n.extend(9u32.to_le_bytes());
    for _ in 0..5 {
        n.extend(9u32.to_le_bytes());
        n.extend(1u64.to_le_bytes());
    }
    let e = Gguf::parse(&n, false).unwrap_err().to_string();
    assert!(e.contains("nested"), "{e}");
    // 2^50 tensors
    let mut t = b"GGUF".to_vec();
    t.extend(3u32.to_le_bytes());
    t.extend((1u64 << 50).to_le_bytes());
    t.extend(0u64.to_le_bytes());
    assert!(Gguf::parse(&t, false).is_err());
    // big-endian and other versions
    let mut be = b"GGUF".to_vec();
    be.extend(3u32.to_be_bytes());
    be.extend([0; 16]);
    assert!(Gguf::parse(&be, false)
        .unwrap_err()
        .to_string()
        .contains("big-endian"));
}

/// Holes, overlaps and misaligned offsets are refused.
#[test]
fn layout_rules() {
    let ty = GgmlType::from_id(ggml::F32, Dialect::Mainline).unwrap();
    let t = |name: &str| {
        (
            PlannedTensor {
                name: name.into(),
                dims: vec![8],
                ty,
            },
            vec![1u8; 32],
        )
    };
    let good = write_gguf(&[], &[t("a"), t("b")]);
    assert!(Gguf::parse(&good, false).is_ok());
    // the offset is the last field of tensor "b"'s info: find it and move it
    let needle = {
        let mut n = Vec::new();
        n.extend(1u64.to_le_bytes());
        n.extend(b"b");
        n
    };
    let at = good
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
        + needle.len();
    let offset_at = at + 4 + 8 + 4; // n_dims, dim, type
    for (bad_off, want) in [
        (0u64, "overlaps"),
        (64, "hole"),
        (40, "multiple of the alignment"),
    ] {
        let mut b = good.clone();
        b[offset_at..offset_at + 8].copy_from_slice(&bad_off.to_le_bytes());
        if bad_off == 64 {
            b.extend([0u8; 64]);
        }
        let e = Gguf::parse(&b, false).unwrap_err().to_string();
        assert!(e.contains(want), "{bad_off}: {e}");
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A re-imported model passes bitnet-verify with the container it came from as reference.
fn verifies_against(model: &Path, reference: &Path) {
    bin("bitnet-verify")
        .arg(model)
        .arg("--reference")
        .arg(reference)
        .args(["--prompt", "In the beginning God created", "--tokens", "4"])
        .assert()
        .success();
}

/// Per-tensor T2 data hashes and scales of a container (not the blobs).
fn projections(path: &Path) -> Vec<(String, [u8; 32], f32)> {
    let f = BnetFile::open(path).unwrap();
    f.index
        .entries
        .iter()
        .filter(|e| e.dtype.is_packed())
        .map(|e| (e.name.clone(), e.blake3, e.scale.apply(1.0)))
        .collect()
}

/// checkpoint → .bnet → GGUF → .bnet keeps every ternary code; scales agree to the GGUF
/// type's precision (fp16 in TQ blocks, f32 in I2_S); the re-imported model runs the same.
/// The TL layout exports the same GGUF bytes as T2, and imports back to the same TL bytes.
#[test]
fn fixture_round_trips_keep_codes() {
    let d = tmp();
    let cases: &[(&str, &[&str])] = &[
        ("bitnet-latent", &["i2_s"]),
        ("bitnet-packed", &["i2_s"]),
        ("llama-bitlinear", &["i2_s"]),
        ("onebitllm", &["i2_s"]),
        ("llama-bitlinear-256", &["tq2_0", "tq1_0", "i2_s"]),
        ("onebitllm-256", &["tq2_0", "tq1_0", "i2_s"]),
    ];
    for (fx, types) in cases {
        let bnet = d.path().join(format!("{fx}.bnet"));
        pack(&root().join("fixtures").join(fx), &bnet, &[]);
        let want = projections(&bnet);
        let tl = d.path().join(format!("{fx}-tl.bnet"));
        pack(
            &root().join("fixtures").join(fx),
            &tl,
            &["--ternary-layout", "tl"],
        );
        let want_tl = projections(&tl);
        for ty in *types {
            let gg = d.path().join(format!("{fx}.{ty}.gguf"));
            let back = d.path().join(format!("{fx}.{ty}.bnet"));
            pack(&bnet, &gg, &["--gguf-type", ty]);
            pack(&gg, &back, &[]);
            let got = projections(&back);
            assert_eq!(got.len(), want.len());
            for ((n, h, s), (n2, h2, s2)) in want.iter().zip(&got) {
                assert_eq!(n, n2);
                assert_eq!(h, h2, "{fx} {ty}: codes of {n}");
                let tol = if *ty == "i2_s" { 1e-6 } else { 1e-3 };
                assert!(
                    (s - s2).abs() <= tol * s,
                    "{fx} {ty}: scale of {n}: {s} vs {s2}"
                );
            }
            verifies_against(&back, &bnet);
            let gg_tl = d.path().join(format!("{fx}-tl.{ty}.gguf"));
            pack(&tl, &gg_tl, &["--gguf-type", ty]);
            assert!(
                std::fs::read(&gg).unwrap() == std::fs::read(&gg_tl).unwrap(),
                "{fx} {ty}: the TL container exports other bytes"
            );
            let back_tl = d.path().join(format!("{fx}.{ty}-tl.bnet"));
            pack(&gg, &back_tl, &["--ternary-layout", "tl"]);
            let got = projections(&back_tl);
            assert_eq!(got.len(), want_tl.len());
            for ((n, h, _), (n2, h2, _)) in want_tl.iter().zip(&got) {
                assert_eq!((n, h), (n2, h2), "{fx} {ty}: TL codes of {n} after import");
            }
        }
    }
}

/// A checkpoint directory exports straight to GGUF, through no file left behind.
#[test]
fn checkpoint_exports_directly() {
    let d = tmp();
    let gg = d.path().join("m.gguf");
    pack(&root().join("fixtures/llama-bitlinear-256"), &gg, &[]);
    assert!(Gguf::parse(&std::fs::read(&gg).unwrap(), false).is_ok());
    let left: Vec<PathBuf> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left, vec![gg]);
}

fn pack_err(input: &Path, out: &Path, extra: &[&str]) -> String {
    let o = bin("bitnet-pack")
        .arg(input)
        .arg(out)
        .args(["--quiet", "--force"])
        .args(extra)
        .assert()
        .failure()
        .code(2)
        .get_output()
        .clone();
    assert!(!out.exists(), "no output under the final name");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What a target format cannot hold, or what would run wrong, is refused by name.
#[test]
fn refusals_name_the_problem() {
    let d = tmp();
    let small = d.path().join("s.bnet");
    pack(&root().join("fixtures/llama-bitlinear"), &small, &[]);
    let e = pack_err(&small, &d.path().join("s.gguf"), &["--gguf-type", "tq2_0"]);
    assert!(
        e.contains("q_proj") && e.contains("multiple of 256") && e.contains("i2_s"),
        "{e}"
    );
    // an untied BitNet model: llama.cpp's and bitnet.cpp's graphs take logits from token_embd
    let ck = d.path().join("untied");
    bitnet::synth::write_checkpoint(&ck, &bitnet::synth::SynthSpec::tiny_odd(), 1).unwrap();
    let untied = d.path().join("u.bnet");
    pack(&ck, &untied, &[]);
    let e = pack_err(&untied, &d.path().join("u.gguf"), &["--gguf-type", "i2_s"]);
    assert!(e.contains("untied") && e.contains("token_embd"), "{e}");
    // I2_S in a llama-architecture file: only with the file's own word or --bitnet-cpp
    let gg = d.path().join("l.gguf");
    pack(&small, &gg, &["--gguf-type", "i2_s"]);
    let mut bytes = std::fs::read(&gg).unwrap();
    let key = b"bitnet_tools.ggml_type_ids";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap();
    bytes[at] = b'x'; // the key no longer says bitnet.cpp
    let anon = d.path().join("anon.gguf");
    std::fs::write(&anon, &bytes).unwrap();
    let e = pack_err(&anon, &d.path().join("a.bnet"), &[]);
    assert!(e.contains("--bitnet-cpp") && e.contains("36"), "{e}");
    pack(&anon, &d.path().join("a.bnet"), &["--bitnet-cpp"]);
    // inspect's conversion hint carries the flag the file needs
    let text = bin("bitnet-inspect")
        .arg(&anon)
        .arg("--bitnet-cpp")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("yes: bitnet-pack FILE OUT.bnet --bitnet-cpp"),
        "{text}"
    );
    // a layout for an output that is not a .bnet would be silently meaningless
    let e = pack_err(
        &small,
        &d.path().join("t.gguf"),
        &["--ternary-layout", "t2"],
    );
    assert!(
        e.contains("--ternary-layout") && e.contains("--gguf-type"),
        "{e}"
    );
}

/// Arch `bitnet` without an activation key (as llama.cpp's converter writes it) needs
/// --activation; with it the import runs.
#[test]
fn bitnet_arch_without_activation_needs_the_flag() {
    let d = tmp();
    let bnet = d.path().join("o.bnet");
    pack(&root().join("fixtures/onebitllm-256"), &bnet, &[]);
    let gg = d.path().join("o.gguf");
    pack(&bnet, &gg, &[]);
    let mut bytes = std::fs::read(&gg).unwrap();
    let key = b"bitnet.hidden_activation";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap();
    bytes[at + 7] = b'X'; // bitnet.XIdden_activation: no longer the key
    std::fs::write(&gg, &bytes).unwrap();
    let e = pack_err(&gg, &d.path().join("x.bnet"), &[]);
    assert!(e.contains("--activation relu2"), "{e}");
    let back = d.path().join("x.bnet");
    pack(&gg, &back, &["--activation", "silu"]);
    bin("bitnet-verify")
        .arg(&back)
        .arg("--reference")
        .arg(&bnet)
        .args(["--prompt", "Blessed are the", "--tokens", "4"])
        .assert()
        .success();
}

/// An option of another direction is refused, naming it and what applies, instead of being
/// silently ignored (a GGUF import's output was byte-identical with and without `--lm-head q4`);
/// the same for inspect's GGUF-only and .bnet-only options.
#[test]
fn options_of_another_direction_are_refused() {
    let d = tmp();
    let ck = root().join("fixtures/onebitllm-256");
    let bnet = d.path().join("m.bnet");
    pack(&ck, &bnet, &[]);
    let gg = d.path().join("m.gguf");
    pack(&bnet, &gg, &[]);
    let (b2, g2) = (d.path().join("o.bnet"), d.path().join("o.gguf"));
    let st = d.path().join("o.safetensors");
    for (input, output, flag, says) in [
        (&gg, &b2, "--lm-head=q4", "when importing a GGUF file"),
        (&gg, &b2, "--quant=binary", "when importing a GGUF file"),
        (
            &bnet,
            &g2,
            "--embeddings=f16",
            "when exporting a .bnet to GGUF",
        ),
        (&bnet, &st, "--lm-head=q4", "when unpacking a .bnet"),
        (
            &ck,
            &b2,
            "--activation=silu",
            "when packing a checkpoint into a .bnet",
        ),
        (
            &ck,
            &b2,
            "--gguf-type=i2_s",
            "when packing a checkpoint into a .bnet",
        ),
        (
            &ck,
            &g2,
            "--bitnet-cpp",
            "when exporting a checkpoint to GGUF",
        ),
    ] {
        let e = pack_err(input, output, &[flag]);
        let name = flag.split('=').next().unwrap();
        assert!(
            e.contains(&format!("{name} does not apply {says}")),
            "{flag}: {e}"
        );
        assert!(!output.exists());
    }
    // what a GGUF would not carry, when packing a checkpoint for one
    for (flags, says) in [
        (&["--lm-head", "q4"][..], "a GGUF does not carry"),
        (
            &["--embeddings", "i8"][..],
            "writes int8 embeddings and heads as F16",
        ),
    ] {
        let e = pack_err(&ck, &g2, flags);
        assert!(e.contains(says), "{flags:?}: {e}");
    }
    // what applies still works
    pack(&gg, &b2, &["--ternary-layout", "t2"]);
    // the import states what it stored (inspect had shown "embeddings ?, lm_head ?")
    let q = &bitnet::format::BnetFile::open(&b2).unwrap().index.meta["quantization"];
    assert_eq!(
        (&q["layout"], &q["embeddings"], &q["lm_head"]),
        (&"T2".into(), &"f16".into(), &"tied".into()),
        "{q}"
    );
    pack(&ck, &g2, &["--embeddings", "q4", "--gguf-type", "tq1_0"]);
    // running a GGUF imports it into a temporary file: an unusable TMPDIR is named
    let o = bin("bitnet-run")
        .env("TMPDIR", d.path().join("missing"))
        .arg(&gg)
        .args(["--ids", "1", "-n", "1"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("needs a temporary file in") && e.contains("set TMPDIR"),
        "{e}"
    );
    for (file, flag, says) in [
        (&gg, "--verify", "a GGUF file carries none"),
        (&bnet, "--bitnet-cpp", "--bitnet-cpp is for GGUF files"),
    ] {
        let o = bin("bitnet-inspect").arg(file).arg(flag).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(e.contains(says), "{e}");
    }
}

/// bitnet-inspect shows a GGUF file and what blocks its conversion.
#[test]
fn inspect_reads_gguf() {
    let d = tmp();
    let gg = d.path().join("m.gguf");
    std::fs::write(&gg, small_model_gguf()).unwrap();
    let out = bin("bitnet-inspect")
        .arg(&gg)
        .args(["--json", "--tensors"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(j["architecture"], "bitnet");
    assert_eq!(j["by_type"]["TQ2_0"]["tensors"], 14);
    assert_eq!(j["convertible_to_bnet"]["ok"], true);
    let text = bin("bitnet-inspect")
        .arg(&gg)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(String::from_utf8_lossy(&text).contains("to .bnet      yes"));
}

/// gguf-rs, the design's GGUF crate, reads our TQ1_0 / TQ2_0 exports (F16/BF16 embeddings,
/// F32 norms) with the names, shapes, types and sizes our reader reports.
#[test]
fn gguf_rs_reads_our_exports() {
    let d = tmp();
    let bnet = d.path().join("m.bnet");
    pack(
        &root().join("fixtures/llama-bitlinear-256"),
        &bnet,
        &["--embeddings", "f16"],
    );
    for ty in ["tq2_0", "tq1_0"] {
        let gg = d.path().join(format!("m.{ty}.gguf"));
        pack(&bnet, &gg, &["--gguf-type", ty]);
        let ours = Gguf::parse(&std::fs::read(&gg).unwrap(), false).unwrap();
        let mut c = gguf_rs::get_gguf_container(gg.to_str().unwrap()).unwrap();
        let m = c.decode().unwrap();
        assert_eq!(m.tensors().len(), ours.tensors.len());
        assert_eq!(m.data_offset(), ours.data_offset);
        for (t, o) in m.tensors().iter().zip(&ours.tensors) {
            assert_eq!(t.name, o.name);
            assert_eq!(t.kind, o.ty.id, "{}", t.name);
            assert_eq!(t.shape, o.dims, "{}", t.name);
            assert_eq!(t.offset + ours.data_offset, o.offset, "{}", t.name);
            if o.ty.id != ggml::BF16 {
                // gguf-rs gets BF16 sizes wrong (formats/gguf.md, introduction); the rest must agree
                assert_eq!(t.size, o.len, "{} ({})", t.name, o.ty.name);
            }
        }
        assert_eq!(
            m.metadata()
                .get("general.architecture")
                .and_then(|v| v.as_str()),
            Some("llama")
        );
    }
}

/// bitnet-run runs a GGUF file directly (imported on the fly) and computes exactly what it
/// computes on the converted container.
#[test]
fn run_takes_gguf_directly() {
    let d = tmp();
    let gg = d.path().join("m.gguf");
    std::fs::write(&gg, small_model_gguf()).unwrap();
    let bnet = d.path().join("m.bnet");
    pack(&gg, &bnet, &[]);
    let mut dumps = Vec::new();
    for (i, model) in [&gg, &bnet].iter().enumerate() {
        let out = d.path().join(format!("l{i}.safetensors"));
        bin("bitnet-run")
            .arg(model)
            .args(["--ids", "0,42,79,260,296", "--dump-logits"])
            .arg(&out)
            .assert()
            .success();
        dumps.push(std::fs::read(out).unwrap());
    }
    assert_eq!(dumps[0], dumps[1]);
    let text = bin("bitnet-run")
        .arg(&gg)
        .args(["--prompt", "In the beginning", "-n", "4"])
        .assert()
        .success()
        .get_output()
        .stderr
        .clone();
    assert!(String::from_utf8_lossy(&text).contains("is GGUF"));
}

/// A Q4 head and Q4 embeddings (.bnet 1.1) export as ggml Q4_0 byte for byte and import back
/// to the same bytes; the round-tripped model verifies against the original container.
#[test]
fn q4_tensors_travel_as_q4_0() {
    let d = tmp();
    let bnet = d.path().join("q4.bnet");
    let fx = root().join("fixtures/llama-bitlinear-256");
    // T2 projections, so the file's version is Q4's (TL would make it 1.2)
    pack(
        &fx,
        &bnet,
        &[
            "--lm-head",
            "q4",
            "--embeddings",
            "q4",
            "--ternary-layout",
            "t2",
        ],
    );
    let gg = d.path().join("q4.gguf");
    let back = d.path().join("back.bnet");
    pack(&bnet, &gg, &[]);
    let bytes = std::fs::read(&gg).unwrap();
    let g = Gguf::parse(&bytes, false).unwrap();
    for n in ["output.weight", "token_embd.weight"] {
        assert_eq!(g.tensor(n).unwrap().ty.name, "Q4_0", "{n}");
    }
    pack(&gg, &back, &["--ternary-layout", "t2"]);
    let (a, b) = (
        BnetFile::open(&bnet).unwrap(),
        BnetFile::open(&back).unwrap(),
    );
    assert_eq!(b.index.version, (1, 1));
    for n in ["lm_head.weight", "model.embed_tokens.weight"] {
        let (ea, eb) = (a.index.get(n).unwrap(), b.index.get(n).unwrap());
        assert_eq!(eb.dtype.name(), "Q4", "{n}");
        assert_eq!(
            ea.blake3, eb.blake3,
            "{n}: bytes differ after the round trip"
        );
    }
    verifies_against(&back, &bnet);
}
