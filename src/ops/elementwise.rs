//! Elementwise f32 ops: c = a + b, c = α·a, in-place a += α·b for gradient accumulation, and
//! in-place x[r] += bias (a linear layer's bias; its backward is the column sum of dx).
//! Kernels: `shaders/elementwise.wgsl`. Backward: add passes dc to both inputs; scale is its own
//! backward (dc scaled by the same α).

use crate::device::{cpu, gpu::Kernel, Device};
use crate::error::Result;
use crate::ops::groups;
use crate::shaders;
use crate::tensor::{check_shape, DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    alpha: f32,
    cols: u32,
    _pad: u32,
}

impl Params {
    fn new(n: usize, alpha: f32) -> Self {
        Params { n: n as u32, alpha, cols: 1, _pad: 0 }
    }
}

const WG: u32 = 256;
const CHUNK: usize = 1 << 14;

fn kernel(entry: &'static str) -> Kernel {
    Kernel { shader: &shaders::ELEMENTWISE, entry }
}

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
            let bufs = [(1, a.bind(OP)?), (2, b.bind(OP)?), (3, c.bind(OP)?)];
            g.dispatch(kernel("add"), &[("WG", WG)], &Params::new(n, 1.0), &bufs, groups(g, n, WG))?;
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
            let bufs = [(1, a.bind(OP)?), (2, c.bind(OP)?)];
            g.dispatch(kernel("scale"), &[("WG", WG)], &Params::new(n, alpha), &bufs, groups(g, n, WG))?;
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
            let bufs = [(1, target.bind(OP)?), (2, b.bind(OP)?)];
            g.dispatch(kernel("accumulate"), &[("WG", WG)], &Params::new(n, alpha), &bufs, groups(g, n, WG))?;
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
            let bufs = [(1, x.bind(OP)?), (2, bias.bind(OP)?)];
            let params = Params { cols: cols as u32, ..Params::new(n, 1.0) };
            g.dispatch(kernel("add_bias"), &[("WG", WG)], &params, &bufs, groups(g, n, WG))?;
        }
    }
    Ok(())
}
