//! Matrix product, f32: c[M,N] = op(a)[M,K] · op(b)[K,N], where op transposes when asked.
//! Kernels: `shaders/matmul.wgsl`. CPU twin: `cpu::gemm` (the `gemm` crate, multi-threaded).
//!
//! Backward of c = op(a)·op(b) with upstream dc:
//!   d op(a) = dc · op(b)ᵀ   and   d op(b) = op(a)ᵀ · dc,
//! and a transposed operand receives the transpose of that. All four cases are the same strided
//! product, so there is one kernel and no transpose copies.

use crate::device::{cpu, Device};
use crate::error::{Error, Result};
use crate::ops::contract::{params, read, write, Binding, Entry};
use crate::shaders;
use crate::tensor::{dims2, DType, Tensor};

params! {
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
}

/// `multiply_tiled`: output tile edge.
const TILE: u32 = 64;
/// Vec4 kernels: output rows per workgroup, and invocations per workgroup (4 columns each).
const UM: u32 = 8;
const LX: u32 = 64;
/// `multiply_registers`: workgroup (RX, RY), each invocation TM rows x TN columns.
const RX: u32 = 16;
const RY: u32 = 8;
const TM: u32 = 4;
const TN: u32 = 4;

const SCALAR: [Binding; 3] = [read(1, "a"), read(2, "b"), write(3, "c")];
const VEC4: [Binding; 3] = [read(1, "a4"), read(2, "b4"), write(3, "c")];
const VEC4_SHARED: &[(&str, u32)] = &[("UM", UM), ("LX", LX)];
pub(crate) static TILED: Entry<Params, 3> = Entry::new(&shaders::MATMUL, "multiply_tiled", SCALAR, &[("TILE", TILE)]);
pub(crate) static NN4: Entry<Params, 3> = Entry::new(&shaders::MATMUL, "multiply_nn4", VEC4, VEC4_SHARED);
pub(crate) static NT4: Entry<Params, 3> = Entry::new(&shaders::MATMUL, "multiply_nt4", VEC4, VEC4_SHARED);
pub(crate) static TN4: Entry<Params, 3> = Entry::new(&shaders::MATMUL, "multiply_tn4", VEC4, VEC4_SHARED);
pub(crate) static REGISTERS: Entry<Params, 3> =
    Entry::new(&shaders::MATMUL, "multiply_registers", SCALAR, &[("RX", RX), ("RY", RY), ("TM", TM), ("TN", TN)]);

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

/// Which kernel runs a product (GPU: see `shaders/matmul.wgsl`). `Auto` takes `Tiled` on hardware
/// GPUs and, on software adapters, `Vec4` when the layout and sizes allow it, else `Registers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Auto,
    Tiled,
    Vec4,
    Registers,
    /// Every row of c computed alone, the same bits whatever M is (`cpu::gemm_rows`; a's rows and
    /// b's columns contiguous along K); on a GPU, `Auto`. For inference products whose rows are
    /// the sequences sharing a decode step, so that batching does not change a sequence.
    Rows,
}

/// The vec4 entry point for this layout, when one exists and the sizes are multiples of 4.
fn vec4_entry(m: usize, n: usize, k: usize, a: &View, b: &View) -> Option<&'static Entry<Params, 3>> {
    let row_major = |v: &View, cols: usize| v.cs == 1 && v.rs == cols;
    let col_major = |v: &View, rows: usize| v.rs == 1 && v.cs == rows;
    if row_major(a, k) && row_major(b, n) && k % 4 == 0 && n % 4 == 0 {
        Some(&NN4)
    } else if row_major(a, k) && col_major(b, k) && k % 4 == 0 {
        Some(&NT4)
    } else if col_major(a, m) && row_major(b, n) && m % 4 == 0 && n % 4 == 0 {
        Some(&TN4)
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
            if variant == Variant::Rows {
                cpu::gemm_rows(m, n, k, av, (a.rs, a.cs), bv, (b.rs, b.cs), c.host_f32_mut(OP)?, accumulate);
            } else {
                cpu::gemm(m, n, k, av, (a.rs, a.cs), bv, (b.rs, b.cs), c.host_f32_mut(OP)?, accumulate);
            }
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
                Variant::Auto | Variant::Rows if !g.is_software() => Variant::Tiled,
                Variant::Auto | Variant::Rows | Variant::Vec4 if vec4.is_some() => Variant::Vec4,
                Variant::Auto | Variant::Rows | Variant::Vec4 => Variant::Registers,
                v => v,
            };
            let bufs = [a.t.bind(OP)?, b.t.bind(OP)?, c.bind(OP)?];
            let (m, n) = (m as u32, n as u32);
            if variant == Variant::Tiled {
                TILED.dispatch(g, &[], &params, bufs, [n.div_ceil(TILE), m.div_ceil(TILE), 1])
            } else if let (Variant::Vec4, Some(entry)) = (variant, vec4) {
                // UM rows per workgroup, LX invocations of 4 columns each.
                entry.dispatch(g, &[("LX", LX)], &params, bufs, [m.div_ceil(UM), n.div_ceil(LX * 4), 1])
            } else {
                let groups = [n.div_ceil(RX * TN), m.div_ceil(RY * TM), 1];
                REGISTERS.dispatch(g, &[("RX", RX), ("RY", RY)], &params, bufs, groups)
            }
        }
    }
}

/// c = x · Wᵀ (x [M,K], W [N,K]) with each row of c the same bits whatever M is, on the CPU
/// ([`Variant::Rows`]); on a GPU this is `forward(x, W, false, true)`.
pub fn forward_rows(dev: &Device, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    product(dev, x, w, false, true, Variant::Rows)
}

/// c = op(a) · op(b). `a` is [M,K] ([K,M] when `ta`), `b` is [K,N] ([N,K] when `tb`); c is [M,N].
pub fn forward(dev: &Device, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    product(dev, a, b, ta, tb, Variant::Auto)
}

fn product(dev: &Device, a: &Tensor, b: &Tensor, ta: bool, tb: bool, variant: Variant) -> Result<Tensor> {
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
    gemm_into(dev, m, n, k, av, bv, &mut c, false, variant)?;
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
