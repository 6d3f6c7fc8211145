//! Rotary position embedding, in the Hugging Face half-split layout or the interleaved layout.
//! Kernels: `shaders/rope.wgsl`. The cos/sin tables are built once on the host (in f64) by
//! `RopeTables::new`, which is also where rope scaling of the inverse frequencies belongs.

use crate::device::{cpu, Device};
use crate::error::{Error, Result};
use crate::ops::contract::{params, read, write, Binding, Entry};
use crate::ops::groups;
use crate::shaders;
use crate::tensor::{DType, Tensor};

params! {
    struct Params {
        rows: u32,
        heads: u32,
        d: u32,
        t: u32,
        offset: u32,
        interleaved: u32,
        max_pos: u32,
        sign: f32,
    }
}

const WG: u32 = 256;
const OP: &str = "rope";
const BINDINGS: [Binding; 4] = [read(1, "x"), read(2, "cos_t"), read(3, "sin_t"), write(4, "y")];
const SHARED: &[(&str, u32)] = &[("WG", WG)];

pub(crate) static FORWARD: Entry<Params, 4> = Entry::new(&shaders::ROPE, "forward", BINDINGS, SHARED);
pub(crate) static BACKWARD: Entry<Params, 4> = Entry::new(&shaders::ROPE, "backward", BINDINGS, SHARED);

/// Which elements form a rotating pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// (i, i + D/2): Hugging Face checkpoints.
    HalfSplit,
    /// (2i, 2i + 1): Meta and GGUF checkpoints.
    Interleaved,
}

/// cos/sin tables [max_pos, D/2] on a device.
#[derive(Debug)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    pub d: usize,
    pub max_pos: usize,
}

impl RopeTables {
    /// Tables for head size `d` and inverse frequencies `inv_freq` [D/2] (for plain RoPE,
    /// base^(-2i/D)).
    pub fn new(dev: &Device, inv_freq: &[f64], max_pos: usize) -> Result<Self> {
        let half = inv_freq.len();
        let mut cos = vec![0f32; max_pos * half];
        let mut sin = vec![0f32; max_pos * half];
        for pos in 0..max_pos {
            for (i, f) in inv_freq.iter().enumerate() {
                let angle = pos as f64 * f;
                cos[pos * half + i] = angle.cos() as f32;
                sin[pos * half + i] = angle.sin() as f32;
            }
        }
        Ok(RopeTables {
            cos: Tensor::from_f32(dev, "rope.cos", &[max_pos, half], &cos)?,
            sin: Tensor::from_f32(dev, "rope.sin", &[max_pos, half], &sin)?,
            d: 2 * half,
            max_pos,
        })
    }

    /// Standard inverse frequencies base^(-2i/D).
    pub fn inv_freq(d: usize, base: f64) -> Vec<f64> {
        (0..d / 2).map(|i| base.powf(-((2 * i) as f64) / d as f64)).collect()
    }
}

/// x [B*T, H, D] -> y, rotated for positions (row % T) + offset.
pub fn forward(dev: &Device, x: &Tensor, tables: &RopeTables, t: usize, offset: usize, layout: Layout) -> Result<Tensor> {
    apply(dev, x, tables, t, offset, layout, 1.0)
}

/// dy -> dx: the inverse rotation.
pub fn backward(dev: &Device, dy: &Tensor, tables: &RopeTables, t: usize, offset: usize, layout: Layout) -> Result<Tensor> {
    apply(dev, dy, tables, t, offset, layout, -1.0)
}

fn apply(dev: &Device, x: &Tensor, tab: &RopeTables, t: usize, offset: usize, layout: Layout, sign: f32) -> Result<Tensor> {
    let s = x.shape();
    if s.len() != 3 || s[2] != tab.d || t == 0 || s[0] % t != 0 {
        return Err(Error::shape(OP, format!("`{}` has shape {s:?}; expected [B*T, H, {}] with T = {t}", x.label(), tab.d)));
    }
    if offset + t > tab.max_pos {
        return Err(Error::shape(
            OP,
            format!("positions up to {} exceed the table's {} (max_position_embeddings)", offset + t, tab.max_pos),
        ));
    }
    let (rows, heads, d) = (s[0], s[1], s[2]);
    let mut y = Tensor::zeros(dev, if sign > 0.0 { "rope.y" } else { "rope.dx" }, s, DType::F32);
    match dev {
        Device::Cpu(_) => {
            cpu_apply(x.host_f32(OP)?, tab.cos.host_f32(OP)?, tab.sin.host_f32(OP)?, y.host_f32_mut(OP)?, heads, d, t, offset, layout, sign)
        }
        Device::Gpu(g) => {
            let params = Params {
                rows: rows as u32,
                heads: heads as u32,
                d: d as u32,
                t: t as u32,
                offset: offset as u32,
                interleaved: (layout == Layout::Interleaved) as u32,
                max_pos: tab.max_pos as u32,
                sign,
            };
            let entry = if sign > 0.0 { &FORWARD } else { &BACKWARD };
            let bufs = [x.bind(OP)?, tab.cos.bind(OP)?, tab.sin.bind(OP)?, y.bind(OP)?];
            entry.dispatch(g, &[("WG", WG)], &params, bufs, groups(g, rows * heads * d / 2, WG))?;
        }
    }
    Ok(y)
}

#[allow(clippy::too_many_arguments)]
pub fn cpu_apply(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    y: &mut [f32],
    heads: usize,
    d: usize,
    t: usize,
    offset: usize,
    layout: Layout,
    sign: f32,
) {
    let half = d / 2;
    cpu::for_each_chunk(y, heads * d, |row, yr| {
        let pos = row % t + offset;
        let xr = &x[row * heads * d..(row + 1) * heads * d];
        for h in 0..heads {
            for i in 0..half {
                let (c, s) = (cos[pos * half + i], sign * sin[pos * half + i]);
                let (i1, i2) = match layout {
                    Layout::HalfSplit => (h * d + i, h * d + i + half),
                    Layout::Interleaved => (h * d + 2 * i, h * d + 2 * i + 1),
                };
                let (x1, x2) = (xr[i1], xr[i2]);
                yr[i1] = x1 * c - x2 * s;
                yr[i2] = x1 * s + x2 * c;
            }
        }
    });
}
