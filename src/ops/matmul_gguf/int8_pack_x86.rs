//! `int8_gemm::Tile::pack` in AVX2: each chunk of 32 codes of a tile row is unpacked in one
//! register (the decoders of `int8_x86`, plus the tile's offset), and the 16 rows' chunks are
//! transposed as two 8x8 matrices of 4-byte quads into the tile's [quad][row][4] order: a few
//! shuffles per row and chunk, where the portable `pack_body` writes every quad on its own. The
//! scales come from `int8::for_each_chunk_scales`, as the portable code's do, so a tile packed
//! here equals `pack_body`'s byte for byte (tested through `int8_gemm`'s results on every tier).

use std::arch::x86_64::*;

use super::int8::{self, QK};
use super::int8_gemm::{Tile, ROWS};
use super::int8_x86::{bytes_from_bits, nibbles32};
use crate::model::load::ggml_blocks::GgmlType;

/// One block type's chunk decoder: chunk `c` (of 32 elements) of the block at `b`, as u8 codes
/// plus the tile's offset (`int8_gemm::offset`).
trait Codes {
    const B: usize;
    const BYTES: usize;
    unsafe fn codes(b: *const u8, c: usize) -> __m256i;
}

#[allow(non_camel_case_types)]
struct Q4_0;
impl Codes for Q4_0 {
    const B: usize = 32;
    const BYTES: usize = 18;
    /// The nibble (code − 8 + 8).
    #[inline(always)]
    unsafe fn codes(b: *const u8, _: usize) -> __m256i {
        nibbles32(b.add(2))
    }
}

#[allow(non_camel_case_types)]
struct Q4_1;
impl Codes for Q4_1 {
    const B: usize = 32;
    const BYTES: usize = 20;
    /// The nibble.
    #[inline(always)]
    unsafe fn codes(b: *const u8, _: usize) -> __m256i {
        nibbles32(b.add(4))
    }
}

#[allow(non_camel_case_types)]
struct Q5_0;
impl Codes for Q5_0 {
    const B: usize = 32;
    const BYTES: usize = 22;
    /// nibble | fifth bit (code − 16 + 16).
    #[inline(always)]
    unsafe fn codes(b: *const u8, _: usize) -> __m256i {
        _mm256_or_si256(nibbles32(b.add(6)), _mm256_and_si256(bytes_from_bits(b.add(2)), _mm256_set1_epi8(0x10)))
    }
}

#[allow(non_camel_case_types)]
struct Q8_0;
impl Codes for Q8_0 {
    const B: usize = 32;
    const BYTES: usize = 34;
    /// i8 code + 128.
    #[inline(always)]
    unsafe fn codes(b: *const u8, _: usize) -> __m256i {
        _mm256_xor_si256(_mm256_loadu_si256(b.add(2) as *const __m256i), _mm256_set1_epi8(-128))
    }
}

#[allow(non_camel_case_types)]
struct Q4_K;
impl Codes for Q4_K {
    const B: usize = 256;
    const BYTES: usize = 144;
    /// Chunk c: the low (even c) or high nibbles of group c/2's 32 bytes.
    #[inline(always)]
    unsafe fn codes(b: *const u8, c: usize) -> __m256i {
        let v = _mm256_loadu_si256(b.add(16 + 32 * (c / 2)) as *const __m256i);
        let v = if c % 2 == 0 { v } else { _mm256_srli_epi16(v, 4) };
        _mm256_and_si256(v, _mm256_set1_epi8(0xF))
    }
}

#[allow(non_camel_case_types)]
struct Q6_K;
impl Codes for Q6_K {
    const B: usize = 256;
    const BYTES: usize = 210;
    /// Chunk 4h + k: low bits from ql[64h + 32(k%2)..] (low nibble k < 2, high k ≥ 2), bits
    /// 2k..2k+2 of qh[32h..] on top (code − 32 + 32).
    #[inline(always)]
    unsafe fn codes(b: *const u8, c: usize) -> __m256i {
        let (h, kk) = (c / 4, c % 4);
        let ql = _mm256_loadu_si256(b.add(64 * h + 32 * (kk % 2)) as *const __m256i);
        let lo = if kk < 2 { ql } else { _mm256_srli_epi16(ql, 4) };
        let lo = _mm256_and_si256(lo, _mm256_set1_epi8(0xF));
        let qh = _mm256_loadu_si256(b.add(128 + 32 * h) as *const __m256i);
        let hi = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * kk as i32)), _mm256_set1_epi8(3));
        _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4))
    }
}

/// `Tile::pack` for a `supported` type; false (nothing written) for another.
///
/// # Safety
/// The CPU must have AVX2; `w` holds `rows` ≤ 16 whole rows of `rb` bytes, `rb` = K/B·BYTES of
/// `ty`, and the tile was made for `ty` and K (`Tile::new`).
#[target_feature(enable = "avx2")]
pub unsafe fn pack_avx2(tile: &mut Tile, ty: GgmlType, w: &[u8], rows: usize, rb: usize, k: usize) -> bool {
    match ty {
        GgmlType::Q4_0 => pack::<Q4_0>(tile, ty, w, rows, rb, k),
        GgmlType::Q4_1 => pack::<Q4_1>(tile, ty, w, rows, rb, k),
        GgmlType::Q5_0 => pack::<Q5_0>(tile, ty, w, rows, rb, k),
        GgmlType::Q8_0 => pack::<Q8_0>(tile, ty, w, rows, rb, k),
        GgmlType::Q4_K => pack::<Q4_K>(tile, ty, w, rows, rb, k),
        GgmlType::Q6_K => pack::<Q6_K>(tile, ty, w, rows, rb, k),
        _ => return false,
    }
    true
}

#[inline(always)]
unsafe fn pack<T: Codes>(tile: &mut Tile, ty: GgmlType, w: &[u8], rows: usize, rb: usize, k: usize) {
    assert!(
        rows <= ROWS
            && k % T::B == 0
            && rb == k / T::B * T::BYTES
            && w.len() >= rows * rb
            && tile.chunks * QK == k
            && tile.codes.len() == tile.chunks * 32 * ROWS,
        "matmul_gguf int8 pack: sizes disagree"
    );
    let off = tile.off as u8;
    let Tile { codes, s_lo, s_hi, m, m_off, chunks, .. } = tile;
    for r in 0..ROWS {
        let i = |c: usize| c * ROWS + r;
        if r >= rows {
            for c in 0..*chunks {
                (s_lo[i(c)], s_hi[i(c)], m[i(c)], m_off[i(c)]) = (0.0, 0.0, 0.0, 0.0);
            }
            continue;
        }
        int8::for_each_chunk_scales(ty, &w[r * rb..(r + 1) * rb], k, |c, lo, hi, mm| {
            (s_lo[i(c)], s_hi[i(c)], m[i(c)]) = (lo, hi, mm);
            m_off[i(c)] = mm - off as f32 * lo;
        });
    }
    let pad = _mm256_set1_epi8(off as i8);
    let per_block = T::B / QK;
    for c in 0..*chunks {
        let (bi, cc) = (c / per_block, c % per_block);
        let chunk = |r: usize| if r < rows { T::codes(w.as_ptr().add(r * rb + bi * T::BYTES), cc) } else { pad };
        let dst = codes.as_mut_ptr().add(c * 32 * ROWS);
        for half in 0..2 {
            let q = transpose8(std::array::from_fn(|j| chunk(8 * half + j)));
            for (quad, v) in q.into_iter().enumerate() {
                // Quad `quad` of rows 8·half..8·half + 8: 32 bytes of the quad's 64.
                _mm256_storeu_si256(dst.add(quad * ROWS * 4 + half * 32) as *mut __m256i, v);
            }
        }
    }
}

/// An 8x8 matrix of 4-byte elements, row j in register j, transposed: register q holds element q
/// of every row.
#[inline(always)]
unsafe fn transpose8(r: [__m256i; 8]) -> [__m256i; 8] {
    let t = |a: __m256i, b: __m256i| (_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
    let (t0, t1) = t(r[0], r[1]);
    let (t2, t3) = t(r[2], r[3]);
    let (t4, t5) = t(r[4], r[5]);
    let (t6, t7) = t(r[6], r[7]);
    let u = |a: __m256i, b: __m256i| (_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
    let (u0, u1) = u(t0, t2);
    let (u2, u3) = u(t1, t3);
    let (u4, u5) = u(t4, t6);
    let (u6, u7) = u(t5, t7);
    [
        _mm256_permute2x128_si256(u0, u4, 0x20),
        _mm256_permute2x128_si256(u1, u5, 0x20),
        _mm256_permute2x128_si256(u2, u6, 0x20),
        _mm256_permute2x128_si256(u3, u7, 0x20),
        _mm256_permute2x128_si256(u0, u4, 0x31),
        _mm256_permute2x128_si256(u1, u5, 0x31),
        _mm256_permute2x128_si256(u2, u6, 0x31),
        _mm256_permute2x128_si256(u3, u7, 0x31),
    ]
}
