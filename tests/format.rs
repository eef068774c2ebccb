//! The .bnet container as a contract: byte-exact layout, hostile input, O(1) open.

use bitnet::format::bnet::{self, ByteSource, DType, Index, Scale, ScaleOp, Writer};
use bitnet::Error;
use proptest::prelude::*;
use serde_json::json;
use std::borrow::Cow;
use std::io::{Cursor, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// A small container with one tensor of each kind.
fn sample() -> Vec<u8> {
    let mut w = Writer::new(Cursor::new(Vec::new()), "sample.bnet".as_ref()).unwrap();
    w.tensor(
        "norm",
        DType::F32,
        &[3],
        Scale::NONE,
        &[0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64],
    )
    .unwrap();
    let mut t2 = vec![0u8; 2 * 64];
    bitnet::quant::pack_t2_row(&[1, -1, 0, 0, 1], &mut t2[..64]);
    bitnet::quant::pack_t2_row(&[0, 0, 0, 0, -1], &mut t2[64..]);
    let scale = Scale {
        value: 0.5,
        op: ScaleOp::Divide,
        source_dtype: DType::BF16,
    };
    w.tensor("proj", DType::T2, &[2, 5], scale, &t2).unwrap();
    w.tensor("file:config.json", DType::U8, &[2], Scale::NONE, b"{}")
        .unwrap();
    let (c, len) = w
        .finish(&json!({"format": "bnet", "family": "test"}))
        .unwrap();
    let v = c.into_inner();
    assert_eq!(v.len() as u64, len);
    v
}

#[test]
fn layout_is_byte_exact() {
    let b = sample();
    assert_eq!(&b[..8], b"\x89BNET\r\n\x1a");
    assert_eq!(&b[8..12], &[1, 0, 0, 0]); // version 1.0
    assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 128);
    assert_eq!(
        u64::from_le_bytes(b[16..24].try_into().unwrap()),
        b.len() as u64
    );
    assert_eq!(u32::from_le_bytes(b[64..68].try_into().unwrap()), 64);
    // tensors at 128, 192 (128 + 12 padded to 64), 320 (192 + 128)
    let idx = Index::parse(&b[..]).unwrap();
    let offs: Vec<u64> = idx.entries.iter().map(|e| e.offset).collect();
    assert_eq!(offs, [128, 192, 320]);
    assert_eq!(&b[128..140], &[0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64]);
    assert!(b[140..192].iter().all(|&x| x == 0), "padding must be zero");
    assert_eq!(&b[192..197], &[0x56, 0x54, 0x55, 0x55, 0x56]);
    // the index starts at align8(320 + 2) = 328
    assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 328);
    assert_eq!(&b[328 + 8..328 + 12], &[0, 1, 0, 0]); // entry 0: dtype F32, ndim 1, no scale
    let e1 = &b[328 + 128..328 + 256];
    assert_eq!(&e1[8..12], &[16, 2, 2, 2]); // T2, 2-D, divide, BF16
    assert_eq!(f32::from_le_bytes(e1[64..68].try_into().unwrap()), 0.5);
    // Pin the whole file: any change to the layout changes this digest.
    assert_eq!(
        blake3::hash(&b).to_hex().as_str(),
        include_str!("data/sample.bnet.blake3").trim()
    );
}

#[test]
fn round_trip_and_verify() {
    let b = sample();
    let idx = Index::parse(&b[..]).unwrap();
    assert_eq!(idx.entries.len(), 3);
    assert_eq!(idx.get("proj").unwrap().shape, [2, 5]);
    assert_eq!(idx.get("proj").unwrap().scale.op, ScaleOp::Divide);
    assert!(bnet::verify(&idx, &b).ok());
}

#[test]
fn newer_major_version_is_rejected_by_name() {
    let mut b = sample();
    b[8] = 2;
    match Index::parse(&b[..]) {
        Err(Error::Version {
            found: 2,
            supported: 1,
        }) => {}
        other => panic!("expected a version error, got {other:?}"),
    }
}

#[test]
fn wrong_magic_is_rejected() {
    let mut b = sample();
    b[1] = b'X';
    let e = Index::parse(&b[..]).unwrap_err().to_string();
    assert!(e.contains("magic"), "{e}");
}

#[test]
fn every_truncation_is_rejected() {
    let b = sample();
    for n in 0..b.len() {
        assert!(
            Index::parse(&b[..n]).is_err(),
            "accepted a file truncated to {n} bytes"
        );
    }
}

/// Flipping any bit anywhere is either rejected at open or caught by verify, never accepted.
#[test]
fn every_bit_flip_is_caught() {
    let b = sample();
    for i in 0..b.len() {
        for bit in 0..8 {
            let mut c = b.clone();
            c[i] ^= 1 << bit;
            if let Ok(idx) = Index::parse(&c[..]) {
                assert!(
                    !bnet::verify(&idx, &c).ok(),
                    "flip of byte {i} bit {bit} went unnoticed"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random garbage never panics the reader.
    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600), keep_header in any::<bool>()) {
        let mut d = data;
        if keep_header && d.len() >= 128 {
            d[..128].copy_from_slice(&sample()[..128]);
        }
        let _ = Index::parse(&d[..]);
    }

    /// Write -> read round trips over random shapes and dtypes.
    #[test]
    fn write_read_round_trip(shapes in proptest::collection::vec((1u64..5, 1u64..700, 0usize..5), 1..6)) {
        let mut w = Writer::new(Cursor::new(Vec::new()), "p.bnet".as_ref()).unwrap();
        let mut want = Vec::new();
        for (i, &(r, k, d)) in shapes.iter().enumerate() {
            let dtype = [DType::F32, DType::BF16, DType::T2, DType::B1, DType::Q4][d];
            let scale = if dtype.is_packed() { Scale { value: 1.5, op: ScaleOp::Multiply, source_dtype: DType::F32 } } else { Scale::NONE };
            let len = dtype.data_len(&[r, k]).unwrap() as usize;
            let data: Vec<u8> = match dtype {
                DType::T2 => vec![0x55; len],
                DType::B1 => vec![0; len],
                DType::Q4 => {
                    let x: Vec<f32> = (0..k).map(|j| (j as f32 - 9.5) * (i + 1) as f32).collect();
                    let rb = DType::Q4.row_bytes(k).unwrap() as usize;
                    let mut v = vec![0u8; len];
                    v.chunks_mut(rb).for_each(|row| bitnet::quant::quantize_q4_row(&x, row).unwrap());
                    v
                }
                _ => (0..len).map(|j| (j * 7 + i) as u8 & 0x3f).collect(),
            };
            w.tensor(&format!("t{i}"), dtype, &[r, k], scale, &data).unwrap();
            want.push((dtype, vec![r, k], data));
        }
        w.tensor("file:config.json", DType::U8, &[1], Scale::NONE, b" ").unwrap();
        let (c, _) = w.finish(&json!({})).unwrap();
        let b = c.into_inner();
        let idx = Index::parse(&b[..]).unwrap();
        prop_assert!(bnet::verify(&idx, &b).ok());
        prop_assert_eq!(idx.version.1, u16::from(want.iter().any(|w| w.0 == DType::Q4)));
        for (i, (dtype, shape, data)) in want.iter().enumerate() {
            let e = &idx.entries[i];
            prop_assert_eq!(e.dtype, *dtype);
            prop_assert_eq!(&e.shape, shape);
            prop_assert_eq!(e.offset % 64, 0);
            prop_assert_eq!(idx.data(&b, e), &data[..]);
        }
    }
}

/// A sink that turns all-zero writes into holes, so a multi-GB container costs no disk.
struct Sparse(std::fs::File);
impl Write for Sparse {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.iter().all(|&b| b == 0) {
            self.0.seek(SeekFrom::Current(buf.len() as i64))?;
            Ok(buf.len())
        } else {
            self.0.write(buf)
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
impl Seek for Sparse {
    fn seek(&mut self, p: SeekFrom) -> std::io::Result<u64> {
        self.0.seek(p)
    }
}

/// Reads through `pread` and counts every byte it hands out.
struct Counting {
    file: std::fs::File,
    read: AtomicU64,
}
impl ByteSource for Counting {
    fn len(&self) -> u64 {
        self.file.metadata().unwrap().len()
    }
    fn read_at(&self, offset: u64, len: usize) -> bitnet::Result<Cow<'_, [u8]>> {
        use std::os::unix::fs::FileExt;
        let mut v = vec![0u8; len];
        self.file
            .read_exact_at(&mut v, offset)
            .map_err(|e| Error::Io {
                path: "sparse".into(),
                source: e,
            })?;
        self.read.fetch_add(len as u64, Ordering::Relaxed);
        Ok(Cow::Owned(v))
    }
}

/// Opening reads the header, index and metadata only: the same few bytes for 5 GiB of tensors
/// as for a kilobyte.
#[test]
fn open_does_not_read_tensor_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bnet");
    let f = std::fs::File::create(&path).unwrap();
    let mut w = Writer::new(Sparse(f), &path).unwrap();
    let zeros = vec![0u8; 64 << 20];
    for t in 0..5 {
        // 5 tensors of 1 GiB each, written as holes
        w.begin_tensor(
            &format!("model.layers.{t}.weight"),
            DType::BF16,
            &[16384, 32768],
            Scale::NONE,
        )
        .unwrap();
        for _ in 0..16 {
            w.write(&zeros).unwrap();
        }
        w.end_tensor().unwrap();
    }
    w.tensor("file:config.json", DType::U8, &[2], Scale::NONE, b"{}")
        .unwrap();
    let (mut sink, len) = w.finish(&json!({"format": "bnet"})).unwrap();
    sink.flush().unwrap();
    sink.0.set_len(len).unwrap();
    assert!(len > 5 << 30);
    let src = Counting {
        file: std::fs::File::open(&path).unwrap(),
        read: AtomicU64::new(0),
    };
    let idx = Index::parse(&src).unwrap();
    assert_eq!(idx.entries.len(), 6);
    let read = src.read.load(Ordering::Relaxed);
    assert!(read < 4096, "open read {read} bytes of a {len}-byte file");
    // and through the real mmap path
    let f = bitnet::format::BnetFile::open(&path).unwrap();
    assert_eq!(f.index.entries.len(), 6);
}

/// Re-computes the header check after a header field was patched (formats/bnet.md §2).
fn reseal(d: &mut [u8]) {
    let check = blake3::hash(&d[..112]);
    d[112..128].copy_from_slice(&check.as_bytes()[..16]);
}

/// A container with one Q4 tensor `[rows, k]` of the given bytes (and an I8 one when asked).
fn q4_container(k: u64, q4: &[u8]) -> Vec<u8> {
    let rows = q4.len() as u64 / DType::Q4.row_bytes(k).unwrap();
    let mut w = Writer::new(Cursor::new(Vec::new()), "q4.bnet".as_ref()).unwrap();
    w.tensor("head", DType::Q4, &[rows, k], Scale::NONE, q4)
        .unwrap();
    w.tensor("file:config.json", DType::U8, &[2], Scale::NONE, b"{}")
        .unwrap();
    w.finish(&json!({})).unwrap().0.into_inner()
}

/// formats/bnet.md §4.3's worked example, byte for byte, and back.
#[test]
fn q4_worked_example_is_byte_exact() {
    let mut b = [0u8; 18];
    bitnet::quant::quantize_q4_row(&[-4.0, 1.0, 0.6], &mut b).unwrap();
    let mut want = vec![0x00, 0x38, 0x80, 0x8A, 0x89];
    want.extend([0x88; 13]);
    assert_eq!(b.to_vec(), want);
    let mut x = [9f32; 3];
    bitnet::quant::dequantize_q4_row(&b, &mut x);
    assert_eq!(x, [-4.0, 1.0, 0.5]);
    assert_eq!(DType::Q4.row_bytes(3), Some(18));
    assert_eq!(DType::Q4.row_bytes(2560), Some(80 * 18));
    assert_eq!(DType::Q4.row_bytes(33), Some(36));
    // a scale beyond f16 is refused, never stored as infinity
    assert_eq!(bitnet::quant::quantize_q4_row(&[1e6, 0.0], &mut b), Err(0));
}

/// Q4 rows round-trip to within half a step of their block's scale, except values beyond
/// +7.5 steps (the other side of the largest magnitude, which ggml's rule maps to −8), which
/// clamp to code 7.
#[test]
fn q4_quantization_error_is_half_a_step() {
    let x: Vec<f32> = (0..100)
        .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 13.0)
        .collect();
    let mut b = vec![0u8; 4 * 18];
    bitnet::quant::quantize_q4_row(&x, &mut b).unwrap();
    let mut y = vec![0f32; 100];
    bitnet::quant::dequantize_q4_row(&b, &mut y);
    for (blk, (xs, ys)) in b.chunks(18).zip(x.chunks(32).zip(y.chunks(32))) {
        let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        for (a, b) in xs.iter().zip(ys) {
            let clamped = a / d > 7.5 && *b == 7.0 * d;
            assert!(
                (a - b).abs() <= d.abs() / 2.0 + 1e-6 || clamped,
                "{a} vs {b} (d {d})"
            );
        }
    }
}

/// Q4 needs version 1.1: the writer stamps it, files without Q4 stay 1.0, a 1.0 header on a
/// Q4 tensor is refused at open, and verify enforces the data rules (finite scale, padding).
#[test]
fn q4_version_and_data_rules() {
    assert_eq!(&sample()[8..12], &[1, 0, 0, 0], "no Q4: still 1.0");
    let mut rows = vec![0u8; 2 * 18];
    bitnet::quant::quantize_q4_row(&[1.0, -2.0, 3.0], &mut rows[..18]).unwrap();
    bitnet::quant::quantize_q4_row(&[0.5, 0.25, -0.125], &mut rows[18..]).unwrap();
    let good = q4_container(3, &rows);
    assert_eq!(&good[8..12], &[1, 0, 1, 0], "Q4: version 1.1");
    let idx = Index::parse(&good[..]).unwrap();
    assert_eq!(idx.version, (1, 1));
    assert!(bnet::verify(&idx, &good).ok());

    let mut old = good.clone();
    old[10] = 0;
    reseal(&mut old);
    let e = Index::parse(&old[..]).unwrap_err().to_string();
    assert!(e.contains("uses data type Q4, which needs 1.1"), "{e}");

    for (what, patch) in [
        ("NaN scale", (18usize, [0x00u8, 0x7E])),
        ("padding nibble", (18 + 2 + 5, [0x87, 0x88])),
    ] {
        let mut bad = rows.clone();
        bad[patch.0..patch.0 + 2].copy_from_slice(&patch.1);
        let b = q4_container(3, &bad);
        let idx = Index::parse(&b[..]).unwrap();
        let r = bnet::verify(&idx, &b);
        assert!(r.bad_tensors.is_empty(), "{what}: checksums are right");
        assert!(
            r.problems.iter().any(|p| p.contains("head: row 1")),
            "{what}: {:?}",
            r.problems
        );
    }
}

/// An I8 tensor without a matching `.row_scale` is refused at open (formats/bnet.md §4): a
/// runner indexing a short scale vector would otherwise read out of bounds.
#[test]
fn i8_without_its_row_scale_is_refused_at_open() {
    for scale in [
        None,
        Some((DType::F32, vec![2u64])),
        Some((DType::F16, vec![3])),
    ] {
        let mut w = Writer::new(Cursor::new(Vec::new()), "i8.bnet".as_ref()).unwrap();
        w.tensor("head", DType::I8, &[3, 4], Scale::NONE, &[1; 12])
            .unwrap();
        if let Some((d, shape)) = &scale {
            let len = d.data_len(shape).unwrap() as usize;
            w.tensor("head.row_scale", *d, shape, Scale::NONE, &vec![0; len])
                .unwrap();
        }
        w.tensor("file:config.json", DType::U8, &[2], Scale::NONE, b"{}")
            .unwrap();
        let b = w.finish(&json!({})).unwrap().0.into_inner();
        let e = Index::parse(&b[..]).unwrap_err().to_string();
        assert!(
            e.contains("\"head.row_scale\" (F32, shape [3])"),
            "{scale:?}: {e}"
        );
    }
}

/// Head counts and sizes that would divide by zero or give the runner's KV cache rows of no
/// width are rejected with a message naming them, never a panic; RoPE needs an even head_dim.
#[test]
fn head_shapes_are_checked() {
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("fixtures/bitnet-latent/config.json").expect("fixture config"),
    )
    .expect("json");
    assert!(bitnet::model::ModelConfig::from_hf(&base).is_ok());
    for (key, bad, says) in [
        ("head_dim", 3, "head_dim 3"),
        ("hidden_size", 0, "positive integer \"hidden_size\""),
        (
            "num_attention_heads",
            0,
            "positive integer \"num_attention_heads\"",
        ),
    ] {
        let mut c = base.clone();
        c[key] = json!(bad);
        if key == "hidden_size" {
            c.as_object_mut().expect("object").remove("head_dim");
        }
        let e = bitnet::model::ModelConfig::from_hf(&c).expect_err("bad config accepted");
        assert!(e.contains(says), "{key} {bad}: {e}");
    }
}

/// A config.json value of the wrong type is refused with its key named, never replaced by the
/// family's default (which had silently packed `"hidden_act": 5` as silu and
/// `"rms_norm_eps": "x"` as 1e-6); `null` means the default only where transformers reads
/// `None` that way.
#[test]
fn config_values_of_the_wrong_type_are_refused_by_name() {
    use bitnet::model::{Activation, ModelConfig};
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("fixtures/bitnet-latent/config.json").expect("fixture config"),
    )
    .expect("json");
    for (key, bad) in [
        ("hidden_act", json!(5)),
        ("hidden_act", json!(null)),
        ("rms_norm_eps", json!("1e-5")),
        ("rope_theta", json!("abc")),
        ("attention_bias", json!("true")),
        ("mlp_bias", json!(1)),
        ("num_key_value_heads", json!("2")),
        ("head_dim", json!(16.5)),
        ("max_position_embeddings", json!(256.0)),
        ("max_position_embeddings", json!(null)),
        ("tie_word_embeddings", json!("yes")),
        ("bos_token_id", json!([1])),
        ("eos_token_id", json!([2, "x"])),
        ("model_type", json!(["bitnet"])),
    ] {
        let mut c = base.clone();
        c[key] = bad.clone();
        let e = ModelConfig::from_hf(&c).expect_err("bad config accepted");
        let says = format!("\"{key}\" is {bad}, not");
        assert!(e.contains(&says), "{key} {bad}: {e}");
    }
    // a key without a default is not advised away
    let mut c = base.clone();
    c["vocab_size"] = json!("512");
    let e = ModelConfig::from_hf(&c).expect_err("string vocab_size accepted");
    assert!(e.ends_with("not a positive integer; correct it"), "{e}");
    let mut c = base.clone();
    c["quantization_config"] = json!({"quant_method": "bitnet", "linear_class": 3});
    let e = ModelConfig::from_hf(&c).expect_err("bad linear_class accepted");
    assert!(
        e.contains("\"quantization_config.linear_class\" is 3"),
        "{e}"
    );
    // null where transformers reads None as the default
    let mut c = base.clone();
    for key in [
        "num_key_value_heads",
        "head_dim",
        "bos_token_id",
        "eos_token_id",
    ] {
        c[key] = json!(null);
    }
    let (cfg, _) = ModelConfig::from_hf(&c).expect("nulls read as defaults");
    assert_eq!(cfg.num_key_value_heads, cfg.num_attention_heads);
    assert_eq!(cfg.head_dim * cfg.num_attention_heads, cfg.hidden_size);
    assert!(cfg.bos_token_id.is_none() && cfg.eos_token_id.is_empty());
    // an absent activation is the family's default, as in transformers (BitNetConfig: relu2)
    let mut c = base.clone();
    c.as_object_mut().expect("object").remove("hidden_act");
    assert_eq!(
        ModelConfig::from_hf(&c).expect("default").0.hidden_act,
        Activation::Relu2
    );
    // a latent BitNet checkpoint without quantization_config still reads as one; a directory
    // that bitnet-pack unpacked (marked) does not
    let mut c = base.clone();
    c.as_object_mut()
        .expect("object")
        .remove("quantization_config");
    assert!(ModelConfig::from_hf(&c).is_ok());
    c[bitnet::model::UNPACKED_KEY] = json!("...");
    let e = ModelConfig::from_hf(&c).expect_err("unpacked directory accepted");
    assert!(e.contains("unpacked from a .bnet"), "{e}");
}

/// formats/bnet.md §4.4's worked example, byte for byte, and back; the size formula.
#[test]
fn tl_worked_example_is_byte_exact() {
    let w = [1i8, -1, 0, 0, 1];
    let b = bitnet::quant::pack_tl(1, 5, |_, out| out.copy_from_slice(&w));
    let mut want = vec![0u8; 160];
    want[0] = 0x02; // row 0: group 1 negated
    want[32] = 0x99; // groups 0 and 1: index 9
    want[96] = 0x09; // group 4: index 9
    assert_eq!(b, want);
    let mut back = [7i8; 5];
    bitnet::quant::unpack_tl_row(&b, 5, 0, &mut back);
    assert_eq!(back, w);
    assert_eq!(DType::TL.data_len(&[1, 5]), Some(160));
    assert_eq!(DType::TL.data_len(&[2560, 2560]), Some(80 * 107 * 160));
    assert_eq!(DType::TL.data_len(&[33, 24]), Some(2 * 160));
    assert_eq!(DType::TL.data_len(&[u64::MAX, 24]), None);
    assert_eq!(DType::from_id(18), Some(DType::TL));
}

/// A TL tensor makes the file 1.2; a 1.1 header over TL data is refused at open.
#[test]
fn tl_needs_version_1_2() {
    let data = bitnet::quant::pack_tl(1, 5, |_, out| out.copy_from_slice(&[1, -1, 0, 0, 1]));
    let mut w = Writer::new(Cursor::new(Vec::new()), "x.bnet".as_ref()).unwrap();
    let s = Scale {
        value: 1.5,
        op: ScaleOp::Divide,
        source_dtype: DType::F32,
    };
    w.tensor("w", DType::TL, &[1, 5], s, &data).unwrap();
    w.tensor("file:config.json", DType::U8, &[2], Scale::NONE, b"{}")
        .unwrap();
    let mut good = w.finish(&json!({})).unwrap().0.into_inner();
    assert_eq!(&good[8..12], &[1, 0, 2, 0], "TL: version 1.2");
    let idx = Index::parse(&good[..]).unwrap();
    assert!(bnet::verify(&idx, &good).ok());
    good[10] = 1;
    reseal(&mut good);
    let e = Index::parse(&good[..]).unwrap_err().to_string();
    assert!(e.contains("uses data type TL, which needs 1.2"), "{e}");
}
