//! The float operations of the forward pass, written as transformers computes them in float32.
//! Both the reference and the fast runner use these; they differ in how they compute the
//! integer dot products, in caching and in parallelism.

use crate::model::Activation;

/// RMSNorm: `x · 1/sqrt(mean(x²) + eps)`, then times the weight.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    // eight interleaved lanes: a sequential sum cannot use vector registers and was a visible
    // share of a decode step (every thread normalizes 4 vectors per layer)
    let ms = dot(x, x) / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = g * (v * r);
    }
}

/// `inv_freq[i] = 1 / θ^(2i/d)` in f32, as transformers' default RoPE computes it.
pub fn rope_inv_freq(theta: f64, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect()
}

/// Rotates one head in place at position `pos` (NeoX / `rotate_half` pairing: i with i + d/2).
pub fn rope(x: &mut [f32], pos: usize, inv_freq: &[f32]) {
    RopeAt::new(pos, inv_freq).apply(x)
}

/// The rotary cosines and sines of one position: computed once and shared by every head and
/// layer (a `sin_cos` per pair per head per layer was ~2% of a decode step).
pub struct RopeAt {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeAt {
    pub fn new(pos: usize, inv_freq: &[f32]) -> Self {
        let (sin, cos) = inv_freq.iter().map(|&f| (pos as f32 * f).sin_cos()).unzip();
        RopeAt { cos, sin }
    }

    /// Rotates one head in place.
    pub fn apply(&self, x: &mut [f32]) {
        let half = self.cos.len();
        for (i, (&cos, &sin)) in self.cos.iter().zip(&self.sin).enumerate() {
            let (a, b) = (x[i], x[i + half]);
            x[i] = a * cos + (-b) * sin;
            x[i + half] = b * cos + a * sin;
        }
    }
}

/// In-place softmax in f32.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `act(gate) · up`.
pub fn gated(act: Activation, gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let a = match act {
            Activation::Relu2 => {
                let r = g.max(0.0);
                r * r
            }
            Activation::Silu => g / (1.0 + (-g).exp()),
        };
        *o = a * u;
    }
}

/// Dot product of two f32 slices, summed in eight interleaved lanes (a fixed order, so the
/// reference and the fast runner agree bit for bit; it lets the compiler use vector registers,
/// where a strictly sequential sum cannot be vectorized). With AVX2 the same lanes sit in one
/// 256-bit register instead of two 128-bit ones: the arithmetic, and so the result, is identical.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected.
        return unsafe { dot_avx2(a, b) };
    }
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `y += a · x` element by element (a multiply, then an add: no fused rounding, so every
/// width gives the same result).
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected.
        return unsafe { axpy_avx2(a, x, y) };
    }
    axpy_lanes(a, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn axpy_avx2(a: f32, x: &[f32], y: &mut [f32]) {
    axpy_lanes(a, x, y)
}

#[inline(always)]
fn axpy_lanes(a: f32, x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// Attention of one query head over positions `0..n`: softmax of the scaled dot products with
/// the keys, then the weighted sum of the values, added to `out`. `kc` and `vc` start at this
/// head's kv head in a cache laid out `[position][kv_heads · head_dim]` (`stride` floats per
/// position).
pub fn attend(
    qh: &[f32],
    kc: &[f32],
    vc: &[f32],
    stride: usize,
    n: usize,
    scale: f32,
    out: &mut [f32],
) {
    let hd = qh.len();
    let mut p: Vec<f32> = (0..n)
        .map(|s| dot(qh, &kc[s * stride..][..hd]) * scale)
        .collect();
    softmax(&mut p);
    for (s, &ps) in p.iter().enumerate() {
        axpy(ps, &vc[s * stride..][..hd], out);
    }
}
