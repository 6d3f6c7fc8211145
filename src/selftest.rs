//! `flexlora selftest`: every GPU kernel, forward and backward, on each adapter of this machine,
//! against its CPU twin on seeded odd shapes; and the CPU backend's SIMD tiers against its portable
//! code. It owns the list of cases and the matrix it prints; the ops themselves live in `ops`.
//!
//! The reference is always the CPU backend on the portable tier. A case passes when every output
//! satisfies |got - want| <= atol + rtol·|want| (u32 outputs: exactly equal). An op that an adapter
//! refuses (a limit it lacks) is a failure here too: users send the matrix to say what runs where.
//! Native only: it blocks on the GPU (`device::block_on`), as the command line may.

use std::time::Instant;

use crate::device::cpu::{self as cpu_dev, Tier};
use crate::device::{self, block_on, BackendChoice, Device};
use crate::ops::attention::{self, Dims};
use crate::ops::quant_nf4::{self, Nf4Tensor};
use crate::ops::rope::{self, Layout, RopeTables};
use crate::ops::spectral::{self, Spectral};
use crate::ops::{cross_entropy, elementwise, embedding, matmul, matmul_nf4, optim, rmsnorm, swiglu};
use crate::quant::nf4;
use crate::tensor::HostData;
use crate::{Result, Tensor};

/// One op in one direction: runs on a device and returns its named outputs as f64 (f32 and u32
/// values are exact in f64).
pub struct Case {
    /// "rmsnorm.backward": the op file and the direction, as in `src/ops/<op>.rs`.
    pub op: &'static str,
    pub atol: f64,
    pub rtol: f64,
    /// `atol` is a fraction of the output's largest |value| (for outputs whose scale varies a lot).
    pub atol_of_max: bool,
    run: fn(&Device) -> Result<Outputs>,
}

type Outputs = Vec<(&'static str, Vec<f64>)>;

/// The result of one case on one device.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub op: &'static str,
    pub pass: bool,
    /// Largest |got - want| over all outputs (0 for an error).
    pub max_err: f64,
    pub secs: f64,
    /// Why it failed: the first bad output, index and values, or the op's error.
    pub detail: Option<String>,
}

/// One column of the matrix: a GPU adapter or a CPU tier.
#[derive(Debug)]
pub struct Column {
    pub label: String,
    pub outcomes: Vec<Outcome>,
    /// The adapter did not open: every op counts as failed.
    pub open_error: Option<String>,
}

impl Column {
    pub fn passed(&self) -> bool {
        self.open_error.is_none() && self.outcomes.iter().all(|o| o.pass)
    }
}

/// What to test: GPU adapters of one backend (or all), and/or the CPU tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    All,
    Gpu(BackendChoice),
    Cpu,
}

/// Runs every case on every device `target` names; `progress` receives a line per column.
pub fn run(target: Target, progress: &mut dyn FnMut(&str)) -> Vec<Column> {
    let cases = cases();
    let reference: Vec<Result<Outputs>> = cpu_dev::with_tier(Tier::Portable, || cases.iter().map(|c| (c.run)(&Device::cpu())).collect());
    let mut columns = Vec::new();
    if target != Target::Cpu {
        let backend = match target {
            Target::Gpu(b) => Some(b),
            _ => None,
        };
        for opened in block_on(None, device::open_each(backend)) {
            let label = opened.label();
            progress(&format!("testing {label}"));
            match opened.device {
                Ok(dev) => columns.push(Column { outcomes: run_cases(&cases, &reference, &dev), label, open_error: None }),
                Err(e) => columns.push(Column { label, outcomes: vec![], open_error: Some(e.to_string()) }),
            }
        }
        if let (Target::Gpu(b), true) = (target, columns.is_empty()) {
            columns.push(Column { label: format!("{b:?}"), outcomes: vec![], open_error: Some("no adapter of this backend".into()) });
        }
    }
    if matches!(target, Target::All | Target::Cpu) {
        for tier in Tier::supported().into_iter().filter(|&t| t != Tier::Portable) {
            let label = format!("CPU {tier}");
            progress(&format!("testing {label}"));
            let outcomes = cpu_dev::with_tier(tier, || run_cases(&cases, &reference, &Device::cpu()));
            columns.push(Column { label, outcomes, open_error: None });
        }
    }
    columns
}

fn run_cases(cases: &[Case], reference: &[Result<Outputs>], dev: &Device) -> Vec<Outcome> {
    cases
        .iter()
        .zip(reference)
        .map(|(case, want)| {
            let t0 = Instant::now();
            let got = (case.run)(dev);
            let secs = t0.elapsed().as_secs_f64();
            let (pass, max_err, detail) = match (got, want) {
                (Err(e), _) => (false, 0.0, Some(e.to_string())),
                (_, Err(e)) => (false, 0.0, Some(format!("the CPU reference failed: {e}"))),
                (Ok(got), Ok(want)) => compare(case, &got, want),
            };
            Outcome { op: case.op, pass, max_err, secs, detail }
        })
        .collect()
}

fn compare(case: &Case, got: &Outputs, want: &Outputs) -> (bool, f64, Option<String>) {
    let mut max_err = 0f64;
    let mut first_bad = None;
    for ((name, g), (_, w)) in got.iter().zip(want) {
        if g.len() != w.len() {
            first_bad.get_or_insert_with(|| format!("{name}: {} values, want {}", g.len(), w.len()));
            continue;
        }
        let atol = if case.atol_of_max { case.atol * w.iter().fold(0f64, |m, v| m.max(v.abs())) } else { case.atol };
        for (i, (&g, &w)) in g.iter().zip(w).enumerate() {
            let err = (g - w).abs();
            let ok =
                if w.is_finite() { err <= atol + case.rtol * w.abs() } else { g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()) };
            if err.is_finite() {
                max_err = max_err.max(err);
            }
            if !ok {
                first_bad.get_or_insert_with(|| format!("{name}[{i}]: got {g}, want {w}"));
            }
        }
    }
    (first_bad.is_none(), max_err, first_bad)
}

/// The matrix: one row per op, one column per device; "ok 3e-7 12ms" or "FAIL".
pub fn matrix(columns: &[Column]) -> String {
    let ops: Vec<&str> = cases().iter().map(|c| c.op).collect();
    let w0 = ops.iter().map(|o| o.len()).max().unwrap_or(2).max(2);
    let cw = 25;
    let mut s = String::new();
    for (i, c) in columns.iter().enumerate() {
        s += &format!("[{}] {}\n", i + 1, c.label);
        if let Some(e) = &c.open_error {
            s += &format!("    did not open: {e}\n");
        }
    }
    s += &format!("{:w0$}", "op");
    for i in 0..columns.len() {
        s += &format!(" | {:cw$}", format!("[{}] result max-error time", i + 1));
    }
    s += "\n";
    for op in &ops {
        s += &format!("{op:w0$}");
        for c in columns {
            let cell = match c.outcomes.iter().find(|o| o.op == *op) {
                Some(o) if o.pass => format!("ok {:.1e} {:.0} ms", o.max_err, o.secs * 1e3),
                Some(o) => format!("FAIL {:.1e} {:.0} ms", o.max_err, o.secs * 1e3),
                None => "FAIL (no device)".into(),
            };
            s += &format!(" | {cell:cw$}");
        }
        s += "\n";
    }
    let failures: Vec<String> = columns
        .iter()
        .flat_map(|c| {
            c.outcomes.iter().filter(|o| !o.pass).map(move |o| format!("  {} on {}: {}", o.op, c.label, o.detail.as_deref().unwrap_or("")))
        })
        .collect();
    if !failures.is_empty() {
        s += "failures:\n";
        s += &failures.join("\n");
        s += "\n";
    }
    s += "(the reference is the CPU backend's portable code; GGUF block matmuls, matmul_gguf and matmul_q8, run on the CPU only)\n";
    s
}

// ---------------------------------------------------------------------------------------------
// The cases. Shapes are odd on purpose: not multiples of any workgroup or tile size.

/// Seeded uniform values in [-scale, scale).
fn vals(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut r = crate::rng::Rng::new(seed);
    (0..n).map(|_| ((r.uniform() * 2.0 - 1.0) as f32) * scale).collect()
}

fn up(dev: &Device, shape: &[usize], data: &[f32]) -> Result<Tensor> {
    Tensor::from_f32(dev, "selftest input", shape, data)
}

fn read(dev: &Device, t: &Tensor) -> Result<Vec<f64>> {
    Ok(match block_on(Some(dev), t.to_host(dev))? {
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

fn matmul_forward(dev: &Device) -> Result<Outputs> {
    let mut out = vec![];
    for (m, n, k) in MM {
        for (ta, tb) in LAYOUTS {
            let (ash, bsh, a, b, _) = mm_inputs(m, n, k, ta, tb);
            out.push(("c", read(dev, &matmul::forward(dev, &up(dev, &ash, &a)?, &up(dev, &bsh, &b)?, ta, tb)?)?));
        }
    }
    Ok(out)
}

fn matmul_backward(dev: &Device) -> Result<Outputs> {
    let mut out = vec![];
    for (m, n, k) in MM {
        for (ta, tb) in LAYOUTS {
            let (ash, bsh, a, b, dc) = mm_inputs(m, n, k, ta, tb);
            let (da, db) = matmul::backward(dev, &up(dev, &ash, &a)?, &up(dev, &bsh, &b)?, ta, tb, &up(dev, &[m, n], &dc)?)?;
            out.push(("da", read(dev, &da)?));
            out.push(("db", read(dev, &db)?));
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

fn matmul_nf4_forward(dev: &Device) -> Result<Outputs> {
    let mut out = vec![];
    for (t, n, k) in NF4 {
        out.push(("y", read(dev, &matmul_nf4::forward(dev, &up(dev, &[t, k], &vals(12, t * k, 1.0))?, &nf4_weight(dev, n, k)?)?)?));
    }
    Ok(out)
}

fn matmul_nf4_backward(dev: &Device) -> Result<Outputs> {
    let mut out = vec![];
    for (t, n, k) in NF4 {
        out.push(("dx", read(dev, &matmul_nf4::backward_dx(dev, &up(dev, &[t, n], &vals(13, t * n, 1.0))?, &nf4_weight(dev, n, k)?)?)?));
    }
    Ok(out)
}

fn quant_nf4_quantize(dev: &Device) -> Result<Outputs> {
    let n = 64 * 37 + 13; // a partial last block
    let q = quant_nf4::quantize(dev, &up(dev, &[n], &vals(14, n, 2.0))?, 64)?;
    Ok(vec![("packed", read(dev, &q.packed)?), ("absmax", read(dev, &q.absmax)?)])
}

fn quant_nf4_dequantize(dev: &Device) -> Result<Outputs> {
    let n = 64 * 37 + 13;
    let q = nf4::quantize(&vals(15, n, 2.0), 64)?;
    let t = Nf4Tensor::from_nf4(dev, "selftest weight", &q, &[n])?;
    Ok(vec![("w", read(dev, &quant_nf4::dequantize(dev, &t)?)?)])
}

const RMS: [(usize, usize); 2] = [(7, 576), (300, 33)];

fn rmsnorm_forward(dev: &Device) -> Result<Outputs> {
    let mut out = vec![];
    for (rows, c) in RMS {
        let (y, rstd) = rmsnorm::forward(dev, &up(dev, &[rows, c], &vals(16, rows * c, 2.0))?, &up(dev, &[c], &vals(17, c, 1.0))?, 1e-5)?;
        out.extend([("y", read(dev, &y)?), ("rstd", read(dev, &rstd)?)]);
    }
    Ok(out)
}

fn rmsnorm_backward(dev: &Device) -> Result<Outputs> {
    let mut out = vec![];
    for (rows, c) in RMS {
        let (x, w) = (up(dev, &[rows, c], &vals(16, rows * c, 2.0))?, up(dev, &[c], &vals(17, c, 1.0))?);
        let (_, rstd) = rmsnorm::forward(dev, &x, &w, 1e-5)?;
        let (dx, dw) = rmsnorm::backward(dev, &x, &w, &rstd, &up(dev, &[rows, c], &vals(18, rows * c, 1.0))?)?;
        out.extend([("dx", read(dev, &dx)?), ("dw", read(dev, &dw)?)]);
    }
    Ok(out)
}

fn rope_run(dev: &Device, backward: bool) -> Result<Outputs> {
    let (b, t, h, d) = (3, 17, 5, 64);
    let tab = RopeTables::new(dev, &RopeTables::inv_freq(d, 10000.0), 64)?;
    let x = up(dev, &[b * t, h, d], &vals(19, b * t * h * d, 1.0))?;
    let mut out = vec![];
    for layout in [Layout::HalfSplit, Layout::Interleaved] {
        let y = if backward { rope::backward(dev, &x, &tab, t, 7, layout)? } else { rope::forward(dev, &x, &tab, t, 7, layout)? };
        out.push((if backward { "dx" } else { "y" }, read(dev, &y)?));
    }
    Ok(out)
}

const ATT: [Dims; 2] = [
    Dims { b: 2, t: 13, s: 13, h: 9, kv: 3, d: 64, scale: 0.125, s_cap: 13 },
    Dims { b: 2, t: 3, s: 10, h: 6, kv: 2, d: 16, scale: 0.25, s_cap: 17 },
];

fn attention_run(dev: &Device, backward: bool) -> Result<Outputs> {
    let mut out = vec![];
    for dm in ATT {
        let (qs, ks) = ([dm.b * dm.t, dm.h * dm.d], [dm.b * dm.s_cap, dm.kv * dm.d]);
        let q = up(dev, &qs, &vals(20, qs[0] * qs[1], 1.0))?;
        let k = up(dev, &ks, &vals(21, ks[0] * ks[1], 1.0))?;
        let v = up(dev, &ks, &vals(22, ks[0] * ks[1], 1.0))?;
        let (o, lse) = attention::forward(dev, &q, &k, &v, dm)?;
        if backward {
            let (dq, dk, dv) = attention::backward(dev, &q, &k, &v, &o, &lse, &up(dev, &qs, &vals(23, qs[0] * qs[1], 1.0))?, dm)?;
            out.extend([("dq", read(dev, &dq)?), ("dk", read(dev, &dk)?), ("dv", read(dev, &dv)?)]);
        } else {
            out.extend([("o", read(dev, &o)?), ("lse", read(dev, &lse)?)]);
        }
    }
    Ok(out)
}

fn swiglu_run(dev: &Device, backward: bool) -> Result<Outputs> {
    let (r, c) = (5, 1537);
    let (g, u) = (up(dev, &[r, c], &vals(24, r * c, 6.0))?, up(dev, &[r, c], &vals(25, r * c, 2.0))?);
    if backward {
        let (dg, du) = swiglu::backward(dev, &g, &u, &up(dev, &[r, c], &vals(26, r * c, 1.0))?)?;
        Ok(vec![("dg", read(dev, &dg)?), ("du", read(dev, &du)?)])
    } else {
        Ok(vec![("h", read(dev, &swiglu::forward(dev, &g, &u)?)?)])
    }
}

fn embedding_run(dev: &Device, backward: bool) -> Result<Outputs> {
    let (v, c, t) = (1001, 67, 130);
    let mut ids: Vec<u32> = vals(27, t, 1.0).iter().map(|x| ((x + 1.0) * 500.0) as u32 % v as u32).collect();
    ids[3] = ids[7]; // repeated ids sum in backward
    ids[5] = v as u32 + 4; // out of range: a zero row
    let idt = Tensor::from_u32(dev, "selftest ids", &[t], &ids)?;
    if backward {
        Ok(vec![("dtable", read(dev, &embedding::backward(dev, &idt, v, &up(dev, &[t, c], &vals(28, t * c, 1.0))?)?)?)])
    } else {
        Ok(vec![("y", read(dev, &embedding::forward(dev, &idt, &up(dev, &[v, c], &vals(29, v * c, 1.0))?)?)?)])
    }
}

fn cross_entropy_run(dev: &Device, backward: bool) -> Result<Outputs> {
    let (n, v) = (5, 4099);
    let logits = up(dev, &[n, v], &vals(30, n * v, 8.0))?;
    let targets = Tensor::from_u32(dev, "selftest targets", &[n], &[0, 4098, cross_entropy::IGNORE, 1234, 7])?;
    let (loss, lse) = cross_entropy::forward(dev, &logits, &targets)?;
    if backward {
        Ok(vec![("dlogits", read(dev, &cross_entropy::backward(dev, &logits, &targets, &lse, 0.25)?)?)])
    } else {
        Ok(vec![("loss", read(dev, &loss)?), ("lse", read(dev, &lse)?)])
    }
}

fn elementwise_forward(dev: &Device) -> Result<Outputs> {
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
        ("add", read(dev, &c)?),
        ("scale", read(dev, &s)?),
        ("accumulate", read(dev, &acc)?),
        ("add_bias", read(dev, &biased)?),
        ("dropout", read(dev, &drop)?),
    ])
}

fn elementwise_backward(dev: &Device) -> Result<Outputs> {
    let n = 70_001;
    let (da, db) = elementwise::add_backward(dev, &up(dev, &[n], &vals(34, n, 1.0))?)?;
    Ok(vec![("da", read(dev, &da)?), ("db", read(dev, &db)?)])
}

fn optim_adamw(dev: &Device) -> Result<Outputs> {
    let n = 1031;
    let hp = optim::AdamW { weight_decay: 0.01, ..Default::default() };
    let mut p = up(dev, &[n], &vals(35, n, 1.0))?;
    let (mut m, mut v) = (Tensor::zeros(dev, "m", &[n], crate::DType::F32), Tensor::zeros(dev, "v", &[n], crate::DType::F32));
    for step in 1..=3u32 {
        let g = up(dev, &[n], &vals(36 + step as u64, n, 1.0))?;
        optim::adamw(dev, &mut p, &g, &mut m, &mut v, &hp, 1e-2, step, 0.7)?;
    }
    Ok(vec![("p", read(dev, &p)?), ("m", read(dev, &m)?), ("v", read(dev, &v)?)])
}

fn optim_sophia(dev: &Device) -> Result<Outputs> {
    let n = 1031;
    let hp = optim::Sophia::default();
    let mut p = up(dev, &[n], &vals(40, n, 1.0))?;
    let mut m = Tensor::zeros(dev, "m", &[n], crate::DType::F32);
    let mut h = up(dev, &[n], &vals(41, n, 0.5).iter().map(|x| x.abs()).collect::<Vec<_>>())?;
    for step in 1..=3u64 {
        optim::sophia_hessian(dev, &mut h, &up(dev, &[n], &vals(42 + step, n, 1.0))?, hp.beta2, 2.0)?;
        optim::sophia(dev, &mut p, &up(dev, &[n], &vals(46 + step, n, 1.0))?, &mut m, &h, &hp, 1e-2, 0.9)?;
    }
    Ok(vec![("p", read(dev, &p)?), ("m", read(dev, &m)?), ("h", read(dev, &h)?)])
}

fn optim_sum_squares(dev: &Device) -> Result<Outputs> {
    let (a, b) = (up(dev, &[7, 131], &vals(50, 917, 1.0))?, up(dev, &[70_001], &vals(51, 70_001, 1.0))?);
    Ok(vec![("sum", read(dev, &optim::sum_squares(dev, &[&a, &b])?)?)])
}

fn optim_sample_labels(dev: &Device) -> Result<Outputs> {
    let (rows, v) = (37, 1001);
    let targets: Vec<u32> = (0..rows).map(|r| if r % 5 == 2 { cross_entropy::IGNORE } else { r as u32 }).collect();
    let logits = up(dev, &[rows, v], &vals(52, rows * v, 4.0))?;
    let t = Tensor::from_u32(dev, "selftest targets", &[rows], &targets)?;
    Ok(vec![("labels", read(dev, &optim::sample_labels(dev, &logits, &t, 12345)?)?)])
}

fn spectral_run(dev: &Device, backward: bool) -> Result<Outputs> {
    let mut out = vec![];
    let coef = 0.02 / 180.0;
    // 4608 = 8·8·8·9 (the radix path), 4099 prime (Bluestein), 8x576 per row.
    for (shape, per_row) in [(vec![4608], false), (vec![4099], false), (vec![8, 576], true)] {
        let sp = Spectral { per_row, ..Spectral::default() };
        let n: usize = shape.iter().product();
        let w = up(dev, &shape, &vals(53, n, 0.05))?;
        let mut g = up(dev, &shape, &vec![0.0; n])?;
        let p = spectral::penalty(dev, &w, if backward { Some(&mut g) } else { None }, coef, &sp)?;
        out.push(if backward { ("grad", read(dev, &g)?) } else { ("penalty", read(dev, &p)?) });
    }
    Ok(out)
}

/// Every op with a GPU kernel, each direction a row, named `<ops file>.<direction>`.
pub fn cases() -> Vec<Case> {
    let c = |op, atol, rtol, run| Case { op, atol, rtol, atol_of_max: false, run };
    vec![
        c("matmul.forward", 1e-4, 1e-4, matmul_forward),
        c("matmul.backward", 1e-4, 1e-4, matmul_backward),
        c("matmul_nf4.forward", 1e-4, 1e-4, matmul_nf4_forward),
        c("matmul_nf4.backward_dx", 1e-4, 1e-4, matmul_nf4_backward),
        c("quant_nf4.quantize", 0.0, 0.0, quant_nf4_quantize),
        c("quant_nf4.dequantize", 0.0, 0.0, quant_nf4_dequantize),
        c("rmsnorm.forward", 1e-5, 1e-4, rmsnorm_forward),
        c("rmsnorm.backward", 1e-5, 1e-4, rmsnorm_backward),
        c("rope.forward", 1e-5, 1e-5, |d| rope_run(d, false)),
        c("rope.backward", 1e-5, 1e-5, |d| rope_run(d, true)),
        c("attention.forward", 1e-5, 1e-4, |d| attention_run(d, false)),
        c("attention.backward", 1e-5, 1e-4, |d| attention_run(d, true)),
        c("swiglu.forward", 1e-5, 1e-4, |d| swiglu_run(d, false)),
        c("swiglu.backward", 1e-5, 1e-4, |d| swiglu_run(d, true)),
        c("embedding.forward", 1e-6, 1e-5, |d| embedding_run(d, false)),
        c("embedding.backward", 1e-6, 1e-5, |d| embedding_run(d, true)),
        c("cross_entropy.forward", 1e-5, 1e-4, |d| cross_entropy_run(d, false)),
        c("cross_entropy.backward", 1e-5, 1e-4, |d| cross_entropy_run(d, true)),
        c("elementwise.forward", 1e-6, 1e-6, elementwise_forward),
        c("elementwise.backward", 0.0, 0.0, elementwise_backward),
        c("optim.adamw", 1e-6, 1e-5, optim_adamw),
        c("optim.sophia", 1e-6, 1e-5, optim_sophia),
        c("optim.sum_squares", 0.0, 1e-5, optim_sum_squares),
        c("optim.sample_labels", 0.0, 0.0, optim_sample_labels),
        c("spectral.forward", 0.0, 1e-4, |d| spectral_run(d, false)),
        // The gradient's entries span decades; tests/ops/spectral.rs scales atol to the largest too.
        Case { atol_of_max: true, ..c("spectral.backward", 1e-4, 1e-4, |d| spectral_run(d, true)) },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(atol: f64, rtol: f64) -> Case {
        Case { op: "t", atol, rtol, atol_of_max: false, run: |_| Ok(vec![]) }
    }

    #[test]
    fn compare_finds_the_first_bad_value_and_the_worst_error() {
        let want: Outputs = vec![("y", vec![1.0, 2.0, 3.0])];
        let (pass, max_err, detail) = compare(&case(1e-3, 0.0), &vec![("y", vec![1.0, 2.0005, 3.0])], &want);
        assert!(pass && (max_err - 5e-4).abs() < 1e-9 && detail.is_none());
        let (pass, max_err, detail) = compare(&case(1e-3, 0.0), &vec![("y", vec![1.0, 2.5, 3.1])], &want);
        assert!(!pass && (max_err - 0.5).abs() < 1e-9);
        assert_eq!(detail.as_deref(), Some("y[1]: got 2.5, want 2"));
        let (pass, _, detail) = compare(&case(1.0, 1.0), &vec![("y", vec![1.0])], &want);
        assert!(!pass && detail.unwrap().contains("1 values, want 3"));
        let (pass, _, _) = compare(&case(1.0, 1.0), &vec![("y", vec![f64::NAN, 2.0, 3.0])], &want);
        assert!(!pass, "NaN must fail");
    }

    #[test]
    fn matrix_names_every_op_and_marks_failures() {
        let outcomes = cases()
            .iter()
            .map(|c| Outcome { op: c.op, pass: c.op != "rope.backward", max_err: 0.0, secs: 0.0, detail: Some("rope broke".into()) })
            .collect();
        let col = Column { label: "Gl: test".into(), outcomes, open_error: None };
        assert!(!col.passed());
        let m = matrix(&[col]);
        for c in cases() {
            assert!(m.contains(c.op), "{} missing from\n{m}", c.op);
        }
        assert!(m.contains("FAIL") && m.contains("rope.backward on Gl: test: rope broke"), "{m}");
    }
}
