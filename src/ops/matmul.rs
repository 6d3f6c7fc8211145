//! Matrix product, f32: c[M,N] = op(a)[M,K] · op(b)[K,N], where op transposes when asked.
//! Kernels: `shaders/matmul.wgsl`. CPU twin: `cpu::gemm` (the `gemm` crate, multi-threaded).
//!
//! Backward of c = op(a)·op(b) with upstream dc:
//!   d op(a) = dc · op(b)ᵀ   and   d op(b) = op(a)ᵀ · dc,
//! and a transposed operand receives the transpose of that. All four cases are the same strided
//! product, so there is one kernel and no transpose copies.

use crate::device::{cpu, gpu::Kernel, Device};
use crate::error::{Error, Result};
use crate::shaders;
use crate::tensor::{dims2, DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_rs: u32,
    a_cs: u32,
    b_rs: u32,
    b_cs: u32,
    accumulate: u32,
}

/// An operand viewed as a [rows, cols] matrix through strides.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub t: &'a Tensor,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// The row-major 2-D tensor `t` ([r, c]), transposed when `trans` (then [c, r]).
    fn of(t: &'a Tensor, trans: bool) -> (Self, usize, usize) {
        let (r, c) = dims2(t);
        if trans {
            (View { t, rs: 1, cs: c }, c, r)
        } else {
            (View { t, rs: c, cs: 1 }, r, c)
        }
    }
    fn t(self) -> Self {
        View { t: self.t, rs: self.cs, cs: self.rs }
    }
}

/// Which GPU kernel runs a product (see `shaders/matmul.wgsl`). `Auto` takes `Tiled` on hardware
/// GPUs and, on software adapters, `Vec4` when the layout and sizes allow it, else `Registers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Auto,
    Tiled,
    Vec4,
    Registers,
}

/// The vec4 entry point for this layout, when one exists and the sizes are multiples of 4.
fn vec4_entry(m: usize, n: usize, k: usize, a: &View, b: &View) -> Option<&'static str> {
    let row_major = |v: &View, cols: usize| v.cs == 1 && v.rs == cols;
    let col_major = |v: &View, rows: usize| v.rs == 1 && v.cs == rows;
    if row_major(a, k) && row_major(b, n) && k % 4 == 0 && n % 4 == 0 {
        Some("multiply_nn4")
    } else if row_major(a, k) && col_major(b, k) && k % 4 == 0 {
        Some("multiply_nt4")
    } else if col_major(a, m) && row_major(b, n) && m % 4 == 0 && n % 4 == 0 {
        Some("multiply_tn4")
    } else {
        None
    }
}

/// c[M,N] (+)= a·b for strided views `a` ([M,K]) and `b` ([K,N]); `c` is row-major.
pub fn gemm_into(
    dev: &Device,
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    c: &mut Tensor,
    accumulate: bool,
    variant: Variant,
) -> Result<()> {
    const OP: &str = "matmul";
    for t in [a.t, b.t] {
        t.expect(OP, DType::F32)?;
    }
    c.expect(OP, DType::F32)?;
    if c.numel() != m * n {
        return Err(Error::shape(OP, format!("output `{}` has {} elements, the product needs {m}x{n}", c.label(), c.numel())));
    }
    match dev {
        Device::Cpu(_) => {
            let (av, bv) = (a.t.host_f32(OP)?, b.t.host_f32(OP)?);
            cpu::gemm(m, n, k, av, (a.rs, a.cs), bv, (b.rs, b.cs), c.host_f32_mut(OP)?, accumulate);
            Ok(())
        }
        Device::Gpu(g) => {
            let params = Params {
                m: m as u32,
                n: n as u32,
                k: k as u32,
                a_rs: a.rs as u32,
                a_cs: a.cs as u32,
                b_rs: b.rs as u32,
                b_cs: b.cs as u32,
                accumulate: accumulate as u32,
            };
            if m == 0 || n == 0 {
                return Ok(());
            }
            let vec4 = vec4_entry(m, n, k, &a, &b);
            let variant = match variant {
                Variant::Auto if !g.is_software() => Variant::Tiled,
                Variant::Auto | Variant::Vec4 if vec4.is_some() => Variant::Vec4,
                Variant::Auto | Variant::Vec4 => Variant::Registers,
                v => v,
            };
            let bufs = [(1, a.t.bind(OP)?), (2, b.t.bind(OP)?), (3, c.bind(OP)?)];
            if variant == Variant::Tiled {
                let kernel = Kernel { shader: &shaders::MATMUL, entry: "multiply_tiled" };
                g.dispatch(kernel, &[], &params, &bufs, [n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1])
            } else if let (Variant::Vec4, Some(entry)) = (variant, vec4) {
                // 8 rows per workgroup, LX invocations of 4 columns each.
                let lx = 64u32;
                let groups = [m.div_ceil(8) as u32, n.div_ceil(lx as usize * 4) as u32, 1];
                g.dispatch(Kernel { shader: &shaders::MATMUL, entry }, &[("LX", lx)], &params, &bufs, groups)
            } else {
                let (rx, ry) = (16u32, 8u32);
                let groups = [n.div_ceil(rx as usize * 4) as u32, m.div_ceil(ry as usize * 4) as u32, 1];
                let kernel = Kernel { shader: &shaders::MATMUL, entry: "multiply_registers" };
                g.dispatch(kernel, &[("RX", rx), ("RY", ry)], &params, &bufs, groups)
            }
        }
    }
}

/// c = op(a) · op(b). `a` is [M,K] ([K,M] when `ta`), `b` is [K,N] ([N,K] when `tb`); c is [M,N].
pub fn forward(dev: &Device, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    let (av, m, k) = View::of(a, ta);
    let (bv, k2, n) = View::of(b, tb);
    if k != k2 {
        return Err(Error::shape(
            "matmul",
            format!(
                "inner sizes differ: `{}` {:?} (transposed: {ta}) and `{}` {:?} (transposed: {tb})",
                a.label(),
                a.shape(),
                b.label(),
                b.shape()
            ),
        ));
    }
    let mut c = Tensor::zeros(dev, "matmul.c", &[m, n], DType::F32);
    gemm_into(dev, m, n, k, av, bv, &mut c, false, Variant::Auto)?;
    Ok(c)
}

/// Gradients (da, db) of c = op(a)·op(b), each shaped like its operand.
pub fn backward(dev: &Device, a: &Tensor, b: &Tensor, ta: bool, tb: bool, dc: &Tensor) -> Result<(Tensor, Tensor)> {
    let (av, m, k) = View::of(a, ta);
    let (bv, _, n) = View::of(b, tb);
    crate::tensor::check_shape("matmul.backward", dc, &[m, n])?;
    let dcv = View { t: dc, rs: n, cs: 1 };
    let mut da = Tensor::zeros(dev, "matmul.da", a.shape(), DType::F32);
    let mut db = Tensor::zeros(dev, "matmul.db", b.shape(), DType::F32);
    // d op(a) = dc · op(b)ᵀ  [M,K]; stored transposed ([K,M] = op(b) · dcᵀ) when `ta`.
    if ta {
        gemm_into(dev, k, m, n, bv, dcv.t(), &mut da, false, Variant::Auto)?;
    } else {
        gemm_into(dev, m, k, n, dcv, bv.t(), &mut da, false, Variant::Auto)?;
    }
    // d op(b) = op(a)ᵀ · dc  [K,N]; stored transposed ([N,K] = dcᵀ · op(a)) when `tb`.
    if tb {
        gemm_into(dev, n, k, m, dcv.t(), av, &mut db, false, Variant::Auto)?;
    } else {
        gemm_into(dev, k, n, m, av.t(), dcv, &mut db, false, Variant::Auto)?;
    }
    Ok((da, db))
}
