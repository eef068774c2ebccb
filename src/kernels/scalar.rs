//! The scalar kernels: the oracle every SIMD path must equal exactly.

/// Σ code·a over a T2 row (code = weight + 1), block by block as formats/bnet.md §4.1 lays
/// it out: byte m of block b holds elements 256b + m + 64j in bits 2j..2j+1.
pub fn dot_t2_offset(row: &[u8], act: &[i8]) -> i32 {
    let mut acc = 0i32;
    for (block, a) in row.chunks_exact(64).zip(act.chunks_exact(256)) {
        for (m, &byte) in block.iter().enumerate() {
            for j in 0..4 {
                let code = ((byte >> (2 * j)) & 3) as i32;
                acc += code * a[64 * j + m] as i32;
            }
        }
    }
    acc
}

/// Σ a where the B1 bit is 1 (bit j of byte m of block b is element 256b + m + 32j).
pub fn dot_b1_ones(row: &[u8], act: &[i8]) -> i32 {
    let mut acc = 0i32;
    for (block, a) in row.chunks_exact(32).zip(act.chunks_exact(256)) {
        for (m, &byte) in block.iter().enumerate() {
            for j in 0..8 {
                if (byte >> j) & 1 == 1 {
                    acc += a[32 * j + m] as i32;
                }
            }
        }
    }
    acc
}
