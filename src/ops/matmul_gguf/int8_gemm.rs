//! The int8-activation product of `matmul_gguf` for prompts (`MANY_TOKENS` tokens or more,
//! inference only): `int8`'s arithmetic, organized as a GEMM. x [T, K] is quantized once
//! (`Q8Act`); W is unpacked a tile of `ROWS` rows at a time into the chunk form of `int8`
//! (codes, two scales and an offset term per 32 elements), and every token is dotted with the
//! tile in integers, so each unpacked weight serves all T tokens.
//!
//! Tile layout: codes as u8, each the type's unsigned code (code + `off`, the type's zero point:
//! 8 for Q4_0, 16 for Q5_0, 32 for Q6_K, 128 for Q8_0, 0 for Q4_1 and Q4_K, whose codes have no
//! sign), ordered [chunk][quad][row][4]: one 64-byte load holds 4 consecutive codes of all 16
//! rows, the shape of a 16-lane `vpdpbusd` against a broadcast of 4 activation codes. The codes
//! stay as small as the type makes them (≤ `code_max`), so `vpmaddubsw`'s i16 pair sums
//! (≤ 2·127·code_max) can be added in i16 before widening (`i16_sums`); Q8_0's full-range codes
//! only `vpdpbusd` takes. The portable reference (and the x86 kernels for Q6_K, whose halves have
//! their own scales) take the offset off in integers, off·Σq per half chunk, so their integer sums
//! are exactly `int8::rows_dot`'s; the kernels for one-scale types fold it into the offset term in
//! f32 (`Tile::m_off`), which differs from the integer form by f32 rounding only.
//!
//! Numerics are `int8`'s (the same bound, tested the same way). Kernels: the portable reference
//! here, AVX-512 (VNNI, or BW's `vpmaddubsw`) and AVX2 in `int8_gemm_x86`; the tiles are packed
//! with AVX2 in `int8_pack_x86` above the portable tier.

use super::int8::{self, Q8Act, QK};
use crate::device::cpu;
use crate::model::load::ggml_blocks::GgmlType;

/// Weight rows per tile (one 16-lane register of i32 sums per token).
pub const ROWS: usize = 16;

/// Up to `ROWS` weight rows in the chunk form, for every chunk of K.
pub struct Tile {
    /// [chunks][8 quads][ROWS][4] codes + off.
    pub codes: Vec<u8>,
    /// [chunks][ROWS] each: the scale of elements 0..16 and 16..32 of a chunk, and its offset
    /// term (times d_x·Σq). Rows past the tile's end are zero.
    pub s_lo: Vec<f32>,
    pub s_hi: Vec<f32>,
    pub m: Vec<f32>,
    /// [chunks][ROWS]: m − off·s_lo, the offset term with the codes' offset folded in, for
    /// types whose two half-chunk scales are equal (`!split`): then a chunk adds
    /// d_x·s_lo·Σ(c + off)·q + m_off·d_x·Σq, one integer sum and no per-half correction.
    pub m_off: Vec<f32>,
    /// Whether a chunk's halves have their own scales (Q6_K).
    pub split: bool,
    pub off: i32,
    /// `i16_sums` of the type.
    pub sums16: usize,
    pub chunks: usize,
}

impl Tile {
    pub fn new(ty: GgmlType, k: usize) -> Tile {
        let chunks = k / QK;
        Tile {
            codes: vec![0; chunks * 32 * ROWS],
            s_lo: vec![0.0; chunks * ROWS],
            s_hi: vec![0.0; chunks * ROWS],
            m: vec![0.0; chunks * ROWS],
            m_off: vec![0.0; chunks * ROWS],
            split: ty == GgmlType::Q6_K,
            off: offset(ty),
            sums16: i16_sums(ty),
            chunks,
        }
    }

    /// Unpacks `rows` (≤ ROWS) whole rows of `rb` bytes of `ty` from `w`; later rows are zero.
    /// Above the portable tier, `int8_pack_x86` writes the same bytes with AVX2.
    pub fn pack(&mut self, ty: GgmlType, w: &[u8], rows: usize, rb: usize, k: usize) {
        assert!(rows <= ROWS && w.len() >= rows * rb && k == self.chunks * QK);
        #[cfg(target_arch = "x86_64")]
        {
            let tier = cpu::tier();
            cpu::debug_assert_runs(tier);
            // SAFETY: both tiers above portable have AVX2 (`tier()` only returns tiers this CPU
            // runs); `pack_avx2` asserts the sizes its pointers rely on.
            if tier != cpu::Tier::Portable && unsafe { super::int8_pack_x86::pack_avx2(self, ty, w, rows, rb, k) } {
                return;
            }
        }
        self.pack_body(ty, w, rows, rb, k)
    }

    /// The portable packer (the reference of `int8_pack_x86`).
    fn pack_body(&mut self, ty: GgmlType, w: &[u8], rows: usize, rb: usize, k: usize) {
        let off = self.off as u8;
        let Tile { codes, s_lo, s_hi, m, m_off, chunks, .. } = self;
        for r in 0..ROWS {
            if r >= rows {
                for c in 0..*chunks {
                    (s_lo[c * ROWS + r], s_hi[c * ROWS + r], m[c * ROWS + r], m_off[c * ROWS + r]) = (0.0, 0.0, 0.0, 0.0);
                    for qd in 0..8 {
                        codes[(c * 8 + qd) * ROWS * 4 + r * 4..][..4].fill(off);
                    }
                }
                continue;
            }
            int8::for_each_chunk(ty, &w[r * rb..(r + 1) * rb], k, |c, q, lo, hi, mm| {
                (s_lo[c * ROWS + r], s_hi[c * ROWS + r], m[c * ROWS + r]) = (lo, hi, mm);
                m_off[c * ROWS + r] = mm - off as f32 * lo;
                let mut u = [0u8; 32];
                for (u, &q) in u.iter_mut().zip(q) {
                    *u = (q as u8).wrapping_add(off);
                }
                let dst: &mut [u8; 32 * ROWS] = (&mut codes[c * 32 * ROWS..][..32 * ROWS]).try_into().expect("a chunk");
                for qd in 0..8 {
                    dst[qd * ROWS * 4 + r * 4..][..4].copy_from_slice(&u[qd * 4..][..4]);
                }
            });
        }
    }
}

/// The u8 offset of `ty`'s codes in a tile: its zero point, so tile codes are the stored
/// unsigned codes.
pub fn offset(ty: GgmlType) -> i32 {
    match ty {
        GgmlType::Q4_0 => 8,
        GgmlType::Q5_0 => 16,
        GgmlType::Q6_K => 32,
        GgmlType::Q8_0 => 128,
        _ => 0,
    }
}

/// The largest tile code of `ty` (code + `offset`).
pub fn code_max(ty: GgmlType) -> i32 {
    match ty {
        GgmlType::Q5_0 => 31,
        GgmlType::Q6_K => 63,
        GgmlType::Q8_0 => 255,
        _ => 15,
    }
}

/// How many `vpmaddubsw` results (each an i16 lane of two products, |·| ≤ 2·127·code_max) may be
/// added in i16 without overflow, at most 8 (a chunk's quads): 8 for the 4-bit types, 4 for
/// Q5_0, 2 for Q6_K; 0 for Q8_0, whose pair sums do not fit an i16 at all.
pub fn i16_sums(ty: GgmlType) -> usize {
    (i16::MAX as usize / (2 * 127 * code_max(ty) as usize)).min(8)
}

/// out[ti·ROWS + r] = tile row r · token ti of x, for every token (out is [T, ROWS]): the
/// portable reference of the x86 kernels.
pub fn tile_dot(tile: &Tile, x: &Q8Act, out: &mut [f32]) {
    let t = x.tokens();
    let chunks = tile.chunks;
    for ti in 0..t {
        let y = &mut out[ti * ROWS..][..ROWS];
        y.fill(0.0);
        for c in 0..chunks {
            let xb = ti * chunks + c;
            let q = &x.q[xb * QK..][..QK];
            let codes = &tile.codes[c * 32 * ROWS..][..32 * ROWS];
            for (r, v) in y.iter_mut().enumerate() {
                let (mut lo, mut hi) = (0i32, 0i32);
                for j in 0..32 {
                    let p = codes[(j / 4) * ROWS * 4 + r * 4 + j % 4] as i32 * q[j] as i32;
                    if j < 16 {
                        lo += p
                    } else {
                        hi += p
                    }
                }
                lo -= tile.off * x.hsum[2 * xb];
                hi -= tile.off * x.hsum[2 * xb + 1];
                let i = c * ROWS + r;
                *v += x.d[xb] * (tile.s_lo[i] * lo as f32 + tile.s_hi[i] * hi as f32) + tile.m[i] * x.dsum[xb];
            }
        }
    }
}

/// Whether `gemm` takes `ty` on the current tier: every `int8::supported` type, except Q8_0
/// where only `vpdpbusd` (or the portable code) multiplies its full-range codes.
pub fn supported(ty: GgmlType) -> bool {
    int8::supported(ty) && (ty != GgmlType::Q8_0 || tile_kernel(ty).is_some() || cpu::tier() == cpu::Tier::Portable)
}

/// A tile kernel: `tile_dot`'s contract.
type TileKernel = fn(&Tile, &Q8Act, &mut [f32]);

/// The x86 kernel of the current tier for `ty`, if any.
fn tile_kernel(ty: GgmlType) -> Option<TileKernel> {
    #[cfg(target_arch = "x86_64")]
    {
        use super::int8_gemm_x86 as k;
        let tier = cpu::tier();
        cpu::debug_assert_runs(tier);
        if tier == cpu::Tier::Avx512 && k::has_vnni512() {
            return Some(k::tile_dot_vnni);
        }
        if ty == GgmlType::Q8_0 {
            return None;
        }
        if tier == cpu::Tier::Avx512 && k::has_bw() {
            return Some(k::tile_dot_avx512bw);
        }
        if tier != cpu::Tier::Portable {
            return Some(k::tile_dot_avx2);
        }
    }
    let _ = ty;
    None
}

/// y [T, N] = x · deq(W)ᵀ with x quantized to int8 (`xq`), W [N, K] of a `supported` type in
/// rows of `rb` bytes. Tasks of tiles run in parallel; each packs its tiles, then dots them.
pub fn gemm(ty: GgmlType, w: &[u8], xq: &Q8Act, y: &mut [f32], n: usize, rb: usize) {
    let (t, k) = (xq.tokens(), xq.k);
    assert!(w.len() >= n * rb && y.len() >= t * n, "matmul_gguf int8 gemm: buffers too small");
    let kernel = tile_kernel(ty).unwrap_or(tile_dot);
    let tiles = n.div_ceil(ROWS);
    // yt: [tiles][T][ROWS], then scattered into y [T, N].
    let mut yt = vec![0f32; tiles * t * ROWS];
    let per_task = tiles.div_ceil(4 * cpu::threads()).max(1);
    cpu::for_each_chunk(&mut yt, per_task * t * ROWS, |task, out| {
        let mut tile = Tile::new(ty, k);
        for (i, o) in out.chunks_exact_mut(t * ROWS).enumerate() {
            let n0 = (task * per_task + i) * ROWS;
            let rows = ROWS.min(n - n0);
            tile.pack(ty, &w[n0 * rb..(n0 + rows) * rb], rows, rb, k);
            kernel(&tile, xq, o);
        }
    });
    cpu::for_each_chunk(&mut y[..t * n], n, |ti, row| {
        for (tile, out) in row.chunks_mut(ROWS).enumerate() {
            out.copy_from_slice(&yt[(tile * t + ti) * ROWS..][..out.len()]);
        }
    });
}
