//! One decoded token, run by every thread of the pool in lockstep: one `rayon::broadcast` per
//! token instead of a parallel region per projection and attention (~150 fork-joins per token
//! on a 30-layer model, ~13% of a 2-thread decode step, measured). The threads claim ranges of
//! output rows from shared counters, so a slow thread takes fewer, and meet at a spinning
//! barrier where a phase needs the whole output of the one before. The small vector work in
//! between (norms, quantizing activations, residual adds) every thread does for itself: it is
//! cheaper than another barrier.
//!
//! Steps of several sessions at once (threads of a server) cannot deadlock at the barrier:
//! rayon pushes a broadcast's jobs to every worker under one lock into FIFO queues, so all
//! workers run concurrent steps in the same order (tests/runner.rs runs four at once). A step
//! must not be started from code that blocks a pool thread outside rayon (a worker waiting on
//! a channel that only this step would fill).
//!
//! The arithmetic is the batch path's, row for row: the same kernels, the same `finish`, the
//! same attention and activation functions, so decode and a one-token prompt give identical
//! logits (tests/runner.rs).

use super::fast::{
    head_row, t2_rows_pair, unit_rows, unit_rows_pair, QuantizedBatch, Session, Shared,
};
use super::ops::{attend_group, gated, rms_norm, KvHead, RopeAt};
use super::weights::Linear;
use crate::format::bnet::DType;
use crate::kernels::{float, q4::Q8Blocks, tl::ROWS};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Head rows per kernel call in decode.
const HEAD_RUN: usize = 64;

/// Spins at a barrier before yielding the CPU (in case there are more threads than cores).
const SPINS: u32 = 1 << 12;

/// A reusable barrier for the threads of one step. If a thread panics, the others panic at
/// their next wait instead of spinning forever.
struct Barrier {
    n: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
}

impl Barrier {
    fn new(n: usize) -> Self {
        Barrier {
            n,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    fn wait(&self) {
        let gen = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            // reset before releasing: the next wait's adds happen after the waiters see the
            // new generation
            self.arrived.store(0, Ordering::Relaxed);
            self.generation
                .store(gen.wrapping_add(1), Ordering::Release);
            return;
        }
        let mut spins = 0;
        while self.generation.load(Ordering::Acquire) == gen {
            assert!(
                !self.poisoned.load(Ordering::Relaxed),
                "another decode thread panicked"
            );
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Marks the barrier poisoned when its thread unwinds.
struct PoisonOnPanic<'a>(&'a Barrier);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Relaxed);
        }
    }
}

/// Hands out `0..n` in claims of `n / threads` (rounded up) to whichever thread asks first:
/// one long contiguous range per thread, so each core streams long runs and decode's pairs (a
/// claim's halves) lie far apart; a thread that comes late finds its share taken by one that
/// finished early. Small claims were measured worse: 8 KiB of rows per claim gave 10–12
/// tokens/s at 2 threads, 32 KiB 15, and 1 MiB 18 (interleaving short chunks between two cores
/// breaks the hardware's sequential streams). Shares of what is left (`left / threads`: a
/// half, a quarter, …) decoded 63–65 tokens/s on Zen 5 at 2 threads against 59 for
/// `left / 2·threads`; since TL blocks go in pairs, equal shares beat `left / threads` in ten
/// of ten alternating pairs (TL q4 at 2 threads, +1–3%: the second thread's pairs had lain
/// half as far apart), and T2 measured the same.
fn claims(next: &AtomicUsize, n: usize) -> impl Iterator<Item = Range<usize>> + '_ {
    let threads = rayon::current_num_threads();
    std::iter::from_fn(move || {
        let mut cur = next.load(Ordering::Relaxed);
        loop {
            if cur >= n {
                return None;
            }
            let end = (cur + n.div_ceil(threads)).min(n);
            match next.compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(cur..end),
                Err(now) => cur = now,
            }
        }
    })
}

/// `ls[i] · a` into `out` (the outputs concatenated), units (rows, or TL blocks) claimed
/// from `next`. TL blocks and T2 rows go in pairs, each unit of a claim's first half with its
/// twin in the second, so one kernel call reads two far-apart weight streams (for TL, each
/// table line once for both; T2 rows in runs of 32). A TL block alone streamed at 19 GiB/s on
/// one Zen 5 core, a pair of far-apart blocks at 30, adjacent blocks at 19 (`cargo bench
/// --bench kernels -- stream_1thread`). B1 rows go one at a time.
fn matvec(s: &Session, ls: &[&Linear], a: &QuantizedBatch, next: &AtomicUsize, out: &Shared) {
    let total = ls.iter().map(|l| l.units()).sum();
    // the projection, its unit and its first output row of unit `u` of the concatenation
    let locate = |mut u: usize| {
        let mut row0 = 0;
        for l in ls {
            if u < l.units() {
                return (*l, u, row0);
            }
            u -= l.units();
            row0 += l.rows;
        }
        unreachable!("unit {u} past the projections' {total}")
    };
    let paired = ls.iter().all(|l| l.dtype == DType::TL);
    let t2 = ls.iter().all(|l| l.dtype == DType::T2);
    let (mut y0, mut y1) = ([0f32; ROWS], [0f32; ROWS]);
    let put = |row0: usize, (r, n): (usize, usize), ys: &[f32; ROWS]| {
        for (i, y) in ys[..n].iter().enumerate() {
            out.set(row0 + r + i, *y);
        }
    };
    for range in claims(next, total) {
        let half = if paired || t2 { range.len() / 2 } else { 0 };
        let mut u = range.start;
        while u < range.start + half {
            let ((la, ua, ra), (lb, ub, rb)) = (locate(u), locate(u + half));
            if t2 {
                // T2 rows in runs that stay inside one projection in both halves
                let n = (range.start + half - u)
                    .min(ROWS)
                    .min(la.units() - ua)
                    .min(lb.units() - ub);
                t2_rows_pair(s.kern, [(la, ua), (lb, ub)], n, a, 0, [&mut y0, &mut y1]);
                put(ra, (ua, n), &y0);
                put(rb, (ub, n), &y1);
                u += n;
            } else {
                let [a_rows, b_rows] =
                    unit_rows_pair(s.kern, [(la, ua), (lb, ub)], a, 0, [&mut y0, &mut y1]);
                put(ra, a_rows, &y0);
                put(rb, b_rows, &y1);
                u += 1;
            }
        }
        for u in range.start + 2 * half..range.end {
            let (l, lu, row0) = locate(u);
            let rows = unit_rows(s.kern, l, a, 0, lu, &mut y0);
            put(row0, rows, &y0);
        }
    }
}

/// `act(gate · a) · (up · a)` into `out`, gate and up units claimed together so the product
/// is formed where both are computed, through one kernel call for both (T2 in runs of 32
/// rows).
fn gated_matvec(s: &Session, li: usize, a: &QuantizedBatch, next: &AtomicUsize, out: &Shared) {
    let layer = &s.w.layers[li];
    let (g, u) = (&layer.gate, &layer.up);
    let act = s.w.activation();
    let (mut gv, mut uv, mut m) = ([0f32; ROWS], [0f32; ROWS], [0f32; ROWS]);
    let mut gate = |(r, n): (usize, usize), gv: &[f32; ROWS], uv: &[f32; ROWS]| {
        gated(s.kern, act, &gv[..n], &uv[..n], &mut m[..n]);
        for (i, y) in m[..n].iter().enumerate() {
            out.set(r + i, *y);
        }
    };
    for range in claims(next, g.units()) {
        if g.dtype == DType::T2 {
            for r in range.clone().step_by(ROWS) {
                let n = (range.end - r).min(ROWS);
                t2_rows_pair(s.kern, [(g, r), (u, r)], n, a, 0, [&mut gv, &mut uv]);
                gate((r, n), &gv, &uv);
            }
        } else {
            for unit in range {
                let [rows, _] =
                    unit_rows_pair(s.kern, [(g, unit), (u, unit)], a, 0, [&mut gv, &mut uv]);
                gate(rows, &gv, &uv);
            }
        }
    }
}

/// The logits into `logits`, rows claimed from `next`: each claim's halves as two streams read
/// side by side, for a Q4 head in runs of rows per kernel call (`q8`: the hidden state
/// block-quantized), for a float or int8 head a row of each half per call. Each logit has the
/// bits of [`head_row`]. (Timed inside a 1-thread decode step on Zen 5, the Q4 head streamed at
/// 32–33 GB/s as one run and 36–39 as two, above the 34 GB/s of a plain sequential read of
/// one core.)
fn head(s: &Session, h: &[f32], q8: Option<&Q8Blocks>, next: &AtomicUsize, logits: &Shared) {
    let head = &s.w.lm_head;
    let (mut y0, mut y1) = ([0f32; HEAD_RUN], [0f32; HEAD_RUN]);
    for range in claims(next, head.rows) {
        let half = range.len() / 2;
        for r0 in (range.start..range.start + half).step_by(HEAD_RUN) {
            let n = (range.start + half - r0).min(HEAD_RUN);
            let (ya, yb) = (&mut y0[..n], &mut y1[..n]);
            match q8 {
                Some(a) => {
                    let streams = [head.stored_rows(r0, n), head.stored_rows(r0 + half, n)];
                    s.kern
                        .dot_q4_rows(streams, head.row_bytes(), a, [&mut *ya, &mut *yb]);
                }
                None => {
                    for i in 0..n {
                        let (ra, rb) = (r0 + i, r0 + half + i);
                        let rows = [head.stored_row(ra), head.stored_row(rb)];
                        let [a, b] = float::dot_rows(s.kern, head.dtype, rows, h);
                        (ya[i], yb[i]) = (head.scaled(ra, a), head.scaled(rb, b));
                    }
                }
            }
            for i in 0..n {
                logits.set(r0 + i, ya[i]);
                logits.set(r0 + half + i, yb[i]);
            }
        }
        // the odd row (dot_q4_rows gives each row the bits of dot_q4, which head_row calls)
        if range.len() % 2 == 1 {
            let r = range.end - 1;
            logits.set(r, head_row(s.w, s.kern, h, q8, r));
        }
    }
}

/// RMSNorm of one token's vector into `out` (resized to fit).
fn norm<'a>(s: &Session, x: &[f32], g: &[f32], out: &'a mut Vec<f32>) -> &'a [f32] {
    out.resize(x.len(), 0.0);
    rms_norm(s.kern, x, g, s.w.cfg.rms_norm_eps as f32, out);
    out
}

/// One thread's buffers for a step, refilled for every layer: a normed vector and the
/// quantized input of each of the four phases.
#[derive(Default)]
struct Scratch {
    normed: Vec<f32>,
    inputs: [QuantizedBatch; 4],
}

impl Scratch {
    /// The input of projections `ls` into `self.inputs[phase]`: `v` through the norm `g` when
    /// there is one (the input and post-attention norms; the sub-norms of BitNet b1.58),
    /// quantized to int8 (with TL tables).
    fn normed(
        &mut self,
        s: &Session,
        phase: usize,
        v: &[f32],
        g: Option<&[f32]>,
        ls: &[&Linear],
    ) -> &QuantizedBatch {
        let x = match g {
            Some(g) => norm(s, v, g, &mut self.normed),
            None => v,
        };
        let a = &mut self.inputs[phase];
        a.refill(x, v.len(), s.kern, ls);
        a
    }
}

/// Appends token `id` to the session and returns its logits.
pub(super) fn step(s: &mut Session, id: u32) -> Vec<f32> {
    let st: &Session = s;
    let w = st.w;
    let c = &w.cfg;
    let (hd, nh, nkv) = (
        c.head_dim as usize,
        c.num_attention_heads as usize,
        c.num_key_value_heads as usize,
    );
    let (hidden, pos) = (c.hidden_size as usize, st.pos);
    let scale = (hd as f64).powf(-0.5) as f32;
    let nl = w.layers.len();
    let ff = w.layers.first().map_or(0, |l| l.gate.rows);
    let qkv = Shared::new((nh + 2 * nkv) * hd);
    let attn = Shared::new(nh * hd);
    let (o, m, d) = (Shared::new(hidden), Shared::new(ff), Shared::new(hidden));
    let logits = Shared::new(w.lm_head.rows);
    // four phases per layer and the head, each with its own claim counter
    let next: Vec<AtomicUsize> = (0..4 * nl + 1).map(|_| AtomicUsize::new(0)).collect();
    let barrier = Barrier::new(rayon::current_num_threads());
    let rope = RopeAt::new(pos, &st.inv_freq);
    // Attention is split statically: thread t takes query heads t·nh/T .. (t+1)·nh/T, attending
    // with each kv head once for the heads of it that it has, so a kv head's cache is read once
    // per thread that needs it (2B-4T at 2 threads: 6 reads of 5 kv heads, 10 query heads
    // each). Claimed units of 2 heads had read every kv head twice, 10 reads.
    let (group, threads) = (nh / nkv, rayon::current_num_threads());

    rayon::broadcast(|ctx| {
        let _poison = PoisonOnPanic(&barrier);
        let mut x = vec![0f32; hidden];
        let mut scratch = Scratch::default();
        w.embed.row(id as usize, &mut x);
        for (li, layer) in w.layers.iter().enumerate() {
            let next = &next[4 * li..];
            let qkv_ls = [&layer.q, &layer.k, &layer.v];
            let xn = scratch.normed(st, 0, &x, Some(&layer.input_norm), &qkv_ls);
            matvec(st, &qkv_ls, xn, &next[0], &qkv);
            barrier.wait();
            if ctx.index() == 0 {
                let mut k = qkv.range(nh * hd..(nh + nkv) * hd);
                k.chunks_exact_mut(hd).for_each(|h| rope.apply(h));
                let v = qkv.range((nh + nkv) * hd..(nh + 2 * nkv) * hd);
                let mut kc = st.k_cache.write().unwrap_or_else(|e| e.into_inner());
                kc.push(li, &k);
                let mut vc = st.v_cache.write().unwrap_or_else(|e| e.into_inner());
                vc.push(li, &v);
            }
            barrier.wait();
            {
                let kc = st.k_cache.read().unwrap_or_else(|e| e.into_inner());
                let vc = st.v_cache.read().unwrap_or_else(|e| e.into_inner());
                let mine = ctx.index() * nh / threads..(ctx.index() + 1) * nh / threads;
                for kv in mine.start / group..mine.end.div_ceil(group) {
                    // empty when this thread's share is (more threads than query heads)
                    let heads =
                        mine.start.max(kv * group) * hd..mine.end.min((kv + 1) * group) * hd;
                    let mut qs = qkv.range(heads.clone());
                    qs.chunks_exact_mut(hd).for_each(|h| rope.apply(h));
                    let mut out = vec![0f32; qs.len()];
                    attend_group(
                        st.kern,
                        &qs,
                        hd,
                        KvHead::of(&kc, &vc, li, kv),
                        pos + 1,
                        scale,
                        &mut out,
                    );
                    heads.zip(out).for_each(|(i, v)| attn.set(i, v));
                }
            }
            barrier.wait();
            // SAFETY (both views): every thread stored its heads (its rows) before the barrier
            // above, and the next stores into it come after at least one more barrier, which
            // each thread reaches only once it is done with the view.
            let a = scratch.normed(
                st,
                1,
                unsafe { attn.view() },
                layer.attn_sub_norm.as_deref(),
                &[&layer.o],
            );
            matvec(st, &[&layer.o], a, &next[1], &o);
            barrier.wait();
            x.iter_mut().enumerate().for_each(|(i, v)| *v += o.get(i));
            let xn = scratch.normed(st, 2, &x, Some(&layer.post_norm), &[&layer.gate, &layer.up]);
            gated_matvec(st, li, xn, &next[2], &m);
            barrier.wait();
            let mq = scratch.normed(
                st,
                3,
                unsafe { m.view() },
                layer.ffn_sub_norm.as_deref(),
                &[&layer.down],
            );
            matvec(st, &[&layer.down], mq, &next[3], &d);
            barrier.wait();
            x.iter_mut().enumerate().for_each(|(i, v)| *v += d.get(i));
        }
        let h = norm(st, &x, &w.norm, &mut scratch.normed);
        let q8 = (w.lm_head.dtype == DType::Q4).then(|| Q8Blocks::new(h));
        head(st, h, q8.as_ref(), &next[4 * nl], &logits);
    });
    s.pos += 1;
    logits.into_vec()
}
