//! The GPU half of `matmul_gguf`: launchers of `shaders/matmul_gguf.wgsl` for `forward`,
//! `backward_dx` and `gather`, beside their CPU twins in `mod.rs` and `gather.rs`. The block type
//! is the shader's override constant `TY` (the ggml type id), so a pipeline holds one type's
//! dequantizer. Shapes and outputs are checked and allocated by the callers; this file checks
//! what only the GPU needs (K % 8, 32-bit indices). A weight above the adapter's binding size
//! comes in parts of rows (`GgufTensor::parts`): each is dispatched alone, its rows written at
//! their place in y (`ld`, `n0`), its share of dx added to the parts' before it, its ids gathered.

use super::{GgufTensor, OP};
use crate::device::GpuDevice;
use crate::error::{Error, Result};
use crate::ops::contract::{params, read, write, Entry};
use crate::ops::groups;
use crate::ops::matmul_nf4::{lanes, token_tile};
use crate::shaders;
use crate::tensor::Tensor;

params! {
    struct Params {
        // n: rows of this part of W; ld: rows of the whole W (the row stride of y and dy); n0:
        // the part's first row in W; acc: 1 for every part after the first (`backward_dx` adds
        // into dx, `gather` writes only the ids of its rows).
        t: u32,
        n: u32,
        k: u32,
        row_bytes: u32,
        ld: u32,
        n0: u32,
        acc: u32,
        _pad: u32,
    }
}

/// Token counts below this take the one-token-per-workgroup forward (`forward_few`), as in
/// `matmul_nf4`.
const FEW_TOKENS: usize = 4;
/// Rows of W per invocation: `forward` (`UN` in the shader) and `forward_few` (`UN_FEW`).
const UN: usize = 8;
const UN_FEW: usize = 4;
/// Invocations per workgroup: at most LX_MAX (`forward`, `backward_dx`), exactly that for
/// `forward_few`; `gather` takes WG.
const LX_MAX: usize = 64;
const WG: u32 = 64;
/// Tokens per workgroup (`forward`, `backward_dx`): at most UT_MAX.
const UT_MAX: usize = 32;
/// Weights per chunk: every row is K / CHUNK chunks, x, dy and dx are read as vec4s.
const CHUNK: usize = 8;

pub(crate) static FORWARD: Entry<Params, 3> = Entry::new(
    &shaders::MATMUL_GGUF,
    "forward",
    [read(1, "w"), read(2, "x4"), write(3, "y")],
    &[("UN", UN as u32), ("UT_MAX", UT_MAX as u32)],
);
pub(crate) static FORWARD_FEW: Entry<Params, 3> = Entry::new(
    &shaders::MATMUL_GGUF,
    "forward_few",
    [read(1, "w"), read(2, "x4"), write(3, "y")],
    &[("UN_FEW", UN_FEW as u32), ("LX", LX_MAX as u32)],
);
pub(crate) static BACKWARD_DX: Entry<Params, 3> =
    Entry::new(&shaders::MATMUL_GGUF, "backward_dx", [read(1, "w"), read(2, "dy"), write(3, "dx4")], &[("UT_MAX", UT_MAX as u32)]);
pub(crate) static GATHER: Entry<Params, 3> =
    Entry::new(&shaders::MATMUL_GGUF, "gather", [read(1, "w"), read(2, "ids"), write(3, "rows4")], &[("WG", WG)]);

/// The kernels' `Params` for `t` tokens and each part of W, after the checks only the GPU needs.
fn gpu_params(w: &GgufTensor, t: usize) -> Result<Vec<Params>> {
    let (n, k) = w.dims();
    let label = w.label();
    if k % CHUNK != 0 {
        // Only F16/BF16/F32 rows can get here: quantized rows are whole blocks of 32 or 256.
        return Err(Error::Limit {
            op: OP,
            detail: format!(
                "the {} weight `{label}` has rows of K = {k}, not a multiple of {CHUNK}, which the GPU kernels read in chunks of",
                w.ty
            ),
            limit: CHUNK as u64,
            hint: "run on --device cpu, or load the model with --weights f32",
        });
    }
    let fits = |v: usize| u32::try_from(v).is_ok();
    if !fits(t * n.max(k)) || !fits(w.part_rows * w.row_bytes() + 4) {
        return Err(Error::Limit {
            op: OP,
            detail: format!("T={t}, N={n}, K={k} overflow the kernels' 32-bit indices"),
            limit: u32::MAX as u64,
            hint: "split the batch into fewer tokens, or run on --device cpu",
        });
    }
    Ok((0..w.parts.len())
        .map(|i| {
            let n0 = i * w.part_rows;
            let rows = w.part_rows.min(n - n0.min(n));
            Params {
                t: t as u32,
                n: rows as u32,
                k: k as u32,
                row_bytes: w.row_bytes() as u32,
                ld: n as u32,
                n0: n0 as u32,
                acc: (i > 0) as u32,
                _pad: 0,
            }
        })
        .collect())
}

/// The override constants of one dispatch: the type, whether all its 4-byte reads are aligned
/// (`ALIGNED` in the shader: blocks of a multiple of 4 bytes, or whole floats, in rows of a
/// multiple of 4 bytes), and `more` (tile sizes).
fn constants(w: &GgufTensor, more: &[(&'static str, u32)]) -> Vec<(&'static str, u32)> {
    let (block, bytes) = w.ty.block();
    let aligned = (bytes % 4 == 0 || block == 1) && w.row_bytes() % 4 == 0;
    [("TY", w.ty.id()), ("ALIGNED", aligned as u32)].into_iter().chain(more.iter().copied()).collect()
}

/// y [T, N] = x [T, K] · deq(W)ᵀ into `y` (zeros). `forward_int8` takes this too: the GPU
/// keeps f32 activations (an int8 dot product would need shader features not every adapter has).
pub(super) fn forward(g: &GpuDevice, x: &Tensor, w: &GgufTensor, y: &Tensor) -> Result<()> {
    let (n, k) = w.dims();
    let t = x.numel() / k.max(1);
    let all = gpu_params(w, t)?;
    if t == 0 || n == 0 || k == 0 {
        return Ok(());
    }
    for (part, params) in w.parts.iter().zip(&all) {
        let (n, bufs) = (params.n as usize, [part.bind(OP)?, x.bind(OP)?, y.bind(OP)?]);
        if t < FEW_TOKENS {
            let groups = [t as u32, n.div_ceil(LX_MAX * UN_FEW) as u32, 1];
            FORWARD_FEW.dispatch(g, &constants(w, &[("LX", LX_MAX as u32)]), params, bufs, groups)?;
        } else {
            let (ut, lx) = (token_tile(t), lanes(n, UN));
            let groups = [t.div_ceil(ut) as u32, n.div_ceil(lx * UN) as u32, 1];
            FORWARD.dispatch(g, &constants(w, &[("UT", ut as u32), ("LX", lx as u32)]), params, bufs, groups)?;
        }
    }
    Ok(())
}

/// dx [T, K] = dy [T, N] · deq(W) into `dx` (zeros): the parts' shares summed in part order.
pub(super) fn backward_dx(g: &GpuDevice, dy: &Tensor, w: &GgufTensor, dx: &Tensor) -> Result<()> {
    let (n, k) = w.dims();
    let t = dy.numel() / n.max(1);
    let all = gpu_params(w, t)?;
    if t == 0 || k == 0 || n == 0 {
        return Ok(());
    }
    let chunks = k / CHUNK;
    let (ut, lx) = (token_tile(t), lanes(chunks, 1));
    let groups = [t.div_ceil(ut) as u32, chunks.div_ceil(lx) as u32, 1];
    for (part, params) in w.parts.iter().zip(&all) {
        let bufs = [part.bind(OP)?, dy.bind(OP)?, dx.bind(OP)?];
        BACKWARD_DX.dispatch(g, &constants(w, &[("UT", ut as u32), ("LX", lx as u32)]), params, bufs, groups)?;
    }
    Ok(())
}

/// y [T, K] = rows `ids` [T] of deq(W) into `y` (zeros); ids >= N leave a zero row.
pub(super) fn gather(g: &GpuDevice, ids: &Tensor, w: &GgufTensor, y: &Tensor) -> Result<()> {
    let (_, k) = w.dims();
    let t = ids.numel();
    let all = gpu_params(w, t)?;
    if t == 0 || k == 0 {
        return Ok(());
    }
    for (part, params) in w.parts.iter().zip(&all) {
        let bufs = [part.bind(OP)?, ids.bind(OP)?, y.bind(OP)?];
        GATHER.dispatch(g, &constants(w, &[("WG", WG)]), params, bufs, groups(g, t * (k / CHUNK), WG))?;
    }
    Ok(())
}
