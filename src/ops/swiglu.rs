//! SwiGLU h = silu(g) · u, the Llama MLP's gate. Kernels: `shaders/swiglu.wgsl`.

use crate::device::{cpu, Device};
use crate::error::Result;
use crate::ops::contract::{params, read, write, Entry};
use crate::ops::groups;
use crate::shaders;
use crate::tensor::{check_shape, DType, Tensor};

params! {
    struct Params {
        n: u32,
    }
}

const WG: u32 = 256;
const OP: &str = "swiglu";

const SHARED: &[(&str, u32)] = &[("WG", WG)];

pub(crate) static FORWARD: Entry<Params, 3> = Entry::new(&shaders::SWIGLU, "forward", [read(1, "g"), read(2, "u"), write(3, "h")], SHARED);
pub(crate) static BACKWARD: Entry<Params, 5> =
    Entry::new(&shaders::SWIGLU, "backward", [read(1, "g"), read(2, "u"), read(3, "dh"), write(4, "dg"), write(5, "du")], SHARED);

/// g, u [B*T, F] -> h [B*T, F].
pub fn forward(dev: &Device, g: &Tensor, u: &Tensor) -> Result<Tensor> {
    check_shape(OP, u, g.shape())?;
    let n = g.numel();
    let mut h = Tensor::zeros(dev, "swiglu.h", g.shape(), DType::F32);
    match dev {
        Device::Cpu(_) => cpu_forward(g.host_f32(OP)?, u.host_f32(OP)?, h.host_f32_mut(OP)?),
        Device::Gpu(gpu) => {
            let bufs = [g.bind(OP)?, u.bind(OP)?, h.bind(OP)?];
            FORWARD.dispatch(gpu, &[("WG", WG)], &Params { n: n as u32 }, bufs, groups(gpu, n, WG))?;
        }
    }
    Ok(h)
}

/// -> (dg, du).
pub fn backward(dev: &Device, g: &Tensor, u: &Tensor, dh: &Tensor) -> Result<(Tensor, Tensor)> {
    check_shape(OP, u, g.shape())?;
    check_shape(OP, dh, g.shape())?;
    let n = g.numel();
    let mut dg = Tensor::zeros(dev, "swiglu.dg", g.shape(), DType::F32);
    let mut du = Tensor::zeros(dev, "swiglu.du", g.shape(), DType::F32);
    match dev {
        Device::Cpu(_) => cpu_backward(g.host_f32(OP)?, u.host_f32(OP)?, dh.host_f32(OP)?, dg.host_f32_mut(OP)?, du.host_f32_mut(OP)?),
        Device::Gpu(gpu) => {
            let bufs = [g.bind(OP)?, u.bind(OP)?, dh.bind(OP)?, dg.bind(OP)?, du.bind(OP)?];
            BACKWARD.dispatch(gpu, &[("WG", WG)], &Params { n: n as u32 }, bufs, groups(gpu, n, WG))?;
        }
    }
    Ok((dg, du))
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + cpu::exp(-x))
}

const CHUNK: usize = 4096;

pub fn cpu_forward(g: &[f32], u: &[f32], h: &mut [f32]) {
    cpu::for_each_chunk(h, CHUNK, |c, h| {
        let o = c * CHUNK;
        for (i, hi) in h.iter_mut().enumerate() {
            let x = g[o + i];
            *hi = x * sigmoid(x) * u[o + i];
        }
    });
}

pub fn cpu_backward(g: &[f32], u: &[f32], dh: &[f32], dg: &mut [f32], du: &mut [f32]) {
    // silu'(g) = s (1 + g (1 - s)), s = sigmoid(g)
    cpu::for_each_chunk2(dg, CHUNK, du, CHUNK, |c, dg, du| {
        let o = c * CHUNK;
        for i in 0..dg.len() {
            let (x, s) = (g[o + i], sigmoid(g[o + i]));
            du[i] = dh[o + i] * x * s;
            dg[i] = dh[o + i] * u[o + i] * s * (1.0 + x * (1.0 - s));
        }
    });
}
