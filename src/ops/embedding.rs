//! Embedding lookup y[t] = table[ids[t]] and its gradient, a scatter-add into dtable.
//! Kernels: `shaders/embedding.wgsl`. Ids ≥ V give a zero row on every device.

use crate::device::{cpu, Device};
use crate::error::Result;
use crate::ops::contract::{params, read, write, Entry};
use crate::ops::groups;
use crate::shaders;
use crate::tensor::{check_shape, dims2, DType, Tensor};

params! {
    struct Params {
        tokens: u32,
        c: u32,
        vocab: u32,
        accumulate: u32,
    }
}

const WG: u32 = 256;
const OP: &str = "embedding";
const SHARED: &[(&str, u32)] = &[("WG", WG)];

pub(crate) static FORWARD: Entry<Params, 3> =
    Entry::new(&shaders::EMBEDDING, "forward", [read(1, "ids"), read(2, "table"), write(3, "y")], SHARED);
pub(crate) static BACKWARD: Entry<Params, 3> =
    Entry::new(&shaders::EMBEDDING, "backward", [read(1, "ids"), read(2, "dy"), write(3, "dtable")], SHARED);

/// ids [T] (u32), table [V, C] -> y [T, C].
pub fn forward(dev: &Device, ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    ids.expect(OP, DType::U32)?;
    let (vocab, c) = dims2(table);
    let t = ids.numel();
    let mut y = Tensor::zeros(dev, "embedding.y", &[t, c], DType::F32);
    match dev {
        Device::Cpu(_) => cpu_forward(ids.host_u32(OP)?, table.host_f32(OP)?, y.host_f32_mut(OP)?, c),
        Device::Gpu(g) => {
            let params = Params { tokens: t as u32, c: c as u32, vocab: vocab as u32, accumulate: 0 };
            let bufs = [ids.bind(OP)?, table.bind(OP)?, y.bind(OP)?];
            FORWARD.dispatch(g, &[("WG", WG)], &params, bufs, groups(g, t * c, WG))?;
        }
    }
    Ok(y)
}

/// dtable [V, C] from ids [T] and dy [T, C].
pub fn backward(dev: &Device, ids: &Tensor, vocab: usize, dy: &Tensor) -> Result<Tensor> {
    ids.expect(OP, DType::U32)?;
    let t = ids.numel();
    let (_, c) = dims2(dy);
    check_shape(OP, dy, &[t, c])?;
    let mut dtable = Tensor::zeros(dev, "embedding.dtable", &[vocab, c], DType::F32);
    match dev {
        Device::Cpu(_) => cpu_backward(ids.host_u32(OP)?, dy.host_f32(OP)?, dtable.host_f32_mut(OP)?, c),
        Device::Gpu(g) => {
            let params = Params { tokens: t as u32, c: c as u32, vocab: vocab as u32, accumulate: 1 };
            let bufs = [ids.bind(OP)?, dy.bind(OP)?, dtable.bind(OP)?];
            BACKWARD.dispatch(g, &[("WG", WG)], &params, bufs, groups(g, c, WG))?;
        }
    }
    Ok(dtable)
}

pub fn cpu_forward(ids: &[u32], table: &[f32], y: &mut [f32], c: usize) {
    let vocab = table.len() / c.max(1);
    cpu::for_each_chunk(y, c, |t, row| match ids[t] as usize {
        id if id < vocab => row.copy_from_slice(&table[id * c..(id + 1) * c]),
        _ => row.fill(0.0),
    });
}

pub fn cpu_backward(ids: &[u32], dy: &[f32], dtable: &mut [f32], c: usize) {
    let vocab = dtable.len() / c.max(1);
    for (t, &id) in ids.iter().enumerate() {
        let id = id as usize;
        if id < vocab {
            for j in 0..c {
                dtable[id * c + j] += dy[t * c + j];
            }
        }
    }
}
