//! The few-token forward (decode) of `matmul_gguf` in AVX2/FMA intrinsics, for the AVX2 and
//! AVX-512 tiers: out[r, ti] = deq(row r) · x[ti], every block dequantized in registers (8 lanes
//! at a time: bytes -> i32 -> f32, then one FMA with the block's scale and offset) and multiplied
//! into 4 running [8] sums that stay in registers for the whole row. x stays f32 (no 8-bit
//! activations as in llama.cpp), so the result is the f32 matmul of deq(W) up to rounding: the
//! weights are the reference dequantizers' (`ggml_blocks`) but for Q4_1/Q5_1/Q4_K/Q5_K, whose
//! `d·q + m` is one fused rounding here instead of two.
//!
//! Written by hand because the plain-Rust version (`rows_dot_blocks`) vectorizes the nibble
//! unpacking only 4 lanes wide and ran at 10% of the memory bound. Q5_1 and Q5_K are rare in
//! files and keep that path.
//!
//! Safety of the helpers below (all `unsafe fn`): they need AVX2 and FMA (checked once, by a debug
//! assertion in `rows_dot`), and read through raw pointers: a block function's `b` points at one
//! whole block of its type (the `BYTES` of `rows`) and `x` at that block's B floats, which `rows`
//! guarantees by asserting that w holds `rows` rows of whole blocks and x holds T·K floats.

use std::arch::x86_64::*;

use crate::model::load::ggml_blocks::{half, scale_min_k4, GgmlType};

/// Dots every row in `w` with every token of x (out [rows, T]); false (writing nothing) for a
/// type without a kernel here.
///
/// # Safety
/// The CPU must have AVX2 and FMA (the AVX2 and AVX-512 tiers); `w` holds whole rows of K
/// elements of `ty`, x holds T·K floats and out T·rows.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn rows_dot(ty: GgmlType, w: &[u8], x: &[f32], k: usize, out: &mut [f32]) -> bool {
    debug_assert!(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"));
    match ty {
        GgmlType::Q4_0 => rows::<32, 18>(w, x, k, out, |b, x, acc| q4_0(b, x, acc)),
        GgmlType::Q4_1 => rows::<32, 20>(w, x, k, out, |b, x, acc| q4_1(b, x, acc)),
        GgmlType::Q5_0 => rows::<32, 22>(w, x, k, out, |b, x, acc| q5_0(b, x, acc)),
        GgmlType::Q8_0 => rows::<32, 34>(w, x, k, out, |b, x, acc| q8_0(b, x, acc)),
        GgmlType::Q4_K => rows::<256, 144>(w, x, k, out, |b, x, acc| q4_k(b, x, acc)),
        GgmlType::Q6_K => rows::<256, 210>(w, x, k, out, |b, x, acc| q6_k(b, x, acc)),
        _ => return false,
    }
    true
}

/// Four [8] running sums.
type Acc = [__m256; 4];

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows<const B: usize, const BYTES: usize>(
    w: &[u8],
    x: &[f32],
    k: usize,
    out: &mut [f32],
    block: impl Fn(*const u8, *const f32, &mut Acc),
) {
    let t = x.len() / k;
    let rows = out.len() / t;
    let nb = k / B;
    let rb = nb * BYTES;
    assert!(w.len() >= rows * rb && x.len() >= t * k, "matmul_gguf avx2: buffers too small");
    for r in 0..rows {
        for ti in 0..t {
            let mut acc = [_mm256_setzero_ps(); 4];
            let (row, xt) = (w.as_ptr().add(r * rb), x.as_ptr().add(ti * k));
            for bi in 0..nb {
                block(row.add(bi * BYTES), xt.add(bi * B), &mut acc);
            }
            out[r * t + ti] = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

/// The f16 at `p` as f32.
#[inline]
unsafe fn f16_at(p: *const u8) -> f32 {
    half(std::slice::from_raw_parts(p, 2), 0)
}

/// The low 8 bytes of `v` (unsigned) as 8 f32.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn u8x8(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
}

/// acc[i] += (q·s + o) · x[8i..8i+8] for four [8] vectors of q.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma4(q: [__m256; 4], s: __m256, o: __m256, x: *const f32, acc: &mut Acc) {
    for i in 0..4 {
        let w = _mm256_fmadd_ps(q[i], s, o);
        acc[i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x.add(8 * i)), acc[i]);
    }
}

/// The 32 nibbles of 16 bytes at `p` in ggml's order (low nibbles are elements 0..16, high
/// 16..32) as four [8] f32.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn nibbles16(p: *const u8) -> [__m256; 4] {
    let v = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0xF);
    let lo = _mm_and_si128(v, m);
    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    [u8x8(lo), u8x8(_mm_srli_si128(lo, 8)), u8x8(hi), u8x8(_mm_srli_si128(hi, 8))]
}

/// block_q4_0: (q − 8)·d = q·d + (−8d), exact as the reference's.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q4_0(b: *const u8, x: *const f32, acc: &mut Acc) {
    let d = f16_at(b);
    fma4(nibbles16(b.add(2)), _mm256_set1_ps(d), _mm256_set1_ps(-8.0 * d), x, acc);
}

/// block_q4_1: q·d + m.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q4_1(b: *const u8, x: *const f32, acc: &mut Acc) {
    fma4(nibbles16(b.add(4)), _mm256_set1_ps(f16_at(b)), _mm256_set1_ps(f16_at(b.add(2))), x, acc);
}

/// block_q5_0: (q − 16)·d with the fifth bit of element j at bit j of the u32 qh.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q5_0(b: *const u8, x: *const f32, acc: &mut Acc) {
    let d = f16_at(b);
    let qh = _mm256_set1_epi32(u32::from_le_bytes([*b.add(2), *b.add(3), *b.add(4), *b.add(5)]) as i32);
    let v = _mm_loadu_si128(b.add(6) as *const __m128i);
    let m = _mm_set1_epi8(0xF);
    let lo = _mm_and_si128(v, m);
    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    let parts = [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)];
    let one = _mm256_set1_epi32(1);
    let (s, o) = (_mm256_set1_ps(d), _mm256_set1_ps(-16.0 * d));
    for (i, p) in parts.into_iter().enumerate() {
        let j0 = 8 * i as i32;
        let shifts = _mm256_setr_epi32(j0, j0 + 1, j0 + 2, j0 + 3, j0 + 4, j0 + 5, j0 + 6, j0 + 7);
        let bit = _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(qh, shifts), one), 4);
        let q = _mm256_cvtepi32_ps(_mm256_or_si256(_mm256_cvtepu8_epi32(p), bit));
        acc[i] = _mm256_fmadd_ps(_mm256_fmadd_ps(q, s, o), _mm256_loadu_ps(x.add(8 * i)), acc[i]);
    }
}

/// block_q8_0: q·d, q signed.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q8_0(b: *const u8, x: *const f32, acc: &mut Acc) {
    let d = _mm256_set1_ps(f16_at(b));
    for i in 0..4 {
        let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(b.add(2 + 8 * i) as *const __m128i)));
        acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(q, d), _mm256_loadu_ps(x.add(8 * i)), acc[i]);
    }
}

/// block_q4_K: 4 groups of 32 bytes, low nibbles sub-block 2g, high 2g+1; (d·sc)·q − dmin·m.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q4_k(b: *const u8, x: *const f32, acc: &mut Acc) {
    let (d, dmin) = (f16_at(b), f16_at(b.add(2)));
    let scales = std::slice::from_raw_parts(b.add(4), 12);
    let m = _mm256_set1_epi8(0xF);
    for g in 0..4 {
        let v = _mm256_loadu_si256(b.add(16 + 32 * g) as *const __m256i);
        for (half_, bytes) in [_mm256_and_si256(v, m), _mm256_and_si256(_mm256_srli_epi16(v, 4), m)].into_iter().enumerate() {
            let (sc, mn) = scale_min_k4(2 * g + half_, scales);
            let (s, o) = (_mm256_set1_ps(d * sc as f32), _mm256_set1_ps(-(dmin * mn as f32)));
            let (a, c) = (_mm256_castsi256_si128(bytes), _mm256_extracti128_si256(bytes, 1));
            let q = [u8x8(a), u8x8(_mm_srli_si128(a, 8)), u8x8(c), u8x8(_mm_srli_si128(c, 8))];
            fma4(q, s, o, x.add(64 * g + 32 * half_), acc);
        }
    }
}

/// block_q6_K: two halves of 128; element l + 32k of a half takes its low 4 bits from ql[l]
/// (k = 0, 2) or ql[l + 32] (k = 1, 3), low nibble for k < 2, high for k ≥ 2, bits 2k..2k+2 of
/// qh[l] on top; y = (d·sc[l/16 + 2k])·(q − 32).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q6_k(b: *const u8, x: *const f32, acc: &mut Acc) {
    let d = f16_at(b.add(208));
    let (m4, m2, c32) = (_mm256_set1_epi32(0xF), _mm256_set1_epi32(3), _mm256_set1_epi32(32));
    for h in 0..2 {
        let (ql, qh, sc) = (b.add(64 * h), b.add(128 + 32 * h), b.add(192 + 8 * h));
        let xh = x.add(128 * h);
        for (i, l0) in [0usize, 8, 16, 24].into_iter().enumerate() {
            let load = |p: *const u8| _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
            let (a, c, hb) = (load(ql.add(l0)), load(ql.add(l0 + 32)), load(qh.add(l0)));
            let lows = [_mm256_and_si256(a, m4), _mm256_and_si256(c, m4), _mm256_srli_epi32(a, 4), _mm256_srli_epi32(c, 4)];
            let highs = [
                _mm256_and_si256(hb, m2),
                _mm256_and_si256(_mm256_srli_epi32(hb, 2), m2),
                _mm256_and_si256(_mm256_srli_epi32(hb, 4), m2),
                _mm256_srli_epi32(hb, 6),
            ];
            let is = l0 / 16;
            for kk in 0..4 {
                let q = _mm256_sub_epi32(_mm256_or_si256(lows[kk], _mm256_slli_epi32(highs[kk], 4)), c32);
                let s = _mm256_set1_ps(d * *sc.add(is + 2 * kk) as i8 as f32);
                let w = _mm256_mul_ps(s, _mm256_cvtepi32_ps(q));
                acc[i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xh.add(l0 + 32 * kk)), acc[i]);
            }
        }
    }
}
