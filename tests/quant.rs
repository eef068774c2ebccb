//! Bit layouts and quantizers against straightforward oracles, over random and odd shapes.

use bitnet::quant::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn t2_round_trip(codes in proptest::collection::vec(-1i8..=1, 1..1200)) {
        let mut out = vec![0u8; codes.len().div_ceil(256) * 64];
        pack_t2_row(&codes, &mut out);
        let mut back = vec![9i8; codes.len()];
        unpack_t2_row(&out, &mut back);
        prop_assert_eq!(&back, &codes);
        // every field past the row is code 1 (zero weight)
        let mut full = vec![0i8; out.len() * 4];
        unpack_t2_row(&out, &mut full);
        prop_assert!(full[codes.len()..].iter().all(|&c| c == 0));
    }

    #[test]
    fn b1_round_trip(bits in proptest::collection::vec(any::<bool>(), 1..1200)) {
        let signs: Vec<i8> = bits.iter().map(|&b| if b { 1 } else { -1 }).collect();
        let mut out = vec![0u8; signs.len().div_ceil(256) * 32];
        pack_b1_row(&signs, &mut out);
        prop_assert_eq!(out.len() * 8 >= signs.len(), true);
        let mut back = vec![0i8; signs.len()];
        unpack_b1_row(&out, &mut back);
        prop_assert_eq!(&back, &signs);
        let ones: u32 = out.iter().map(|b| b.count_ones()).sum();
        prop_assert_eq!(ones as usize, bits.iter().filter(|&&b| b).count(), "padding bits must be zero");
    }

    #[test]
    fn hf_layout_round_trip(rows4 in 1usize..6, cols in 1usize..40, seed in any::<u64>()) {
        let out_f = rows4 * 4;
        let codes: Vec<i8> = (0..out_f * cols).map(|i| ((seed >> (i % 60)) % 3) as i8 - 1).collect();
        let packed = hf_pack(&codes, out_f, cols);
        for o in 0..out_f {
            for c in 0..cols {
                prop_assert_eq!(hf_field(&packed, rows4, cols, o, c) as i8 - 1, codes[o * cols + c]);
            }
        }
    }

    /// The ternary quantizer equals the formula computed in f64 wherever f64 and f32 agree on
    /// the rounding side.
    #[test]
    fn ternary_matches_formula(w in -1.0f32..1.0, s in 0.5f32..100.0) {
        let t = ternary(w, s);
        let x = w * s;
        let want = if x > 0.5 { 1 } else if x < -0.5 { -1 } else { 0 };
        prop_assert_eq!(t, want);
    }

    #[test]
    fn i8_rows_stay_within_half_a_step(x in proptest::collection::vec(-10.0f32..10.0, 1..300)) {
        let mut q = vec![0i8; x.len()];
        let s = quantize_i8_row(&x, &mut q);
        for (v, q) in x.iter().zip(&q) {
            prop_assert!((v - *q as f32 * s).abs() <= s * 0.5001 + 1e-6);
        }
    }
}

#[test]
fn absmean_scale_clamps_tiny_means() {
    assert_eq!(absmean_scale(0.0, 10), 1e5);
    assert_eq!(absmean_scale(5.0, 10), 2.0);
}
