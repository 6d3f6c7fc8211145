//! The FLeX spectral penalty on a LoRA matrix and its gradient. Kernels: `shaders/spectral.wgsl`;
//! CPU twin: `rustfft`. The op owns its FFT (plans, twiddles, scratch); it never reads results back.
//!
//! Definition. For W [R, C] flattened row-major into x (length N = R·C), or with `per_row` for each
//! row separately (N = C, summed over rows):
//!   X_k = Σ_j x_j e^{-2πi jk/N} (unnormalized, as `torch.fft.rfft`), n = N/2 + 1 bins k = 0..n-1,
//!   ρ_k = 1 - [φ_low + (φ_high - φ_low)·min(1, k/(n·T))],   P(W) = Σ_{k<n} ρ_k |X_k|².
//! Defaults T = 0.5, φ_low = 1, φ_high = 0.1: ρ rises from 0 at DC to 0.9 at k ≥ n·T.
//! The sum is the half spectrum exactly as written: bins 0 < k < N/2 are not doubled.
//!
//! Gradient. ∂X_k/∂x_j = e^{-2πi jk/N}, so ∂|X_k|²/∂x_j = 2 Re(conj(X_k) e^{-2πi jk/N}) and
//!   ∂P/∂x_j = 2 Re Σ_{k<n} ρ_k conj(X_k) e^{-2πi jk/N} = 2 Re DFT_N(Y)_j,
//!   Y_k = ρ_k conj(X_k) for k < n, 0 for n ≤ k < N,
//! which equals 2 Re Σ_{k<n} ρ_k X_k e^{+2πi jk/N} (the real part of a conjugate). So the gradient is
//! a second *forward* DFT of length N, with the same plan as the first. (Check: N = 1 gives
//! P = ρ_0 x², ∂P/∂x = 2ρ_0 x.) The CPU twin computes exactly this.
//!
//! Equivalently, with r_k = ρ_k [k < n] and X_{N-k} = conj(X_k) for real x,
//!   ∂P/∂x_j = DFT_N(H)_j,  H_k = Y_k + conj(Y_{(N-k) mod N}) = (r_k + r_{(N-k) mod N}) conj(X_k),
//! where H is Hermitian, so DFT_N(H) is real. The GPU uses this form: it sends two real rows a, b
//! through one complex transform (z = x_a + i x_b, then X_a,k = (Z_k + conj Z_{N-k})/2 and
//! X_b,k = (Z_k - conj Z_{N-k})/(2i)), and DFT_N(H_a + i H_b) = g_a + i g_b gives both gradients:
//! half the transforms for any N, odd lengths included.
//!
//! GPU FFT. Both transforms are complex DFTs of length N, batched over pairs of rows. Lengths a
//! model produces are not powers of two
//! (SmolLM2 r=8: 4608 = 2⁹·3², 12288 = 2¹²·3; Code Llama 7B: 88064 = 2¹¹·43), so:
//! - a Stockham autosort mixed-radix FFT: radix 8/4/2 butterflies for powers of two, 9 and small
//!   primes as direct DFTs in registers (radix ≤ 16), primes up to `MAX_DIRECT_PRIME` in a generic
//!   direct-DFT stage (43 costs 43 complex products per element in one pass, cheaper than any
//!   detour); natural order in and out, no bit reversal, one dispatch per pass;
//! - Bluestein's chirp-z for lengths with a larger prime factor: X_k = c_k Σ_j (x_j c_j) conj(c_{k-j})
//!   with c_k = e^{-πi k²/N}, a circular convolution of length M = 2^⌈log₂(2N-1)⌉ done with the
//!   power-of-two FFT (inverse = conjugate, forward, conjugate).
//!
//! Both are exact algorithms (no approximation beyond f32 rounding). Twiddles, chirps and the
//! Bluestein filter are computed in f64 on the host, uploaded once and cached per (device, N, rows)
//! together with the scratch buffers. The penalty is a device reduction (per-workgroup partials, then
//! one workgroup), returned as a [1] tensor that stays on the device. On small matrices the cost is
//! per dispatch (about a dozen per call), so `penalty_batch` stacks same-shape matrices into one
//! batched transform.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use crate::device::{cpu, Device, GpuDevice};
use crate::error::{Error, Result};
use crate::ops::contract::{params, read, write, Binding, Entry};
use crate::ops::groups;
use crate::shaders;
use crate::tensor::{check_shape, dims2, DType, Tensor};

const OP: &str = "spectral";
const WG: u32 = 256;
/// Largest radix of the register stage (`MAX_R` in the shader).
const MAX_REG_RADIX: usize = 16;
/// Largest prime factor done by a direct stage; lengths with a larger one go through Bluestein.
pub const MAX_DIRECT_PRIME: usize = 64;

/// Settings of the FLeX spectral penalty (the λ weight is the caller's `coef`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spectral {
    /// T: fraction of the n half-spectrum bins over which ρ ramps from 1-φ_low to 1-φ_high.
    pub threshold: f32,
    pub phi_low: f32,
    pub phi_high: f32,
    /// Penalize each row's spectrum separately (N = C) instead of the flattened matrix.
    pub per_row: bool,
}

impl Default for Spectral {
    fn default() -> Self {
        Spectral { threshold: 0.5, phi_low: 1.0, phi_high: 0.1, per_row: false }
    }
}

impl Spectral {
    /// ρ(k) for bin k of n = N/2 + 1 bins. The ramp is taken as 1 from k ≥ n·T on (so T = 0 is a
    /// flat 1 - φ_high, not 0/0). The shader's `rho` computes the same f32 expression.
    pub fn rho(&self, k: usize, n: usize) -> f32 {
        let edge = n as f32 * self.threshold;
        let ramp = if (k as f32) < edge { k as f32 / edge } else { 1.0 };
        1.0 - (self.phi_low + (self.phi_high - self.phi_low) * ramp)
    }

    /// Rejects non-finite settings (they would turn every LoRA gradient into NaN).
    pub fn validate(&self) -> Result<()> {
        for (flag, v) in [("spectral threshold", self.threshold), ("spectral phi_low", self.phi_low), ("spectral phi_high", self.phi_high)]
        {
            if !v.is_finite() {
                return Err(Error::InvalidArgument { flag, detail: format!("{v} is not a finite number") });
            }
        }
        Ok(())
    }
}

/// Penalty of `w` as a [1] f32 tensor on the device (never read back here). When `grad` is Some,
/// adds coef · ∂P/∂W into it in place (same shape as w). The training loop calls this per LoRA
/// matrix with coef = λ / (number of matrices) and sums the returned values for logging.
pub fn penalty(dev: &Device, w: &Tensor, grad: Option<&mut Tensor>, coef: f32, sp: &Spectral) -> Result<Tensor> {
    w.expect(OP, DType::F32)?;
    if let Some(g) = &grad {
        g.expect(OP, DType::F32)?;
        check_shape(OP, g, w.shape())?;
    }
    let (rows, n) = if sp.per_row { dims2(w) } else { (1, w.numel()) };
    if rows == 0 || n == 0 {
        return Tensor::from_f32(dev, "spectral.penalty", &[1], &[0.0]);
    }
    match dev {
        Device::Cpu(_) => {
            let x = w.host_f32(OP)?;
            let grad = match grad {
                Some(g) => Some(g.host_f32_mut(OP)?),
                None => None,
            };
            let p = cpu_penalty(x, n, grad, coef, sp);
            Tensor::from_f32(dev, "spectral.penalty", &[1], &[p as f32])
        }
        Device::Gpu(g) => gpu_penalty(dev, g, w, grad, coef, sp, n, rows),
    }
}

/// The sum of `penalty` over `ws`, as one [1] tensor, with the same gradients added into `grads`
/// (paired with `ws`). Matrices of one shape are stacked and transformed as one batch, so a GPU runs
/// about a dozen dispatches per distinct shape instead of per matrix: on small LoRA matrices the
/// per-dispatch cost, not the arithmetic, is what a step pays (see `bench::flex`).
pub fn penalty_batch(dev: &Device, ws: &[&Tensor], mut grads: Option<&mut [&mut Tensor]>, coef: f32, sp: &Spectral) -> Result<Tensor> {
    if let Some(g) = &grads {
        if g.len() != ws.len() {
            return Err(Error::shape(OP, format!("{} gradients for {} matrices", g.len(), ws.len())));
        }
        for (g, w) in g.iter().zip(ws) {
            check_shape(OP, g, w.shape())?;
        }
    }
    // (rows, N) -> indices into ws, in first-seen order.
    let mut stacks: Vec<((usize, usize), Vec<usize>)> = Vec::new();
    for (i, w) in ws.iter().enumerate() {
        let key = if sp.per_row { dims2(w) } else { (1, w.numel()) };
        match stacks.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(i),
            None => stacks.push((key, vec![i])),
        }
    }
    // A stack is rows of length N: per_row over it is exactly the sum of the members' penalties.
    let stacked_sp = Spectral { per_row: true, ..*sp };
    let mut total: Option<Tensor> = None;
    // The stacked FFT scratch ([rows, L] complex) must fit one storage binding, so large stacks
    // (e.g. every 7B projection) are split.
    let chunked = stacks.into_iter().flat_map(|((rows, n), members)| {
        let cap = match dev {
            Device::Gpu(g) => {
                let fft_len = if radices(n).is_some() { n } else { (2 * n - 1).next_power_of_two() };
                (g.limits.max_storage_buffer_binding_size as usize / (8 * rows * fft_len).max(1)).max(1)
            }
            Device::Cpu(_) => usize::MAX,
        };
        members.chunks(cap).map(|c| ((rows, n), c.to_vec())).collect::<Vec<_>>()
    });
    for ((rows, n), members) in chunked {
        let len = rows * n;
        let p = if members.len() == 1 {
            let i = members[0];
            penalty(dev, ws[i], grads.as_deref_mut().map(|g| &mut *g[i]), coef, sp)?
        } else {
            let shape = [members.len() * rows, n];
            let mut w = Tensor::zeros(dev, "spectral.stacked", &shape, DType::F32);
            for (s, &i) in members.iter().enumerate() {
                w.copy_from(dev, ws[i], 0, s * len, len)?;
            }
            match grads.as_deref_mut() {
                None => penalty(dev, &w, None, coef, &stacked_sp)?,
                Some(grads) => {
                    let mut g = Tensor::zeros(dev, "spectral.stacked_grad", &shape, DType::F32);
                    for (s, &i) in members.iter().enumerate() {
                        g.copy_from(dev, grads[i], 0, s * len, len)?;
                    }
                    let p = penalty(dev, &w, Some(&mut g), coef, &stacked_sp)?;
                    for (s, &i) in members.iter().enumerate() {
                        grads[i].copy_from(dev, &g, s * len, 0, len)?;
                    }
                    p
                }
            }
        };
        total = Some(match total {
            None => p,
            Some(t) => crate::ops::elementwise::add(dev, &t, &p)?,
        });
    }
    match total {
        Some(t) => Ok(t),
        None => Tensor::from_f32(dev, "spectral.penalty", &[1], &[0.0]),
    }
}

thread_local! {
    /// rustfft caches plans (twiddles) per length inside the planner.
    static PLANNER: RefCell<FftPlanner<f32>> = RefCell::new(FftPlanner::new());
}

/// CPU twin on host data: x is rows of length `n`; returns P (summed over rows) and, when `grad`
/// is given, adds coef · ∂P/∂x into it.
pub fn cpu_penalty(x: &[f32], n: usize, grad: Option<&mut [f32]>, coef: f32, sp: &Spectral) -> f64 {
    if n == 0 || x.is_empty() {
        return 0.0;
    }
    let fft = PLANNER.with(|p| p.borrow_mut().plan_fft_forward(n));
    let rows = x.len() / n;
    let mut per_row = vec![0f64; rows];
    match grad {
        Some(g) => cpu::for_each_chunk2(g, n, &mut per_row, 1, |r, g, p| p[0] = cpu_row(&fft, &x[r * n..(r + 1) * n], Some(g), coef, sp)),
        None => cpu::for_each_chunk(&mut per_row, 1, |r, p| p[0] = cpu_row(&fft, &x[r * n..(r + 1) * n], None, coef, sp)),
    }
    per_row.iter().sum()
}

fn cpu_row(fft: &Arc<dyn Fft<f32>>, x: &[f32], grad: Option<&mut [f32]>, coef: f32, sp: &Spectral) -> f64 {
    let n = x.len();
    let n_freq = n / 2 + 1;
    let mut buf: Vec<Complex<f32>> = x.iter().map(|&v| Complex::new(v, 0.0)).collect();
    let mut scratch = vec![Complex::default(); fft.get_inplace_scratch_len()];
    fft.process_with_scratch(&mut buf, &mut scratch);
    let mut p = 0f64;
    for (k, xk) in buf.iter_mut().enumerate() {
        if k < n_freq {
            let rho = sp.rho(k, n_freq);
            p += rho as f64 * xk.norm_sqr() as f64;
            *xk = xk.conj() * rho; // Y_k (module doc)
        } else {
            *xk = Complex::default();
        }
    }
    if let Some(g) = grad {
        fft.process_with_scratch(&mut buf, &mut scratch);
        for (gj, yj) in g.iter_mut().zip(&buf) {
            *gj += 2.0 * coef * yj.re;
        }
    }
    p
}

params! {
    #[derive(Default)]
    struct Params {
        n: u32,
        len: u32,
        batch: u32,
        radix: u32,
        ns: u32,
        chirp: u32,
        n_freq: u32,
        count: u32,
        coef: f32,
        threshold: f32,
        phi_low: f32,
        phi_high: f32,
        rows: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

/// Radices of a direct Stockham FFT of length `n`, or None when a prime factor exceeds
/// `MAX_DIRECT_PRIME`. Larger radices first use fewer passes (each pass is a dispatch).
pub fn radices(n: usize) -> Option<Vec<usize>> {
    let mut f = Vec::new();
    let mut m = n;
    for r in [8, 4, 2, 9] {
        while m % r == 0 {
            f.push(r);
            m /= r;
        }
    }
    let mut q = 3;
    while q * q <= m {
        while m % q == 0 {
            f.push(q);
            m /= q;
        }
        q += 2;
    }
    if m > 1 {
        f.push(m);
    }
    f.iter().all(|&r| r <= MAX_DIRECT_PRIME).then_some(f)
}

/// Everything one (device, N, rows) needs, uploaded once.
struct Plan {
    n: usize,
    /// FFT length L: N, or M for Bluestein.
    len: usize,
    /// Complex signals per transform: ceil(rows / 2), two real rows in each.
    batch: usize,
    radices: Vec<usize>,
    /// [L] roots of unity e^{-2πi e/L}.
    roots: wgpu::Buffer,
    /// Bluestein: chirp [N] and filter [M].
    bluestein: Option<(wgpu::Buffer, wgpu::Buffer)>,
    /// Ping-pong [B/2, L] buffers, and [B/2, N] for Bluestein's spectra.
    bufs: [wgpu::Buffer; 3],
    partials: wgpu::Buffer,
}

type PlanKey = (wgpu::Device, usize, usize);

thread_local! {
    static PLANS: RefCell<HashMap<PlanKey, Rc<Plan>>> = RefCell::new(HashMap::new());
}

fn complex_bytes(v: &[Complex<f64>]) -> Vec<u8> {
    let f: Vec<f32> = v.iter().flat_map(|c| [c.re as f32, c.im as f32]).collect();
    bytemuck::cast_slice(&f).to_vec()
}

fn roots(len: usize) -> Vec<Complex<f64>> {
    (0..len).map(|e| Complex::from_polar(1.0, -2.0 * std::f64::consts::PI * e as f64 / len as f64)).collect()
}

fn plan(g: &GpuDevice, n: usize, batch: usize) -> Rc<Plan> {
    let key = (g.device.clone(), n, batch);
    if let Some(p) = PLANS.with(|m| m.borrow().get(&key).cloned()) {
        return p;
    }
    let (len, radices, bluestein) = match radices(n) {
        Some(r) => (n, r, None),
        None => {
            let m = (2 * n - 1).next_power_of_two();
            // c_k = e^{-πi k²/N}; k² mod 2N keeps the phase exact for large k.
            let chirp: Vec<Complex<f64>> = (0..n as u64)
                .map(|k| Complex::from_polar(1.0, -std::f64::consts::PI * ((k * k) % (2 * n as u64)) as f64 / n as f64))
                .collect();
            let mut filter = vec![Complex::<f64>::default(); m];
            for k in 0..n {
                filter[k] = chirp[k].conj();
                if k > 0 {
                    filter[m - k] = chirp[k].conj();
                }
            }
            FftPlanner::<f64>::new().plan_fft_forward(m).process(&mut filter);
            filter.iter_mut().for_each(|c| *c /= m as f64); // the inverse FFT's 1/M
            let b = (g.upload("spectral.chirp", &complex_bytes(&chirp)), g.upload("spectral.filter", &complex_bytes(&filter)));
            (m, radices(m).unwrap_or_default(), Some(b))
        }
    };
    let cbytes = |count: usize| (count * 8) as u64;
    let spectra = if bluestein.is_some() { batch * n } else { 1 };
    let wgs = groups(g, batch * len, WG);
    let plan = Rc::new(Plan {
        n,
        len,
        batch,
        radices,
        roots: g.upload("spectral.roots", &complex_bytes(&roots(len))),
        bluestein,
        bufs: [
            g.create_buffer("spectral.fft_a", cbytes(batch * len)),
            g.create_buffer("spectral.fft_b", cbytes(batch * len)),
            g.create_buffer("spectral.spectrum", cbytes(spectra)),
        ],
        partials: g.create_buffer("spectral.partials", (wgs[0] * wgs[1] * 4) as u64),
    });
    PLANS.with(|m| {
        let mut m = m.borrow_mut();
        // A handful of LoRA shapes per model; a long-lived process trying many shapes starts over.
        if m.len() >= 32 {
            m.clear();
        }
        m.insert(key, plan.clone());
    });
    plan
}

const SHARED: &[(&str, u32)] = &[("WG", WG)];
/// Stockham and chirp steps: table (roots, or the chirp / filter), src -> dst.
const STEP: [Binding; 3] = [read(1, "table"), read(2, "src"), write(3, "dst")];

pub(crate) static LOAD: Entry<Params, 3> =
    Entry::new(&shaders::SPECTRAL, "load", [read(1, "table"), read(2, "w_real"), write(3, "dst")], SHARED);
pub(crate) static STAGE: Entry<Params, 3> = Entry::new(&shaders::SPECTRAL, "stage", STEP, &[("WG", WG), ("MAX_R", MAX_REG_RADIX as u32)]);
pub(crate) static STAGE_LARGE: Entry<Params, 3> = Entry::new(&shaders::SPECTRAL, "stage_large", STEP, SHARED);
pub(crate) static CHIRP_MUL: Entry<Params, 3> = Entry::new(&shaders::SPECTRAL, "chirp_mul", STEP, SHARED);
pub(crate) static CHIRP_OUT: Entry<Params, 3> = Entry::new(&shaders::SPECTRAL, "chirp_out", STEP, SHARED);
pub(crate) static WEIGH: Entry<Params, 4> =
    Entry::new(&shaders::SPECTRAL, "weigh", [read(1, "table"), read(2, "src"), write(3, "dst"), write(4, "partials")], SHARED);
pub(crate) static SUM: Entry<Params, 2> = Entry::new(&shaders::SPECTRAL, "sum", [write(4, "partials"), write(5, "penalty_out")], SHARED);
pub(crate) static GRAD: Entry<Params, 2> = Entry::new(&shaders::SPECTRAL, "grad", [read(2, "src"), write(5, "grad_acc")], SHARED);

struct Run<'a> {
    g: &'a GpuDevice,
    plan: &'a Plan,
    base: Params,
}

impl Run<'_> {
    fn buf(&self, i: usize) -> (&str, &wgpu::Buffer) {
        ("spectral scratch", &self.plan.bufs[i])
    }

    /// The table binding of chirp steps (the roots when there is no Bluestein step, as a dummy).
    fn chirp(&self) -> (&str, &wgpu::Buffer) {
        ("spectral.chirp", self.plan.bluestein.as_ref().map_or(&self.plan.roots, |b| &b.0))
    }

    fn go<const N: usize>(&self, entry: &Entry<Params, N>, params: Params, bufs: [(&str, &wgpu::Buffer); N], items: usize) -> Result<()> {
        entry.dispatch(self.g, &[("WG", WG)], &params, bufs, groups(self.g, items, WG))
    }

    /// Stockham passes of length L over bufs[from] (ping-pong with the other); returns where the
    /// result is.
    fn stages(&self, mut at: usize) -> Result<usize> {
        let (len, batch) = (self.plan.len, self.plan.batch);
        let mut ns = 1;
        for &r in &self.plan.radices {
            let params = Params { radix: r as u32, ns: ns as u32, ..self.base };
            let entry = if r <= MAX_REG_RADIX { &STAGE } else { &STAGE_LARGE };
            let bufs = [("spectral.roots", &self.plan.roots), self.buf(at), self.buf(1 - at)];
            self.go(entry, params, bufs, batch * len / r)?;
            at = 1 - at;
            ns *= r;
        }
        Ok(at)
    }

    /// DFT_N of the (loaded, for Bluestein chirp-multiplied and padded) signal in bufs[from];
    /// returns the buffer holding the [B, N] spectrum.
    fn dft(&self, from: usize) -> Result<usize> {
        let at = self.stages(from)?;
        let Some((_, filter)) = &self.plan.bluestein else { return Ok(at) };
        let items = self.plan.batch * self.plan.len;
        self.go(&CHIRP_MUL, self.base, [("spectral.filter", filter), self.buf(at), self.buf(1 - at)], items)?;
        let at = self.stages(1 - at)?;
        self.go(&CHIRP_OUT, self.base, [self.chirp(), self.buf(at), self.buf(2)], self.plan.batch * self.plan.n)?;
        Ok(2)
    }
}

#[allow(clippy::too_many_arguments)]
fn gpu_penalty(
    dev: &Device,
    g: &GpuDevice,
    w: &Tensor,
    grad: Option<&mut Tensor>,
    coef: f32,
    sp: &Spectral,
    n: usize,
    batch: usize,
) -> Result<Tensor> {
    // Two real rows per complex transform (see the shader header).
    let plan = plan(g, n, batch.div_ceil(2));
    let wgs = groups(g, plan.batch * plan.len, WG);
    let base = Params {
        n: n as u32,
        len: plan.len as u32,
        batch: plan.batch as u32,
        rows: batch as u32,
        chirp: plan.bluestein.is_some() as u32,
        n_freq: (n / 2 + 1) as u32,
        count: wgs[0] * wgs[1],
        coef,
        threshold: sp.threshold,
        phi_low: sp.phi_low,
        phi_high: sp.phi_high,
        ..Params::default()
    };
    let run = Run { g, plan: &plan, base };
    let total = plan.batch * plan.len;
    run.go(&LOAD, base, [run.chirp(), w.bind(OP)?, run.buf(0)], total)?;
    let x_at = run.dft(0)?;
    // Y goes where the next transform starts: the free ping-pong buffer (bufs[0] after Bluestein).
    let y_at = if x_at == 2 { 0 } else { 1 - x_at };
    let partials = ("spectral.partials", &plan.partials);
    run.go(&WEIGH, base, [run.chirp(), run.buf(x_at), run.buf(y_at), partials], total)?;
    let out = Tensor::zeros(dev, "spectral.penalty", &[1], DType::F32);
    SUM.dispatch(g, &[("WG", WG)], &base, [partials, out.bind(OP)?], [1, 1, 1])?;
    if let Some(grad) = grad {
        let z_at = run.dft(y_at)?;
        run.go(&GRAD, base, [run.buf(z_at), grad.bind(OP)?], batch * n)?;
    }
    Ok(out)
}
