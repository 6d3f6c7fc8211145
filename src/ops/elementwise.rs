//! Elementwise f32 ops: c = a + b, c = α·a, in-place a += α·b for gradient accumulation,
//! in-place x[r] += bias (a linear layer's bias; its backward is the column sum of dx), and
//! inverted dropout. Kernels: `shaders/elementwise.wgsl`. Backward: add passes dc to both inputs;
//! scale is its own backward (dc scaled by the same α); dropout too (same seed, same mask).

use crate::device::{cpu, Device};
use crate::error::Result;
use crate::ops::contract::{params, read, write, Entry};
use crate::ops::groups;
use crate::shaders;
use crate::tensor::{check_shape, DType, Tensor};

params! {
    struct Params {
        n: u32,
        alpha: f32,
        cols: u32,
        _pad: u32,
    }
}

impl Params {
    fn new(n: usize, alpha: f32) -> Self {
        Params { n: n as u32, alpha, cols: 1, _pad: 0 }
    }
}

const WG: u32 = 256;
const CHUNK: usize = 1 << 14;

const SHARED: &[(&str, u32)] = &[("WG", WG)];

pub(crate) static ADD: Entry<Params, 3> = Entry::new(&shaders::ELEMENTWISE, "add", [read(1, "a"), read(2, "b"), write(3, "c")], SHARED);
pub(crate) static SCALE: Entry<Params, 2> = Entry::new(&shaders::ELEMENTWISE, "scale", [read(1, "a"), write(2, "c_scaled")], SHARED);
pub(crate) static ACCUMULATE: Entry<Params, 2> =
    Entry::new(&shaders::ELEMENTWISE, "accumulate", [write(1, "target_acc"), read(2, "b")], SHARED);
pub(crate) static ADD_BIAS: Entry<Params, 2> =
    Entry::new(&shaders::ELEMENTWISE, "add_bias", [write(1, "target_acc"), read(2, "b")], SHARED);
pub(crate) static DROPOUT: Entry<Params, 2> = Entry::new(&shaders::ELEMENTWISE, "dropout", [read(1, "a"), write(3, "c")], SHARED);

/// c = a + b.
pub fn add(dev: &Device, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "add";
    check_shape(OP, b, a.shape())?;
    let n = a.numel();
    let mut c = Tensor::zeros(dev, "add.c", a.shape(), DType::F32);
    match dev {
        Device::Cpu(_) => {
            let (a, b) = (a.host_f32(OP)?, b.host_f32(OP)?);
            cpu::for_each_chunk(c.host_f32_mut(OP)?, CHUNK, |k, c| {
                for (i, ci) in c.iter_mut().enumerate() {
                    *ci = a[k * CHUNK + i] + b[k * CHUNK + i];
                }
            });
        }
        Device::Gpu(g) => {
            let bufs = [a.bind(OP)?, b.bind(OP)?, c.bind(OP)?];
            ADD.dispatch(g, &[("WG", WG)], &Params::new(n, 1.0), bufs, groups(g, n, WG))?;
        }
    }
    Ok(c)
}

/// (da, db) of c = a + b: both equal dc.
pub fn add_backward(dev: &Device, dc: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok((scale(dev, dc, 1.0)?, scale(dev, dc, 1.0)?))
}

/// c = α·a. Also its own backward: da = α·dc.
pub fn scale(dev: &Device, a: &Tensor, alpha: f32) -> Result<Tensor> {
    const OP: &str = "scale";
    let n = a.numel();
    let mut c = Tensor::zeros(dev, "scale.c", a.shape(), DType::F32);
    match dev {
        Device::Cpu(_) => {
            let a = a.host_f32(OP)?;
            cpu::for_each_chunk(c.host_f32_mut(OP)?, CHUNK, |k, c| {
                for (i, ci) in c.iter_mut().enumerate() {
                    *ci = alpha * a[k * CHUNK + i];
                }
            });
        }
        Device::Gpu(g) => {
            let bufs = [a.bind(OP)?, c.bind(OP)?];
            SCALE.dispatch(g, &[("WG", WG)], &Params::new(n, alpha), bufs, groups(g, n, WG))?;
        }
    }
    Ok(c)
}

/// target += α·b, in place.
pub fn accumulate(dev: &Device, target: &mut Tensor, b: &Tensor, alpha: f32) -> Result<()> {
    const OP: &str = "accumulate";
    check_shape(OP, b, target.shape())?;
    let n = b.numel();
    match dev {
        Device::Cpu(_) => {
            let b = b.host_f32(OP)?;
            cpu::for_each_chunk(target.host_f32_mut(OP)?, CHUNK, |k, t| {
                for (i, ti) in t.iter_mut().enumerate() {
                    *ti += alpha * b[k * CHUNK + i];
                }
            });
        }
        Device::Gpu(g) => {
            let bufs = [target.bind(OP)?, b.bind(OP)?];
            ACCUMULATE.dispatch(g, &[("WG", WG)], &Params::new(n, alpha), bufs, groups(g, n, WG))?;
        }
    }
    Ok(())
}

/// x [rows, cols] += bias [cols], in place.
pub fn add_bias(dev: &Device, x: &mut Tensor, bias: &Tensor) -> Result<()> {
    const OP: &str = "add_bias";
    let cols = bias.numel();
    if cols == 0 || x.numel() % cols != 0 || x.shape().last() != Some(&cols) {
        return Err(crate::Error::Shape {
            op: OP,
            detail: format!("`{}` {:?} vs bias `{}` {:?}", x.label(), x.shape(), bias.label(), bias.shape()),
        });
    }
    let n = x.numel();
    match dev {
        Device::Cpu(_) => {
            let b = bias.host_f32(OP)?;
            cpu::for_each_chunk(x.host_f32_mut(OP)?, cols, |_, row| row.iter_mut().zip(b).for_each(|(x, b)| *x += b));
        }
        Device::Gpu(g) => {
            let bufs = [x.bind(OP)?, bias.bind(OP)?];
            let params = Params { cols: cols as u32, ..Params::new(n, 1.0) };
            ADD_BIAS.dispatch(g, &[("WG", WG)], &params, bufs, groups(g, n, WG))?;
        }
    }
    Ok(())
}

/// The counter-based hash behind dropout masks (PCG's output permutation of an LCG step): the
/// WGSL kernel computes the same bits, so a mask is a pure function of (seed, index) on every device.
pub fn hash(v: u32) -> u32 {
    let state = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// Whether dropout with probability `p` keeps element `i` under `seed`.
pub fn keeps(seed: u32, i: u32, p: f32) -> bool {
    keeps_hashed(hash(seed), i, p)
}

/// `keeps` with the seed already hashed (the form the CPU loop vectorizes).
#[inline(always)]
fn keeps_hashed(seed_hash: u32, i: u32, p: f32) -> bool {
    (hash(i ^ seed_hash) >> 8) as f32 * (1.0 / 16_777_216.0) >= p
}

/// Inverted dropout: y = x·keep/(1-p), keep drawn from (seed, index). Also its own backward:
/// dx = dropout(dy) with the same seed.
pub fn dropout(dev: &Device, x: &Tensor, p: f32, seed: u32) -> Result<Tensor> {
    const OP: &str = "dropout";
    if !(0.0..1.0).contains(&p) {
        return Err(crate::Error::InvalidArgument { flag: "dropout", detail: format!("probability {p} is outside [0, 1)") });
    }
    let n = x.numel();
    let mut y = Tensor::zeros(dev, "dropout.y", x.shape(), DType::F32);
    let keep_scale = 1.0 / (1.0 - p);
    match dev {
        Device::Cpu(_) => {
            let x = x.host_f32(OP)?;
            let seed_hash = hash(seed);
            cpu::for_each_chunk(y.host_f32_mut(OP)?, CHUNK, |k, y| {
                let (base, len) = (k * CHUNK, y.len());
                for (i, (yi, &xi)) in y.iter_mut().zip(&x[base..base + len]).enumerate() {
                    *yi = if keeps_hashed(seed_hash, (base + i) as u32, p) { xi * keep_scale } else { 0.0 };
                }
            });
        }
        Device::Gpu(g) => {
            let bufs = [x.bind(OP)?, y.bind(OP)?];
            let params = Params { cols: seed, ..Params::new(n, p) };
            DROPOUT.dispatch(g, &[("WG", WG)], &params, bufs, groups(g, n, WG))?;
        }
    }
    Ok(y)
}
