//! The f32 reference: the forward pass written to be obviously correct, mirroring transformers'
//! BitNet / Llama code line by line. No cache, no SIMD kernels: every position is
//! recomputed from scratch, every weight is unpacked to {−1, 0, +1} before it is used, and the
//! float operations run their scalar versions (`Kernel::scalar()`), whatever `BITNET_KERNEL`
//! says, so no code written for the fast path's speed is part of the oracle.
//! (Rows of a projection are computed in parallel; that cannot change any result.)

use super::ops::{dot, gated, rms_norm, rope, rope_inv_freq, softmax};
use super::weights::{Linear, Weights};
use crate::error::Result;
use crate::kernels::{quantize_act, Kernel};
use rayon::prelude::*;

/// `y = W x` with per-token int8 activations: the integer dot product over unpacked weights,
/// then the checkpoint's scale arithmetic. Rows are independent, so computing them on several
/// threads changes nothing in the result; it only makes the reference usable on 2B models.
pub fn linear(l: &Linear, x: &[f32]) -> Vec<f32> {
    let mut q = vec![0i8; l.k_padded()];
    let (s_a, _) = quantize_act(x, &mut q);
    (0..l.rows)
        .into_par_iter()
        .map_init(
            || vec![0i8; l.k],
            |w, r| {
                l.unpack_row(r, w);
                let d: i32 = w.iter().zip(&q).map(|(&a, &b)| a as i32 * b as i32).sum();
                l.finish(d, s_a)
            },
        )
        .collect()
}

/// Logits `[position][vocab]` for every position of `ids`.
pub fn logits(w: &Weights, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
    super::check_ids(&w.cfg, ids)?;
    let c = &w.cfg;
    let (hd, nh, nkv) = (
        c.head_dim as usize,
        c.num_attention_heads as usize,
        c.num_key_value_heads as usize,
    );
    let eps = c.rms_norm_eps as f32;
    let scalar = Kernel::scalar();
    let scale = (hd as f64).powf(-0.5) as f32;
    let inv_freq = rope_inv_freq(c.rope_theta, hd);
    let hidden = c.hidden_size as usize;
    let mut x: Vec<Vec<f32>> = ids
        .iter()
        .map(|&t| {
            let mut e = vec![0f32; hidden];
            w.embed.row(t as usize, &mut e);
            e
        })
        .collect();
    let norm = |v: &[f32], g: &[f32]| {
        let mut o = vec![0f32; v.len()];
        rms_norm(scalar, v, g, eps, &mut o);
        o
    };
    for layer in &w.layers {
        let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for (pos, xt) in x.iter().enumerate() {
            let xn = norm(xt, &layer.input_norm);
            let (mut qt, mut kt) = (linear(&layer.q, &xn), linear(&layer.k, &xn));
            for h in qt.chunks_exact_mut(hd) {
                rope(h, pos, &inv_freq);
            }
            for h in kt.chunks_exact_mut(hd) {
                rope(h, pos, &inv_freq);
            }
            q.push(qt);
            k.push(kt);
            v.push(linear(&layer.v, &xn));
        }
        for (t, xt) in x.iter_mut().enumerate() {
            let mut attn = vec![0f32; nh * hd];
            for h in 0..nh {
                let kvh = h / (nh / nkv);
                let qh = &q[t][h * hd..(h + 1) * hd];
                let mut p: Vec<f32> = (0..=t)
                    .map(|s| dot(scalar, qh, &k[s][kvh * hd..(kvh + 1) * hd]) * scale)
                    .collect();
                softmax(scalar, &mut p);
                for (s, ps) in p.iter().enumerate() {
                    for d in 0..hd {
                        attn[h * hd + d] += ps * v[s][kvh * hd + d];
                    }
                }
            }
            if let Some(g) = &layer.attn_sub_norm {
                attn = norm(&attn, g);
            }
            for (a, b) in xt.iter_mut().zip(linear(&layer.o, &attn)) {
                *a += b;
            }
            let xn = norm(xt, &layer.post_norm);
            let (g, u) = (linear(&layer.gate, &xn), linear(&layer.up, &xn));
            let mut m = vec![0f32; g.len()];
            gated(scalar, w.activation(), &g, &u, &mut m);
            if let Some(s) = &layer.ffn_sub_norm {
                m = norm(&m, s);
            }
            for (a, b) in xt.iter_mut().zip(linear(&layer.down, &m)) {
                *a += b;
            }
        }
    }
    let mut row = vec![0f32; hidden];
    Ok(x.iter()
        .map(|xt| {
            let h = norm(xt, &w.norm);
            (0..w.lm_head.rows)
                .map(|r| {
                    w.lm_head.row(r, &mut row);
                    dot(scalar, &row, &h)
                })
                .collect()
        })
        .collect())
}
