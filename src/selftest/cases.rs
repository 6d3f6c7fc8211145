//! The selftest's cases: every op with a GPU kernel, forward and backward, each a function that
//! runs the op on a device from seeded inputs and reads its outputs back (awaiting the GPU, so the
//! same cases run natively and in the browser). Shapes are odd on purpose: not multiples of any
//! workgroup or tile size.

use super::{Case, Outputs, RunFn};
use crate::device::Device;
use crate::model::load::ggml_blocks::GgmlType;
use crate::ops::attention::{self, Dims};
use crate::ops::matmul_gguf::{self, GgufTensor};
use crate::ops::quant_nf4::{self, Nf4Tensor};
use crate::ops::rope::{self, Layout, RopeTables};
use crate::ops::spectral::{self, Spectral};
use crate::ops::{cross_entropy, elementwise, embedding, matmul, matmul_nf4, optim, rmsnorm, swiglu};
use crate::quant::nf4;
use crate::tensor::HostData;
use crate::{Result, Tensor};

/// Seeded uniform values in [-scale, scale).
fn vals(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut r = crate::rng::Rng::new(seed);
    (0..n).map(|_| ((r.uniform() * 2.0 - 1.0) as f32) * scale).collect()
}

fn up(dev: &Device, shape: &[usize], data: &[f32]) -> Result<Tensor> {
    Tensor::from_f32(dev, "selftest input", shape, data)
}

async fn read(dev: &Device, t: &Tensor) -> Result<Vec<f64>> {
    Ok(match t.to_host(dev).await? {
        HostData::F32(v) => v.into_iter().map(f64::from).collect(),
        HostData::U32(v) => v.into_iter().map(f64::from).collect(),
        HostData::U8(v) => v.into_iter().map(f64::from).collect(),
    })
}

const MM: [(usize, usize, usize); 2] = [(67, 45, 131), (1, 77, 33)];

fn mm_inputs(m: usize, n: usize, k: usize, ta: bool, tb: bool) -> ([usize; 2], [usize; 2], Vec<f32>, Vec<f32>, Vec<f32>) {
    let ash = if ta { [k, m] } else { [m, k] };
    let bsh = if tb { [n, k] } else { [k, n] };
    (ash, bsh, vals(1, m * k, 1.0), vals(2, k * n, 1.0), vals(3, m * n, 1.0))
}

const LAYOUTS: [(bool, bool); 3] = [(false, false), (false, true), (true, false)];

async fn matmul_forward(dev: &Device) -> Result<Outputs> {
    let mut out = vec![];
    for (m, n, k) in MM {
        for (ta, tb) in LAYOUTS {
            let (ash, bsh, a, b, _) = mm_inputs(m, n, k, ta, tb);
            out.push(("c", read(dev, &matmul::forward(dev, &up(dev, &ash, &a)?, &up(dev, &bsh, &b)?, ta, tb)?).await?));
        }
    }
    Ok(out)
}

async fn matmul_backward(dev: &Device) -> Result<Outputs> {
    let mut out = vec![];
    for (m, n, k) in MM {
        for (ta, tb) in LAYOUTS {
            let (ash, bsh, a, b, dc) = mm_inputs(m, n, k, ta, tb);
            let (da, db) = matmul::backward(dev, &up(dev, &ash, &a)?, &up(dev, &bsh, &b)?, ta, tb, &up(dev, &[m, n], &dc)?)?;
            out.push(("da", read(dev, &da).await?));
            out.push(("db", read(dev, &db).await?));
        }
    }
    Ok(out)
}

/// (T, N, K): the GPU's few-token path, a partial 32-token tile, and N not a multiple of 4 or 8.
const NF4: [(usize, usize, usize); 3] = [(1, 70, 192), (45, 596, 88), (19, 5, 200)];

fn nf4_weight(dev: &Device, n: usize, k: usize) -> Result<Nf4Tensor> {
    let q = nf4::quantize(&vals(11, n * k, 0.5), 64)?;
    Nf4Tensor::from_nf4(dev, "selftest weight", &q, &[n, k])
}

async fn matmul_nf4_forward(dev: &Device) -> Result<Outputs> {
    let mut out = vec![];
    for (t, n, k) in NF4 {
        out.push(("y", read(dev, &matmul_nf4::forward(dev, &up(dev, &[t, k], &vals(12, t * k, 1.0))?, &nf4_weight(dev, n, k)?)?).await?));
    }
    Ok(out)
}

async fn matmul_nf4_backward(dev: &Device) -> Result<Outputs> {
    let mut out = vec![];
    for (t, n, k) in NF4 {
        out.push((
            "dx",
            read(dev, &matmul_nf4::backward_dx(dev, &up(dev, &[t, n], &vals(13, t * n, 1.0))?, &nf4_weight(dev, n, k)?)?).await?,
        ));
    }
    Ok(out)
}

/// GGUF block types with K (a few blocks of each; the GPU kernels take rows of whole 8s, so F16's
/// K = 40 and N = 24).
const GGUF: [(GgmlType, usize); 9] = [
    (GgmlType::Q4_0, 96),
    (GgmlType::Q4_1, 160),
    (GgmlType::Q5_0, 96),
    (GgmlType::Q5_1, 64),
    (GgmlType::Q8_0, 96),
    (GgmlType::Q4_K, 512),
    (GgmlType::Q5_K, 256),
    (GgmlType::Q6_K, 512),
    (GgmlType::F16, 40),
];
const GGUF_N: usize = 24;

/// N rows of K elements of `ty` from seeded bytes, every f16 scale field set to a small finite half
/// (random bytes there would be NaN, inf or huge): all code bit patterns occur.
fn gguf_weight(dev: &Device, ty: GgmlType, n: usize, k: usize) -> Result<GgufTensor> {
    let mut r = crate::rng::Rng::new(k as u64 * 31 + n as u64);
    let (block, bytes) = ty.block();
    let mut data: Vec<u8> = (0..n * k / block * bytes).map(|_| r.next_u64() as u8).collect();
    let (fields, lo, hi): (&[usize], f32, f32) = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => (&[0], 0.002, 0.03),
        GgmlType::Q4_1 | GgmlType::Q5_1 => (&[0, 2], 0.002, 0.03),
        GgmlType::Q4_K | GgmlType::Q5_K => (&[0, 2], 1e-4, 1e-3),
        GgmlType::Q6_K => (&[208], 1e-5, 2e-4),
        _ => (&[0], 0.0, 1.0), // F16: every element is a half
    };
    for b in data.chunks_exact_mut(bytes) {
        for &at in fields {
            let v = lo + (hi - lo) * r.uniform() as f32;
            let v = if r.next_u64() & 1 == 0 { v } else { -v };
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    GgufTensor::new(dev, "selftest weight", ty, &[n, k], &data)
}

/// The f32-activation product (training's, and the GPU's): one token (the few-token kernel) and
/// 19 (the many-token one, a partial tile).
async fn matmul_gguf_forward(dev: &Device) -> Result<Outputs> {
    let mut out = vec![];
    for (ty, k) in GGUF {
        let w = gguf_weight(dev, ty, GGUF_N, k)?;
        for t in [1, 19] {
            out.push(("y", read(dev, &matmul_gguf::forward(dev, &up(dev, &[t, k], &vals(41, t * k, 1.0))?, &w)?).await?));
        }
    }
    Ok(out)
}

async fn matmul_gguf_backward(dev: &Device) -> Result<Outputs> {
    let mut out = vec![];
    for (ty, k) in GGUF {
        let w = gguf_weight(dev, ty, GGUF_N, k)?;
        for t in [1, 19] {
            out.push(("dx", read(dev, &matmul_gguf::backward_dx(dev, &up(dev, &[t, GGUF_N], &vals(42, t * GGUF_N, 1.0))?, &w)?).await?));
        }
    }
    Ok(out)
}

/// Rows of the table by id, an id past its end giving a zero row.
async fn matmul_gguf_gather(dev: &Device) -> Result<Outputs> {
    let mut out = vec![];
    for (ty, k) in GGUF {
        let w = gguf_weight(dev, ty, GGUF_N, k)?;
        let ids = Tensor::from_u32_vec(dev, "selftest ids", &[5], vec![3, 0, 23, 3, 24])?;
        out.push(("rows", read(dev, &matmul_gguf::gather(dev, &ids, &w)?).await?));
    }
    Ok(out)
}

async fn quant_nf4_quantize(dev: &Device) -> Result<Outputs> {
    let n = 64 * 37 + 13; // a partial last block
    let q = quant_nf4::quantize(dev, &up(dev, &[n], &vals(14, n, 2.0))?, 64)?;
    Ok(vec![("packed", read(dev, &q.packed).await?), ("absmax", read(dev, &q.absmax).await?)])
}

async fn quant_nf4_dequantize(dev: &Device) -> Result<Outputs> {
    let n = 64 * 37 + 13;
    let q = nf4::quantize(&vals(15, n, 2.0), 64)?;
    let t = Nf4Tensor::from_nf4(dev, "selftest weight", &q, &[n])?;
    Ok(vec![("w", read(dev, &quant_nf4::dequantize(dev, &t)?).await?)])
}

const RMS: [(usize, usize); 2] = [(7, 576), (300, 33)];

async fn rmsnorm_forward(dev: &Device) -> Result<Outputs> {
    let mut out = vec![];
    for (rows, c) in RMS {
        let (y, rstd) = rmsnorm::forward(dev, &up(dev, &[rows, c], &vals(16, rows * c, 2.0))?, &up(dev, &[c], &vals(17, c, 1.0))?, 1e-5)?;
        out.extend([("y", read(dev, &y).await?), ("rstd", read(dev, &rstd).await?)]);
    }
    Ok(out)
}

async fn rmsnorm_backward(dev: &Device) -> Result<Outputs> {
    let mut out = vec![];
    for (rows, c) in RMS {
        let (x, w) = (up(dev, &[rows, c], &vals(16, rows * c, 2.0))?, up(dev, &[c], &vals(17, c, 1.0))?);
        let (_, rstd) = rmsnorm::forward(dev, &x, &w, 1e-5)?;
        let (dx, dw) = rmsnorm::backward(dev, &x, &w, &rstd, &up(dev, &[rows, c], &vals(18, rows * c, 1.0))?)?;
        out.extend([("dx", read(dev, &dx).await?), ("dw", read(dev, &dw).await?)]);
    }
    Ok(out)
}

async fn rope_run(dev: &Device, backward: bool) -> Result<Outputs> {
    let (b, t, h, d) = (3, 17, 5, 64);
    let tab = RopeTables::new(dev, &RopeTables::inv_freq(d, 10000.0), 64)?;
    let x = up(dev, &[b * t, h, d], &vals(19, b * t * h * d, 1.0))?;
    let mut out = vec![];
    for layout in [Layout::HalfSplit, Layout::Interleaved] {
        let y = if backward { rope::backward(dev, &x, &tab, t, 7, layout)? } else { rope::forward(dev, &x, &tab, t, 7, layout)? };
        out.push((if backward { "dx" } else { "y" }, read(dev, &y).await?));
    }
    Ok(out)
}

const ATT: [Dims; 2] = [
    Dims { b: 2, t: 13, s: 13, h: 9, kv: 3, d: 64, scale: 0.125, s_cap: 13 },
    Dims { b: 2, t: 3, s: 10, h: 6, kv: 2, d: 16, scale: 0.25, s_cap: 17 },
];

async fn attention_run(dev: &Device, backward: bool) -> Result<Outputs> {
    let mut out = vec![];
    for dm in ATT {
        let (qs, ks) = ([dm.b * dm.t, dm.h * dm.d], [dm.b * dm.s_cap, dm.kv * dm.d]);
        let q = up(dev, &qs, &vals(20, qs[0] * qs[1], 1.0))?;
        let k = up(dev, &ks, &vals(21, ks[0] * ks[1], 1.0))?;
        let v = up(dev, &ks, &vals(22, ks[0] * ks[1], 1.0))?;
        let (o, lse) = attention::forward(dev, &q, &k, &v, dm)?;
        if backward {
            let (dq, dk, dv) = attention::backward(dev, &q, &k, &v, &o, &lse, &up(dev, &qs, &vals(23, qs[0] * qs[1], 1.0))?, dm)?;
            out.extend([("dq", read(dev, &dq).await?), ("dk", read(dev, &dk).await?), ("dv", read(dev, &dv).await?)]);
        } else {
            out.extend([("o", read(dev, &o).await?), ("lse", read(dev, &lse).await?)]);
        }
    }
    Ok(out)
}

async fn swiglu_run(dev: &Device, backward: bool) -> Result<Outputs> {
    let (r, c) = (5, 1537);
    let (g, u) = (up(dev, &[r, c], &vals(24, r * c, 6.0))?, up(dev, &[r, c], &vals(25, r * c, 2.0))?);
    if backward {
        let (dg, du) = swiglu::backward(dev, &g, &u, &up(dev, &[r, c], &vals(26, r * c, 1.0))?)?;
        Ok(vec![("dg", read(dev, &dg).await?), ("du", read(dev, &du).await?)])
    } else {
        Ok(vec![("h", read(dev, &swiglu::forward(dev, &g, &u)?).await?)])
    }
}

async fn embedding_run(dev: &Device, backward: bool) -> Result<Outputs> {
    let (v, c, t) = (1001, 67, 130);
    let mut ids: Vec<u32> = vals(27, t, 1.0).iter().map(|x| ((x + 1.0) * 500.0) as u32 % v as u32).collect();
    ids[3] = ids[7]; // repeated ids sum in backward
    ids[5] = v as u32 + 4; // out of range: a zero row
    let idt = Tensor::from_u32(dev, "selftest ids", &[t], &ids)?;
    if backward {
        Ok(vec![("dtable", read(dev, &embedding::backward(dev, &idt, v, &up(dev, &[t, c], &vals(28, t * c, 1.0))?)?).await?)])
    } else {
        Ok(vec![("y", read(dev, &embedding::forward(dev, &idt, &up(dev, &[v, c], &vals(29, v * c, 1.0))?)?).await?)])
    }
}

async fn cross_entropy_run(dev: &Device, backward: bool) -> Result<Outputs> {
    let (n, v) = (5, 4099);
    let logits = up(dev, &[n, v], &vals(30, n * v, 8.0))?;
    let targets = Tensor::from_u32(dev, "selftest targets", &[n], &[0, 4098, cross_entropy::IGNORE, 1234, 7])?;
    let (loss, lse) = cross_entropy::forward(dev, &logits, &targets)?;
    if backward {
        Ok(vec![("dlogits", read(dev, &cross_entropy::backward(dev, &logits, &targets, &lse, 0.25)?).await?)])
    } else {
        Ok(vec![("loss", read(dev, &loss).await?), ("lse", read(dev, &lse).await?)])
    }
}

async fn elementwise_forward(dev: &Device) -> Result<Outputs> {
    let n = 70_001;
    let (a, b) = (up(dev, &[n], &vals(31, n, 1.0))?, up(dev, &[n], &vals(32, n, 1.0))?);
    let c = elementwise::add(dev, &a, &b)?;
    let s = elementwise::scale(dev, &a, 0.5)?;
    let mut acc = up(dev, &[n], &vals(32, n, 1.0))?;
    elementwise::accumulate(dev, &mut acc, &a, -3.0)?;
    let mut biased = up(dev, &[n / 7, 7], &vals(31, n / 7 * 7, 1.0))?;
    elementwise::add_bias(dev, &mut biased, &up(dev, &[7], &vals(33, 7, 1.0))?)?;
    let drop = elementwise::dropout(dev, &a, 0.3, 7)?;
    Ok(vec![
        ("add", read(dev, &c).await?),
        ("scale", read(dev, &s).await?),
        ("accumulate", read(dev, &acc).await?),
        ("add_bias", read(dev, &biased).await?),
        ("dropout", read(dev, &drop).await?),
    ])
}

async fn elementwise_backward(dev: &Device) -> Result<Outputs> {
    let n = 70_001;
    let (da, db) = elementwise::add_backward(dev, &up(dev, &[n], &vals(34, n, 1.0))?)?;
    Ok(vec![("da", read(dev, &da).await?), ("db", read(dev, &db).await?)])
}

async fn optim_adamw(dev: &Device) -> Result<Outputs> {
    let n = 1031;
    let hp = optim::AdamW { weight_decay: 0.01, ..Default::default() };
    let mut p = up(dev, &[n], &vals(35, n, 1.0))?;
    let (mut m, mut v) = (Tensor::zeros(dev, "m", &[n], crate::DType::F32), Tensor::zeros(dev, "v", &[n], crate::DType::F32));
    for step in 1..=3u32 {
        let g = up(dev, &[n], &vals(36 + step as u64, n, 1.0))?;
        optim::adamw(dev, &mut p, &g, &mut m, &mut v, &hp, 1e-2, step, &optim::control(dev, 0.7)?)?;
    }
    Ok(vec![("p", read(dev, &p).await?), ("m", read(dev, &m).await?), ("v", read(dev, &v).await?)])
}

async fn optim_sophia(dev: &Device) -> Result<Outputs> {
    let n = 1031;
    let hp = optim::Sophia::default();
    let mut p = up(dev, &[n], &vals(40, n, 1.0))?;
    let mut m = Tensor::zeros(dev, "m", &[n], crate::DType::F32);
    let mut h = up(dev, &[n], &vals(41, n, 0.5).iter().map(|x| x.abs()).collect::<Vec<_>>())?;
    for step in 1..=3u64 {
        optim::sophia_hessian(dev, &mut h, &up(dev, &[n], &vals(42 + step, n, 1.0))?, hp.beta2, 2.0)?;
        optim::sophia(dev, &mut p, &up(dev, &[n], &vals(46 + step, n, 1.0))?, &mut m, &h, &hp, 1e-2, &optim::control(dev, 0.9)?)?;
    }
    Ok(vec![("p", read(dev, &p).await?), ("m", read(dev, &m).await?), ("h", read(dev, &h).await?)])
}

async fn optim_sum_squares(dev: &Device) -> Result<Outputs> {
    let (a, b) = (up(dev, &[7, 131], &vals(50, 917, 1.0))?, up(dev, &[70_001], &vals(51, 70_001, 1.0))?);
    Ok(vec![("sum", read(dev, &optim::sum_squares(dev, &[&a, &b])?).await?)])
}

async fn optim_step_stats(dev: &Device) -> Result<Outputs> {
    let one = |x: f32| up(dev, &[1], &[x]);
    let mut control = optim::control(dev, 1.0)?;
    let mut log = Tensor::zeros(dev, "log", &[2, 4], crate::DType::F32);
    optim::step_stats(dev, &one(6.0)?, 0.25, &one(25.0)?, &one(3.0)?, 0.5, 2.0, &mut control, &mut log, 0)?;
    let clipped = read(dev, &control).await?;
    let n = 1031;
    let mut p = up(dev, &[n], &vals(53, n, 1.0))?;
    let (mut m, mut v) = (Tensor::zeros(dev, "m", &[n], crate::DType::F32), Tensor::zeros(dev, "v", &[n], crate::DType::F32));
    optim::adamw(dev, &mut p, &up(dev, &[n], &vals(54, n, 1.0))?, &mut m, &mut v, &optim::AdamW::default(), 1e-2, 1, &control)?;
    // A non-finite step stops the next update.
    optim::step_stats(dev, &one(f32::INFINITY)?, 1.0, &one(1.0)?, &one(0.0)?, 0.0, 2.0, &mut control, &mut log, 1)?;
    optim::adamw(dev, &mut p, &up(dev, &[n], &vals(55, n, 1.0))?, &mut m, &mut v, &optim::AdamW::default(), 1e-2, 2, &control)?;
    Ok(vec![("control", clipped), ("log", read(dev, &log).await?), ("p", read(dev, &p).await?), ("m", read(dev, &m).await?)])
}

async fn optim_sample_labels(dev: &Device) -> Result<Outputs> {
    let (rows, v) = (37, 1001);
    let targets: Vec<u32> = (0..rows).map(|r| if r % 5 == 2 { cross_entropy::IGNORE } else { r as u32 }).collect();
    let logits = up(dev, &[rows, v], &vals(52, rows * v, 4.0))?;
    let t = Tensor::from_u32(dev, "selftest targets", &[rows], &targets)?;
    Ok(vec![("labels", read(dev, &optim::sample_labels(dev, &logits, &t, 12345)?).await?)])
}

async fn spectral_run(dev: &Device, backward: bool) -> Result<Outputs> {
    let mut out = vec![];
    let coef = 0.02 / 180.0;
    // 4608 = 8·8·8·9 (the radix path), 4099 prime (Bluestein), 8x576 per row.
    for (shape, per_row) in [(vec![4608], false), (vec![4099], false), (vec![8, 576], true)] {
        let sp = Spectral { per_row, ..Spectral::default() };
        let n: usize = shape.iter().product();
        let w = up(dev, &shape, &vals(53, n, 0.05))?;
        let mut g = up(dev, &shape, &vec![0.0; n])?;
        let p = spectral::penalty(dev, &w, if backward { Some(&mut g) } else { None }, coef, &sp)?;
        out.push(if backward { ("grad", read(dev, &g).await?) } else { ("penalty", read(dev, &p).await?) });
    }
    Ok(out)
}

/// Every op with a GPU kernel, each direction a row, named `<ops file>.<direction>`.
pub fn cases() -> Vec<Case> {
    fn c(op: &'static str, atol: f64, rtol: f64, run: RunFn) -> Case {
        Case { op, atol, rtol, atol_of_max: false, run }
    }
    vec![
        c("matmul.forward", 1e-4, 1e-4, |d| Box::pin(matmul_forward(d))),
        c("matmul.backward", 1e-4, 1e-4, |d| Box::pin(matmul_backward(d))),
        c("matmul_nf4.forward", 1e-4, 1e-4, |d| Box::pin(matmul_nf4_forward(d))),
        c("matmul_nf4.backward_dx", 1e-4, 1e-4, |d| Box::pin(matmul_nf4_backward(d))),
        c("matmul_gguf.forward", 1e-4, 1e-4, |d| Box::pin(matmul_gguf_forward(d))),
        c("matmul_gguf.backward_dx", 1e-4, 1e-4, |d| Box::pin(matmul_gguf_backward(d))),
        c("matmul_gguf.gather", 0.0, 0.0, |d| Box::pin(matmul_gguf_gather(d))),
        c("quant_nf4.quantize", 0.0, 0.0, |d| Box::pin(quant_nf4_quantize(d))),
        c("quant_nf4.dequantize", 0.0, 0.0, |d| Box::pin(quant_nf4_dequantize(d))),
        c("rmsnorm.forward", 1e-5, 1e-4, |d| Box::pin(rmsnorm_forward(d))),
        c("rmsnorm.backward", 1e-5, 1e-4, |d| Box::pin(rmsnorm_backward(d))),
        c("rope.forward", 1e-5, 1e-5, |d| Box::pin(rope_run(d, false))),
        c("rope.backward", 1e-5, 1e-5, |d| Box::pin(rope_run(d, true))),
        c("attention.forward", 1e-5, 1e-4, |d| Box::pin(attention_run(d, false))),
        c("attention.backward", 1e-5, 1e-4, |d| Box::pin(attention_run(d, true))),
        c("swiglu.forward", 1e-5, 1e-4, |d| Box::pin(swiglu_run(d, false))),
        c("swiglu.backward", 1e-5, 1e-4, |d| Box::pin(swiglu_run(d, true))),
        c("embedding.forward", 1e-6, 1e-5, |d| Box::pin(embedding_run(d, false))),
        c("embedding.backward", 1e-6, 1e-5, |d| Box::pin(embedding_run(d, true))),
        c("cross_entropy.forward", 1e-5, 1e-4, |d| Box::pin(cross_entropy_run(d, false))),
        c("cross_entropy.backward", 1e-5, 1e-4, |d| Box::pin(cross_entropy_run(d, true))),
        c("elementwise.forward", 1e-6, 1e-6, |d| Box::pin(elementwise_forward(d))),
        c("elementwise.backward", 0.0, 0.0, |d| Box::pin(elementwise_backward(d))),
        c("optim.adamw", 1e-6, 1e-5, |d| Box::pin(optim_adamw(d))),
        c("optim.sophia", 1e-6, 1e-5, |d| Box::pin(optim_sophia(d))),
        c("optim.sum_squares", 0.0, 1e-5, |d| Box::pin(optim_sum_squares(d))),
        c("optim.step_stats", 1e-6, 1e-5, |d| Box::pin(optim_step_stats(d))),
        c("optim.sample_labels", 0.0, 0.0, |d| Box::pin(optim_sample_labels(d))),
        c("spectral.forward", 0.0, 1e-4, |d| Box::pin(spectral_run(d, false))),
        // The gradient's entries span decades; tests/ops/spectral.rs scales atol to the largest too.
        Case { atol_of_max: true, ..c("spectral.backward", 1e-4, 1e-4, |d| Box::pin(spectral_run(d, true))) },
    ]
}
