//! The int8-activation decode path of `matmul_gguf` (inference only), after llama.cpp's
//! `vec_dot_*_q8_0`: the activation row x [K] is quantized once per product into blocks of 32
//! (`Q8Act`: d = max|x|/127, q = round(x/d) in [-127, 127]), and each weight block is dotted with
//! those codes in integers (u8 · i8 → i32), then scaled in f32. Per weight this is a byte unpack
//! and a quarter of a 4-lane integer multiply-add, where the f32 path (`rows_dot`) widens every
//! weight to f32 for an FMA.
//!
//! Numerics: this is not the f32 product of deq(W). Each activation moves by at most d_b/2 (its
//! block's step), so |y − y_f32| ≤ Σ_b (d_b/2)·Σ_{j∈b} |w_j| plus float rounding: the bound the
//! tests check. The weights are used exactly (their integer codes and the file's scales). The
//! training path (`forward`, `backward_dx`) keeps f32 activations: gradients flow through the
//! f32 model, not this one. Prompts (16 tokens or more) take the same arithmetic as a GEMM
//! (`int8_gemm`).
//!
//! One chunk of 32 elements at a time, every type in the same shape: integer codes c[32] (the
//! type's offset already subtracted, so c fits an i8), a scale for elements 0..16 and one for
//! 16..32 (Q6_K scales 16 elements; the others repeat one scale), and an offset term `m` times
//! the chunk's Σx (Q4_1's m, Q4_K's −dmin·min): a chunk adds d_x·(s_lo·Σ_lo c·q + s_hi·Σ_hi c·q)
//! plus m·d_x·Σq. The portable code here is the reference of the x86 kernels (`int8_x86`), which
//! compute the same integer sums and differ only in the order of the f32 additions.

use crate::device::cpu;
use crate::model::load::ggml_blocks::{half, scale_min_k4, GgmlType};

/// Activation elements per scale.
pub const QK: usize = 32;

/// The block types with an int8 kernel.
pub fn supported(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K)
}

/// T activation rows of K (a multiple of 32) quantized to int8 blocks of 32.
#[derive(Debug, Clone)]
pub struct Q8Act {
    pub k: usize,
    /// [T·K] codes in [-127, 127].
    pub q: Vec<i8>,
    /// [T·K/32] scales d.
    pub d: Vec<f32>,
    /// [T·K/32] d·Σq of each block (for offset terms).
    pub dsum: Vec<f32>,
    /// [T·K/16] Σq of each half block (for `int8_gemm`'s code offsets).
    pub hsum: Vec<i32>,
}

impl Q8Act {
    /// Quantizes x [T, K] (K a multiple of 32) as llama.cpp's `quantize_row_q8_0`: d = amax/127,
    /// q = round(x/d), rounding half away from zero.
    pub fn quantize(x: &[f32], k: usize) -> Q8Act {
        assert!(k.is_multiple_of(QK) && x.len().is_multiple_of(k), "matmul_gguf int8: K {k} is not whole blocks of {QK}");
        let nb = x.len() / QK;
        let mut q = vec![0i8; x.len()];
        // Per block: d, d·Σq, and Σq of each half. Tokens in parallel (a prompt's T·K).
        let mut meta = vec![(0f32, 0f32, 0i32, 0i32); nb];
        let x = &x[..];
        cpu::for_each_chunk2(&mut q, k, &mut meta, k / QK, |ti, q, meta| {
            let xs = &x[ti * k..(ti + 1) * k];
            for ((xb, qb), m) in xs.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).zip(meta.iter_mut()) {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                for (q, &v) in qb.iter_mut().zip(xb) {
                    *q = round_half_away(v * id).clamp(-127, 127) as i8;
                }
                let half = |h: &[i8]| h.iter().map(|&v| v as i32).sum::<i32>();
                let (lo, hi) = (half(&qb[..16]), half(&qb[16..]));
                *m = (d, d * (lo + hi) as f32, lo, hi);
            }
        });
        Q8Act {
            k,
            q,
            d: meta.iter().map(|m| m.0).collect(),
            dsum: meta.iter().map(|m| m.1).collect(),
            hsum: meta.iter().flat_map(|m| [m.2, m.3]).collect(),
        }
    }

    /// Tokens held.
    pub fn tokens(&self) -> usize {
        self.q.len() / self.k
    }
}

/// `v.round() as i32` (half away from zero) for |v| < 2²³, in operations that vectorize: `round`
/// is a call into libm on x86-64's baseline, which made it a tenth of a prompt's quantization.
/// v − trunc(v) is exact there (Sterbenz), so the comparison with ½ decides as `round` does.
/// NaN gives 0, as `NaN as i32` does.
#[inline(always)]
pub fn round_half_away(v: f32) -> i32 {
    let t = v as i32;
    let f = v - t as f32;
    t + (f >= 0.5) as i32 - (f <= -0.5) as i32
}

/// out[r·T + ti] = row r of `w` · token ti of `x`, portable reference (also the wasm32 and
/// aarch64 code). `w` holds whole rows of `x.k` elements of `ty` (a `supported` type).
pub fn rows_dot(ty: GgmlType, w: &[u8], x: &Q8Act, out: &mut [f32]) {
    match ty {
        GgmlType::Q4_0 => rows::<Q4_0>(w, x, out),
        GgmlType::Q4_1 => rows::<Q4_1>(w, x, out),
        GgmlType::Q5_0 => rows::<Q5_0>(w, x, out),
        GgmlType::Q8_0 => rows::<Q8_0>(w, x, out),
        GgmlType::Q4_K => rows::<Q4_K>(w, x, out),
        GgmlType::Q6_K => rows::<Q6_K>(w, x, out),
        _ => panic!("matmul_gguf int8: no kernel for {ty}"),
    }
}

/// A block type as chunks of 32: `chunk` writes chunk `c`'s codes and returns `scales(b, c)`,
/// its (s_lo, s_hi, m).
trait Chunks {
    const B: usize;
    const BYTES: usize;
    fn chunk(b: &[u8], c: usize, codes: &mut [i8; 32]) -> (f32, f32, f32);
    fn scales(b: &[u8], c: usize) -> (f32, f32, f32);
}

/// Each chunk's codes are unpacked once for all T tokens; every token's sum takes the chunks in
/// the same order whatever T is, so a token's result does not depend on the tokens beside it.
#[inline(always)]
fn rows<T: Chunks>(w: &[u8], x: &Q8Act, out: &mut [f32]) {
    let (k, t) = (x.k, x.tokens());
    let nb = k / T::B;
    let rb = nb * T::BYTES;
    let rows = out.len() / t;
    assert!(w.len() >= rows * rb && out.len() == rows * t, "matmul_gguf int8: buffers too small");
    let mut codes = [0i8; 32];
    for (r, y) in out.chunks_exact_mut(t).enumerate() {
        y.fill(0.0);
        for bi in 0..nb {
            let b = &w[r * rb + bi * T::BYTES..][..T::BYTES];
            for c in 0..T::B / 32 {
                let (s_lo, s_hi, m) = T::chunk(b, c, &mut codes);
                for (ti, y) in y.iter_mut().enumerate() {
                    let xb = ti * k / QK + bi * T::B / QK + c;
                    let q: &[i8; 32] = x.q[xb * QK..][..QK].try_into().expect("32 codes");
                    let (lo, hi) = (idot16(&codes[..16], &q[..16]), idot16(&codes[16..], &q[16..]));
                    *y += x.d[xb] * (s_lo * lo as f32 + s_hi * hi as f32) + m * x.dsum[xb];
                }
            }
        }
    }
}

/// Calls `f(chunk, codes, s_lo, s_hi, m)` for every chunk of 32 of one row of `ty` (a
/// `supported` type) of `k` elements: the chunk form of the weights, for `int8_gemm`'s tiles.
pub(super) fn for_each_chunk(ty: GgmlType, row: &[u8], k: usize, f: impl FnMut(usize, &[i8; 32], f32, f32, f32)) {
    match ty {
        GgmlType::Q4_0 => chunks_of::<Q4_0>(row, k, f),
        GgmlType::Q4_1 => chunks_of::<Q4_1>(row, k, f),
        GgmlType::Q5_0 => chunks_of::<Q5_0>(row, k, f),
        GgmlType::Q8_0 => chunks_of::<Q8_0>(row, k, f),
        GgmlType::Q4_K => chunks_of::<Q4_K>(row, k, f),
        GgmlType::Q6_K => chunks_of::<Q6_K>(row, k, f),
        _ => panic!("matmul_gguf int8: no kernel for {ty}"),
    }
}

/// `for_each_chunk` without the codes: `f(chunk, s_lo, s_hi, m)` for every chunk of one row (for
/// `int8_pack_x86`, which decodes the codes itself).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) fn for_each_chunk_scales(ty: GgmlType, row: &[u8], k: usize, f: impl FnMut(usize, f32, f32, f32)) {
    match ty {
        GgmlType::Q4_0 => scales_of::<Q4_0>(row, k, f),
        GgmlType::Q4_1 => scales_of::<Q4_1>(row, k, f),
        GgmlType::Q5_0 => scales_of::<Q5_0>(row, k, f),
        GgmlType::Q8_0 => scales_of::<Q8_0>(row, k, f),
        GgmlType::Q4_K => scales_of::<Q4_K>(row, k, f),
        GgmlType::Q6_K => scales_of::<Q6_K>(row, k, f),
        _ => panic!("matmul_gguf int8: no kernel for {ty}"),
    }
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline(always)]
fn scales_of<T: Chunks>(row: &[u8], k: usize, mut f: impl FnMut(usize, f32, f32, f32)) {
    for (bi, b) in row[..k / T::B * T::BYTES].chunks_exact(T::BYTES).enumerate() {
        for c in 0..T::B / 32 {
            let (s_lo, s_hi, m) = T::scales(b, c);
            f(bi * T::B / 32 + c, s_lo, s_hi, m);
        }
    }
}

#[inline(always)]
fn chunks_of<T: Chunks>(row: &[u8], k: usize, mut f: impl FnMut(usize, &[i8; 32], f32, f32, f32)) {
    let mut codes = [0i8; 32];
    for (bi, b) in row[..k / T::B * T::BYTES].chunks_exact(T::BYTES).enumerate() {
        for c in 0..T::B / 32 {
            let (s_lo, s_hi, m) = T::chunk(b, c, &mut codes);
            f(bi * T::B / 32 + c, &codes, s_lo, s_hi, m);
        }
    }
}

#[inline(always)]
fn idot16(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&u, &v)| u as i16 as i32 * v as i32).sum()
}

fn f16(b: &[u8], at: usize) -> f32 {
    half(&b[at..at + 2], 0)
}

/// 16 bytes of nibbles -> elements 0..16 (low) and 16..32 (high), minus `off`.
#[inline(always)]
fn nibbles(qs: &[u8], off: i8, codes: &mut [i8; 32]) {
    for j in 0..16 {
        codes[j] = (qs[j] & 0xF) as i8 - off;
        codes[j + 16] = (qs[j] >> 4) as i8 - off;
    }
}

#[allow(non_camel_case_types)]
struct Q4_0;
impl Chunks for Q4_0 {
    const B: usize = 32;
    const BYTES: usize = 18;
    #[inline(always)]
    fn chunk(b: &[u8], _: usize, codes: &mut [i8; 32]) -> (f32, f32, f32) {
        nibbles(&b[2..18], 8, codes);
        Self::scales(b, 0)
    }
    #[inline(always)]
    fn scales(b: &[u8], _: usize) -> (f32, f32, f32) {
        let d = f16(b, 0);
        (d, d, 0.0)
    }
}

#[allow(non_camel_case_types)]
struct Q4_1;
impl Chunks for Q4_1 {
    const B: usize = 32;
    const BYTES: usize = 20;
    #[inline(always)]
    fn chunk(b: &[u8], _: usize, codes: &mut [i8; 32]) -> (f32, f32, f32) {
        nibbles(&b[4..20], 0, codes);
        Self::scales(b, 0)
    }
    #[inline(always)]
    fn scales(b: &[u8], _: usize) -> (f32, f32, f32) {
        let d = f16(b, 0);
        (d, d, f16(b, 2))
    }
}

#[allow(non_camel_case_types)]
struct Q5_0;
impl Chunks for Q5_0 {
    const B: usize = 32;
    const BYTES: usize = 22;
    #[inline(always)]
    fn chunk(b: &[u8], _: usize, codes: &mut [i8; 32]) -> (f32, f32, f32) {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        nibbles(&b[6..22], 0, codes);
        for (j, c) in codes.iter_mut().enumerate() {
            *c = (*c | (((qh >> j) & 1) << 4) as i8) - 16;
        }
        Self::scales(b, 0)
    }
    #[inline(always)]
    fn scales(b: &[u8], _: usize) -> (f32, f32, f32) {
        let d = f16(b, 0);
        (d, d, 0.0)
    }
}

#[allow(non_camel_case_types)]
struct Q8_0;
impl Chunks for Q8_0 {
    const B: usize = 32;
    const BYTES: usize = 34;
    #[inline(always)]
    fn chunk(b: &[u8], _: usize, codes: &mut [i8; 32]) -> (f32, f32, f32) {
        for (c, &v) in codes.iter_mut().zip(&b[2..34]) {
            *c = v as i8;
        }
        Self::scales(b, 0)
    }
    #[inline(always)]
    fn scales(b: &[u8], _: usize) -> (f32, f32, f32) {
        let d = f16(b, 0);
        (d, d, 0.0)
    }
}

/// Chunk c is sub-block c: group c/2's 32 bytes, low nibbles for even c, high for odd.
#[allow(non_camel_case_types)]
struct Q4_K;
impl Chunks for Q4_K {
    const B: usize = 256;
    const BYTES: usize = 144;
    #[inline(always)]
    fn chunk(b: &[u8], c: usize, codes: &mut [i8; 32]) -> (f32, f32, f32) {
        let qs = &b[16 + 32 * (c / 2)..][..32];
        let shift = 4 * (c % 2);
        for (o, &v) in codes.iter_mut().zip(qs) {
            *o = ((v >> shift) & 0xF) as i8;
        }
        Self::scales(b, c)
    }
    #[inline(always)]
    fn scales(b: &[u8], c: usize) -> (f32, f32, f32) {
        let (sc, mn) = scale_min_k4(c, &b[4..16]);
        let s = f16(b, 0) * sc as f32;
        (s, s, -(f16(b, 2) * mn as f32))
    }
}

/// Chunk c = 4h + k of half h: element l of it takes ql[64h + l + 32(k%2)] (low nibble for
/// k < 2, high for k ≥ 2) and bits 2k..2k+2 of qh[32h + l]; scales sc[8h + 2k + l/16].
#[allow(non_camel_case_types)]
struct Q6_K;
impl Chunks for Q6_K {
    const B: usize = 256;
    const BYTES: usize = 210;
    #[inline(always)]
    fn chunk(b: &[u8], c: usize, codes: &mut [i8; 32]) -> (f32, f32, f32) {
        let (h, kk) = (c / 4, c % 4);
        let ql = &b[64 * h + 32 * (kk % 2)..][..32];
        let qh = &b[128 + 32 * h..][..32];
        let shift = 4 * (kk / 2);
        for l in 0..32 {
            codes[l] = (((ql[l] >> shift) & 0xF) | (((qh[l] >> (2 * kk)) & 3) << 4)) as i8 - 32;
        }
        Self::scales(b, c)
    }
    #[inline(always)]
    fn scales(b: &[u8], c: usize) -> (f32, f32, f32) {
        let (h, kk) = (c / 4, c % 4);
        let d = f16(b, 208);
        let sc = |i: usize| d * b[192 + 8 * h + 2 * kk + i] as i8 as f32;
        (sc(0), sc(1), 0.0)
    }
}
