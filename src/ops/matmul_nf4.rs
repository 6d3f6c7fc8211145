//! Fused products with a frozen NF4 weight W [N, K] (`quant_nf4::Nf4Tensor`): the forward
//! y[T, N] = x[T, K] · deq(W)ᵀ and the input gradient dx[T, K] = dy[T, N] · deq(W). Neither device
//! materializes deq(W): the GPU kernels (`shaders/matmul_nf4.wgsl`) unpack one u32 word of 8 codes
//! at a time, the CPU twins dequantize one row (or one slice of a row) into a small buffer.
//! W is frozen under QLoRA, so there is no weight gradient here.

use crate::device::{cpu, gpu::Kernel, Device};
use crate::error::{Error, Result};
use crate::ops::quant_nf4::Nf4Tensor;
use crate::quant::nf4::{code_at, NF4_CODE};
use crate::shaders;
use crate::tensor::{dims2, DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32,
    n: u32,
    k: u32,
    bs: u32,
}

const OP: &str = "matmul_nf4";
/// Tokens per workgroup (`UT` in the shader) and invocations per workgroup.
const UT: usize = 8;
const LX: u32 = 64;
/// Token counts below this take the one-token-per-workgroup forward (`forward_few`).
const FEW_TOKENS: usize = 4;
/// Weight rows per forward invocation (`UN` in the shader).
const UN: usize = 4;
/// CPU work items: weight rows per forward task, columns per dx task.
const ROWS_PER_TASK: usize = 8;
const COLS_PER_TASK: usize = 64;

/// (N, K) of the weight, checked against its packed data.
fn weight_dims(w: &Nf4Tensor) -> Result<(usize, usize)> {
    w.check(OP)?;
    match w.shape[..] {
        [n, k] => Ok((n, k)),
        _ => Err(Error::shape(OP, format!("NF4 weight `{}` has shape {:?}, expected [N, K]", w.packed.label(), w.shape))),
    }
}

/// `input`'s shape with its last dimension (the width `found`, which must be `want`) set to `to`.
fn swap_width(input: &Tensor, found: usize, want: usize, to: usize, w: &Nf4Tensor) -> Result<Vec<usize>> {
    if found != want || input.shape().is_empty() {
        return Err(Error::shape(
            OP,
            format!(
                "`{}` {:?} has width {found}, the NF4 weight `{}` [N, K] = {:?} needs {want}",
                input.label(),
                input.shape(),
                w.packed.label(),
                w.shape
            ),
        ));
    }
    let mut shape = input.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = to;
    }
    Ok(shape)
}

fn gpu_params(t: usize, n: usize, k: usize, w: &Nf4Tensor) -> Result<Params> {
    if k % 8 != 0 {
        return Err(Error::Limit {
            op: OP,
            detail: format!("K = {k} is not a multiple of 8, so weight rows do not start on a packed word"),
            limit: 8,
            hint: "dequantize this weight and use ops::matmul, or run on --device cpu",
        });
    }
    let fits = |v: usize| u32::try_from(v).is_ok();
    if !fits(n * k) || !fits(t * n.max(k)) {
        return Err(Error::Limit {
            op: OP,
            detail: format!("T={t}, N={n}, K={k} overflow 32-bit indices"),
            limit: u32::MAX as u64,
            hint: "split the batch into fewer tokens",
        });
    }
    Ok(Params { t: t as u32, n: n as u32, k: k as u32, bs: w.blocksize as u32 })
}

/// y [.., N] = x [.., K] · deq(W)ᵀ for W [N, K].
pub fn forward(dev: &Device, x: &Tensor, w: &Nf4Tensor) -> Result<Tensor> {
    x.expect(OP, DType::F32)?;
    let (t, k) = dims2(x);
    let (n, kw) = weight_dims(w)?;
    let shape = swap_width(x, k, kw, n, w)?;
    let mut y = Tensor::zeros(dev, "matmul_nf4.y", &shape, DType::F32);
    match dev {
        Device::Cpu(_) => {
            let packed = bytemuck::cast_slice(w.packed.host_u32(OP)?);
            cpu_forward(x.host_f32(OP)?, packed, w.absmax.host_f32(OP)?, w.blocksize, y.host_f32_mut(OP)?, t, n, k);
        }
        Device::Gpu(g) => {
            let params = gpu_params(t, n, k, w)?;
            if t == 0 || n == 0 {
                return Ok(y);
            }
            let bufs = [(1, w.packed.bind(OP)?), (2, w.absmax.bind(OP)?), (3, x.bind(OP)?), (4, y.bind(OP)?)];
            // Below FEW_TOKENS tokens a workgroup per token beats computing UT clamped copies.
            let (entry, per_group) = if t < FEW_TOKENS { ("forward_few", 1) } else { ("forward", UT) };
            let groups = [t.div_ceil(per_group) as u32, n.div_ceil(LX as usize * UN) as u32, 1];
            g.dispatch(Kernel { shader: &shaders::MATMUL_NF4, entry }, &[("LX", LX)], &params, &bufs, groups)?;
        }
    }
    Ok(y)
}

/// dx [.., K] = dy [.., N] · deq(W) for W [N, K]: the input gradient of [`forward`].
pub fn backward_dx(dev: &Device, dy: &Tensor, w: &Nf4Tensor) -> Result<Tensor> {
    dy.expect(OP, DType::F32)?;
    let (t, n) = dims2(dy);
    let (nw, k) = weight_dims(w)?;
    let shape = swap_width(dy, n, nw, k, w)?;
    let mut dx = Tensor::zeros(dev, "matmul_nf4.dx", &shape, DType::F32);
    match dev {
        Device::Cpu(_) => {
            let packed = bytemuck::cast_slice(w.packed.host_u32(OP)?);
            cpu_backward_dx(dy.host_f32(OP)?, packed, w.absmax.host_f32(OP)?, w.blocksize, dx.host_f32_mut(OP)?, t, n, k);
        }
        Device::Gpu(g) => {
            let params = gpu_params(t, n, k, w)?;
            if t == 0 || k == 0 {
                return Ok(dx);
            }
            let bufs = [(1, w.packed.bind(OP)?), (2, w.absmax.bind(OP)?), (3, dy.bind(OP)?), (4, dx.bind(OP)?)];
            let groups = [t.div_ceil(UT) as u32, (k / 8).div_ceil(LX as usize) as u32, 1];
            g.dispatch(Kernel { shader: &shaders::MATMUL_NF4, entry: "backward_dx" }, &[("LX", LX)], &params, &bufs, groups)?;
        }
    }
    Ok(dx)
}

/// Weights `start..start + out.len()` of the flattened NF4 weight, dequantized.
fn dequantize_range(packed: &[u8], absmax: &[f32], bs: usize, start: usize, out: &mut [f32]) {
    // One absmax load and no division per block segment.
    let mut done = 0;
    while done < out.len() {
        let e0 = start + done;
        let seg = (bs - e0 % bs).min(out.len() - done);
        let scale = absmax[e0 / bs];
        let dst = &mut out[done..done + seg];
        if e0 % 2 == 0 {
            // Whole bytes: both codes of a byte at once (high nibble first).
            let bytes = &packed[e0 / 2..(e0 + seg) / 2];
            for (pair, &b) in dst.chunks_exact_mut(2).zip(bytes) {
                pair[0] = NF4_CODE[(b >> 4) as usize] * scale;
                pair[1] = NF4_CODE[(b & 15) as usize] * scale;
            }
            if seg % 2 == 1 {
                dst[seg - 1] = NF4_CODE[code_at(packed, e0 + seg - 1) as usize] * scale;
            }
        } else {
            for (j, v) in dst.iter_mut().enumerate() {
                *v = NF4_CODE[code_at(packed, e0 + j) as usize] * scale;
            }
        }
        done += seg;
    }
}

/// From this many tokens on, the CPU twins dequantize W a tile of `TILE_ROWS` rows at a time and
/// hand the tile to the GEMM: the dequantization is then shared by all tokens.
const MANY_TOKENS: usize = 16;
const TILE_ROWS: usize = 128;

/// Dequantizes weight rows `n0..n0 + rows` (of K each) into `tile`, in parallel.
fn dequantize_tile(packed: &[u8], absmax: &[f32], bs: usize, n0: usize, k: usize, tile: &mut [f32]) {
    cpu::for_each_chunk(tile, k, |r, row| dequantize_range(packed, absmax, bs, (n0 + r) * k, row));
}

/// CPU twin of `forward`. Few tokens: tasks of `ROWS_PER_TASK` weight rows, each row dequantized
/// once into a [K] buffer and dotted with every token; results land in yᵀ [N, T], then are
/// transposed. Many tokens: tiles of rows dequantized and multiplied by the GEMM, so only one
/// tile ([TILE_ROWS, K]) is ever dequantized at a time.
#[allow(clippy::too_many_arguments)]
pub fn cpu_forward(x: &[f32], packed: &[u8], absmax: &[f32], bs: usize, y: &mut [f32], t: usize, n: usize, k: usize) {
    if t >= MANY_TOKENS {
        let mut tile = vec![0f32; TILE_ROWS * k];
        for n0 in (0..n).step_by(TILE_ROWS) {
            let rows = TILE_ROWS.min(n - n0);
            dequantize_tile(packed, absmax, bs, n0, k, &mut tile[..rows * k]);
            // y[:, n0..n0+rows] = x · tileᵀ
            cpu::gemm_strided(t, rows, k, x, (k, 1), &tile, (1, k), &mut y[n0..], n, false);
        }
        return;
    }
    let mut yt = vec![0f32; n * t];
    cpu::for_each_chunk(&mut yt, ROWS_PER_TASK * t, |task, out| {
        let mut row = vec![0f32; k];
        for (r, yr) in out.chunks_mut(t).enumerate() {
            let nn = task * ROWS_PER_TASK + r;
            dequantize_range(packed, absmax, bs, nn * k, &mut row);
            for (ti, v) in yr.iter_mut().enumerate() {
                *v = cpu::dot(&x[ti * k..(ti + 1) * k], &row);
            }
        }
    });
    for nn in 0..n {
        for ti in 0..t {
            y[ti * n + nn] = yt[nn * t + ti];
        }
    }
}

/// CPU twin of `backward_dx`: tasks of `COLS_PER_TASK` columns of W; each walks the N rows,
/// dequantizing its slice of the row and accumulating dy[t, n] · slice into a [T, cols] buffer.
#[allow(clippy::too_many_arguments)]
pub fn cpu_backward_dx(dy: &[f32], packed: &[u8], absmax: &[f32], bs: usize, dx: &mut [f32], t: usize, n: usize, k: usize) {
    if t >= MANY_TOKENS {
        // dx += dy[:, n0..n0+rows] · tile, tile by tile.
        let mut tile = vec![0f32; TILE_ROWS * k];
        for n0 in (0..n).step_by(TILE_ROWS) {
            let rows = TILE_ROWS.min(n - n0);
            dequantize_tile(packed, absmax, bs, n0, k, &mut tile[..rows * k]);
            cpu::gemm(t, k, rows, &dy[n0..], (n, 1), &tile, (k, 1), dx, n0 > 0);
        }
        return;
    }
    let tasks = k.div_ceil(COLS_PER_TASK);
    let mut scratch = vec![0f32; tasks * t * COLS_PER_TASK];
    cpu::for_each_chunk(&mut scratch, t * COLS_PER_TASK, |task, acc| {
        let k0 = task * COLS_PER_TASK;
        let kw = COLS_PER_TASK.min(k - k0);
        let mut slice = [0f32; COLS_PER_TASK];
        for nn in 0..n {
            dequantize_range(packed, absmax, bs, nn * k + k0, &mut slice[..kw]);
            for ti in 0..t {
                let g = dy[ti * n + nn];
                for (a, w) in acc[ti * COLS_PER_TASK..ti * COLS_PER_TASK + kw].iter_mut().zip(&slice[..kw]) {
                    *a += g * w;
                }
            }
        }
    });
    for task in 0..tasks {
        let k0 = task * COLS_PER_TASK;
        let kw = COLS_PER_TASK.min(k - k0);
        for ti in 0..t {
            let src = &scratch[(task * t + ti) * COLS_PER_TASK..][..kw];
            dx[ti * k + k0..ti * k + k0 + kw].copy_from_slice(src);
        }
    }
}
