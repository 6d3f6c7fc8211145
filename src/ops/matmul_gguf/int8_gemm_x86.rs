//! `int8_gemm::tile_dot` in x86 intrinsics. AVX-512: one 16-lane register holds a quad of codes
//! of all 16 tile rows; per token, 8 multiply-adds against broadcasts of the token's codes give
//! the 16 rows' integer sums of a chunk (two halves), one conversion and two FMAs scale them.
//! The multiply-add is `vpdpbusd` (AVX-512 VNNI; takes every type, Q8_0's full-range codes too)
//! or `vpmaddubsw` + `vpmaddwd` (AVX-512BW, and AVX2 over two 8-row halves), whose i16 pairs stay
//! ≤ 2·127·63 because tile codes of the types it is given are ≤ 63. AVX2 adds up to 8
//! `vpmaddubsw` results in i16 before one `vpmaddwd` widens them (`Tile::sums16`, as many as the
//! type's code range lets add without overflow). Integer sums equal the portable reference's,
//! except that the kernels for one-scale types (`group512_same`, `group256` without `SPLIT`)
//! leave the codes' offset in the sum and take it off in f32 through `Tile::m_off`.
//!
//! The `tile_dot_*` wrappers are safe functions (they are `int8_gemm::TileKernel`s): each asserts
//! the CPU features it needs, then runs its `#[target_feature]` body, whose loads stay inside
//! the buffers its asserts check.

use std::arch::x86_64::*;

use super::int8::{Q8Act, QK};
use super::int8_gemm::{Tile, ROWS};

pub fn has_vnni512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

pub fn has_bw() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw")
}

/// The sizes every kernel relies on.
fn check(tile: &Tile, x: &Q8Act, out: &[f32]) {
    let (t, c) = (x.tokens(), tile.chunks);
    assert!(
        ROWS == 16
            && x.k == c * QK
            && tile.codes.len() == c * 32 * ROWS
            && tile.s_lo.len() == c * ROWS
            && tile.s_hi.len() == c * ROWS
            && tile.m.len() == c * ROWS
            && tile.m_off.len() == c * ROWS
            && x.q.len() == t * c * QK
            && x.d.len() == t * c
            && x.dsum.len() == t * c
            && x.hsum.len() == 2 * t * c
            && out.len() >= t * ROWS,
        "matmul_gguf int8 gemm: tile and activations disagree"
    );
}

pub fn tile_dot_vnni(tile: &Tile, x: &Q8Act, out: &mut [f32]) {
    assert!(has_vnni512() && std::arch::is_x86_feature_detected!("fma"));
    check(tile, x, out);
    // SAFETY: the features are present (asserted) and the sizes checked.
    unsafe { vnni(tile, x, out) }
}

pub fn tile_dot_avx512bw(tile: &Tile, x: &Q8Act, out: &mut [f32]) {
    assert!(has_bw() && std::arch::is_x86_feature_detected!("fma"));
    assert!(tile.sums16 > 0, "vpmaddubsw needs codes ≤ 127");
    check(tile, x, out);
    // SAFETY: as above.
    unsafe { bw(tile, x, out) }
}

pub fn tile_dot_avx2(tile: &Tile, x: &Q8Act, out: &mut [f32]) {
    assert!(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"));
    assert!(tile.sums16 > 0, "vpmaddubsw needs codes ≤ 127");
    check(tile, x, out);
    // SAFETY: as above.
    unsafe { avx2(tile, x, out) }
}

/// 16 i32 lanes += u8·i8 products, 4 per lane.
trait Dot512 {
    unsafe fn dot(acc: __m512i, w: __m512i, x: __m512i) -> __m512i;
}

struct Vnni;
impl Dot512 for Vnni {
    #[inline(always)]
    unsafe fn dot(acc: __m512i, w: __m512i, x: __m512i) -> __m512i {
        _mm512_dpbusd_epi32(acc, w, x)
    }
}

struct Bw;
impl Dot512 for Bw {
    #[inline(always)]
    unsafe fn dot(acc: __m512i, w: __m512i, x: __m512i) -> __m512i {
        _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(w, x), _mm512_set1_epi16(1)))
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
unsafe fn vnni(tile: &Tile, x: &Q8Act, out: &mut [f32]) {
    body512::<Vnni>(tile, x, out)
}

#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
unsafe fn bw(tile: &Tile, x: &Q8Act, out: &mut [f32]) {
    body512::<Bw>(tile, x, out)
}

#[inline(always)]
unsafe fn body512<D: Dot512>(tile: &Tile, x: &Q8Act, out: &mut [f32]) {
    let t = x.tokens();
    let mut ti = 0;
    if tile.split {
        while ti + 4 <= t {
            group512::<D, 4>(tile, x, out, ti);
            ti += 4;
        }
    } else {
        while ti + 8 <= t {
            group512_same::<D, 8>(tile, x, out, ti);
            ti += 8;
        }
    }
    while ti < t {
        group512::<D, 1>(tile, x, out, ti);
        ti += 1;
    }
}

/// Tokens ti..ti+TT against the whole tile: every weight register is loaded once per chunk and
/// used for TT tokens. Each half chunk has its own scale and integer correction (any type).
#[inline(always)]
unsafe fn group512<D: Dot512, const TT: usize>(tile: &Tile, x: &Q8Act, out: &mut [f32], ti: usize) {
    let chunks = tile.chunks;
    let mut acc = [_mm512_setzero_ps(); TT];
    for c in 0..chunks {
        let cp = tile.codes.as_ptr().add(c * 32 * ROWS);
        let w: [__m512i; 8] = std::array::from_fn(|qd| _mm512_loadu_si512(cp.add(qd * 64) as *const _));
        let s_lo = _mm512_loadu_ps(tile.s_lo.as_ptr().add(c * ROWS));
        let s_hi = _mm512_loadu_ps(tile.s_hi.as_ptr().add(c * ROWS));
        let m = _mm512_loadu_ps(tile.m.as_ptr().add(c * ROWS));
        for (u, a) in acc.iter_mut().enumerate() {
            let xb = (ti + u) * chunks + c;
            let q = x.q.as_ptr().add(xb * QK) as *const i32;
            let (mut lo, mut hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for qd in 0..4 {
                lo = D::dot(lo, w[qd], _mm512_set1_epi32(q.add(qd).read_unaligned()));
                hi = D::dot(hi, w[qd + 4], _mm512_set1_epi32(q.add(qd + 4).read_unaligned()));
            }
            lo = _mm512_sub_epi32(lo, _mm512_set1_epi32(tile.off * x.hsum[2 * xb]));
            hi = _mm512_sub_epi32(hi, _mm512_set1_epi32(tile.off * x.hsum[2 * xb + 1]));
            let f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), s_lo, _mm512_mul_ps(_mm512_cvtepi32_ps(hi), s_hi));
            *a = _mm512_fmadd_ps(f, _mm512_set1_ps(x.d[xb]), *a);
            *a = _mm512_fmadd_ps(m, _mm512_set1_ps(x.dsum[xb]), *a);
        }
    }
    for (u, a) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add((ti + u) * ROWS), *a);
    }
}

/// `group512` for types with one scale per chunk (`!tile.split`): one integer sum per chunk, the
/// codes' offset folded into `m_off`, so fewer registers per token and TT up to 8.
#[inline(always)]
unsafe fn group512_same<D: Dot512, const TT: usize>(tile: &Tile, x: &Q8Act, out: &mut [f32], ti: usize) {
    let chunks = tile.chunks;
    let mut acc = [_mm512_setzero_ps(); TT];
    for c in 0..chunks {
        let cp = tile.codes.as_ptr().add(c * 32 * ROWS);
        let w: [__m512i; 8] = std::array::from_fn(|qd| _mm512_loadu_si512(cp.add(qd * 64) as *const _));
        let s = _mm512_loadu_ps(tile.s_lo.as_ptr().add(c * ROWS));
        let m = _mm512_loadu_ps(tile.m_off.as_ptr().add(c * ROWS));
        for (u, a) in acc.iter_mut().enumerate() {
            let xb = (ti + u) * chunks + c;
            let q = x.q.as_ptr().add(xb * QK) as *const i32;
            let mut sum = _mm512_setzero_si512();
            for (qd, &wq) in w.iter().enumerate() {
                sum = D::dot(sum, wq, _mm512_set1_epi32(q.add(qd).read_unaligned()));
            }
            *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(s, _mm512_set1_ps(x.d[xb])), *a);
            *a = _mm512_fmadd_ps(m, _mm512_set1_ps(x.dsum[xb]), *a);
        }
    }
    for (u, a) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add((ti + u) * ROWS), *a);
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn avx2(tile: &Tile, x: &Q8Act, out: &mut [f32]) {
    // (one-scale chunks, products per i16 sum): the 4-bit types, Q5_0, Q6_K.
    match (tile.split, tile.sums16) {
        (false, 8) => body256::<8, false>(tile, x, out),
        (false, 4) => body256::<4, false>(tile, x, out),
        (true, 2) => body256::<2, true>(tile, x, out),
        (split, g) => panic!("matmul_gguf int8 gemm: no AVX2 kernel for split {split}, {g} sums per i16"),
    }
}

#[inline(always)]
unsafe fn body256<const G: usize, const SPLIT: bool>(tile: &Tile, x: &Q8Act, out: &mut [f32]) {
    let t = x.tokens();
    for half in 0..2 {
        let mut ti = 0;
        while ti + 2 <= t {
            group256::<2, G, SPLIT>(tile, x, out, ti, half);
            ti += 2;
        }
        while ti < t {
            group256::<1, G, SPLIT>(tile, x, out, ti, half);
            ti += 1;
        }
    }
}

/// Σ over quads `from..to` of w[quad] · (the token's 4 codes of that quad), in 8 i32 lanes:
/// `vpmaddubsw` results added G at a time in i16 (`Tile::sums16` says how many fit), then
/// widened by one `vpmaddwd`.
#[inline(always)]
unsafe fn quads256<const G: usize>(w: &[__m256i; 8], q: *const i32, from: usize, to: usize) -> __m256i {
    let mut sum = _mm256_setzero_si256();
    let mut qd = from;
    while qd < to {
        let mut s16 = _mm256_maddubs_epi16(w[qd], _mm256_set1_epi32(q.add(qd).read_unaligned()));
        for j in 1..G {
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[qd + j], _mm256_set1_epi32(q.add(qd + j).read_unaligned())));
        }
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(s16, _mm256_set1_epi16(1)));
        qd += G;
    }
    sum
}

/// AVX2: rows 8·half..8·half+8 of the tile (the low or high 32 bytes of each quad's 64) against
/// tokens ti..ti+TT. One-scale types (`!SPLIT`) take one integer sum per chunk and the codes'
/// offset through `m_off`, as `group512_same`; Q6_K's halves take theirs in integers.
#[inline(always)]
unsafe fn group256<const TT: usize, const G: usize, const SPLIT: bool>(tile: &Tile, x: &Q8Act, out: &mut [f32], ti: usize, half: usize) {
    let chunks = tile.chunks;
    let mut acc = [_mm256_setzero_ps(); TT];
    for c in 0..chunks {
        let cp = tile.codes.as_ptr().add(c * 32 * ROWS + 32 * half);
        let w: [__m256i; 8] = std::array::from_fn(|qd| _mm256_loadu_si256(cp.add(qd * 64) as *const _));
        let at = c * ROWS + 8 * half;
        let s_lo = _mm256_loadu_ps(tile.s_lo.as_ptr().add(at));
        let s_hi = _mm256_loadu_ps(tile.s_hi.as_ptr().add(at));
        let m = _mm256_loadu_ps(if SPLIT { tile.m.as_ptr() } else { tile.m_off.as_ptr() }.add(at));
        for (u, a) in acc.iter_mut().enumerate() {
            let xb = (ti + u) * chunks + c;
            let q = x.q.as_ptr().add(xb * QK) as *const i32;
            if SPLIT {
                let lo = _mm256_sub_epi32(quads256::<G>(&w, q, 0, 4), _mm256_set1_epi32(tile.off * x.hsum[2 * xb]));
                let hi = _mm256_sub_epi32(quads256::<G>(&w, q, 4, 8), _mm256_set1_epi32(tile.off * x.hsum[2 * xb + 1]));
                let f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo), s_lo, _mm256_mul_ps(_mm256_cvtepi32_ps(hi), s_hi));
                *a = _mm256_fmadd_ps(f, _mm256_set1_ps(x.d[xb]), *a);
            } else {
                let sum = quads256::<G>(&w, q, 0, 8);
                *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(s_lo, _mm256_set1_ps(x.d[xb])), *a);
            }
            *a = _mm256_fmadd_ps(m, _mm256_set1_ps(x.dsum[xb]), *a);
        }
    }
    for (u, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.as_mut_ptr().add((ti + u) * ROWS + 8 * half), *a);
    }
}
