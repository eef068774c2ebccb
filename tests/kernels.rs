//! Every kernel path this CPU can run equals the scalar oracle exactly, and the scalar oracle
//! equals the definition (unpack, then Σ w·a).

use bitnet::kernels::{quantize_act, scalar, Kernel};
use bitnet::quant::{pack_b1_row, pack_t2_row, unpack_b1_row, unpack_t2_row};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn acts() -> impl Strategy<Value = (usize, Vec<i8>)> {
    (1usize..12).prop_flat_map(|blocks| {
        let extreme = prop_oneof![Just(-128i8), Just(127i8), Just(0i8), any::<i8>()];
        (
            Just(blocks),
            proptest::collection::vec(extreme, blocks * 256),
        )
    })
}

#[test]
fn paths_under_test() {
    let all = Kernel::all_available();
    eprintln!(
        "kernel paths on this CPU: {:?}",
        all.iter().map(|k| k.name()).collect::<Vec<_>>()
    );
    match Kernel::named("avx512") {
        None => eprintln!(
            "NOTE: this CPU has no AVX-512 VNNI: the avx512 path is compiled but NOT tested here"
        ),
        Some(k) if k.tl_lut_layout() != bitnet::kernels::tl::LutLayout::Signed => eprintln!(
            "NOTE: this CPU has no AVX-512 VBMI: the VBMI TL and Q4 kernels are compiled but NOT \
             tested here (the avx512 path runs the AVX2 code of those)"
        ),
        Some(_) => {}
    }
    assert!(all.contains(&Kernel::scalar()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn t2_paths_equal_scalar_and_definition((blocks, a) in acts(), seed in any::<u64>(), k_cut in 0usize..256) {
        let k = blocks * 256 - k_cut.min(255);
        let codes: Vec<i8> = (0..k).map(|i| ((seed.rotate_left(i as u32 % 64) ^ i as u64) % 3) as i8 - 1).collect();
        let mut row = vec![0u8; blocks * 64];
        pack_t2_row(&codes, &mut row);
        let mut act = a.clone();
        act[k..].fill(0); // activations are zero-padded past k
        let want: i32 = codes.iter().zip(&act).map(|(&w, &x)| (w as i32 + 1) * x as i32).sum();
        prop_assert_eq!(scalar::dot_t2_offset(&row, &act), want);
        for kern in Kernel::all_available() {
            prop_assert_eq!(kern.dot_t2_offset(&row, &act), want, "{}", kern.name());
        }
        // four tokens at once: token u uses the activations rotated by u
        let rot: Vec<Vec<i8>> = (0..4).map(|u| { let mut r = act.clone(); r[..k].rotate_left(u.min(k - 1)); r }).collect();
        let singles: Vec<i32> = rot.iter().map(|r| scalar::dot_t2_offset(&row, r)).collect();
        for kern in Kernel::all_available() {
            let got = kern.dot_t2_offset_x4(&row, [&rot[0], &rot[1], &rot[2], &rot[3]]);
            prop_assert_eq!(got.to_vec(), singles.clone(), "{} x4", kern.name());
        }
        // four rows by four tokens: row q is the row with its bytes rotated by q (same codes
        // multiset, other positions)
        let rows: Vec<Vec<u8>> = (0..4).map(|q| { let mut r = row.clone(); r.rotate_left(q % row.len()); r }).collect();
        let want4: Vec<Vec<i32>> = rows.iter().map(|r| rot.iter().map(|x| scalar::dot_t2_offset(r, x)).collect()).collect();
        for kern in Kernel::all_available() {
            let got = kern.dot_t2_offset_4x4([&rows[0], &rows[1], &rows[2], &rows[3]], [&rot[0], &rot[1], &rot[2], &rot[3]]);
            prop_assert_eq!(got.iter().map(|r| r.to_vec()).collect::<Vec<_>>(), want4.clone(), "{} 4x4", kern.name());
        }
        // runs of rows of two streams through one call (decode): each the value of a call alone
        let (x, y): (Vec<u8>, Vec<u8>) = (rows[..2].concat(), rows[2..].concat());
        for kern in Kernel::all_available() {
            let (mut gx, mut gy) = ([i32::MIN; 2], [i32::MIN; 2]);
            kern.dot_t2_offset_rows([&x, &y], row.len(), &act, [&mut gx, &mut gy]);
            let want: Vec<i32> = rows.iter().map(|r| scalar::dot_t2_offset(r, &act)).collect();
            prop_assert_eq!([gx, gy].concat(), want, "{} rows", kern.name());
        }
        let mut back = vec![0i8; k];
        unpack_t2_row(&row, &mut back);
        prop_assert_eq!(back, codes);
    }

    #[test]
    fn b1_paths_equal_scalar_and_definition((blocks, a) in acts(), seed in any::<u64>(), k_cut in 0usize..256) {
        let k = blocks * 256 - k_cut.min(255);
        let signs: Vec<i8> = (0..k).map(|i| if (seed.rotate_left(i as u32 % 64) ^ (i as u64 * 31)) & 1 == 1 { 1 } else { -1 }).collect();
        let mut row = vec![0u8; blocks * 32];
        pack_b1_row(&signs, &mut row);
        let mut act = a.clone();
        act[k..].fill(0);
        let want: i32 = signs.iter().zip(&act).filter(|(&w, _)| w > 0).map(|(_, &x)| x as i32).sum();
        prop_assert_eq!(scalar::dot_b1_ones(&row, &act), want);
        for kern in Kernel::all_available() {
            prop_assert_eq!(kern.dot_b1_ones(&row, &act), want, "{}", kern.name());
        }
        let mut back = vec![0i8; k];
        unpack_b1_row(&row, &mut back);
        prop_assert_eq!(back, signs);
    }

    #[test]
    fn activation_quantization_matches_the_formula(x in proptest::collection::vec(-50.0f32..50.0, 1..300)) {
        quantization_is_the_formula(&x)?;
    }

    /// The same with exact ties (halves, with 127 in the vector so the scale is 1), values past
    /// the int8 range, NaN, infinities and signed zeros.
    #[test]
    fn activation_quantization_of_ties_and_specials(
        mut x in proptest::collection::vec(
            proptest::prop_oneof![
                4 => (-400i32..400).prop_map(|h| h as f32 / 2.0),
                1 => proptest::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0]),
                1 => -1e6f32..1e6,
            ],
            0..200,
        ),
        at in proptest::option::of(0usize..200),
    ) {
        if let Some(i) = at {
            x.insert(i.min(x.len()), 127.0);
        }
        quantization_is_the_formula(&x)?;
    }
}

/// `quantize_act` (the formula as written) and every path's `Kernel::quantize_act` against
/// the definition:
/// `s = 127 / max(max|x|, 1e-5)` (NaN skipped), `q = clamp(round_half_even(x·s), −128, 127)`
/// (NaN to 0), zero padding, and the sum of `q`.
fn quantization_is_the_formula(x: &[f32]) -> Result<(), TestCaseError> {
    quantized_as_defined(x, quantize_act)?;
    for kern in Kernel::all_available() {
        quantized_as_defined(x, |x, q| kern.quantize_act(x, q))?;
    }
    Ok(())
}

fn quantized_as_defined(
    x: &[f32],
    quantize: impl Fn(&[f32], &mut [i8]) -> (f32, i32),
) -> Result<(), TestCaseError> {
    let mut q = vec![0i8; x.len().div_ceil(256).max(1) * 256];
    let (s, sum) = quantize(x, &mut q);
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    prop_assert_eq!(s, 127.0 / max.max(1e-5));
    for (i, &v) in x.iter().enumerate() {
        prop_assert_eq!(
            q[i],
            (v * s).round_ties_even().clamp(-128.0, 127.0) as i8,
            "x[{}] = {}",
            i,
            v
        );
    }
    prop_assert!(q[x.len()..].iter().all(|&v| v == 0));
    prop_assert_eq!(sum, q.iter().map(|&v| v as i32).sum::<i32>());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// A float or int8 head row against four vectors at once, and two rows against one vector
    /// (decode's two streams), give on every path the bits of single dot products (neither the
    /// batched nor the decoded lm_head may change any logit), and the single product is the
    /// definition up to f32 summation order.
    #[test]
    fn float_row_many_equals_singles(
        n in 1usize..300,
        vals in proptest::collection::vec(-4.0f32..4.0, 5 * 300),
    ) {
        use bitnet::format::bnet::DType;
        use bitnet::kernels::float::{dot_row, dot_row_many, dot_rows};
        let hs: Vec<&[f32]> = (1..5).map(|p| &vals[p * 300..p * 300 + n]).collect();
        for dtype in [DType::BF16, DType::F16, DType::F32, DType::I8] {
            // a row's bytes and its values
            let encode = |w: &[f32]| -> (Vec<u8>, Vec<f64>) { match dtype {
                DType::BF16 => (
                    w.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
                    w.iter().map(|&v| half::bf16::from_f32(v).to_f64()).collect(),
                ),
                DType::F16 => (
                    w.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
                    w.iter().map(|&v| half::f16::from_f32(v).to_f64()).collect(),
                ),
                DType::F32 => (
                    w.iter().flat_map(|&v| v.to_le_bytes()).collect(),
                    w.iter().map(|&v| v as f64).collect(),
                ),
                _ => (
                    w.iter().map(|&v| (v * 30.0) as i8 as u8).collect(),
                    w.iter().map(|&v| (v * 30.0) as i8 as f64).collect(),
                ),
            } };
            let (row, wq) = encode(&vals[..n]);
            let (row2, _) = encode(hs[3]);
            for kern in Kernel::all_available() {
                let pair = dot_rows(kern, dtype, [&row, &row2], hs[0]);
                for (y, r) in pair.iter().zip([&row, &row2]) {
                    prop_assert_eq!(y.to_bits(), dot_row(kern, dtype, r, hs[0]).to_bits(), "{:?} {} rows", dtype, kern.name());
                }
                let many = dot_row_many(kern, dtype, &row, [hs[0], hs[1], hs[2], hs[3]]);
                for (p, h) in hs.iter().enumerate() {
                    let one = dot_row(kern, dtype, &row, h);
                    prop_assert_eq!(many[p].to_bits(), one.to_bits(), "{:?} {} vector {}", dtype, kern.name(), p);
                    let def: f64 = wq.iter().zip(*h).map(|(a, &b)| a * b as f64).sum();
                    let mag: f64 = wq.iter().zip(*h).map(|(a, &b)| (a * b as f64).abs()).sum();
                    prop_assert!((one as f64 - def).abs() <= 1e-5 * mag + 1e-6, "{:?} {}: {} vs {}", dtype, kern.name(), one, def);
                }
            }
        }
    }
}

/// The largest possible magnitudes: every code 2 against -128 / 127 over many blocks (7 and 8
/// blocks straddle the four-token kernel's run of i16 sums between widenings).
#[test]
fn extremes_do_not_overflow() {
    for blocks in [1usize, 6, 7, 8, 10, 14, 15, 40] {
        let row = vec![0xAAu8; blocks * 64]; // every field code 2 (+1)
        for v in [-128i8, 127] {
            let act = vec![v; blocks * 256];
            let want = 2 * v as i32 * (blocks * 256) as i32;
            for kern in Kernel::all_available() {
                assert_eq!(kern.dot_t2_offset(&row, &act), want, "{}", kern.name());
                let x4 = kern.dot_t2_offset_x4(&row, [&act, &act, &act, &act]);
                assert_eq!(x4, [want; 4], "{} x4, {blocks} blocks", kern.name());
                let x16 = kern.dot_t2_offset_4x4([&row; 4], [&act, &act, &act, &act]);
                assert_eq!(x16, [[want; 4]; 4], "{} 4x4, {blocks} blocks", kern.name());
            }
        }
    }
}

/// Σ over blocks of the exact integer dot times `d_w · d_a`, in f64: what every Q4 path
/// approximates (each block's integer part is exact; only the f32 sum order differs).
fn q4_definition(row: &[u8], a: &bitnet::kernels::q4::Q8Blocks) -> (f64, f64) {
    let (mut sum, mut mag) = (0f64, 0f64);
    for (b, blk) in row.chunks(18).enumerate() {
        let dw = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        let dot: i64 = (0..32)
            .map(|j| {
                let byte = blk[2 + j % 16];
                let n = if j < 16 { byte & 15 } else { byte >> 4 } as i64 - 8;
                n * a.q[32 * b + j] as i64
            })
            .sum();
        let t = (dw * a.d[b]) as f64 * dot as f64;
        sum += t;
        mag += t.abs();
    }
    (sum, mag)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Every path's Q4 · int8 dot agrees with the definition to f32 summation error (relative
    /// 1e-5 of Σ|terms|), on random rows with outliers, any nibble, and odd lengths.
    #[test]
    fn q4_paths_agree_with_the_definition(
        k in 1usize..700,
        seed in any::<u64>(),
        raw in any::<bool>(),
    ) {
        let mut s = seed | 1;
        let mut next = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
        let x: Vec<f32> = (0..k).map(|i| {
            let v = (next() % 2001) as f32 / 100.0 - 10.0;
            if i % 97 == 3 { v * 50.0 } else { v }
        }).collect();
        let h: Vec<f32> = (0..k).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
        let rb = bitnet::format::bnet::DType::Q4.row_bytes(k as u64).unwrap() as usize;
        let mut row = vec![0u8; rb];
        if raw {
            // any nibble at all (−8 included), a sane scale
            row.iter_mut().for_each(|b| *b = next() as u8);
            for blk in row.chunks_mut(18) {
                blk[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            }
        } else {
            bitnet::quant::quantize_q4_row(&x, &mut row).unwrap();
        }
        let a = bitnet::kernels::q4::Q8Blocks::new(&h);
        prop_assert!(a.q.iter().all(|&q| q != -128));
        let (want, mag) = q4_definition(&row, &a);
        // three more vectors for the many-vector kernel
        let others: Vec<_> = (0..3)
            .map(|_| {
                let h: Vec<f32> = (0..k).map(|_| (next() % 2001) as f32 / 100.0 - 10.0).collect();
                bitnet::kernels::q4::Q8Blocks::new(&h)
            })
            .collect();
        let all = [&a, &others[0], &others[1], &others[2]];
        for kern in Kernel::all_available() {
            let got = kern.dot_q4(&row, &a) as f64;
            prop_assert!((got - want).abs() <= 1e-5 * mag + 1e-30, "{}: {got} vs {want} (Σ|t| {mag})", kern.name());
            // the row against four vectors at once: each result the bits of a call alone
            let many = kern.dot_q4_many(&row, all);
            for (m, v) in many.iter().zip(all) {
                prop_assert_eq!(m.to_bits(), kern.dot_q4(&row, v).to_bits(), "{}", kern.name());
            }
            // runs of rows of two streams through one call (decode's head): each the bits of a
            // call alone
            let rows: Vec<u8> = (0..10u8).flat_map(|i| row.iter().map(move |b| b ^ i.wrapping_mul(37))).collect();
            let (x, y) = rows.split_at(5 * rb);
            let (mut gx, mut gy) = (vec![f32::NAN; 5], vec![f32::NAN; 5]);
            kern.dot_q4_rows([x, y], rb, &a, [&mut gx, &mut gy]);
            for (g, r) in gx.iter().chain(&gy).zip(rows.chunks(rb)) {
                prop_assert_eq!(g.to_bits(), kern.dot_q4(r, &a).to_bits(), "{} rows", kern.name());
            }
        }
    }
}

/// The largest products (nibble −8 against ±127 everywhere) neither saturate nor overflow.
#[test]
fn q4_extremes_do_not_saturate() {
    let k = 2560;
    let mut row = vec![0u8; 80 * 18];
    for blk in row.chunks_mut(18) {
        blk[..2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
    }
    for sign in [1f32, -1.0] {
        let h = vec![sign; k];
        let a = bitnet::kernels::q4::Q8Blocks::new(&h);
        assert!(a.q.iter().all(|&q| q == 127 * sign as i8));
        for kern in Kernel::all_available() {
            let got = kern.dot_q4(&row, &a);
            assert_eq!(
                got,
                -8.0 * sign * k as f32 * (1.0 / 127.0 * 127.0),
                "{}",
                kern.name()
            );
        }
    }
}

/// A ternary matrix `[rows, k]` from a seed, with runs of one value so every pattern occurs.
fn ternary(rows: usize, k: usize, seed: u64) -> Vec<i8> {
    (0..rows * k)
        .map(|i| {
            let h = (i as u64 ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 61;
            match (seed >> (i % 64)) & 3 {
                0 => -1,
                1 => 1,
                _ => (h % 3) as i8 - 1,
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// TL: packing round-trips, the tables of every path are byte-identical, and every path's
    /// block sums equal Σ w·a over the unpacked weights, for odd shapes and extreme activations.
    #[test]
    fn tl_paths_equal_scalar_and_definition(
        rows in 1usize..80,
        k in 1usize..700,
        seed in any::<u64>(),
        a in proptest::collection::vec(prop_oneof![Just(-128i8), Just(127i8), Just(0i8), any::<i8>()], 700),
    ) {
        use bitnet::kernels::tl;
        let w = ternary(rows, k, seed);
        let data = bitnet::quant::pack_tl(rows, k, |r, out| out.copy_from_slice(&w[r * k..(r + 1) * k]));
        prop_assert_eq!(data.len(), bitnet::quant::tl_len(rows, k));
        let mut back = vec![0i8; k];
        for r in 0..rows {
            bitnet::quant::unpack_tl_row(&data, k, r, &mut back);
            prop_assert_eq!(&back[..], &w[r * k..(r + 1) * k]);
        }
        let a = &a[..k];
        let chunks = k.div_ceil(tl::CHUNK_COLS);
        for kern in Kernel::all_available() {
            let layout = kern.tl_lut_layout();
            let mut want_lut = vec![0u8; chunks * layout.chunk_bytes()];
            layout.build_scalar(a, chunks, &mut want_lut);
            let mut lut = vec![0xAAu8; chunks * layout.chunk_bytes()];
            kern.tl_lut(a, chunks, &mut lut);
            prop_assert_eq!(&lut, &want_lut, "{} tables", kern.name());
            for (b, block) in data.chunks_exact(chunks * tl::CHUNK_BYTES).enumerate() {
                let got = kern.dot_tl(block, &lut);
                let rb = tl::t2_row_bytes(k);
                let mut t2 = vec![0xAAu8; 32 * rb];
                kern.tl_block_to_t2(block, k, &mut Vec::new(), &mut t2);
                for (p, row) in t2.chunks_exact(rb).enumerate() {
                    let r = tl::ROWS * b + p;
                    let mut want_row = vec![0u8; rb];
                    let zeros = vec![0i8; k];
                    let src = if r < rows { &w[r * k..(r + 1) * k] } else { &zeros[..] };
                    pack_t2_row(src, &mut want_row);
                    prop_assert_eq!(row, &want_row[..], "{} T2 row {}", kern.name(), r);
                }
                for (p, &g) in got.iter().enumerate() {
                    let r = tl::ROWS * b + p;
                    let want: i32 = if r < rows {
                        w[r * k..(r + 1) * k].iter().zip(a).map(|(&x, &y)| x as i32 * y as i32).sum()
                    } else {
                        0
                    };
                    prop_assert_eq!(g, want, "{} row {}", kern.name(), r);
                }
            }
            // blocks in pairs through one call (decode's gate and up): each the bits of a call alone
            let blocks: Vec<&[u8]> = data.chunks_exact(chunks * tl::CHUNK_BYTES).collect();
            for (i, &x) in blocks.iter().enumerate() {
                let y = blocks[(i + 1) % blocks.len()];
                let pair = kern.dot_tl_pair(x, y, &lut);
                prop_assert_eq!(pair, [kern.dot_tl(x, &lut), kern.dot_tl(y, &lut)], "{} pair {}", kern.name(), i);
            }
        }
    }
}

/// The largest sums the i16 lanes can see: every weight +1 (or −1) against ±128 and 127, over
/// rows long enough to need several widenings.
#[test]
fn tl_extremes_do_not_overflow() {
    use bitnet::kernels::tl;
    let k = 24 * 8 * 5 + 7;
    for (wv, av) in [(1i8, 127i8), (1, -128), (-1, -128), (-1, 127)] {
        let data = bitnet::quant::pack_tl(32, k, |_, out| out.fill(wv));
        let a = vec![av; k];
        let chunks = k.div_ceil(tl::CHUNK_COLS);
        for kern in Kernel::all_available() {
            let mut lut = vec![0u8; chunks * kern.tl_lut_layout().chunk_bytes()];
            kern.tl_lut(&a, chunks, &mut lut);
            let got = kern.dot_tl(&data, &lut);
            assert!(
                got.iter().all(|&g| g == wv as i32 * av as i32 * k as i32),
                "{}: {got:?}",
                kern.name()
            );
        }
    }
}

/// A head row shorter than its vector is refused on every path before any of it is read past
/// its end: the SIMD loop would read a whole group of 32 before the scalar tail's slicing.
#[test]
fn short_float_rows_are_refused() {
    use bitnet::format::bnet::DType;
    use bitnet::kernels::float::{dot_row, dot_rows};
    let h = [0.5f32; 64];
    for kern in Kernel::all_available() {
        let calls: [Box<dyn Fn()>; 2] = [
            Box::new(move || {
                dot_row(kern, DType::F32, &[0u8; 4], &h);
            }),
            Box::new(move || {
                dot_rows(kern, DType::I8, [&[0u8; 64][..], &[0u8; 8][..]], &h);
            }),
        ];
        for call in calls {
            let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(call))
                .expect_err("a short row must panic");
            let msg = err
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| err.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if kern.float_simd() {
                assert!(
                    msg.contains("a row shorter than its vector"),
                    "{}: {msg}",
                    kern.name()
                );
            }
        }
    }
}
