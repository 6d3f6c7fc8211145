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
//! A few tokens (batched decode) go in groups of up to `GROUP`: a block is unpacked once for the
//! group, the tokens' scales (laid side by side by `Interleaved`) multiplied in one vector and
//! their offset terms kept in one; lane by lane these are the one-token operations, so a token's
//! result is the same bits in any group.
//!
//! Safety of the helpers (all `unsafe fn`): they need AVX2 and FMA (plus AVX-512 VNNI/VL for the
//! `Vnni` instantiation), checked by `rows_dot`'s caller; `b` points at one whole block of its
//! type and `x` at that block's codes and scales, which `rows` guarantees by asserting the buffer
//! sizes and building `Interleaved` for them.

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
        GgmlType::Q4_0 => rows::<Q4_0, D>(w, x, out),
        GgmlType::Q4_1 => rows::<Q4_1, D>(w, x, out),
        GgmlType::Q5_0 => rows::<Q5_0, D>(w, x, out),
        GgmlType::Q8_0 => rows::<Q8_0, D>(w, x, out),
        GgmlType::Q4_K => rows::<Q4_K, D>(w, x, out),
        GgmlType::Q6_K => rows::<Q6_K, D>(w, x, out),
        _ => return false,
    }
    true
}

/// The running sums of a group of N tokens: two [8] f32 vectors per token, and the offset terms
/// of all of them in one [4] vector (lane i: token i).
struct Acc<const N: usize> {
    v: [[__m256; 2]; N],
    s: __m128,
}

/// The current block for a group of N tokens: token i's codes at q + i·B; the scales d and d·Σq
/// of chunk c of the block (32 elements) at d / ds + c·GROUP, lane i for token i (`Interleaved`).
#[derive(Clone, Copy)]
struct Toks {
    q: *const i8,
    d: *const f32,
    ds: *const f32,
}

/// A block type's kernel: `add` dots one block with the current block of N tokens, unpacking the
/// block's codes once and scaling all N tokens' scales in one vector multiply. Each token's sums
/// take the same f32 operations in the same order whatever N is (lane by lane), so a token's
/// result does not depend on the tokens beside it.
trait Block {
    const B: usize;
    const BYTES: usize;
    unsafe fn add<D: Dot, const N: usize>(b: *const u8, x: Toks, acc: &mut Acc<N>);
}

/// Tokens dotted together with one unpacked block (4 tokens' sums and a block's codes fit AVX2's
/// 16 registers; their scales fill one [4] vector).
const GROUP: usize = 4;

/// The groups (first token, tokens) `rows` takes T tokens in: `GROUP`s, then the tail.
fn groups(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t).step_by(GROUP).map(move |t0| (t0, GROUP.min(t - t0)))
}

/// x laid out for `Toks`: group (t0, n)'s codes from t0·K on, block bi of token i at
/// (bi·n + i)·B; its scales from (t0 / GROUP)·(K/32)·GROUP on, chunk c of token i at c·GROUP + i
/// (lanes of missing tokens zero).
struct Interleaved {
    q: Vec<i8>,
    d: Vec<f32>,
    ds: Vec<f32>,
}

impl Interleaved {
    fn new(x: &Q8Act, b: usize) -> Interleaved {
        let (k, t) = (x.k, x.tokens());
        let chunks = k / QK;
        let slots = t.div_ceil(GROUP) * chunks * GROUP;
        let mut y = Interleaved { q: vec![0; t * k], d: vec![0.0; slots], ds: vec![0.0; slots] };
        for (t0, n) in groups(t) {
            for i in 0..n {
                for bi in 0..k / b {
                    let (src, dst) = ((t0 + i) * k + bi * b, t0 * k + (bi * n + i) * b);
                    y.q[dst..dst + b].copy_from_slice(&x.q[src..src + b]);
                }
                for c in 0..chunks {
                    let (src, dst) = ((t0 + i) * chunks + c, t0 * chunks + c * GROUP + i);
                    (y.d[dst], y.ds[dst]) = (x.d[src], x.dsum[src]);
                }
            }
        }
        y
    }
}

/// Every row of `w` dotted with every token of x, tokens in groups of up to `GROUP`.
#[inline(always)]
unsafe fn rows<K: Block, D: Dot>(w: &[u8], x: &Q8Act, out: &mut [f32]) {
    let (k, t) = (x.k, x.tokens());
    let rb = k / K::B * K::BYTES;
    let rows = out.len() / t;
    assert!(
        k % K::B == 0
            && w.len() >= rows * rb
            && out.len() == rows * t
            && x.q.len() == t * k
            && x.d.len() == t * k / QK
            && x.dsum.len() == x.d.len()
    );
    let xi = Interleaved::new(x, K::B);
    for r in 0..rows {
        let (row, out) = (w.as_ptr().add(r * rb), &mut out[r * t..(r + 1) * t]);
        for (t0, n) in groups(t) {
            match n {
                1 => group::<K, D, 1>(row, &xi, k, t0, out),
                2 => group::<K, D, 2>(row, &xi, k, t0, out),
                3 => group::<K, D, 3>(row, &xi, k, t0, out),
                _ => group::<K, D, GROUP>(row, &xi, k, t0, out),
            }
        }
    }
}

/// out[t0..t0 + N] = one row (`row`, whole blocks of K) dotted with tokens t0..t0 + N.
#[inline(always)]
unsafe fn group<K: Block, D: Dot, const N: usize>(row: *const u8, x: &Interleaved, k: usize, t0: usize, out: &mut [f32]) {
    let mut acc = Acc::<N> { v: [[_mm256_setzero_ps(); 2]; N], s: _mm_setzero_ps() };
    let (q, d, ds) = (x.q.as_ptr().add(t0 * k), x.d.as_ptr().add(t0 * k / QK), x.ds.as_ptr().add(t0 * k / QK));
    for bi in 0..k / K::B {
        let (e, c) = (bi * N * K::B, bi * K::B / QK * GROUP);
        K::add::<D, N>(row.add(bi * K::BYTES), Toks { q: q.add(e), d: d.add(c), ds: ds.add(c) }, &mut acc);
    }
    let mut s = [0f32; 4];
    _mm_storeu_ps(s.as_mut_ptr(), acc.s);
    for i in 0..N {
        out[t0 + i] = hsum(_mm256_add_ps(acc.v[i][0], acc.v[i][1])) + s[i];
    }
}

/// Lane i of `s` in all 8 lanes.
#[inline(always)]
unsafe fn lane(s: __m128, i: usize) -> __m256 {
    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(s), _mm256_set1_epi32(i as i32))
}

/// The [4] scales at `p` (one per token of the group) times `w`.
#[inline(always)]
unsafe fn times(w: f32, p: *const f32) -> __m128 {
    _mm_mul_ps(_mm_set1_ps(w), _mm_loadu_ps(p))
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
pub(super) unsafe fn nibbles32(p: *const u8) -> __m256i {
    let v = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_insertf128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
    _mm256_and_si256(both, _mm256_set1_epi8(0xF))
}

/// v += f32(lanes) · s.
#[inline(always)]
unsafe fn scale(v: &mut __m256, lanes: __m256i, s: __m256) {
    *v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), s, *v);
}

/// block_q4_0: Σ(c − 8)·q·d·d_x = d·d_x·Σc·q − 8·d·(d_x·Σq).
#[allow(non_camel_case_types)]
struct Q4_0;
impl Block for Q4_0 {
    const B: usize = 32;
    const BYTES: usize = 18;
    #[inline(always)]
    unsafe fn add<D: Dot, const N: usize>(b: *const u8, x: Toks, acc: &mut Acc<N>) {
        let (dw, c) = (f16_at(b), nibbles32(b.add(2)));
        let s = times(dw, x.d);
        for i in 0..N {
            let lanes = D::dot(_mm256_setzero_si256(), c, load(x.q.add(32 * i)));
            scale(&mut acc.v[i][0], lanes, lane(s, i));
        }
        acc.s = _mm_sub_ps(acc.s, times(8.0 * dw, x.ds));
    }
}

/// block_q4_1: c·d + m.
#[allow(non_camel_case_types)]
struct Q4_1;
impl Block for Q4_1 {
    const B: usize = 32;
    const BYTES: usize = 20;
    #[inline(always)]
    unsafe fn add<D: Dot, const N: usize>(b: *const u8, x: Toks, acc: &mut Acc<N>) {
        let (dw, mw, c) = (f16_at(b), f16_at(b.add(2)), nibbles32(b.add(4)));
        let s = times(dw, x.d);
        for i in 0..N {
            let lanes = D::dot(_mm256_setzero_si256(), c, load(x.q.add(32 * i)));
            scale(&mut acc.v[i][0], lanes, lane(s, i));
        }
        acc.s = _mm_add_ps(acc.s, times(mw, x.ds));
    }
}

/// The 32 bits at `p` as 32 bytes, 0xFF where the bit is set (llama.cpp's `bytes_from_bits_32`).
#[inline(always)]
pub(super) unsafe fn bytes_from_bits(p: *const u8) -> __m256i {
    let bits = u32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]) as i32;
    let shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// block_q5_0: (c − 16)·d, bit j of qh the fifth bit of element j.
#[allow(non_camel_case_types)]
struct Q5_0;
impl Block for Q5_0 {
    const B: usize = 32;
    const BYTES: usize = 22;
    #[inline(always)]
    unsafe fn add<D: Dot, const N: usize>(b: *const u8, x: Toks, acc: &mut Acc<N>) {
        let dw = f16_at(b);
        let c = _mm256_or_si256(nibbles32(b.add(6)), _mm256_and_si256(bytes_from_bits(b.add(2)), _mm256_set1_epi8(0x10)));
        let s = times(dw, x.d);
        for i in 0..N {
            let lanes = D::dot(_mm256_setzero_si256(), c, load(x.q.add(32 * i)));
            scale(&mut acc.v[i][1], lanes, lane(s, i));
        }
        acc.s = _mm_sub_ps(acc.s, times(16.0 * dw, x.ds));
    }
}

/// block_q8_0: signed codes, as |c|·(sign(c)·q).
#[allow(non_camel_case_types)]
struct Q8_0;
impl Block for Q8_0 {
    const B: usize = 32;
    const BYTES: usize = 34;
    #[inline(always)]
    unsafe fn add<D: Dot, const N: usize>(b: *const u8, x: Toks, acc: &mut Acc<N>) {
        let c = _mm256_loadu_si256(b.add(2) as *const __m256i);
        let abs = _mm256_sign_epi8(c, c);
        let s = times(f16_at(b), x.d);
        for i in 0..N {
            let lanes = D::dot(_mm256_setzero_si256(), abs, _mm256_sign_epi8(load(x.q.add(32 * i)), c));
            scale(&mut acc.v[i][0], lanes, lane(s, i));
        }
    }
}

/// block_q4_K: chunk 2g / 2g+1 = low / high nibbles of group g's 32 bytes; (d·sc)·c − dmin·m.
#[allow(non_camel_case_types)]
struct Q4_K;
impl Block for Q4_K {
    const B: usize = 256;
    const BYTES: usize = 144;
    #[inline(always)]
    unsafe fn add<D: Dot, const N: usize>(b: *const u8, x: Toks, acc: &mut Acc<N>) {
        let (dw, dmin) = (f16_at(b), f16_at(b.add(2)));
        let scales = std::slice::from_raw_parts(b.add(4), 12);
        let m4 = _mm256_set1_epi8(0xF);
        for g in 0..4 {
            let v = _mm256_loadu_si256(b.add(16 + 32 * g) as *const __m256i);
            let codes = [_mm256_and_si256(v, m4), _mm256_and_si256(_mm256_srli_epi16(v, 4), m4)];
            for (h, c) in codes.into_iter().enumerate() {
                let j = 2 * g + h;
                let (sc, mn) = scale_min_k4(j, scales);
                let s = times(dw * sc as f32, x.d.add(j * GROUP));
                for i in 0..N {
                    let lanes = D::dot(_mm256_setzero_si256(), c, load(x.q.add(256 * i + 32 * j)));
                    scale(&mut acc.v[i][h], lanes, lane(s, i));
                }
                acc.s = _mm_sub_ps(acc.s, times(dmin * mn as f32, x.ds.add(j * GROUP)));
            }
        }
    }
}

/// block_q6_K: chunk 4h + k of half h: low bits from ql[64h + 32(k%2)..] (low nibble k < 2, high
/// k ≥ 2), bits 2k..2k+2 of qh[32h..] on top, minus 32; lanes 0..4 take scale sc[8h + 2k], 4..8
/// sc[8h + 2k + 1].
#[allow(non_camel_case_types)]
struct Q6_K;
impl Block for Q6_K {
    const B: usize = 256;
    const BYTES: usize = 210;
    #[inline(always)]
    unsafe fn add<D: Dot, const N: usize>(b: *const u8, x: Toks, acc: &mut Acc<N>) {
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
                let (s0, s1) =
                    (times(dw * *sc.add(2 * kk) as f32, x.d.add(j * GROUP)), times(dw * *sc.add(2 * kk + 1) as f32, x.d.add(j * GROUP)));
                // Lanes 0..4: s0 of a token, 4..8: its s1.
                let both = _mm256_insertf128_ps(_mm256_castps128_ps256(s0), s1, 1);
                for i in 0..N {
                    let q = load(x.q.add(256 * i + 32 * j));
                    let lanes = _mm256_sub_epi32(D::dot(_mm256_setzero_si256(), c, q), D::dot(_mm256_setzero_si256(), c32, q));
                    let ii = i as i32;
                    let s = _mm256_permutevar8x32_ps(both, _mm256_setr_epi32(ii, ii, ii, ii, 4 + ii, 4 + ii, 4 + ii, 4 + ii));
                    scale(&mut acc.v[i][kk % 2], lanes, s);
                }
            }
        }
    }
}
