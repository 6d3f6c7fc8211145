//! Decode-time product with an exact 8-bit copy of a weight: y[M,N] = x[M,K]·Wᵀ, CPU only.
//!
//! At decode the output projection dominates the bytes read per token (V·C floats: 113 MB of f32
//! for SmolLM2, against 53 MB for all its NF4 layers). When W's values are exactly q·d for int8 q in
//! blocks of 32 along a row with one f32 scale d per block (what a GGUF `Q8_0` tensor dequantizes
//! to, so also the `convert`ed safetensors of one), `Q8Matrix::exact` keeps those q and d: a
//! quarter of the bytes, and the products are those of the f32 weight (each weight is rebuilt
//! exactly as q·d before its multiply), only summed in another order. Any other W gets `None` and
//! stays on the f32 path. There is no backward: the weight is frozen and the GPU keeps f32.

use crate::device::cpu;

/// Weights per block (one scale each).
pub const BLOCK: usize = 32;
/// Products of fewer tokens than this take `Q8Matrix::forward`; more go to the f32 GEMM, where
/// the weight is read once for many tokens anyway.
pub const MAX_TOKENS: usize = 16;

/// W [rows, cols] as int8 codes and one f32 scale per `BLOCK` codes along each row.
#[derive(Debug)]
pub struct Q8Matrix {
    pub rows: usize,
    pub cols: usize,
    q: Vec<i8>,
    scale: Vec<f32>,
}

impl Q8Matrix {
    /// The exact 8-bit form of row-major `w` [rows, cols], or `None` when some block is not
    /// q·d for int8 q (|q| ≤ 127) with d = its largest magnitude / 127, or cols % 32 != 0.
    pub fn exact(w: &[f32], rows: usize, cols: usize) -> Option<Q8Matrix> {
        if cols % BLOCK != 0 || w.len() != rows * cols {
            return None;
        }
        let mut q = vec![0i8; w.len()];
        let mut scale = Vec::with_capacity(w.len() / BLOCK);
        for (block, codes) in w.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)) {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            for (&v, c) in block.iter().zip(codes.iter_mut()) {
                let r = if d > 0.0 { (v / d).round() } else { 0.0 };
                if !(r.abs() <= 127.0 && r * d == v) {
                    return None;
                }
                *c = r as i8;
            }
            scale.push(d);
        }
        Some(Q8Matrix { rows, cols, q, scale })
    }

    pub fn bytes(&self) -> u64 {
        (self.q.len() + 4 * self.scale.len()) as u64
    }

    /// y [m, rows] = x [m, cols] · Wᵀ, in parallel over W's rows, each row read once for all m
    /// tokens (in groups of up to 8).
    pub fn forward(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let (n, k) = (self.rows, self.cols);
        assert!(x.len() >= m * k && y.len() >= m * n, "matmul_q8: buffers too small");
        let mut yt = vec![0f32; n * m]; // [N, M]
        let rows_per_task = n.div_ceil(8 * cpu::threads()).max(64);
        cpu::for_each_chunk(&mut yt, rows_per_task * m, |task, out| {
            let r0 = task * rows_per_task;
            let rows = out.len() / m;
            let (q, scale) = (&self.q[r0 * k..(r0 + rows) * k], &self.scale[r0 * k / BLOCK..(r0 + rows) * k / BLOCK]);
            for t0 in (0..m).step_by(8) {
                rows_dot(q, scale, &x[t0 * k..], k, (m - t0).min(8), out, m, t0);
            }
        });
        cpu::transpose_into(&yt, n, m, y);
    }
}

/// out[r*stride + t0 + ti] = Σ_j (q[r, j]·d)·x[ti, j] for every row r of `q` and ti < `tokens`.
#[allow(clippy::too_many_arguments)]
fn rows_dot(q: &[i8], scale: &[f32], x: &[f32], k: usize, tokens: usize, out: &mut [f32], stride: usize, t0: usize) {
    // `simd::rows_dot` writes out[r*stride + t0 + ti] unchecked: t0 + tokens <= stride keeps every
    // row's writes inside its own stride, and whole blocks per row keep the scale index in range.
    assert!(x.len() >= tokens * k && q.len() == scale.len() * BLOCK && out.len() >= (q.len() / k) * stride);
    assert!(t0 + tokens <= stride && k % BLOCK == 0, "matmul_q8: tokens {t0}+{tokens} past stride {stride}, or K {k} not whole blocks");
    #[cfg(target_arch = "x86_64")]
    if cpu::tier() == cpu::Tier::Avx512 {
        // SAFETY: `tier()` only returns tiers this CPU runs; the asserts above bound every access, including
        // the unchecked writes to `out` and reads of `scale`.
        debug_assert!(tokens >= 1 && x.len() >= (tokens - 1) * k + k);
        cpu::debug_assert_runs(cpu::Tier::Avx512);
        unsafe {
            match tokens {
                1 => simd::rows_dot::<1>(q, scale, x, k, out, stride, t0),
                2 => simd::rows_dot::<2>(q, scale, x, k, out, stride, t0),
                3 => simd::rows_dot::<3>(q, scale, x, k, out, stride, t0),
                4 => simd::rows_dot::<4>(q, scale, x, k, out, stride, t0),
                5 => simd::rows_dot::<5>(q, scale, x, k, out, stride, t0),
                6 => simd::rows_dot::<6>(q, scale, x, k, out, stride, t0),
                7 => simd::rows_dot::<7>(q, scale, x, k, out, stride, t0),
                _ => simd::rows_dot::<8>(q, scale, x, k, out, stride, t0),
            }
        }
        return;
    }
    if tokens == 1 {
        return row_dot_one(q, scale, &x[..k], k, out, stride, t0);
    }
    let mut w = vec![0f32; k];
    for (r, row) in q.chunks_exact(k).enumerate() {
        for ((dst, codes), &d) in w.chunks_exact_mut(BLOCK).zip(row.chunks_exact(BLOCK)).zip(&scale[r * k / BLOCK..]) {
            for (v, &c) in dst.iter_mut().zip(codes) {
                *v = c as f32 * d;
            }
        }
        for ti in 0..tokens {
            out[r * stride + t0 + ti] = cpu::dot(&x[ti * k..(ti + 1) * k], &w);
        }
    }
}

/// `rows_dot` for one token, portable (wasm32 SIMD128, aarch64, the portable tier): each block's
/// codes are widened to f32 in registers and dotted with x in 8 lanes, unscaled, then added to the
/// row's 8 lanes times the block's scale, so the compiler vectorizes it with no stored weights.
fn row_dot_one(q: &[i8], scale: &[f32], x: &[f32], k: usize, out: &mut [f32], stride: usize, t0: usize) {
    for (r, row) in q.chunks_exact(k).enumerate() {
        let mut lanes = [0f32; 8];
        for ((codes, xb), &d) in row.chunks_exact(BLOCK).zip(x.chunks_exact(BLOCK)).zip(&scale[r * k / BLOCK..]) {
            let mut block = [0f32; 8];
            for (c8, x8) in codes.chunks_exact(8).zip(xb.chunks_exact(8)) {
                for i in 0..8 {
                    block[i] += c8[i] as f32 * x8[i];
                }
            }
            for i in 0..8 {
                lanes[i] += block[i] * d;
            }
        }
        out[r * stride + t0] = lanes.iter().sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::BLOCK;
    use std::arch::x86_64::*;

    /// `rows_dot` for T tokens: each block's 32 codes widen to two 16-lane f32 vectors times the
    /// block's scale (the exact weights), which feed two accumulators per token.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, and the buffers must be as `super::rows_dot` asserts (T·K
    /// floats in x, whole blocks per row, a scale per block, `out` holding every row's stride).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn rows_dot<const T: usize>(q: &[i8], scale: &[f32], x: &[f32], k: usize, out: &mut [f32], stride: usize, t0: usize) {
        let blocks = k / BLOCK;
        for r in 0..q.len() / k {
            let mut acc = [[_mm512_setzero_ps(); 2]; T];
            for b in 0..blocks {
                let p = q.as_ptr().add(r * k + BLOCK * b);
                let d = _mm512_set1_ps(*scale.get_unchecked(r * blocks + b));
                let widen = |p: *const i8| _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)));
                let (w0, w1) = (_mm512_mul_ps(widen(p), d), _mm512_mul_ps(widen(p.add(16)), d));
                for (ti, a) in acc.iter_mut().enumerate() {
                    let xp = x.as_ptr().add(ti * k + BLOCK * b);
                    a[0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xp), a[0]);
                    a[1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xp.add(16)), a[1]);
                }
            }
            for (ti, a) in acc.iter().enumerate() {
                *out.get_unchecked_mut(r * stride + t0 + ti) = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
            }
        }
    }
}
