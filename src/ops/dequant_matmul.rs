//! The CPU algorithms shared by the products with a frozen weight W [N, K] held in a block format
//! that dequantizes by row ranges (NF4 in `matmul_nf4`, GGUF blocks in `matmul_gguf`); each format
//! gives its own dequantizer and keeps its own few-token decode kernels.
//!
//! - `forward_many_tokens`: y = x·Wᵀ from `MANY_TOKENS` tokens on, one task per tile of
//!   `TILE_ROWS` rows of W, dequantized by `deq(row0, tile)` and multiplied by the GEMM on its own
//!   thread into its columns of y (only one tile per thread is ever dequantized).
//! - `backward_dx`: dx = dy·W. Many tokens: one task per column block of dx (`align`-multiple
//!   wide, so ranges start on block boundaries), dequantizing `TILE_ROWS` rows of its slice at a
//!   time for the GEMM. Few tokens: tasks of `cols` columns, each walking the N rows and
//!   accumulating dy[t, n] · slice into a [T, cols] buffer.
//! - `swap_width`: the shape check both ops make on their input.

use crate::device::cpu;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// At or above this many tokens the GEMM path wins.
pub const MANY_TOKENS: usize = 16;
/// Rows of W dequantized per GEMM tile.
pub const TILE_ROWS: usize = 128;

/// y [t, n] = x [t, k] · Wᵀ for t ≥ `MANY_TOKENS`, W given by `deq(row0, tile)`, which writes rows
/// row0..row0 + tile.len()/k of W into `tile`.
pub fn forward_many_tokens(x: &[f32], y: &mut [f32], t: usize, n: usize, k: usize, deq: impl Fn(usize, &mut [f32]) + Sync) {
    assert!(x.len() >= t * k && y.len() >= t * n, "dequant_matmul: buffers too small");
    let y_len = y.len();
    let out = cpu::SharedOut::new(y);
    cpu::for_each_with_buffer(n.div_ceil(TILE_ROWS), TILE_ROWS * k, |i, tile| {
        let (n0, rows) = (i * TILE_ROWS, TILE_ROWS.min(n - i * TILE_ROWS));
        let tile = &mut tile[..rows * k];
        deq(n0, tile);
        // y[:, n0..n0+rows] = x · tileᵀ. SAFETY: in bounds by the assert; tasks write disjoint
        // column blocks of y.
        debug_assert!(n0 + rows <= n && t * n <= y_len && x.len() >= t * k && tile.len() == rows * k);
        unsafe { cpu::gemm_ptr(t, rows, k, x.as_ptr(), (k, 1), tile.as_ptr(), (1, k), out.at(n0), n, false, 1) };
    });
}

/// `input`'s shape with its last dimension (the width `found`, which must be `want`) set to `to`;
/// else an error naming `input` and the weight, which `weight()` describes (only on error).
pub fn swap_width(
    op: &'static str,
    input: &Tensor,
    found: usize,
    want: usize,
    to: usize,
    weight: impl FnOnce() -> String,
) -> Result<Vec<usize>> {
    if found != want || input.shape().is_empty() {
        let detail = format!("`{}` {:?} has width {found}, the {} needs {want}", input.label(), input.shape(), weight());
        return Err(Error::shape(op, detail));
    }
    let mut out = input.shape().to_vec();
    if let Some(last) = out.last_mut() {
        *last = to;
    }
    Ok(out)
}

/// dx [t, k] = dy [t, n] · W [n, k], W given by `deq`. `align` divides every range start the
/// many-token path asks for; `COLS` is the few-token task width, and the caller chooses it so
/// that `deq` can start there (for GGUF blocks a multiple of every block size).
#[allow(clippy::too_many_arguments)]
pub fn backward_dx<const COLS: usize>(
    dy: &[f32],
    dx: &mut [f32],
    t: usize,
    n: usize,
    k: usize,
    align: usize,
    deq: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    assert!(dy.len() >= t * n && dx.len() >= t * k, "dequant_matmul: buffers too small");
    if t == 0 || k == 0 {
        return;
    }
    if n == 0 {
        dx[..t * k].fill(0.0);
        return;
    }
    if t >= MANY_TOKENS {
        // dx[:, k0..k0+kw] = Σ_tiles dy[:, n0..n0+rows] · W[n0..n0+rows, k0..k0+kw].
        let width = k.div_ceil(cpu::threads()).next_multiple_of(align);
        let dx_len = dx.len();
        let out = cpu::SharedOut::new(dx);
        cpu::for_each_with_buffer(k.div_ceil(width), TILE_ROWS * width, |i, tile| {
            let (k0, kw) = (i * width, width.min(k - i * width));
            for n0 in (0..n).step_by(TILE_ROWS) {
                let rows = TILE_ROWS.min(n - n0);
                let tile = &mut tile[..rows * kw];
                for (r, row) in tile.chunks_exact_mut(kw).enumerate() {
                    deq(n0 + r, k0, row);
                }
                // SAFETY: in bounds by the assert; tasks write disjoint column blocks of dx.
                debug_assert!(k0 + kw <= k && t * k <= dx_len && n0 + rows <= n && tile.len() == rows * kw);
                unsafe { cpu::gemm_ptr(t, kw, rows, dy.as_ptr().add(n0), (n, 1), tile.as_ptr(), (kw, 1), out.at(k0), k, n0 > 0, 1) };
            }
        });
        return;
    }
    let tasks = k.div_ceil(COLS);
    let mut scratch = vec![0f32; tasks * t * COLS];
    cpu::for_each_chunk(&mut scratch, t * COLS, |task, acc| {
        let k0 = task * COLS;
        let kw = COLS.min(k - k0);
        let mut slice = [0f32; COLS];
        for nn in 0..n {
            deq(nn, k0, &mut slice[..kw]);
            for ti in 0..t {
                let g = dy[ti * n + nn];
                for (a, w) in acc[ti * COLS..ti * COLS + kw].iter_mut().zip(&slice[..kw]) {
                    *a += g * w;
                }
            }
        }
    });
    for task in 0..tasks {
        let k0 = task * COLS;
        let kw = COLS.min(k - k0);
        for ti in 0..t {
            dx[ti * k + k0..ti * k + k0 + kw].copy_from_slice(&scratch[(task * t + ti) * COLS..][..kw]);
        }
    }
}
