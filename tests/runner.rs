//! The f32 reference against transformers' golden logits, and the fast runner against the
//! reference on every kernel path, for every fixture family.
//!
//! Tolerances (why: ../shared/reference/transformers-bitnet-semantics.md §4): two correct
//! float32 implementations agree to ~1e-5 except where a 1-ulp difference moves one activation
//! across an int8 rounding boundary, which on these small trained models moves logits by up to
//! ~0.1. So: every position's max |Δ logit| ≤ `FLIP_BAND` (0.15), most positions ≤ `CLEAN`
//! (1e-4), and greedy tokens must agree wherever the golden top-1/top-2 margin exceeds
//! 2 · `FLIP_BAND`.

use bitnet::format::bnet::DType;
use bitnet::format::BnetFile;
use bitnet::hf::{Checkpoint, Sources, TokenizerFiles};
use bitnet::kernels::Kernel;
use bitnet::pack::{pack, Layout, PackOptions, QuantKind};
use bitnet::runner::{fast::Session, reference, weights::Weights};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

const FLIP_BAND: f32 = 0.15;
const CLEAN: f32 = 1e-4;
const FIXTURES: &[&str] = &[
    "bitnet-latent",
    "bitnet-packed",
    "llama-bitlinear",
    "onebitllm",
    "llama-bitlinear-256",
    "onebitllm-256",
];
/// The fixtures with latent (float) weights, which `--quant binary` can binarize.
const LATENT: &[&str] = &["bitnet-latent", "onebitllm", "onebitllm-256"];

/// `dir` binarized (B1 weights, scale β = mean|W|): transformers has no class for these, so
/// the fast runner is checked against the reference only.
fn binary(dir: &str, tmp: &Path) -> PathBuf {
    let opts = PackOptions {
        quant: QuantKind::Binary,
        ..Default::default()
    };
    packed_with(dir, tmp, &opts)
}

fn packed(dir: &str, tmp: &Path) -> PathBuf {
    packed_with(dir, tmp, &PackOptions::default())
}

fn packed_with(dir: &str, tmp: &Path, opts: &PackOptions) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(dir);
    pack_dir(&src, dir, tmp, opts, true)
}

fn pack_dir(src: &Path, dir: &str, tmp: &Path, opts: &PackOptions, tokenizer: bool) -> PathBuf {
    let ck = Checkpoint::open(
        src,
        &Sources {
            tokenizer_files: if tokenizer {
                TokenizerFiles::Required
            } else {
                TokenizerFiles::IfPresent
            },
            ..Default::default()
        },
    )
    .unwrap();
    let out = tmp.join(format!("{dir}-{:?}-{:?}.bnet", opts.quant, opts.layout));
    let f = std::fs::File::create(&out).unwrap();
    pack(&ck, f, &out, opts, &|_| {}).unwrap();
    out
}

struct Golden {
    ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
    greedy: Vec<u32>,
}

fn goldens(dir: &str) -> Vec<Golden> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(dir)
        .join("golden.safetensors");
    let b = std::fs::read(p).unwrap();
    let st = SafeTensors::deserialize(&b).unwrap();
    let i64s = |n: &str| -> Vec<u32> {
        st.tensor(n)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    };
    (0..3)
        .map(|k| {
            let ids = i64s(&format!("prompt{k}.ids"));
            let t = st.tensor(&format!("prompt{k}.logits")).unwrap();
            let v = t.shape()[1];
            let flat: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            Golden {
                logits: flat.chunks_exact(v).map(|r| r.to_vec()).collect(),
                greedy: i64s(&format!("prompt{k}.greedy")),
                ids,
            }
        })
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .fold(0, |b, (i, &v)| if v > x[b] { i } else { b })
}

fn margin(x: &[f32]) -> f32 {
    let i = argmax(x);
    let second = x
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, &v)| v)
        .fold(f32::NEG_INFINITY, f32::max);
    x[i] - second
}

#[test]
fn reference_matches_transformers_golden_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in FIXTURES {
        let f = BnetFile::open(&packed(dir, tmp.path())).unwrap();
        let w = Weights::load(&f).unwrap();
        let (mut clean, mut total, mut worst) = (0, 0, 0f32);
        for g in goldens(dir) {
            let got = reference::logits(&w, &g.ids).unwrap();
            for (pos, (a, b)) in got.iter().zip(&g.logits).enumerate() {
                let d = max_abs(a, b);
                worst = worst.max(d);
                total += 1;
                if d <= CLEAN {
                    clean += 1;
                }
                assert!(d <= FLIP_BAND, "{dir}: position {pos} differs by {d}");
            }
            // greedy continuation, recomputed from scratch each step
            let mut ids = g.ids.clone();
            for (step, &want) in g.greedy.iter().enumerate() {
                let l = reference::logits(&w, &ids).unwrap();
                let last = l.last().unwrap();
                let tok = argmax(last) as u32;
                if margin(last) > 2.0 * FLIP_BAND {
                    assert_eq!(tok, want, "{dir}: greedy step {step}");
                } else if tok != want {
                    break; // a near-tie: the continuations may legitimately part here
                }
                ids.push(tok);
            }
        }
        eprintln!("{dir}: {clean}/{total} positions within {CLEAN}, worst {worst:.2e}");
        assert!(
            clean * 10 >= total * 8,
            "{dir}: only {clean}/{total} positions within {CLEAN}"
        );
    }
}

#[test]
fn fast_runner_matches_reference_on_every_kernel_path() {
    let tmp = tempfile::tempdir().unwrap();
    let binaries = LATENT.iter().map(|d| (*d, binary(d, tmp.path())));
    for (dir, path) in FIXTURES
        .iter()
        .map(|d| (*d, packed(d, tmp.path())))
        .chain(binaries)
    {
        let f = BnetFile::open(&path).unwrap();
        let w = Weights::load(&f).unwrap();
        for g in goldens(dir) {
            let want = reference::logits(&w, &g.ids).unwrap();
            for kern in Kernel::all_available() {
                // batched prompt
                let mut s = Session::new(&w, kern);
                let batched = s.forward(&g.ids, true).unwrap();
                for (pos, (a, b)) in batched.iter().zip(&want).enumerate() {
                    let d = max_abs(a, b);
                    assert!(
                        d <= 1e-4,
                        "{dir} {}: batched position {pos} differs by {d}",
                        kern.name()
                    );
                }
                // token by token through the KV cache: the same arithmetic as the batch, so
                // the same bits, whatever the number of decode threads (3 on 2 cores exercises
                // the barrier's yield path and uneven claims; 9, more than twice the fixtures' 4
                // query heads, threads whose share of heads is empty inside a kv head's group)
                for threads in [1, 3, 9] {
                    let decoded = decode_in_pool(&w, kern, &g.ids, threads);
                    for (pos, got) in decoded.iter().enumerate() {
                        let d = max_abs(got, &want[pos]);
                        assert!(
                            d <= 1e-4,
                            "{dir} {}: decode position {pos} differs by {d}",
                            kern.name()
                        );
                        assert!(
                            bits(got) == bits(&batched[pos]),
                            "{dir} {} {threads} threads: decode position {pos} is not bit-identical to the batch",
                            kern.name()
                        );
                    }
                }
            }
        }
    }
}

/// A binarized latent fixture runs on one-bit weights: every projection is B1, and its
/// reference logits are not the ternary model's (the runner cannot have read the file as
/// ternary); the fast runner's agreement with the reference is checked with every family
/// above.
#[test]
fn binary_models_run_on_one_bit_weights() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in LATENT {
        let (bf, tf) = (binary(dir, tmp.path()), packed(dir, tmp.path()));
        let (bf, tf) = (BnetFile::open(&bf).unwrap(), BnetFile::open(&tf).unwrap());
        let (bw, tw) = (Weights::load(&bf).unwrap(), Weights::load(&tf).unwrap());
        for l in &bw.layers {
            for p in [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down] {
                assert_eq!(p.dtype, DType::B1, "{dir}");
            }
        }
        let ids = &goldens(dir)[0].ids;
        let (b, t) = (
            reference::logits(&bw, ids).unwrap(),
            reference::logits(&tw, ids).unwrap(),
        );
        let d = b
            .iter()
            .zip(&t)
            .map(|(b, t)| max_abs(b, t))
            .fold(0f32, f32::max);
        assert!(
            d > 0.1,
            "{dir}: binary and ternary logits differ by only {d}"
        );
        assert!(b.iter().flatten().all(|x| x.is_finite()), "{dir}");
    }
}

/// The bits of `v`, for exact comparisons.
fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `ids` decoded one token at a time through the KV cache in a pool of `threads` threads: each
/// position's logits.
fn decode_in_pool(w: &Weights, kern: Kernel, ids: &[u32], threads: usize) -> Vec<Vec<f32>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut s = Session::new(w, kern);
    if threads == 3 {
        // a reserved cache (as bitnet-run and verify make) decodes the same bits
        s.reserve(ids.len());
    }
    ids.iter()
        .map(|&id| pool.install(|| s.forward(&[id], false)).unwrap().remove(0))
        .collect()
}

/// A reservation whose bytes overflow the address space is refused with a panic, not
/// allocated short (its size once wrapped to 2 MiB).
#[test]
#[should_panic(expected = "a KV cache within the address space")]
fn kv_cache_refuses_a_reservation_past_the_address_space() {
    bitnet::runner::ops::KvCache::new(1, 1, 16).reserve((1 << 58) + (1 << 15));
}

/// The KV cache holds every pushed row of every layer in place through a reservation, growth
/// past it, and a reservation made after rows were pushed; the second case is large enough
/// (8 MiB) to be allocated as huge pages.
#[test]
fn kv_cache_keeps_its_rows_through_reserve_and_growth() {
    use bitnet::runner::ops::KvCache;
    for (heads, hd, batches) in [
        (3usize, 8usize, [1usize, 19, 50, 7, 73]),
        (2, 128, [1, 900, 3, 1100, 96]),
    ] {
        let layers = 2;
        let row = |l: usize, p: usize| -> Vec<f32> {
            (0..heads * hd)
                .map(|i| (l * 1_000_000 + p * 1000 + i) as f32)
                .collect()
        };
        let (mut grown, mut reserved) = (
            KvCache::new(layers, heads, hd),
            KvCache::new(layers, heads, hd),
        );
        reserved.reserve(70);
        let mut p = 0;
        for (step, n) in batches.into_iter().enumerate() {
            if step == 3 {
                reserved.reserve(4000);
            }
            for l in 0..layers {
                let rows: Vec<f32> = (p..p + n).flat_map(|q| row(l, q)).collect();
                grown.push(l, &rows);
                reserved.push(l, &rows);
            }
            p += n;
        }
        assert_eq!(reserved.bytes(), (layers * p * heads * hd * 4) as u64);
        for l in 0..layers {
            for h in 0..heads {
                let want: Vec<f32> = (0..p)
                    .flat_map(|q| row(l, q)[h * hd..][..hd].to_vec())
                    .collect();
                assert_eq!(grown.head(l, h), &want[..], "layer {l} head {h}, grown");
                assert_eq!(
                    reserved.head(l, h),
                    &want[..],
                    "layer {l} head {h}, reserved"
                );
            }
        }
    }
}

/// A Q4, int8 or f16 head's logits of every position (one pass over the head for four positions at
/// a time, as `--ppl` and verify read them) are bit-identical to decoding token by token, which
/// reads the head as two streams, on every path.
#[test]
fn stored_head_batched_logits_are_the_decode_bits() {
    let tmp = tempfile::tempdir().unwrap();
    for (store, dtype) in [
        (bitnet::pack::StoreAs::Q4, DType::Q4),
        (bitnet::pack::StoreAs::I8, DType::I8),
        (bitnet::pack::StoreAs::F16, DType::F16),
    ] {
        let opts = PackOptions {
            lm_head: store,
            ..Default::default()
        };
        for dir in ["bitnet-latent", "llama-bitlinear-256"] {
            let f = BnetFile::open(&packed_with(dir, tmp.path(), &opts)).unwrap();
            let w = Weights::load(&f).unwrap();
            assert_eq!(w.lm_head.dtype, dtype);
            let ids = &goldens(dir)[0].ids;
            assert!(
                ids.len() >= 5,
                "the prompt takes a group of four and a remainder"
            );
            for kern in Kernel::all_available() {
                let batched = Session::new(&w, kern).forward(ids, true).unwrap();
                // decode's head claims rows in halves plus an odd row: 3 threads give odd claims
                // longer than one row
                for threads in [1, 3, 9] {
                    let decoded = decode_in_pool(&w, kern, ids, threads);
                    for (pos, got) in decoded.iter().enumerate() {
                        assert!(
                            bits(got) == bits(&batched[pos]),
                            "{dir} {} at {threads} threads: position {pos} of the batch is not \
                         decode's bits",
                            kern.name()
                        );
                    }
                }
            }
        }
    }
}

/// The TL layout holds the same weights as T2 and its kernels compute the same integer dots, so
/// a TL container gives the T2 container's logits bit for bit: the reference, the batched
/// prompt (four tokens per kernel call plus the remainder) and decoding, on every path.
#[test]
fn tl_layout_gives_the_t2_layouts_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let bits = |v: &[Vec<f32>]| {
        v.iter()
            .flat_map(|l| l.iter().map(|x| x.to_bits()))
            .collect::<Vec<_>>()
    };
    let tl = PackOptions {
        layout: Layout::TL,
        ..Default::default()
    };
    let t2 = PackOptions {
        layout: Layout::T2,
        ..Default::default()
    };
    // a synthetic model whose row counts are not multiples of 32 (partial TL blocks) nor, for
    // gate and up (202), of 4 (prompt tiles end in rows the four-row kernel does not take) and
    // whose row lengths are not multiples of 24 or 256, with prompts of 1, 2 (table lookup), 3
    // and 11 tokens (re-laid out as T2: four-token groups and a remainder)
    let odd = tmp.path().join("tiny-odd");
    let spec = bitnet::synth::SynthSpec {
        intermediate: 202,
        ..bitnet::synth::SynthSpec::tiny_odd()
    };
    bitnet::synth::write_checkpoint(&odd, &spec, 7).unwrap();
    let odd_prompts: Vec<Vec<u32>> = [1usize, 2, 3, 11]
        .iter()
        .map(|&n| (0..n as u32).map(|i| (i * 37 + 5) % 300).collect())
        .collect();
    let mut cases: Vec<(String, PathBuf, PathBuf, Vec<Vec<u32>>)> = FIXTURES
        .iter()
        .map(|dir| {
            let ids = goldens(dir).into_iter().map(|g| g.ids).collect();
            (
                dir.to_string(),
                packed_with(dir, tmp.path(), &t2),
                packed_with(dir, tmp.path(), &tl),
                ids,
            )
        })
        .collect();
    cases.push((
        "tiny-odd".into(),
        pack_dir(&odd, "tiny-odd", tmp.path(), &t2, false),
        pack_dir(&odd, "tiny-odd", tmp.path(), &tl, false),
        odd_prompts,
    ));
    for (dir, p2, pl, prompts) in &cases {
        let (ft2, ftl) = (BnetFile::open(p2).unwrap(), BnetFile::open(pl).unwrap());
        assert!(ftl.index.entries.iter().any(|e| e.dtype == DType::TL));
        assert!(ft2.index.entries.iter().any(|e| e.dtype == DType::T2));
        let (w2, wl) = (Weights::load(&ft2).unwrap(), Weights::load(&ftl).unwrap());
        for ids in prompts {
            let (r2, rl) = (
                reference::logits(&w2, ids).unwrap(),
                reference::logits(&wl, ids).unwrap(),
            );
            assert!(bits(&r2) == bits(&rl), "{dir}: reference differs");
            for kern in Kernel::all_available() {
                let batched = |w| Session::new(w, kern).forward(ids, true).unwrap();
                assert!(
                    bits(&batched(&w2)) == bits(&batched(&wl)),
                    "{dir} {}: prompt differs",
                    kern.name()
                );
                let decoded = |w| {
                    let mut s = Session::new(w, kern);
                    let v: Vec<Vec<f32>> = ids
                        .iter()
                        .map(|&id| s.forward(&[id], false).unwrap().remove(0))
                        .collect();
                    v
                };
                assert!(
                    bits(&decoded(&w2)) == bits(&decoded(&wl)),
                    "{dir} {}: decode differs",
                    kern.name()
                );
                // decode runs the one-row kernels, prompts the batched ones: the same bits
                assert!(
                    bits(&batched(&w2)) == bits(&decoded(&w2)),
                    "{dir} {}: prompt and decode differ",
                    kern.name()
                );
            }
        }
    }
}

/// gate and up in different layouts (a hand-made container; bitnet-pack never writes one) are
/// refused at load: decode pairs them unit by unit.
#[test]
fn mixed_gate_and_up_layouts_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = FIXTURES[0];
    let t2_opts = PackOptions {
        layout: Layout::T2,
        ..Default::default()
    };
    let t2 = BnetFile::open(&packed_with(dir, tmp.path(), &t2_opts)).unwrap();
    let tl_opts = PackOptions {
        layout: Layout::TL,
        ..Default::default()
    };
    let tl = BnetFile::open(&packed_with(dir, tmp.path(), &tl_opts)).unwrap();
    let out = tmp.path().join("mixed.bnet");
    let mut w =
        bitnet::format::bnet::Writer::new(std::fs::File::create(&out).unwrap(), &out).unwrap();
    for e in &tl.index.entries {
        let src = if e.name == "model.layers.0.mlp.up_proj.weight" {
            &t2
        } else {
            &tl
        };
        let e = src.index.get(&e.name).unwrap();
        w.tensor(&e.name, e.dtype, &e.shape, e.scale, src.data(e))
            .unwrap();
    }
    w.finish(&tl.index.meta).unwrap();
    let f = BnetFile::open(&out).unwrap();
    let err = Weights::load(&f).err().expect("refused").to_string();
    assert!(
        err.contains("layer 0: gate_proj is TL but up_proj is T2"),
        "{err}"
    );
}

/// Sessions decoding at the same time from several threads (a server, say) neither deadlock nor
/// disturb each other: every one gives the batch path's bits.
#[test]
fn concurrent_decoding_sessions_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = FIXTURES[0];
    let f = BnetFile::open(&packed(dir, tmp.path())).unwrap();
    let w = Weights::load(&f).unwrap();
    let ids = &goldens(dir)[0].ids;
    let kern = *Kernel::all_available().last().unwrap();
    let want: Vec<_> = Session::new(&w, kern)
        .forward(ids, true)
        .unwrap()
        .iter()
        .map(|l| bits(l))
        .collect();
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut sess = Session::new(&w, kern);
                    ids.iter()
                        .map(|&id| bits(&sess.forward(&[id], false).unwrap()[0]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for r in runs {
            assert!(
                r.join().unwrap() == want,
                "{dir}: a concurrent session differs"
            );
        }
    });
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// The cache stores each layer's kv heads' rows contiguously: whatever the batch sizes (a
    /// prompt, then single decode steps, across capacity growth), layer `l`'s head `h` holds
    /// exactly the rows pushed for it, in order.
    #[test]
    fn kv_cache_keeps_every_head_in_order(
        layers in 1usize..4,
        heads in 1usize..6,
        hd in 1usize..70,
        batches in proptest::collection::vec(1usize..90, 1..8),
    ) {
        use bitnet::runner::ops::KvCache;
        let mut c = KvCache::new(layers, heads, hd);
        let mut rows: Vec<Vec<f32>> = vec![Vec::new(); layers];
        for t in batches {
            // layer by layer, as a forward pass pushes them
            for (l, rows) in rows.iter_mut().enumerate() {
                let new: Vec<f32> =
                    (0..t * heads * hd).map(|i| (l * 100_000 + rows.len() + i) as f32).collect();
                c.push(l, &new);
                rows.extend(new);
            }
            for (l, rows) in rows.iter().enumerate() {
                for h in 0..heads {
                    let want: Vec<f32> = rows.chunks_exact(heads * hd).flat_map(|r| &r[h * hd..][..hd]).copied().collect();
                    proptest::prop_assert_eq!(c.head(l, h), &want[..]);
                }
            }
        }
    }

    /// Softmax's exponentials, eight at a time on SIMD paths, have the bits of the scalar
    /// function on every element, NaN, infinities and arguments below its range included.
    #[test]
    fn vector_exp_is_the_scalar_exp(
        x in proptest::collection::vec(
            proptest::prop_oneof![
                4 => -100f32..0.0,
                1 => -1e30f32..1e30,
                1 => proptest::sample::select(vec![
                    f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, -87.0, -86.99999,
                    -87.00001, f32::MIN_POSITIVE, -f32::MIN_POSITIVE,
                ]),
            ],
            0..70,
        ),
        max in proptest::prop_oneof![
            proptest::strategy::Just(0.0f32),
            -50f32..50.0,
            proptest::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY]),
        ],
    ) {
        use bitnet::runner::ops::{exp, exp_shifted};
        let want: Vec<u32> = x.iter().map(|&v| exp(v - max).to_bits()).collect();
        for kern in Kernel::all_available() {
            let mut got = x.clone();
            exp_shifted(kern, &mut got, max);
            proptest::prop_assert_eq!(bits(&got), want.clone(), "{}", kern.name());
        }
    }

    /// The float operations of the forward pass (dot, RMSNorm, softmax, both gated
    /// activations) give the scalar path's bits on every kernel path, over lengths that cover
    /// whole and partial eight-lane steps.
    #[test]
    fn float_ops_are_the_scalar_ops(
        x in proptest::collection::vec(-30f32..30.0, 0..300),
        seed in proptest::prelude::any::<u64>(),
    ) {
        use bitnet::model::Activation;
        use bitnet::runner::ops::{dot, gated, rms_norm, softmax};
        let mut s = seed | 1;
        let mut next = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s % 2001) as f32 / 250.0 - 4.0 };
        let y: Vec<f32> = x.iter().map(|_| next()).collect();
        let ops = |kern: Kernel| {
            let mut out = vec![bits(&[dot(kern, &x, &y)])];
            let mut o = vec![0f32; x.len()];
            rms_norm(kern, &x, &y, 1e-6, &mut o);
            out.push(bits(&o));
            let mut p = x.clone();
            softmax(kern, &mut p);
            out.push(bits(&p));
            for act in [Activation::Silu, Activation::Relu2] {
                gated(kern, act, &x, &y, &mut o);
                out.push(bits(&o));
            }
            out
        };
        let want = ops(Kernel::scalar());
        for kern in Kernel::all_available() {
            proptest::prop_assert_eq!(ops(kern), want.clone(), "{}", kern.name());
        }
    }

    /// `top_k` (with its chunked greedy case) is the first `k` of a full sort by value, largest
    /// first, ties to the lower index, NaN and infinities ordered by `total_cmp`.
    #[test]
    fn top_k_is_the_head_of_a_full_sort(
        x in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Strategy::prop_map(0u8..6, |v| v as f32),
                proptest::strategy::Just(f32::NAN),
                proptest::strategy::Just(f32::INFINITY),
                proptest::strategy::Just(f32::NEG_INFINITY),
                proptest::strategy::Just(-0.0f32),
                -1e3f32..1e3,
            ],
            // past one 64-value chunk of the greedy case
            0..300,
        ),
        k in 0usize..8,
    ) {
        // and with every sign set, so that the largest is negative (the greedy case's key
        // flips negative values' bits)
        let neg: Vec<f32> = x.iter().map(|v| -v.abs()).collect();
        for x in [&x, &neg] {
            let mut want: Vec<usize> = (0..x.len()).collect();
            want.sort_by(|&i, &j| x[j].total_cmp(&x[i]).then(i.cmp(&j)));
            for k in [k, 1] {
                let mut want = want.clone();
                want.truncate(k);
                proptest::prop_assert_eq!(bitnet::runner::compare::top_k(x, k), want);
            }
        }
    }

    /// Grouped-query attention reads each cached key and value once for the group; every head
    /// still gets exactly the bits of attending alone, on every kernel path (any group size,
    /// head size, length; many head sizes multiples of 8, which take the eight-positions-at-once
    /// score path, or of 128 with groups of 4 or 8, which take the AVX-512 code).
    #[test]
    fn grouped_attention_is_per_head_attention(
        g in proptest::prop_oneof![1usize..9, proptest::strategy::Just(4), proptest::strategy::Just(8)],
        hd in proptest::prop_oneof![
            1usize..200,
            proptest::strategy::Strategy::prop_map(1usize..25, |u| 8 * u),
            proptest::strategy::Strategy::prop_map(1usize..3, |u| 128 * u),
        ],
        n in 1usize..100,
        kv_heads in 1usize..3,
        seed in proptest::prelude::any::<u64>(),
    ) {
        use bitnet::runner::ops::{attend, attend_group, KvHead};
        let mut s = seed | 1;
        let mut next = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s % 2001) as f32 / 250.0 - 4.0 };
        let stride = kv_heads * hd;
        let k: Vec<f32> = (0..n * stride).map(|_| next()).collect();
        let v: Vec<f32> = (0..n * stride).map(|_| next()).collect();
        let qs: Vec<f32> = (0..g * hd).map(|_| next()).collect();
        let kv = KvHead { k: &k[(kv_heads - 1) * hd..], v: &v[(kv_heads - 1) * hd..], stride };
        let scale = (hd as f32).powf(-0.5);
        for kern in Kernel::all_available() {
            let mut grouped = vec![0f32; g * hd];
            attend_group(kern, &qs, hd, kv, n, scale, &mut grouped);
            for h in 0..g {
                let mut alone = vec![0f32; hd];
                attend(&qs[h * hd..][..hd], kv, n, scale, &mut alone);
                proptest::prop_assert_eq!(
                    bits(&grouped[h * hd..][..hd]), bits(&alone), "{} head {}", kern.name(), h
                );
            }
        }
    }
}

/// Softmax's and SiLU's `exp` is within one ulp of `e^x` (rounded from f64) on every 61st f32
/// of [−87, 0] and every 31st of [0, 89] (about 53 million values), gives 0 below −87, 1 at 0
/// and infinity where `e^x` overflows; the vector version used on SIMD machines gives the same
/// bits on all of those values.
#[test]
fn softmax_exp_is_within_one_ulp() {
    use bitnet::runner::ops::{exp, exp_shifted};
    let xs: Vec<f32> = (0x8000_0000u32..=(-87.0f32).to_bits())
        .step_by(61)
        .chain((0..=89.0f32.to_bits()).step_by(31))
        .map(f32::from_bits)
        .collect();
    let (mut worst, mut at) = (0u32, 0f32);
    for &x in &xs {
        let want = (x as f64).exp() as f32;
        // infinity is one step past f32::MAX in the bit order, so an overflow off by one ulp counts as one
        let ulps = exp(x).to_bits().abs_diff(want.to_bits());
        if ulps > worst {
            (worst, at) = (ulps, x);
        }
    }
    assert!(worst <= 1, "{worst} ulps at x = {at:e}");
    for kern in Kernel::all_available() {
        let mut vector = xs.clone();
        exp_shifted(kern, &mut vector, 0.0);
        for (x, v) in xs.iter().zip(&vector) {
            assert_eq!(v.to_bits(), exp(*x).to_bits(), "{} x = {x:e}", kern.name());
        }
    }
    assert_eq!(exp(0.0), 1.0);
    assert_eq!(exp(-87.01), 0.0);
    assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp(88.8), f32::INFINITY);
    assert_eq!(exp(f32::INFINITY), f32::INFINITY);
    assert!(exp(f32::NAN).is_nan());
}
