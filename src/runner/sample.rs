//! Choosing the next token: greedy, or temperature / top-k / top-p sampling with a seeded RNG
//! (xorshift64*, so a seed gives the same text on every machine).

use crate::error::{Error, Result};

/// Sampling settings; `temperature == 0` is greedy.
#[derive(Clone, Copy, Debug)]
pub struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    state: u64,
}

impl Sampler {
    /// Refuses a temperature that is negative or not finite and a `top_p` outside (0, 1]: a
    /// NaN temperature had sampled every token from NaN probabilities.
    pub fn new(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> Result<Sampler> {
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(Error::Usage(format!(
                "--temp {temperature} is not a temperature: give 0 (greedy) or a positive number"
            )));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(Error::Usage(format!(
                "--top-p {top_p} is not a probability mass: give a number in (0, 1] (1 keeps \
                 every token)"
            )));
        }
        Ok(Sampler {
            temperature,
            top_k,
            top_p,
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        })
    }

    fn uniform(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn next(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 {
            return super::compare::top_k(logits, 1)[0] as u32;
        }
        let k = if self.top_k == 0 {
            logits.len()
        } else {
            self.top_k.min(logits.len())
        };
        let idx = super::compare::top_k(logits, k);
        let m = logits[idx[0]] as f64;
        let mut p: Vec<f64> = idx
            .iter()
            .map(|&i| ((logits[i] as f64 - m) / self.temperature as f64).exp())
            .collect();
        let s: f64 = p.iter().sum();
        p.iter_mut().for_each(|v| *v /= s);
        // top-p: the smallest prefix whose mass reaches top_p
        let mut keep = p.len();
        if self.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, v) in p.iter().enumerate() {
                acc += v;
                if acc >= self.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        let total: f64 = p[..keep].iter().sum();
        let mut r = self.uniform() * total;
        for (i, v) in p[..keep].iter().enumerate() {
            r -= v;
            if r <= 0.0 {
                return idx[i] as u32;
            }
        }
        idx[keep - 1] as u32
    }
}
