//! The int8-activation kernels of `int8` in x86 intrinsics, 32 weights per 256-bit register:
//! each chunk's codes are unpacked to 32 bytes and multiplied with the activation's 32 int8
//! codes into [8] i32 lanes (lane i sums bytes 4i..4i+4), which one FMA scales into f32 sums.
//! The multiply is AVX2's `vpmaddubsw` + `vpmaddwd` (u8·i8 pairs in saturating i16: every
//! weight code here is ≤ 127 unsigned and |q| ≤ 127, so a pair stays ≤ 32258 and never
//! saturates) on the AVX2 tier, or one AVX-512 VNNI `vpdpbusd` (256-bit, AVX-512VL) on the
//! AVX-512 tier when the CPU has it: the same integers either way, so the two instantiations
//! differ from `int8`'s portable reference only in the order of f32 additions.
//!
//! Codes are kept unsigned for the u8 operand: offsets (Q4_0's 8, Q5_0's 16, Q6_K's 32) come
//! off afterwards as off·d·Σq (Q4_0, Q5_0: one scale per chunk, so a scalar term per chunk) or
//! as a second product with the constant off (Q6_K, whose two scales per chunk differ); Q8_0's
//! signed codes go through the usual |w|, sign(w)·q trick.
//!
//! Safety of the helpers (all `unsafe fn`): they need AVX2 and FMA (plus AVX-512 VNNI/VL for the
//! `Vnni` instantiation), checked by `rows_dot`'s caller; `b` points at one whole block of its
//! type and `x` at that block's codes, which `rows` guarantees by asserting the buffer sizes.

use std::arch::x86_64::*;

use super::int8::{Q8Act, QK};
use crate::model::load::ggml_blocks::{half, scale_min_k4, GgmlType};

/// [8] i32 lanes += the u8·i8 products of 32 bytes, 4 per lane.
trait Dot {
    unsafe fn dot(acc: __m256i, w: __m256i, x: __m256i) -> __m256i;
}

struct Avx2;
impl Dot for Avx2 {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)))
    }
}

struct Vnni;
impl Dot for Vnni {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, w, x)
    }
}

/// Whether this CPU has the VNNI instructions the AVX-512 tier uses here.
pub fn has_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512vl")
}

/// `int8::rows_dot` with `vpmaddubsw`; false (writing nothing) for a type without a kernel.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `w` holds whole rows of `x.k` elements of `ty`, out is
/// [rows, T].
#[target_feature(enable = "avx2,fma")]
pub unsafe fn rows_dot_avx2(ty: GgmlType, w: &[u8], x: &Q8Act, out: &mut [f32]) -> bool {
    debug_assert!(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"));
    dispatch::<Avx2>(ty, w, x, out)
}

/// `int8::rows_dot` with AVX-512 VNNI's `vpdpbusd`.
///
/// # Safety
/// As `rows_dot_avx2`, and the CPU must have AVX-512 VNNI and VL (`has_vnni`).
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
pub unsafe fn rows_dot_vnni(ty: GgmlType, w: &[u8], x: &Q8Act, out: &mut [f32]) -> bool {
    debug_assert!(has_vnni());
    dispatch::<Vnni>(ty, w, x, out)
}

#[inline(always)]
unsafe fn dispatch<D: Dot>(ty: GgmlType, w: &[u8], x: &Q8Act, out: &mut [f32]) -> bool {
    match ty {
        GgmlType::Q4_0 => rows::<32, 18>(w, x, out, |b, q, d, ds, acc| q4_0::<D>(b, q, d, ds, acc)),
        GgmlType::Q4_1 => rows::<32, 20>(w, x, out, |b, q, d, ds, acc| q4_1::<D>(b, q, d, ds, acc)),
        GgmlType::Q5_0 => rows::<32, 22>(w, x, out, |b, q, d, ds, acc| q5_0::<D>(b, q, d, ds, acc)),
        GgmlType::Q8_0 => rows::<32, 34>(w, x, out, |b, q, d, ds, acc| q8_0::<D>(b, q, d, ds, acc)),
        GgmlType::Q4_K => rows::<256, 144>(w, x, out, |b, q, d, ds, acc| q4_k::<D>(b, q, d, ds, acc)),
        GgmlType::Q6_K => rows::<256, 210>(w, x, out, |b, q, d, ds, acc| q6_k::<D>(b, q, d, ds, acc)),
        _ => return false,
    }
    true
}

/// Two [8] f32 running sums and a scalar one (the offset terms).
struct Acc {
    v: [__m256; 2],
    s: f32,
}

/// Every row of `w` dotted with every token of x; `block(bytes, q, d, dsum, acc)` adds one block
/// (its bytes, the activation's codes for it and their scales d and d·Σq per 32).
#[inline(always)]
unsafe fn rows<const B: usize, const BYTES: usize>(
    w: &[u8],
    x: &Q8Act,
    out: &mut [f32],
    block: impl Fn(*const u8, *const i8, *const f32, *const f32, &mut Acc),
) {
    let (k, t) = (x.k, x.tokens());
    let nb = k / B;
    let rb = nb * BYTES;
    let rows = out.len() / t;
    assert!(
        k % B == 0
            && w.len() >= rows * rb
            && out.len() == rows * t
            && x.q.len() == t * k
            && x.d.len() == t * k / QK
            && x.dsum.len() == x.d.len()
    );
    for r in 0..rows {
        let row = w.as_ptr().add(r * rb);
        for ti in 0..t {
            let mut acc = Acc { v: [_mm256_setzero_ps(); 2], s: 0.0 };
            let (q, d, ds) = (x.q.as_ptr().add(ti * k), x.d.as_ptr().add(ti * k / QK), x.dsum.as_ptr().add(ti * k / QK));
            for bi in 0..nb {
                block(row.add(bi * BYTES), q.add(bi * B), d.add(bi * B / QK), ds.add(bi * B / QK), &mut acc);
            }
            out[r * t + ti] = hsum(_mm256_add_ps(acc.v[0], acc.v[1])) + acc.s;
        }
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    half(std::slice::from_raw_parts(p, 2), 0)
}

#[inline(always)]
unsafe fn load(p: *const i8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// 16 bytes of nibbles -> 32 bytes: low nibbles (elements 0..16), then high (16..32).
#[inline(always)]
unsafe fn nibbles32(p: *const u8) -> __m256i {
    let v = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_insertf128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
    _mm256_and_si256(both, _mm256_set1_epi8(0xF))
}

/// acc.v[i] += f32(lanes) · s.
#[inline(always)]
unsafe fn scale(acc: &mut Acc, i: usize, lanes: __m256i, s: __m256) {
    acc.v[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), s, acc.v[i]);
}

/// block_q4_0: Σ(c − 8)·q·d·d_x = d·d_x·Σc·q − 8·d·(d_x·Σq).
#[inline(always)]
unsafe fn q4_0<D: Dot>(b: *const u8, q: *const i8, d: *const f32, ds: *const f32, acc: &mut Acc) {
    let dw = f16_at(b);
    let lanes = D::dot(_mm256_setzero_si256(), nibbles32(b.add(2)), load(q));
    scale(acc, 0, lanes, _mm256_set1_ps(dw * *d));
    acc.s -= 8.0 * dw * *ds;
}

/// block_q4_1: c·d + m.
#[inline(always)]
unsafe fn q4_1<D: Dot>(b: *const u8, q: *const i8, d: *const f32, ds: *const f32, acc: &mut Acc) {
    let lanes = D::dot(_mm256_setzero_si256(), nibbles32(b.add(4)), load(q));
    scale(acc, 0, lanes, _mm256_set1_ps(f16_at(b) * *d));
    acc.s += f16_at(b.add(2)) * *ds;
}

/// The 32 bits at `p` as 32 bytes, 0xFF where the bit is set (llama.cpp's `bytes_from_bits_32`).
#[inline(always)]
unsafe fn bytes_from_bits(p: *const u8) -> __m256i {
    let bits = u32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]) as i32;
    let shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// block_q5_0: (c − 16)·d, bit j of qh the fifth bit of element j.
#[inline(always)]
unsafe fn q5_0<D: Dot>(b: *const u8, q: *const i8, d: *const f32, ds: *const f32, acc: &mut Acc) {
    let dw = f16_at(b);
    let c = _mm256_or_si256(nibbles32(b.add(6)), _mm256_and_si256(bytes_from_bits(b.add(2)), _mm256_set1_epi8(0x10)));
    let lanes = D::dot(_mm256_setzero_si256(), c, load(q));
    scale(acc, 1, lanes, _mm256_set1_ps(dw * *d));
    acc.s -= 16.0 * dw * *ds;
}

/// block_q8_0: signed codes, as |c|·(sign(c)·q).
#[inline(always)]
unsafe fn q8_0<D: Dot>(b: *const u8, q: *const i8, d: *const f32, _ds: *const f32, acc: &mut Acc) {
    let c = _mm256_loadu_si256(b.add(2) as *const __m256i);
    let lanes = D::dot(_mm256_setzero_si256(), _mm256_sign_epi8(c, c), _mm256_sign_epi8(load(q), c));
    scale(acc, 0, lanes, _mm256_set1_ps(f16_at(b) * *d));
}

/// block_q4_K: chunk 2g / 2g+1 = low / high nibbles of group g's 32 bytes; (d·sc)·c − dmin·m.
#[inline(always)]
unsafe fn q4_k<D: Dot>(b: *const u8, q: *const i8, d: *const f32, ds: *const f32, acc: &mut Acc) {
    let (dw, dmin) = (f16_at(b), f16_at(b.add(2)));
    let scales = std::slice::from_raw_parts(b.add(4), 12);
    let m4 = _mm256_set1_epi8(0xF);
    for g in 0..4 {
        let v = _mm256_loadu_si256(b.add(16 + 32 * g) as *const __m256i);
        let codes = [_mm256_and_si256(v, m4), _mm256_and_si256(_mm256_srli_epi16(v, 4), m4)];
        for (h, c) in codes.into_iter().enumerate() {
            let j = 2 * g + h;
            let (sc, mn) = scale_min_k4(j, scales);
            let lanes = D::dot(_mm256_setzero_si256(), c, load(q.add(32 * j)));
            scale(acc, h, lanes, _mm256_set1_ps(dw * sc as f32 * *d.add(j)));
            acc.s -= dmin * mn as f32 * *ds.add(j);
        }
    }
}

/// block_q6_K: chunk 4h + k of half h: low bits from ql[64h + 32(k%2)..] (low nibble k < 2, high
/// k ≥ 2), bits 2k..2k+2 of qh[32h..] on top, minus 32; lanes 0..4 take scale sc[8h + 2k], 4..8
/// sc[8h + 2k + 1].
#[inline(always)]
unsafe fn q6_k<D: Dot>(b: *const u8, q: *const i8, d: *const f32, _ds: *const f32, acc: &mut Acc) {
    let dw = f16_at(b.add(208));
    let (m4, m2, c32) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(3), _mm256_set1_epi8(32));
    for h in 0..2 {
        let ql = [_mm256_loadu_si256(b.add(64 * h) as *const __m256i), _mm256_loadu_si256(b.add(64 * h + 32) as *const __m256i)];
        let qh = _mm256_loadu_si256(b.add(128 + 32 * h) as *const __m256i);
        let sc = b.add(192 + 8 * h) as *const i8;
        for kk in 0..4 {
            let lo = if kk < 2 { _mm256_and_si256(ql[kk % 2], m4) } else { _mm256_and_si256(_mm256_srli_epi16(ql[kk % 2], 4), m4) };
            let hi = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * kk as i32)), m2);
            let c = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
            let j = 4 * h + kk;
            let x = load(q.add(32 * j));
            let lanes = _mm256_sub_epi32(D::dot(_mm256_setzero_si256(), c, x), D::dot(_mm256_setzero_si256(), c32, x));
            let (s0, s1) = (dw * *sc.add(2 * kk) as f32 * *d.add(j), dw * *sc.add(2 * kk + 1) as f32 * *d.add(j));
            scale(acc, kk % 2, lanes, _mm256_setr_ps(s0, s0, s0, s0, s1, s1, s1, s1));
        }
    }
}
