//! Every fixture family (tiny real checkpoints trained and saved by transformers, see
//! fixtures/README.md) packs, verifies, and unpacks to exactly the weights transformers computes
//! in float32 (golden.safetensors, made by fixtures/make_fixtures.py).
//!
//! Tolerance, stated once: ternary and binary codes must be identical. Scales of prepacked
//! checkpoints are copied, so they must be bit-identical. Scales that we compute from latent
//! weights (absmean s = 1/mean|W|, binary beta = mean|W|) come from a mean accumulated in f64 and
//! rounded once; torch reduces in f32 and may land one ulp away (its own compiled and eager
//! paths differ by one ulp, ../shared/reference/transformers-bitnet-semantics.md §2). torch's
//! f32 reduction error grows with the tensor size (about log2(n) roundings), so those may differ
//! by at most `LATENT_ULPS` ulps: 1 was enough for the 64-wide fixtures, the 256-wide ones
//! (131072-weight tensors) show 2.

use assert_cmd::Command;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

const FAMILIES: &[(&str, &str, bool)] = &[
    // (fixture dir, detected family, latent)
    ("bitnet-latent", "bitnet-b1.58-latent", true),
    ("bitnet-packed", "bitnet-b1.58-packed", false),
    ("llama-bitlinear", "llama-ternary-packed", false),
    ("onebitllm", "1bitllm-latent", true),
    ("llama-bitlinear-256", "llama-ternary-packed", false),
    ("onebitllm-256", "1bitllm-latent", true),
];

/// Largest ulp distance allowed between our absmean scales (f64 mean) and torch's (f32 mean).
const LATENT_ULPS: u32 = 2;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("{name} missing"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn i8s(st: &SafeTensors, name: &str) -> Vec<i8> {
    st.tensor(name)
        .unwrap()
        .data()
        .iter()
        .map(|&b| b as i8)
        .collect()
}

/// Distance in units in the last place; -0 and +0 are the same weight (torch's dequantized
/// zeros keep the sign of the latent weight, ours are +0).
fn ulps(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

fn pack(input: &Path, out: &Path, extra: &[&str]) -> String {
    let o = Command::cargo_bin("bitnet-pack")
        .unwrap()
        .arg(input)
        .arg(out)
        .args(extra)
        .arg("--force")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err
}

const PROJ: &[&str] = &[
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Splits an unpacked weight into codes and its one magnitude.
fn codes_and_magnitude(w: &[f32]) -> (Vec<i8>, f32) {
    let mag = w.iter().map(|v| v.abs()).fold(0f32, f32::max);
    let codes = w
        .iter()
        .map(|&v| {
            assert!(v == 0.0 || v.abs() == mag, "{v} is neither 0 nor +-{mag}");
            if v == 0.0 {
                0
            } else if v > 0.0 {
                1
            } else {
                -1
            }
        })
        .collect();
    (codes, mag)
}

#[test]
fn every_family_unpacks_to_what_transformers_computes() {
    let d = tempfile::tempdir().unwrap();
    for &(dir, family, latent) in FAMILIES {
        let src = fixture(dir);
        let bnet = d.path().join(format!("{dir}.bnet"));
        let msg = pack(&src, &bnet, &[]);
        assert!(
            msg.contains(&format!("detected {family} checkpoint")),
            "{msg}"
        );
        let o = Command::cargo_bin("bitnet-inspect")
            .unwrap()
            .arg(&bnet)
            .arg("--verify")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

        let un = d.path().join(format!("{dir}.safetensors"));
        pack(&bnet, &un, &[]);
        let un_bytes = std::fs::read(&un).unwrap();
        let un = SafeTensors::deserialize(&un_bytes).unwrap();
        let g_bytes = std::fs::read(src.join("golden.safetensors")).unwrap();
        let g = SafeTensors::deserialize(&g_bytes).unwrap();
        let (mut exact_scales, mut n) = (0, 0);
        for layer in 0..2 {
            for p in PROJ {
                let name = format!("model.layers.{layer}.{p}.weight");
                let ours = f32s(&un, &name);
                let want = f32s(&g, &format!("{name}.dequant"));
                let gold_codes = i8s(&g, &format!("{name}.codes"));
                let (codes, _) = codes_and_magnitude(&ours);
                assert_eq!(codes, gold_codes, "{dir}: ternary codes of {name}");
                n += 1;
                if ours == want {
                    exact_scales += 1;
                } else {
                    assert!(
                        latent,
                        "{dir}: {name} of a prepacked checkpoint must be bit-exact"
                    );
                    let worst = ours
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| ulps(*a, *b))
                        .max()
                        .unwrap();
                    assert!(
                        worst <= LATENT_ULPS,
                        "{dir}: {name} differs by {worst} ulps"
                    );
                }
            }
        }
        eprintln!("{dir}: {n} projections, codes identical, {exact_scales} bit-identical scales");
        if !latent {
            continue;
        }
        // binary (original BitNet) from the same latent weights
        let bb = d.path().join(format!("{dir}-bin.bnet"));
        pack(&src, &bb, &["--quant", "binary"]);
        let ub = d.path().join(format!("{dir}-bin.safetensors"));
        pack(&bb, &ub, &[]);
        let ub_bytes = std::fs::read(&ub).unwrap();
        let ub = SafeTensors::deserialize(&ub_bytes).unwrap();
        for layer in 0..2 {
            for p in PROJ {
                let name = format!("model.layers.{layer}.{p}.weight");
                let (codes, beta) = codes_and_magnitude(&f32s(&ub, &name));
                assert!(codes.iter().all(|&c| c != 0));
                assert_eq!(
                    codes,
                    i8s(&g, &format!("{name}.binary_codes")),
                    "{dir}: binary codes of {name}"
                );
                let gb = f32s(&g, &format!("{name}.binary_scale"))[0];
                assert!(
                    ulps(beta, gb) <= 1,
                    "{dir}: binary scale of {name}: {beta} vs {gb}"
                );
            }
        }
    }
}

/// The packed size equals the formula of formats/bnet.md §9, computed here from shapes alone.
#[test]
fn packed_size_matches_the_spec_formula() {
    let d = tempfile::tempdir().unwrap();
    for &(dir, _, _) in FAMILIES {
        let bnet = d.path().join(format!("{dir}.bnet"));
        pack(&fixture(dir), &bnet, &["--quiet"]);
        let f = bitnet::format::BnetFile::open(&bnet).unwrap();
        let (mut pos, mut names) = (128u64, 0u64);
        for e in &f.index.entries {
            let (k, rows) = (
                *e.shape.last().unwrap(),
                e.shape.iter().rev().skip(1).product::<u64>(),
            );
            let len = match e.dtype.name() {
                "T2" => rows * k.div_ceil(256) * 64,
                "TL" => rows.div_ceil(32) * k.div_ceil(24) * 160,
                "B1" => rows * k.div_ceil(256) * 32,
                "F32" => rows * k * 4,
                "F16" | "BF16" => rows * k * 2,
                _ => rows * k,
            };
            assert_eq!(e.len, len, "{dir}: {}", e.name);
            pos = pos.div_ceil(64) * 64 + len;
            names += e.name.len() as u64;
        }
        let meta_len = serde_json::to_vec_pretty(&f.index.meta).unwrap().len() as u64;
        let want = pos.div_ceil(8) * 8 + 128 * f.index.entries.len() as u64 + names + meta_len;
        assert_eq!(std::fs::metadata(&bnet).unwrap().len(), want, "{dir}");
    }
}
