//! Rows of a GGUF block matrix: y[t] = deq(W)[ids[t]] for W [N, K], the embedding lookup of a
//! table kept in the file's blocks (Qwen2.5-0.5B's [151936, 896] Q5_0 embedding is 94 MiB as
//! blocks, 545 MiB as f32). Ids at or above N give a zero row, as `embedding::forward`. The table
//! is frozen, so there is no backward.

use super::{deq, GgufTensor, OP};
use crate::device::{cpu, Device};
use crate::error::Result;
use crate::model::load::ggml_blocks::GgmlType;
use crate::tensor::{DType, Tensor};

/// ids [T] (u32), W [N, K] in blocks -> y [T, K] (f32).
pub fn gather(dev: &Device, ids: &Tensor, w: &GgufTensor) -> Result<Tensor> {
    ids.expect(OP, DType::U32)?;
    let (_, k) = w.dims();
    let t = ids.numel();
    let mut y = Tensor::zeros(dev, "matmul_gguf.gather", &[t, k], DType::F32);
    match dev {
        Device::Cpu(_) => cpu_gather(ids.host_u32(OP)?, w.host_bytes(OP)?, w.ty, y.host_f32_mut(OP)?, w.shape[0], k),
        Device::Gpu(g) => super::gpu::gather(g, ids, w, &y)?,
    }
    Ok(y)
}

/// CPU twin of `gather`: each row dequantized by the exact dequantizers (`ggml_blocks`), so a
/// row equals `GgufTensor::dequantize`'s bit for bit.
pub fn cpu_gather(ids: &[u32], w: &[u8], ty: GgmlType, y: &mut [f32], n: usize, k: usize) {
    if k == 0 {
        return;
    }
    let (block, block_bytes) = ty.block();
    let rb = k / block * block_bytes;
    assert!(k.is_multiple_of(block) && w.len() >= n * rb && y.len() >= ids.len() * k, "matmul_gguf::gather: buffers too small");
    cpu::for_each_chunk(&mut y[..ids.len() * k], k, |t, row| match ids[t] as usize {
        id if id < n => deq(ty, &w[id * rb..(id + 1) * rb], row),
        _ => row.fill(0.0),
    });
}
