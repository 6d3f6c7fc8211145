//! RMSNorm over the last dimension: y = x · rstd · w with rstd = 1/sqrt(mean(x²) + eps).
//! Kernels: `shaders/rmsnorm.wgsl` (`forward`, `backward_dx`, `backward_dw`). `backward` gives dx
//! and dw; `backward_dx` skips dw, for frozen weights.

use crate::device::{cpu, Device};
use crate::error::Result;
use crate::ops::contract::{params, read, write, Entry};
use crate::ops::groups;
use crate::shaders;
use crate::tensor::{check_shape, dims2, DType, Tensor};

params! {
    struct Params {
        rows: u32,
        c: u32,
        eps: f32,
        accumulate: u32,
    }
}

const WG: u32 = 128;
const OP: &str = "rmsnorm";
const SHARED: &[(&str, u32)] = &[("WG", WG)];

pub(crate) static FORWARD: Entry<Params, 4> =
    Entry::new(&shaders::RMSNORM, "forward", [read(1, "x"), read(2, "w"), write(3, "y"), write(4, "rstd_out")], SHARED);
pub(crate) static BACKWARD_DX: Entry<Params, 5> =
    Entry::new(&shaders::RMSNORM, "backward_dx", [read(1, "x"), read(2, "w"), read(3, "rstd"), read(4, "dy"), write(5, "dx")], SHARED);
pub(crate) static BACKWARD_DW: Entry<Params, 4> =
    Entry::new(&shaders::RMSNORM, "backward_dw", [read(1, "x"), read(3, "rstd"), read(4, "dy"), write(5, "dw")], SHARED);

/// x [rows, C], w [C] -> (y [rows, C], rstd [rows]).
pub fn forward(dev: &Device, x: &Tensor, w: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let (rows, c) = dims2(x);
    check_shape(OP, w, &[c])?;
    let mut y = Tensor::zeros(dev, "rmsnorm.y", x.shape(), DType::F32);
    let mut rstd = Tensor::zeros(dev, "rmsnorm.rstd", &[rows], DType::F32);
    match dev {
        Device::Cpu(_) => cpu_forward(x.host_f32(OP)?, w.host_f32(OP)?, eps, y.host_f32_mut(OP)?, rstd.host_f32_mut(OP)?, c),
        Device::Gpu(g) => {
            let params = Params { rows: rows as u32, c: c as u32, eps, accumulate: 0 };
            let bufs = [x.bind(OP)?, w.bind(OP)?, y.bind(OP)?, rstd.bind(OP)?];
            FORWARD.dispatch(g, &[("WG", WG)], &params, bufs, groups(g, rows, 1))?;
        }
    }
    Ok((y, rstd))
}

/// Gradients (dx [rows, C], dw [C]) given forward's x, w, rstd and upstream dy.
pub fn backward(dev: &Device, x: &Tensor, w: &Tensor, rstd: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let dx = backward_dx(dev, x, w, rstd, dy)?;
    let c = w.numel();
    let mut dw = Tensor::zeros(dev, "rmsnorm.dw", &[c], DType::F32);
    match dev {
        Device::Cpu(_) => cpu_backward_dw(x.host_f32(OP)?, rstd.host_f32(OP)?, dy.host_f32(OP)?, dw.host_f32_mut(OP)?, c),
        Device::Gpu(g) => {
            let params = Params { rows: rstd.numel() as u32, c: c as u32, eps: 0.0, accumulate: 0 };
            let bufs = [x.bind(OP)?, rstd.bind(OP)?, dy.bind(OP)?, dw.bind(OP)?];
            BACKWARD_DW.dispatch(g, &[("WG", WG)], &params, bufs, groups(g, c, WG))?;
        }
    }
    Ok((dx, dw))
}

/// dx [rows, C] alone, for a frozen w (the model's norms): `backward` without dw's pass over
/// every row.
pub fn backward_dx(dev: &Device, x: &Tensor, w: &Tensor, rstd: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let (rows, c) = dims2(x);
    check_shape(OP, w, &[c])?;
    check_shape(OP, rstd, &[rows])?;
    check_shape(OP, dy, x.shape())?;
    let mut dx = Tensor::zeros(dev, "rmsnorm.dx", x.shape(), DType::F32);
    match dev {
        Device::Cpu(_) => cpu_backward_dx(x.host_f32(OP)?, w.host_f32(OP)?, rstd.host_f32(OP)?, dy.host_f32(OP)?, dx.host_f32_mut(OP)?, c),
        Device::Gpu(g) => {
            let params = Params { rows: rows as u32, c: c as u32, eps: 0.0, accumulate: 0 };
            let bufs = [x.bind(OP)?, w.bind(OP)?, rstd.bind(OP)?, dy.bind(OP)?, dx.bind(OP)?];
            BACKWARD_DX.dispatch(g, &[("WG", WG)], &params, bufs, groups(g, rows, 1))?;
        }
    }
    Ok(dx)
}

pub fn cpu_forward(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], rstd: &mut [f32], c: usize) {
    cpu::for_each_chunk2(y, c, rstd, 1, |row, y, r| {
        let x = &x[row * c..(row + 1) * c];
        let ss: f32 = x.iter().map(|v| v * v).sum();
        r[0] = 1.0 / (ss / c as f32 + eps).sqrt();
        for ((yi, xi), wi) in y.iter_mut().zip(x).zip(w) {
            *yi = xi * r[0] * wi;
        }
    });
}

pub fn cpu_backward_dx(x: &[f32], w: &[f32], rstd: &[f32], dy: &[f32], dx: &mut [f32], c: usize) {
    // dx_j = r (w_j dy_j - x_j r² s / C), s = Σ_i dy_i w_i x_i   (dr/dx_j = -r³ x_j / C)
    cpu::for_each_chunk(dx, c, |row, dx| {
        let (x, dy, r) = (&x[row * c..(row + 1) * c], &dy[row * c..(row + 1) * c], rstd[row]);
        let s: f32 = (0..c).map(|i| dy[i] * w[i] * x[i]).sum();
        let coef = r * r * s / c as f32;
        for i in 0..c {
            dx[i] = r * (w[i] * dy[i] - x[i] * coef);
        }
    });
}

/// Adds dw_j = Σ_rows dy_j x_j r into `dw`.
pub fn cpu_backward_dw(x: &[f32], rstd: &[f32], dy: &[f32], dw: &mut [f32], c: usize) {
    for (row, r) in rstd.iter().enumerate() {
        for j in 0..c {
            dw[j] += dy[row * c + j] * x[row * c + j] * r;
        }
    }
}
