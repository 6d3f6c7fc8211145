//! AVX-512 versions of the `avx2` decode kernels for Q4_0, Q4_1, Q5_0, Q8_0 and Q4_K: the same
//! arithmetic 16 lanes wide, so a 32-element block is two vectors (16 bytes widened once to 16
//! lanes give both nibble halves). The other types use `avx2` on the AVX-512 tier too. Q5_0 and
//! Q8_0 matter for models whose rows are not whole 256-element super-blocks (Qwen2.5-0.5B's 896):
//! llama.cpp's K-quant files store those tensors, the output head included, in them.
//!
//! Safety of the helpers below (all `unsafe fn`): as in `avx2`, with AVX-512F instead of AVX2
//! (checked once, by a debug assertion in `rows_dot`).

use std::arch::x86_64::*;

use crate::model::load::ggml_blocks::{half, scale_min_k4, GgmlType};

/// Like `avx2::rows_dot`: false (writing nothing) for a type without a kernel here.
///
/// # Safety
/// The CPU must have AVX-512F (the AVX-512 tier); `w` holds whole rows of K elements of `ty`,
/// x holds T·K floats and out T·rows.
#[target_feature(enable = "avx512f")]
pub unsafe fn rows_dot(ty: GgmlType, w: &[u8], x: &[f32], k: usize, out: &mut [f32]) -> bool {
    debug_assert!(std::arch::is_x86_feature_detected!("avx512f"));
    match ty {
        GgmlType::Q4_0 => rows::<32, 18>(w, x, k, out, |b, x, acc| q4_0(b, x, acc)),
        GgmlType::Q4_1 => rows::<32, 20>(w, x, k, out, |b, x, acc| q4_1(b, x, acc)),
        GgmlType::Q5_0 => rows::<32, 22>(w, x, k, out, |b, x, acc| q5_0(b, x, acc)),
        GgmlType::Q8_0 => rows::<32, 34>(w, x, k, out, |b, x, acc| q8_0(b, x, acc)),
        GgmlType::Q4_K => rows::<256, 144>(w, x, k, out, |b, x, acc| q4_k(b, x, acc)),
        _ => return false,
    }
    true
}

/// Two [16] running sums.
type Acc = [__m512; 2];

#[inline]
#[target_feature(enable = "avx512f")]
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
    assert!(w.len() >= rows * rb && x.len() >= t * k, "matmul_gguf avx512: buffers too small");
    for r in 0..rows {
        for ti in 0..t {
            let mut acc = [_mm512_setzero_ps(); 2];
            let (row, xt) = (w.as_ptr().add(r * rb), x.as_ptr().add(ti * k));
            for bi in 0..nb {
                block(row.add(bi * BYTES), xt.add(bi * B), &mut acc);
            }
            out[r * t + ti] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        }
    }
}

#[inline]
unsafe fn f16_at(p: *const u8) -> f32 {
    half(std::slice::from_raw_parts(p, 2), 0)
}

/// 16 bytes at `p` -> (low nibbles, high nibbles) as [16] f32 each.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn nibbles(p: *const u8) -> (__m512, __m512) {
    let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i));
    let lo = _mm512_and_si512(v, _mm512_set1_epi32(0xF));
    (_mm512_cvtepi32_ps(lo), _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(v)))
}

/// acc += (lo·s + o)·x[0..16] + (hi·s + o)·x[16..32] for a 32-element block in ggml's order.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn block32(q: (__m512, __m512), s: __m512, o: __m512, x0: *const f32, x1: *const f32, acc: &mut Acc) {
    acc[0] = _mm512_fmadd_ps(_mm512_fmadd_ps(q.0, s, o), _mm512_loadu_ps(x0), acc[0]);
    acc[1] = _mm512_fmadd_ps(_mm512_fmadd_ps(q.1, s, o), _mm512_loadu_ps(x1), acc[1]);
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q4_0(b: *const u8, x: *const f32, acc: &mut Acc) {
    let d = f16_at(b);
    block32(nibbles(b.add(2)), _mm512_set1_ps(d), _mm512_set1_ps(-8.0 * d), x, x.add(16), acc);
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q4_1(b: *const u8, x: *const f32, acc: &mut Acc) {
    block32(nibbles(b.add(4)), _mm512_set1_ps(f16_at(b)), _mm512_set1_ps(f16_at(b.add(2))), x, x.add(16), acc);
}

/// block_q5_0: element j takes low nibble j (j < 16) or high nibble j - 16, plus bit j of qh as its
/// fifth bit; (q - 16)·d.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q5_0(b: *const u8, x: *const f32, acc: &mut Acc) {
    let d = f16_at(b);
    let qh = _mm512_set1_epi32(u32::from_le_bytes([*b.add(2), *b.add(3), *b.add(4), *b.add(5)]) as i32);
    let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(b.add(6) as *const __m128i));
    let (m, one) = (_mm512_set1_epi32(0xF), _mm512_set1_epi32(1));
    let j = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let fifth = |shift: __m512i| _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srlv_epi32(qh, shift), one));
    let lo = _mm512_or_si512(_mm512_and_si512(v, m), fifth(j));
    let hi = _mm512_or_si512(_mm512_srli_epi32::<4>(v), fifth(_mm512_add_epi32(j, _mm512_set1_epi32(16))));
    let q = (_mm512_cvtepi32_ps(lo), _mm512_cvtepi32_ps(hi));
    block32(q, _mm512_set1_ps(d), _mm512_set1_ps(-16.0 * d), x, x.add(16), acc);
}

/// block_q8_0: q·d, q signed (each weight rebuilt as q·d before its multiply, as in `avx2`).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q8_0(b: *const u8, x: *const f32, acc: &mut Acc) {
    let d = _mm512_set1_ps(f16_at(b));
    for h in 0..2 {
        let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(b.add(2 + 16 * h) as *const __m128i)));
        acc[h] = _mm512_fmadd_ps(_mm512_mul_ps(q, d), _mm512_loadu_ps(x.add(16 * h)), acc[h]);
    }
}

/// Group g's 32 bytes: low nibbles are sub-block 2g (elements 64g..64g+32), high nibbles 2g+1.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q4_k(b: *const u8, x: *const f32, acc: &mut Acc) {
    let (d, dmin) = (f16_at(b), f16_at(b.add(2)));
    let scales = std::slice::from_raw_parts(b.add(4), 12);
    for g in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (s1, o1) = (_mm512_set1_ps(d * sc1 as f32), _mm512_set1_ps(-(dmin * m1 as f32)));
        let (s2, o2) = (_mm512_set1_ps(d * sc2 as f32), _mm512_set1_ps(-(dmin * m2 as f32)));
        let xg = x.add(64 * g);
        for h in 0..2 {
            let (lo, hi) = nibbles(b.add(16 + 32 * g + 16 * h));
            acc[0] = _mm512_fmadd_ps(_mm512_fmadd_ps(lo, s1, o1), _mm512_loadu_ps(xg.add(16 * h)), acc[0]);
            acc[1] = _mm512_fmadd_ps(_mm512_fmadd_ps(hi, s2, o2), _mm512_loadu_ps(xg.add(32 + 16 * h)), acc[1]);
        }
    }
}
