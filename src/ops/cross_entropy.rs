//! Softmax cross-entropy over the vocabulary with an ignore index. Kernels:
//! `shaders/cross_entropy.wgsl`. Forward gives per-row losses (0 on ignored rows) and the row
//! log-sum-exp; backward takes a `scale` = d(total)/d(row loss), e.g. 1/(counted rows) for a mean.

use crate::device::{cpu, Device};
use crate::error::Result;
use crate::ops::contract::{params, read, write, Entry};
use crate::ops::groups;
use crate::shaders;
use crate::tensor::{check_shape, dims2, DType, Tensor};

params! {
    struct Params {
        rows: u32,
        vocab: u32,
        ignore: u32,
        scale: f32,
    }
}

const WG: u32 = 256;
const OP: &str = "cross_entropy";
/// Targets equal to this are ignored (PyTorch's -100 as an unsigned id).
pub const IGNORE: u32 = u32::MAX;

const SHARED: &[(&str, u32)] = &[("WG", WG)];

pub(crate) static FORWARD: Entry<Params, 4> =
    Entry::new(&shaders::CROSS_ENTROPY, "forward", [read(1, "logits"), read(2, "targets"), write(3, "loss"), write(4, "lse_out")], SHARED);
pub(crate) static BACKWARD: Entry<Params, 4> =
    Entry::new(&shaders::CROSS_ENTROPY, "backward", [read(1, "logits"), read(2, "targets"), read(3, "lse"), write(4, "dlogits")], SHARED);

/// logits [N, V], targets [N] (u32, `IGNORE` to skip) -> (loss [N], lse [N]).
pub fn forward(dev: &Device, logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let (rows, vocab) = dims2(logits);
    targets.expect(OP, DType::U32)?;
    check_shape(OP, targets, &[rows])?;
    let mut loss = Tensor::zeros(dev, "cross_entropy.loss", &[rows], DType::F32);
    let mut lse = Tensor::zeros(dev, "cross_entropy.lse", &[rows], DType::F32);
    match dev {
        Device::Cpu(_) => cpu_forward(logits.host_f32(OP)?, targets.host_u32(OP)?, loss.host_f32_mut(OP)?, lse.host_f32_mut(OP)?, vocab),
        Device::Gpu(g) => {
            let params = Params { rows: rows as u32, vocab: vocab as u32, ignore: IGNORE, scale: 1.0 };
            let bufs = [logits.bind(OP)?, targets.bind(OP)?, loss.bind(OP)?, lse.bind(OP)?];
            FORWARD.dispatch(g, &[("WG", WG)], &params, bufs, groups(g, rows, 1))?;
        }
    }
    Ok((loss, lse))
}

/// -> dlogits [N, V].
pub fn backward(dev: &Device, logits: &Tensor, targets: &Tensor, lse: &Tensor, scale: f32) -> Result<Tensor> {
    let (rows, vocab) = dims2(logits);
    targets.expect(OP, DType::U32)?;
    check_shape(OP, targets, &[rows])?;
    check_shape(OP, lse, &[rows])?;
    let mut dlogits = Tensor::zeros(dev, "cross_entropy.dlogits", logits.shape(), DType::F32);
    match dev {
        Device::Cpu(_) => {
            cpu_backward(logits.host_f32(OP)?, targets.host_u32(OP)?, lse.host_f32(OP)?, scale, dlogits.host_f32_mut(OP)?, vocab)
        }
        Device::Gpu(g) => {
            let params = Params { rows: rows as u32, vocab: vocab as u32, ignore: IGNORE, scale };
            let bufs = [logits.bind(OP)?, targets.bind(OP)?, lse.bind(OP)?, dlogits.bind(OP)?];
            BACKWARD.dispatch(g, &[("WG", WG)], &params, bufs, groups(g, rows, 1))?;
        }
    }
    Ok(dlogits)
}

fn counted(t: u32, vocab: usize) -> bool {
    t != IGNORE && (t as usize) < vocab
}

pub fn cpu_forward(logits: &[f32], targets: &[u32], loss: &mut [f32], lse: &mut [f32], vocab: usize) {
    cpu::for_each_chunk2(loss, 1, lse, 1, |r, loss, lse| {
        let row = &logits[r * vocab..(r + 1) * vocab];
        lse[0] = row_lse(row);
        loss[0] = if counted(targets[r], vocab) { lse[0] - row[targets[r] as usize] } else { 0.0 };
    });
}

/// log Σ exp(row), in lanes of 16 so it vectorizes. A running f32 sum over ~50k terms drops the
/// small ones (NLL ~1e-4 low), so the lanes sum blocks of 256 terms and the blocks add up in f64.
/// A NaN anywhere makes the result NaN (the training loop stops on it).
fn row_lse(row: &[f32]) -> f32 {
    const L: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; L];
    let chunks = row.chunks_exact(L);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..L {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    let m = lanes.iter().chain(tail).fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let mut s = 0f64;
    for block in row.chunks(256) {
        let mut acc = [0f32; L];
        let chunks = block.chunks_exact(L);
        let rest: f32 = chunks.remainder().iter().map(|&x| cpu::exp(x - m)).sum();
        for c in chunks {
            for i in 0..L {
                acc[i] += cpu::exp(c[i] - m);
            }
        }
        s += (acc.iter().sum::<f32>() + rest) as f64;
    }
    m + s.ln() as f32
}

pub fn cpu_backward(logits: &[f32], targets: &[u32], lse: &[f32], scale: f32, dlogits: &mut [f32], vocab: usize) {
    cpu::for_each_chunk(dlogits, vocab, |r, d| {
        let t = targets[r];
        if !counted(t, vocab) {
            d.fill(0.0);
            return;
        }
        let l = lse[r];
        d.iter_mut().zip(&logits[r * vocab..(r + 1) * vocab]).for_each(|(dv, &x)| *dv = scale * cpu::exp(x - l));
        d[t as usize] -= scale;
    });
}
