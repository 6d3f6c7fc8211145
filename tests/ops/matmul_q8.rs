//! The exact 8-bit decode product: which weights it recognises, and its products against the f32
//! matmul of the same weight.

use crate::common::*;
use flexlora::ops::{matmul, matmul_q8::Q8Matrix};

/// A [n, k] weight as a GGUF Q8_0 tensor dequantizes: per block of 32, d = f16(amax / 127) and
/// q = round(v / d), stored as q·d.
fn q8_0_weight(n: usize, k: usize, seed: u64) -> Vec<f32> {
    let w = Rng::new(seed).vec(n * k, 0.3);
    let mut out = Vec::with_capacity(w.len());
    for block in w.chunks(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = half::f16::from_f32(amax / 127.0).to_f32();
        out.extend(block.iter().map(|v| (v / d).round().clamp(-127.0, 127.0) * d));
    }
    out
}

#[test]
fn recognises_exactly_8_bit_weights_only() {
    let (n, k) = (40, 96);
    let mut w = q8_0_weight(n, k, 1);
    assert!(Q8Matrix::exact(&w, n, k).is_some(), "a Q8_0-dequantized weight is exactly 8-bit");
    w[17 * k + 5] += 1e-3; // one value off the grid of its block
    assert!(Q8Matrix::exact(&w, n, k).is_none(), "one inexact value must keep the f32 weight");
    assert!(Q8Matrix::exact(&Rng::new(2).vec(n * k, 0.3), n, k).is_none(), "random f32 is not 8-bit");
    let zeros = vec![0f32; n * k];
    assert!(Q8Matrix::exact(&zeros, n, k).is_some(), "all-zero blocks are exact with scale 0");
    let w = q8_0_weight(n, 80, 3);
    assert!(Q8Matrix::exact(&w, n, 80).is_none(), "rows must be whole blocks of 32");
}

#[test]
fn forward_matches_f32_matmul() {
    let dev = cpu();
    // M up to 15 (the decode path's limit) crosses the 8-token groups; N = 300 leaves a partial
    // parallel task; K = 576 is SmolLM2's width.
    for &(m, n, k) in &[(1, 300, 576), (3, 70, 64), (8, 300, 96), (9, 33, 32), (15, 130, 576)] {
        let w = q8_0_weight(n, k, (m * n + k) as u64);
        let x = Rng::new(m as u64).vec(m * k, 1.0);
        let want = read(&dev, &matmul::forward(&dev, &up(&dev, &[m, k], &x), &up(&dev, &[n, k], &w), false, true).unwrap());
        let q8 = Q8Matrix::exact(&w, n, k).unwrap();
        each_tier(|tier| {
            let mut got = vec![f32::NAN; m * n];
            q8.forward(&x, m, &mut got);
            assert_close(&format!("q8 forward M={m} N={n} K={k}, CPU tier {tier}"), &got, &want, 1e-5, 1e-5);
        });
    }
}
