//! Causal grouped-query attention with a softmax scale, saving the log-sum-exp of each query row.
//! Kernels: `shaders/attention.wgsl` (`forward`, `backward_delta`, `backward_dq`, `backward_dkv`).
//!
//! q [B*T, H*D]; k, v [B*S_cap, K*D] whose first S ≥ T rows per batch entry are valid (S - T
//! cached positions precede the T new queries; a KV cache has room up to S_cap); query i attends
//! keys j ≤ i + S - T; head h uses kv head h / (H/K).
//! Backward, with p_ij = exp(s_ij - lse_i), delta_i = dout_i·o_i, ds_ij = p_ij (dout_i·v_j - delta_i):
//!   dq_i = scale Σ_j ds_ij k_j,  dk_j = scale Σ_i ds_ij q_i,  dv_j = Σ_i p_ij dout_i.

use crate::device::{cpu, Device};
use crate::error::{Error, Result};
use crate::ops::contract::{params, read, write, Entry};
use crate::ops::groups;
use crate::shaders;
use crate::tensor::{check_shape, DType, Tensor};

params! {
    struct Params {
        b: u32,
        t: u32,
        s: u32,
        h: u32,
        kv: u32,
        d: u32,
        scale: f32,
        s_cap: u32,
    }
}

const WG: u32 = 64;
const OP: &str = "attention";
/// Largest head size the kernels hold in registers (`D_MAX` in the shader).
pub const D_MAX: usize = 256;

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dims {
    pub b: usize,
    pub t: usize,
    pub s: usize,
    pub h: usize,
    pub kv: usize,
    pub d: usize,
    pub scale: f32,
    /// Rows per batch entry in k and v (≥ S): a KV cache's capacity. Equal to S without a cache.
    pub s_cap: usize,
}

impl Dims {
    fn check(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
        let Dims { b, t, s, h, kv, d, s_cap, .. } = *self;
        if kv == 0 || h % kv != 0 || s < t || s > s_cap || d > D_MAX || d == 0 {
            return Err(Error::shape(OP, format!("invalid sizes {self:?}: need H divisible by K, T <= S <= S_cap and 0 < D <= {D_MAX}")));
        }
        check_shape(OP, q, &[b * t, h * d])?;
        check_shape(OP, k, &[b * s_cap, kv * d])?;
        check_shape(OP, v, &[b * s_cap, kv * d])
    }

    fn params(&self) -> Params {
        Params {
            b: self.b as u32,
            t: self.t as u32,
            s: self.s as u32,
            h: self.h as u32,
            kv: self.kv as u32,
            d: self.d as u32,
            scale: self.scale,
            s_cap: self.s_cap as u32,
        }
    }
}

const SHARED: &[(&str, u32)] = &[("WG", WG), ("D_MAX", D_MAX as u32)];

pub(crate) static FORWARD: Entry<Params, 5> =
    Entry::new(&shaders::ATTENTION, "forward", [read(1, "q"), read(2, "k"), read(3, "v"), write(4, "o"), write(5, "lse_out")], SHARED);
pub(crate) static BACKWARD_DELTA: Entry<Params, 3> =
    Entry::new(&shaders::ATTENTION, "backward_delta", [read(1, "o_in"), read(2, "dout_d"), write(3, "delta_out")], SHARED);
pub(crate) static BACKWARD_DQ: Entry<Params, 7> = Entry::new(
    &shaders::ATTENTION,
    "backward_dq",
    [read(1, "q"), read(2, "k"), read(3, "v"), read(4, "dout"), read(5, "lse"), read(6, "delta"), write(7, "dq")],
    SHARED,
);
pub(crate) static BACKWARD_DKV: Entry<Params, 8> = Entry::new(
    &shaders::ATTENTION,
    "backward_dkv",
    [read(1, "q"), read(2, "k"), read(3, "v"), read(4, "dout"), read(5, "lse"), read(6, "delta"), write(7, "dk"), write(8, "dv")],
    SHARED,
);

/// -> (o [B*T, H*D], lse [B, H, T]).
pub fn forward(dev: &Device, q: &Tensor, k: &Tensor, v: &Tensor, dims: Dims) -> Result<(Tensor, Tensor)> {
    dims.check(q, k, v)?;
    let Dims { b, t, h, .. } = dims;
    let mut o = Tensor::zeros(dev, "attention.o", q.shape(), DType::F32);
    let mut lse = Tensor::zeros(dev, "attention.lse", &[b, h, t], DType::F32);
    match dev {
        Device::Cpu(_) => cpu_forward(q.host_f32(OP)?, k.host_f32(OP)?, v.host_f32(OP)?, o.host_f32_mut(OP)?, lse.host_f32_mut(OP)?, dims),
        Device::Gpu(g) => {
            let bufs = [q.bind(OP)?, k.bind(OP)?, v.bind(OP)?, o.bind(OP)?, lse.bind(OP)?];
            FORWARD.dispatch(g, &[("WG", WG)], &dims.params(), bufs, groups(g, b * h * t, WG))?;
        }
    }
    Ok((o, lse))
}

/// -> (dq, dk, dv) shaped like q, k, v.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dev: &Device,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    dims: Dims,
) -> Result<(Tensor, Tensor, Tensor)> {
    dims.check(q, k, v)?;
    let Dims { b, t, h, kv, s, .. } = dims;
    check_shape(OP, o, q.shape())?;
    check_shape(OP, dout, q.shape())?;
    check_shape(OP, lse, &[b, h, t])?;
    let mut dq = Tensor::zeros(dev, "attention.dq", q.shape(), DType::F32);
    let mut dk = Tensor::zeros(dev, "attention.dk", k.shape(), DType::F32);
    let mut dv = Tensor::zeros(dev, "attention.dv", v.shape(), DType::F32);
    match dev {
        Device::Cpu(_) => {
            let (q, k, v, o, lse, dout) =
                (q.host_f32(OP)?, k.host_f32(OP)?, v.host_f32(OP)?, o.host_f32(OP)?, lse.host_f32(OP)?, dout.host_f32(OP)?);
            cpu_backward(q, k, v, o, lse, dout, dq.host_f32_mut(OP)?, dk.host_f32_mut(OP)?, dv.host_f32_mut(OP)?, dims);
        }
        Device::Gpu(g) => {
            let params = dims.params();
            let c = &[("WG", WG)];
            let delta = Tensor::zeros(dev, "attention.delta", &[b, h, t], DType::F32);
            let bufs = [o.bind(OP)?, dout.bind(OP)?, delta.bind(OP)?];
            BACKWARD_DELTA.dispatch(g, c, &params, bufs, groups(g, b * h * t, WG))?;
            let (q, k, v, dout, lse, delta) = (q.bind(OP)?, k.bind(OP)?, v.bind(OP)?, dout.bind(OP)?, lse.bind(OP)?, delta.bind(OP)?);
            BACKWARD_DQ.dispatch(g, c, &params, [q, k, v, dout, lse, delta, dq.bind(OP)?], groups(g, b * h * t, WG))?;
            let bufs = [q, k, v, dout, lse, delta, dk.bind(OP)?, dv.bind(OP)?];
            BACKWARD_DKV.dispatch(g, c, &params, bufs, groups(g, b * kv * s, WG))?;
        }
    }
    Ok((dq, dk, dv))
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn cpu_forward(q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], lse: &mut [f32], dims: Dims) {
    if dims.t >= GEMM_ROWS {
        return gemm_forward(q, k, v, o, lse, dims);
    }
    let Dims { t, s, h, kv, d, scale, s_cap, .. } = dims;
    let group = h / kv;
    // o is [B, T, H, D]; parallelize over (b, i, head), so one decoded token still uses every
    // thread. lse is [B, H, T], so tasks write it as [B, T, H] first and it is transposed after.
    let mut lse_bth = vec![0f32; lse.len()];
    cpu::for_each_chunk2(o, d, &mut lse_bth, 1, |bih, out, l| {
        let (bi, hh) = (bih / h, bih % h);
        let (b, i, g) = (bi / t, bi % t, hh / group);
        let keys = Keys { k, v, first: (b * s_cap * kv + g) * d, stride: kv * d, n: i + s - t + 1 };
        l[0] = attend_row(&q[(bi * h + hh) * d..][..d], &keys, scale, out);
    });
    for (bi, lrow) in lse_bth.chunks(h).enumerate() {
        let (b, i) = (bi / t, bi % t);
        for (hh, &x) in lrow.iter().enumerate() {
            lse[(b * h + hh) * t + i] = x;
        }
    }
}

/// The keys and values one query row sees: rows `first + j * stride` of k and v for j < n.
struct Keys<'a> {
    k: &'a [f32],
    v: &'a [f32],
    first: usize,
    stride: usize,
    n: usize,
}

impl Keys<'_> {
    fn at(&self, j: usize) -> usize {
        self.first + j * self.stride
    }
}

/// One query row `q` of one head: out = softmax(scale·q·kⱼ)·V over the keys; returns the
/// log-sum-exp. The decode step's attention, so its loops are written for speed.
fn attend_row(q: &[f32], keys: &Keys, scale: f32, out: &mut [f32]) -> f32 {
    let d = q.len();
    assert!(out.len() == d && keys.n > 0 && keys.k.len().min(keys.v.len()) >= keys.first + (keys.n - 1) * keys.stride + d);
    let mut p = vec![0f32; keys.n];
    #[cfg(target_arch = "x86_64")]
    if cpu::tier() == cpu::Tier::Avx512 && d % 16 == 0 && d <= 128 {
        // SAFETY: `tier()` only returns tiers this CPU runs; the assert bounds every row (d
        // floats of q, out and every key and value row, p one score per key).
        cpu::debug_assert_runs(cpu::Tier::Avx512);
        debug_assert!(p.len() == keys.n);
        return unsafe {
            match d / 16 {
                1 => simd::attend_row::<1>(q, keys, scale, &mut p, out),
                2 => simd::attend_row::<2>(q, keys, scale, &mut p, out),
                3 => simd::attend_row::<3>(q, keys, scale, &mut p, out),
                4 => simd::attend_row::<4>(q, keys, scale, &mut p, out),
                5 => simd::attend_row::<5>(q, keys, scale, &mut p, out),
                6 => simd::attend_row::<6>(q, keys, scale, &mut p, out),
                7 => simd::attend_row::<7>(q, keys, scale, &mut p, out),
                _ => simd::attend_row::<8>(q, keys, scale, &mut p, out),
            }
        };
    }
    for (j, pj) in p.iter_mut().enumerate() {
        *pj = scale * cpu::dot(q, &keys.k[keys.at(j)..][..d]);
    }
    let (m, sum) = softmax_numerators(&mut p);
    out.fill(0.0);
    for (j, &pj) in p.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&keys.v[keys.at(j)..][..d]) {
            *o += pj * x;
        }
    }
    out.iter_mut().for_each(|x| *x /= sum);
    m + sum.ln()
}

/// Scores -> exp(score - max) in place; returns (max, Σ exp).
fn softmax_numerators(p: &mut [f32]) -> (f32, f32) {
    let m = p.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    p.iter_mut().for_each(|x| *x = cpu::exp(*x - m)); // its own pass, so it vectorizes
    (m, cpu::sum(p))
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{softmax_numerators, Keys};
    use std::arch::x86_64::*;

    /// `attend_row` for d = 16·C: q stays in C registers, each key's score is C FMAs and one
    /// reduction (independent across keys, so they overlap), and the output accumulates in two
    /// sets of C registers (even and odd keys) so consecutive FMAs do not wait on each other.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; q and out hold 16·C floats, p one per key, and k and v every
    /// key's row of 16·C floats (`super::attend_row` asserts it).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn attend_row<const C: usize>(q: &[f32], keys: &Keys, scale: f32, p: &mut [f32], out: &mut [f32]) -> f32 {
        let qv: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(q.as_ptr().add(16 * c)));
        for (j, pj) in p.iter_mut().enumerate() {
            let kp = keys.k.as_ptr().add(keys.at(j));
            let mut a = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kp));
            for (c, qc) in qv.iter().enumerate().skip(1) {
                a = _mm512_fmadd_ps(*qc, _mm512_loadu_ps(kp.add(16 * c)), a);
            }
            *pj = scale * _mm512_reduce_add_ps(a);
        }
        let (m, sum) = softmax_numerators(p);
        let mut acc = [[_mm512_setzero_ps(); C]; 2];
        for (j, &pj) in p.iter().enumerate() {
            let (vp, w, a) = (keys.v.as_ptr().add(keys.at(j)), _mm512_set1_ps(pj), &mut acc[j % 2]);
            for (c, ac) in a.iter_mut().enumerate() {
                *ac = _mm512_fmadd_ps(w, _mm512_loadu_ps(vp.add(16 * c)), *ac);
            }
        }
        let inv = _mm512_set1_ps(1.0 / sum);
        for (c, (a0, a1)) in acc[0].iter().zip(&acc[1]).enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * c), _mm512_mul_ps(_mm512_add_ps(*a0, *a1), inv));
        }
        m + sum.ln()
    }
}

#[allow(clippy::too_many_arguments)]
pub fn cpu_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dims: Dims,
) {
    if dims.t >= GEMM_ROWS {
        return gemm_backward(q, k, v, o, lse, dout, dq, dk, dv, dims);
    }
    let Dims { b: nb, t, s, h, kv, d, scale, s_cap } = dims;
    let group = h / kv;
    let q_at = |b: usize, hh: usize, i: usize| ((b * t + i) * h + hh) * d;
    let k_at = |b: usize, g: usize, j: usize| ((b * s_cap + j) * kv + g) * d;
    let mut delta = vec![0f32; nb * h * t];
    for b in 0..nb {
        for hh in 0..h {
            for i in 0..t {
                let qo = q_at(b, hh, i);
                delta[(b * h + hh) * t + i] = dot(&dout[qo..qo + d], &o[qo..qo + d]);
            }
        }
    }
    // ds_ij for one (b, head, i, j): recomputed in both passes rather than stored (T x S each).
    let ds = |b: usize, hh: usize, i: usize, j: usize| {
        let (qo, ko, row) = (q_at(b, hh, i), k_at(b, hh / group, j), (b * h + hh) * t + i);
        let pij = (scale * dot(&q[qo..qo + d], &k[ko..ko + d]) - lse[row]).exp();
        let dp = dot(&dout[qo..qo + d], &v[ko..ko + d]);
        (pij, pij * (dp - delta[row]) * scale)
    };
    cpu::for_each_chunk(dq, h * d, |bi, row| {
        let (b, i) = (bi / t, bi % t);
        for hh in 0..h {
            for j in 0..=i + s - t {
                let (_, dsij) = ds(b, hh, i, j);
                let ko = k_at(b, hh / group, j);
                for e in 0..d {
                    row[hh * d + e] += dsij * k[ko + e];
                }
            }
        }
    });
    cpu::for_each_chunk2(dk, kv * d, dv, kv * d, |bj, dkr, dvr| {
        let (b, j) = (bj / s_cap, bj % s_cap);
        if j >= s {
            return; // capacity beyond the valid keys
        }
        let first = (j + t).saturating_sub(s);
        for g in 0..kv {
            for hh in g * group..(g + 1) * group {
                for i in first..t {
                    let (pij, dsij) = ds(b, hh, i, j);
                    let qo = q_at(b, hh, i);
                    for e in 0..d {
                        dvr[g * d + e] += pij * dout[qo + e];
                        dkr[g * d + e] += dsij * q[qo + e];
                    }
                }
            }
        }
    });
}

/// From this many queries on, the CPU twin works per head on the whole [T, S] score matrix with
/// GEMMs (prefill and training); below it (decode) it walks rows, which needs no T x S buffer.
const GEMM_ROWS: usize = 8;

/// Per (batch, head) views for the GEMM path: row strides of q/o/dout ([B*T, H*D]) and k/v
/// ([B*S_cap, K*D]) and the offsets of one head's first row.
struct HeadView {
    q_off: usize,
    k_off: usize,
    q_rs: usize,
    k_rs: usize,
}

fn head_view(dims: &Dims, b: usize, hh: usize) -> HeadView {
    let Dims { t, h, kv, d, s_cap, .. } = *dims;
    HeadView { q_off: (b * t * h + hh) * d, k_off: (b * s_cap * kv + hh / (h / kv)) * d, q_rs: h * d, k_rs: kv * d }
}

/// Query rows per block: block r only multiplies against the keys its last row can see, which
/// skips most of the masked upper triangle (T=512: 56% of the full score matrix is computed).
const ROW_BLOCK: usize = 64;

/// c (+)= a·b on the calling thread: the per-head tasks below are the parallelism. `a` and `b` are
/// bounds-checked as in `cpu::gemm_strided`.
///
/// # Safety
/// `c` must be valid for every element the product writes, and no other thread may touch them.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm1(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_s: (usize, usize),
    b: &[f32],
    b_s: (usize, usize),
    c: *mut f32,
    c_rs: usize,
    acc: bool,
) {
    let last = |(rs, cs): (usize, usize), r: usize, cc: usize| (r - 1) * rs + (cc - 1) * cs;
    assert!(m == 0 || n == 0 || k == 0 || (a.len() > last(a_s, m, k) && b.len() > last(b_s, k, n)), "attention: gemm input too small");
    cpu::gemm_ptr(m, n, k, a.as_ptr(), a_s, b.as_ptr(), b_s, c, c_rs, acc, 1)
}

/// For query rows r0..r1 and the first `n` keys (all they can see): p[i, j] = exp(scale·q_i·k_j -
/// lse_i) for visible keys j ≤ i + S - T, else 0, in `p` rows of stride S. With `lse = None` each
/// row's log-sum-exp is computed and written to `lse_out[i]`.
#[allow(clippy::too_many_arguments)]
fn probabilities(
    q: &[f32],
    k: &[f32],
    dims: &Dims,
    hv: &HeadView,
    rows: (usize, usize),
    n: usize,
    p: &mut [f32],
    lse: Option<&[f32]>,
    lse_out: &mut [f32],
) {
    let Dims { t, s, d, scale, .. } = *dims;
    let (r0, r1) = rows;
    let p = &mut p[r0 * s..r1 * s];
    // SAFETY: p holds r1 - r0 rows of stride s ≥ n and is exclusively borrowed.
    debug_assert!(n <= s && p.len() == (r1 - r0) * s);
    unsafe { gemm1(r1 - r0, n, d, &q[hv.q_off + r0 * hv.q_rs..], (hv.q_rs, 1), &k[hv.k_off..], (1, hv.k_rs), p.as_mut_ptr(), s, false) };
    for (ii, row) in p.chunks_mut(s).enumerate() {
        let i = r0 + ii;
        let last = i + s - t;
        row[last + 1..n].fill(0.0);
        let vis = &mut row[..=last];
        let l = match lse {
            Some(l) => l[i],
            None => {
                let m = vis.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) * scale;
                let sum: f32 = vis.iter().map(|&x| cpu::exp(x * scale - m)).sum();
                m + sum.ln()
            }
        };
        vis.iter_mut().for_each(|x| *x = cpu::exp(*x * scale - l));
        lse_out[i] = l;
    }
}

/// Row blocks of the T queries with the number of keys each block sees.
fn blocks(dims: &Dims) -> impl Iterator<Item = ((usize, usize), usize)> {
    let (t, s) = (dims.t, dims.s);
    (0..t.div_ceil(ROW_BLOCK)).map(move |b| {
        let (r0, r1) = (b * ROW_BLOCK, ((b + 1) * ROW_BLOCK).min(t));
        ((r0, r1), r1 + s - t)
    })
}

/// One task per (batch, head), each working through its row blocks alone: a handful of large
/// tasks instead of small parallel products and loops per block (thousands of fork-joins a step).
fn gemm_forward(q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], lse: &mut [f32], dims: Dims) {
    let Dims { t, s, h, d, .. } = dims;
    assert!(o.len() >= q.len(), "attention: output too small");
    let o_len = o.len();
    let out = cpu::SharedOut::new(o);
    // lse is [B, H, T]: one chunk per task.
    cpu::for_each_chunk(lse, t, |bh, lse_h| {
        let hv = head_view(&dims, bh / h, bh % h);
        let mut p = vec![0f32; t * s];
        for ((r0, r1), n) in blocks(&dims) {
            probabilities(q, k, &dims, &hv, (r0, r1), n, &mut p, None, lse_h);
            // SAFETY: o has q's layout; this head's columns of rows r0..r1 are written by this task only.
            debug_assert!(r1 > r0 && hv.q_off + (r1 - 1) * hv.q_rs + d <= o_len);
            unsafe {
                gemm1(r1 - r0, d, n, &p[r0 * s..], (s, 1), &v[hv.k_off..], (hv.k_rs, 1), out.at(hv.q_off + r0 * hv.q_rs), hv.q_rs, false)
            };
        }
    });
}

/// Per (batch, head) tasks as in `gemm_forward`. dQ columns belong to one head; dK and dV are
/// shared by the heads of a KV group, so each task accumulates its own [S, D] pair, added up after.
#[allow(clippy::too_many_arguments)]
fn gemm_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dims: Dims,
) {
    let Dims { b: nb, t, s, h, d, scale, .. } = dims;
    assert!(dq.len() >= q.len(), "attention: dq too small");
    let dq_len = dq.len();
    let dq_out = cpu::SharedOut::new(dq);
    let mut dkv = vec![0f32; nb * h * 2 * s * d];
    cpu::for_each_chunk(&mut dkv, 2 * s * d, |bh, dkv_h| {
        let (b, hh) = (bh / h, bh % h);
        let hv = head_view(&dims, b, hh);
        let row = (b * h + hh) * t;
        let (dk_h, dv_h) = dkv_h.split_at_mut(s * d);
        let (mut p, mut dp, mut scratch) = (vec![0f32; t * s], vec![0f32; t * s], vec![0f32; t]);
        for ((r0, r1), n) in blocks(&dims) {
            let m = r1 - r0;
            let qa = hv.q_off + r0 * hv.q_rs;
            probabilities(q, k, &dims, &hv, (r0, r1), n, &mut p, Some(&lse[row..row + t]), &mut scratch);
            let (pb, dpb) = (&mut p[r0 * s..r1 * s], &mut dp[r0 * s..r1 * s]);
            // dV += Pᵀ·dO; dP = dO·Vᵀ; dS = P ⊙ (dP - delta)·scale; dQ = dS·K; dK += dSᵀ·Q.
            // SAFETY: dk_h, dv_h, dpb are this task's own buffers ([S, D], [S, D], rows of stride S);
            // dq is written only in this head's columns of rows r0..r1.
            debug_assert!(n <= s && dv_h.len() == s * d && dk_h.len() == s * d && dpb.len() == m * s);
            unsafe {
                gemm1(n, d, m, pb, (1, s), &dout[qa..], (hv.q_rs, 1), dv_h.as_mut_ptr(), d, true);
                gemm1(m, n, d, &dout[qa..], (hv.q_rs, 1), &v[hv.k_off..], (1, hv.k_rs), dpb.as_mut_ptr(), s, false);
            }
            for (ii, (dpr, pr)) in dpb.chunks_mut(s).zip(pb.chunks(s)).enumerate() {
                let at = qa + ii * hv.q_rs;
                let delta = cpu::dot(&dout[at..at + d], &o[at..at + d]);
                dpr[..n].iter_mut().zip(&pr[..n]).for_each(|(x, &pij)| *x = pij * (*x - delta) * scale);
            }
            // SAFETY: as above: dq rows r0..r1 of this head (qa + (m-1)·q_rs + d ≤ dq's length) are
            // this task's alone, and dk_h is its own [S, D] buffer.
            debug_assert!(m > 0 && qa + (m - 1) * hv.q_rs + d <= dq_len);
            unsafe {
                gemm1(m, d, n, dpb, (s, 1), &k[hv.k_off..], (hv.k_rs, 1), dq_out.at(qa), hv.q_rs, false);
                gemm1(n, d, m, dpb, (1, s), &q[qa..], (hv.q_rs, 1), dk_h.as_mut_ptr(), d, true);
            }
        }
    });
    for (bh, dkv_h) in dkv.chunks(2 * s * d).enumerate() {
        let hv = head_view(&dims, bh / h, bh % h);
        let (dk_h, dv_h) = dkv_h.split_at(s * d);
        for j in 0..s {
            let at = hv.k_off + j * hv.k_rs;
            for (x, &y) in dk[at..at + d].iter_mut().zip(&dk_h[j * d..(j + 1) * d]) {
                *x += y;
            }
            for (x, &y) in dv[at..at + d].iter_mut().zip(&dv_h[j * d..(j + 1) * d]) {
                *x += y;
            }
        }
    }
}
