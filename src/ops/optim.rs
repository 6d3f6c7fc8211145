//! Optimizers: AdamW (decoupled weight decay) and SophiaG steps in place, Sophia's Hessian EMA,
//! the sum of squares behind global gradient-norm clipping, and the labels Sophia's
//! Gauss-Newton-Bartlett estimator samples from the model. Kernels: `shaders/optim.wgsl`.
//!
//! Every per-step value the host knows (learning rate, bias corrections) travels in the uniform
//! params. What only the device knows during a step stays there: `step_stats` turns the step's
//! loss sum, gradient sum of squares and FLeX value into the clipping factor and a go flag (the
//! update's `control`, [scale, go]) and appends the step's numbers to a log on the device, which
//! the trainer reads back once per log interval. A step therefore never waits on the GPU.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::contract::{params, read, write, Entry};
use crate::ops::cross_entropy::IGNORE;
// PCG hash (Jarzynski and Olano 2020), the kernel's `pcg_hash`; dropout masks use the same function.
use crate::ops::elementwise::hash as pcg;
use crate::ops::groups;
use crate::shaders;
use crate::tensor::{check_shape, dims2, DType, Tensor};

/// AdamW hyper-parameters (PyTorch semantics, decoupled weight decay).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    /// torch.optim.AdamW's betas and eps, without weight decay (LoRA adapters usually take none).
    fn default() -> Self {
        AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// SophiaG hyper-parameters (Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order
/// Optimizer for Language Model Pre-training", Algorithm 3). `rho` is the paper's γ.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Sophia {
    pub beta1: f32,
    pub beta2: f32,
    pub rho: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for Sophia {
    /// betas (0.965, 0.99), rho 0.04 and weight_decay 0.1 are the defaults of the `SophiaG`
    /// constructor in the authors' official PyTorch implementation (`sophia.py`). That code
    /// divides by `rho * bs * h + 1e-15`; this op follows the paper's `max(rho * h, eps)` with
    /// eps 1e-12, and the batch size `bs` lives in `sophia_hessian`'s `scale` instead.
    fn default() -> Self {
        Sophia { beta1: 0.965, beta2: 0.99, rho: 0.04, eps: 1e-12, weight_decay: 0.1 }
    }
}

params! {
    struct AdamParams {
        n: u32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        decay: f32,
        step_size: f32,
        bc2_sqrt: f32,
        _pad: u32,
    }
}

params! {
    struct SophiaParams {
        n: u32,
        beta1: f32,
        rho: f32,
        eps: f32,
        decay: f32,
        lr: f32,
        _pad0: u32,
        _pad1: u32,
    }
}

params! {
    struct HessianParams {
        n: u32,
        beta2: f32,
        scale: f32,
        _pad: u32,
    }
}

params! {
    struct ReduceParams {
        n: u32,
        chunk: u32,
        offset: u32,
        square: u32,
    }
}

params! {
    struct StatsParams {
        slot: u32,
        clip: f32,
        loss_scale: f32,
        flex_coef: f32,
    }
}

params! {
    struct SampleParams {
        rows: u32,
        vocab: u32,
        seed: u32,
        ignore: u32,
    }
}

const WG: u32 = 256;
/// Elements per workgroup in the first reduction pass: 16 per thread keeps the partials few
/// (one per 4096 elements) while each thread's serial f32 sum stays short.
const REDUCE_CHUNK: u32 = WG * 16;

const SHARED: &[(&str, u32)] = &[("WG", WG)];

pub(crate) static ADAMW: Entry<AdamParams, 5> =
    Entry::new(&shaders::OPTIM, "adamw", [read(1, "g"), write(2, "param"), write(3, "m"), write(4, "v"), read(13, "control")], SHARED);
pub(crate) static SOPHIA: Entry<SophiaParams, 5> =
    Entry::new(&shaders::OPTIM, "sophia", [read(1, "g"), write(2, "param"), write(3, "m"), read(5, "h"), read(13, "control")], SHARED);
pub(crate) static SOPHIA_HESSIAN: Entry<HessianParams, 2> =
    Entry::new(&shaders::OPTIM, "sophia_hessian", [read(6, "ghat"), write(7, "h_ema")], SHARED);
pub(crate) static REDUCE: Entry<ReduceParams, 2> = Entry::new(&shaders::OPTIM, "reduce", [read(8, "x"), write(9, "partials")], SHARED);
pub(crate) static STEP_STATS: Entry<StatsParams, 5> = Entry::new(
    &shaders::OPTIM,
    "step_stats",
    [read(14, "loss_sum"), read(15, "norm2"), read(16, "flex_value"), write(17, "control_out"), write(18, "step_log")],
    &[],
);
pub(crate) static SAMPLE_LABELS: Entry<SampleParams, 3> =
    Entry::new(&shaders::OPTIM, "sample_labels", [read(10, "logits"), read(11, "targets"), write(12, "labels")], SHARED);

fn check_beta(op: &'static str, name: &str, beta: f32) -> Result<()> {
    if !(0.0..1.0).contains(&beta) {
        return Err(Error::Optimizer {
            op,
            detail: format!("{name} is {beta}, outside [0, 1)"),
            hint: "use a value like 0.9 for beta1 and 0.99-0.999 for beta2",
        });
    }
    Ok(())
}

fn check_control(op: &'static str, control: &Tensor) -> Result<()> {
    control.expect(op, DType::F32)?;
    check_shape(op, control, &[2])
}

/// Checks that every tensor in `ts` is f32 with the shape of `p`.
fn check_same(op: &'static str, p: &Tensor, ts: &[&Tensor]) -> Result<()> {
    p.expect(op, DType::F32)?;
    for t in ts {
        t.expect(op, DType::F32)?;
        if t.shape() != p.shape() {
            return Err(Error::shape(
                op,
                format!("`{}` has shape {:?} but the parameter `{}` has shape {:?}", t.label(), t.shape(), p.label(), p.shape()),
            ));
        }
    }
    Ok(())
}

/// The [2] f32 `control` of an update: [scale, go]. The update multiplies the gradient by `scale`
/// first (global-norm clipping factor...), and changes nothing when `go` is 0. `train::step`
/// computes it on the device (`step_stats`); this makes one from host values.
pub fn control(dev: &Device, scale: f32) -> Result<Tensor> {
    Tensor::from_f32(dev, "control", &[2], &[scale, 1.0])
}

/// (scale, go) of a `control` tensor on the CPU.
fn host_control(op: &'static str, control: &Tensor) -> Result<Option<f32>> {
    control.expect(op, DType::F32)?;
    check_shape(op, control, &[2])?;
    let c = control.host_f32(op)?;
    Ok(if c[1] == 0.0 { None } else { Some(c[0]) })
}

/// One AdamW step in place. `step` is 1-based (bias correction), `lr` this step's learning rate;
/// `control` ([scale, go], see [`control`]) scales the gradient first or skips the update.
/// p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    dev: &Device,
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    hp: &AdamW,
    lr: f32,
    step: u32,
    control: &Tensor,
) -> Result<()> {
    const OP: &str = "adamw";
    check_same(OP, p, &[g, m, v])?;
    check_control(OP, control)?;
    check_beta(OP, "beta1", hp.beta1)?;
    check_beta(OP, "beta2", hp.beta2)?;
    if step == 0 {
        return Err(Error::Optimizer {
            op: OP,
            detail: "step is 0".into(),
            hint: "steps count from 1 (bias correction divides by 1 - beta^step)",
        });
    }
    // As torch.optim.AdamW: step_size = lr / (1 - b1^t) and the denominator
    // sqrt(v) / sqrt(1 - b2^t) + eps, i.e. eps outside the bias-corrected square root.
    let t = step as f64;
    let k = AdamParams {
        n: p.numel() as u32,
        beta1: hp.beta1,
        beta2: hp.beta2,
        eps: hp.eps,
        decay: 1.0 - lr * hp.weight_decay,
        step_size: (lr as f64 / (1.0 - (hp.beta1 as f64).powf(t))) as f32,
        bc2_sqrt: (1.0 - (hp.beta2 as f64).powf(t)).sqrt() as f32,
        _pad: 0,
    };
    match dev {
        Device::Cpu(_) => {
            let Some(scale) = host_control(OP, control)? else { return Ok(()) };
            let (g, m, v) = (g.host_f32(OP)?, m.host_f32_mut(OP)?, v.host_f32_mut(OP)?);
            for (i, p) in p.host_f32_mut(OP)?.iter_mut().enumerate() {
                let gi = scale * g[i];
                m[i] = k.beta1 * m[i] + (1.0 - k.beta1) * gi;
                v[i] = k.beta2 * v[i] + (1.0 - k.beta2) * gi * gi;
                let denom = v[i].sqrt() / k.bc2_sqrt + k.eps;
                *p = *p * k.decay - k.step_size * m[i] / denom;
            }
        }
        Device::Gpu(gd) => {
            let bufs = [g.bind(OP)?, p.bind(OP)?, m.bind(OP)?, v.bind(OP)?, control.bind(OP)?];
            ADAMW.dispatch(gd, &[("WG", WG)], &k, bufs, groups(gd, p.numel(), WG))?;
        }
    }
    Ok(())
}

/// One SophiaG step in place (paper Algorithm 3 / official SophiaG):
/// p *= 1 - lr*wd; m = b1 m + (1-b1) g; p -= lr * clip(m / max(rho*h, eps), -1, 1)
/// `control` ([scale, go], see [`control`]) scales the gradient first or skips the update.
#[allow(clippy::too_many_arguments)]
pub fn sophia(dev: &Device, p: &mut Tensor, g: &Tensor, m: &mut Tensor, h: &Tensor, hp: &Sophia, lr: f32, control: &Tensor) -> Result<()> {
    const OP: &str = "sophia";
    check_same(OP, p, &[g, m, h])?;
    check_control(OP, control)?;
    check_beta(OP, "beta1", hp.beta1)?;
    let k = SophiaParams {
        n: p.numel() as u32,
        beta1: hp.beta1,
        rho: hp.rho,
        eps: hp.eps,
        decay: 1.0 - lr * hp.weight_decay,
        lr,
        _pad0: 0,
        _pad1: 0,
    };
    match dev {
        Device::Cpu(_) => {
            let Some(scale) = host_control(OP, control)? else { return Ok(()) };
            let (g, m, h) = (g.host_f32(OP)?, m.host_f32_mut(OP)?, h.host_f32(OP)?);
            for (i, p) in p.host_f32_mut(OP)?.iter_mut().enumerate() {
                m[i] = k.beta1 * m[i] + (1.0 - k.beta1) * (scale * g[i]);
                // Written as the kernel's clamp: NaN in m stays NaN rather than becoming ±1.
                let ratio = (m[i] / (k.rho * h[i]).max(k.eps)).clamp(-1.0, 1.0);
                *p = *p * k.decay - k.lr * ratio;
            }
        }
        Device::Gpu(gd) => {
            let bufs = [g.bind(OP)?, p.bind(OP)?, m.bind(OP)?, h.bind(OP)?, control.bind(OP)?];
            SOPHIA.dispatch(gd, &[("WG", WG)], &k, bufs, groups(gd, p.numel(), WG))?;
        }
    }
    Ok(())
}

/// Sophia's Hessian EMA from a Gauss-Newton-Bartlett gradient ghat (gradient of the loss on labels
/// sampled from the model): h = b2*h + (1-b2) * scale * ghat^2   (scale = batch size B in the paper's B*ghat*ghat)
pub fn sophia_hessian(dev: &Device, h: &mut Tensor, ghat: &Tensor, beta2: f32, scale: f32) -> Result<()> {
    const OP: &str = "sophia_hessian";
    check_same(OP, h, &[ghat])?;
    check_beta(OP, "beta2", beta2)?;
    let k = HessianParams { n: h.numel() as u32, beta2, scale, _pad: 0 };
    match dev {
        Device::Cpu(_) => {
            let ghat = ghat.host_f32(OP)?;
            for (hi, &gi) in h.host_f32_mut(OP)?.iter_mut().zip(ghat) {
                *hi = k.beta2 * *hi + (1.0 - k.beta2) * (k.scale * gi * gi);
            }
        }
        Device::Gpu(gd) => {
            let bufs = [ghat.bind(OP)?, h.bind(OP)?];
            SOPHIA_HESSIAN.dispatch(gd, &[("WG", WG)], &k, bufs, groups(gd, h.numel(), WG))?;
        }
    }
    Ok(())
}

/// Sum of squares of all elements of all `ts` as a [1] f32 tensor on the device (the global
/// gradient norm's square, which `step_stats` reads).
pub fn sum_squares(dev: &Device, ts: &[&Tensor]) -> Result<Tensor> {
    reduce(dev, ts, true)
}

/// Sum of all elements of all `ts` as a [1] f32 tensor on the device (a step's loss).
pub fn sum(dev: &Device, ts: &[&Tensor]) -> Result<Tensor> {
    reduce(dev, ts, false)
}

fn reduce(dev: &Device, ts: &[&Tensor], square: bool) -> Result<Tensor> {
    let op: &'static str = if square { "sum_squares" } else { "sum" };
    for t in ts {
        t.expect(op, DType::F32)?;
    }
    match dev {
        Device::Cpu(_) => {
            // f64 accumulation: exact enough for any parameter count, and cheap at LoRA sizes.
            let mut s = 0f64;
            for t in ts {
                let x = t.host_f32(op)?;
                s += if square { x.iter().map(|&x| x as f64 * x as f64).sum::<f64>() } else { x.iter().map(|&x| x as f64).sum::<f64>() };
            }
            Tensor::from_f32(dev, op, &[1], &[s as f32])
        }
        Device::Gpu(gd) => {
            // Pass 1: every tensor writes one partial per REDUCE_CHUNK elements into its own range
            // of `partials`; pass 2: one workgroup sums the partials. Two passes, no atomics (WGSL
            // has no float atomics), and the result stays on the device.
            let out = Tensor::zeros(dev, op, &[1], DType::F32);
            let counts: Vec<usize> = ts.iter().map(|t| t.numel().div_ceil(REDUCE_CHUNK as usize)).collect();
            let total: usize = counts.iter().sum();
            if total == 0 {
                return Ok(out);
            }
            let partials = Tensor::zeros(dev, "reduce.partials", &[total], DType::F32);
            let mut offset = 0;
            for (t, &count) in ts.iter().zip(&counts) {
                if count == 0 {
                    continue;
                }
                let k = ReduceParams { n: t.numel() as u32, chunk: REDUCE_CHUNK, offset: offset as u32, square: square as u32 };
                let bufs = [t.bind(op)?, partials.bind(op)?];
                REDUCE.dispatch(gd, &[("WG", WG)], &k, bufs, groups(gd, t.numel(), REDUCE_CHUNK))?;
                offset += count;
            }
            let k = ReduceParams { n: total as u32, chunk: total as u32, offset: 0, square: 0 };
            let bufs = [partials.bind(op)?, out.bind(op)?];
            REDUCE.dispatch(gd, &[("WG", WG)], &k, bufs, [1, 1, 1])?;
            Ok(out)
        }
    }
}

/// The numbers one training step records, read back by [`StepLog`]-style callers: `slot`'s four
/// values in `step_log` [slots, 4].
///
/// From the step's loss sum (`loss_sum` [1], times `loss_scale` = 1 / targets), its gradients'
/// sum of squares (`norm2` [1]) and the FLeX penalty's raw value (`flex_value` [1], times
/// `flex_coef`), on the device:
/// - `step_log[slot]` = [loss, gradient norm, FLeX penalty, 1 if the loss and the norm are finite else 0];
/// - `control` = [clip factor, go]: the factor is `clip / norm` when `clip > 0` and the norm is
///   larger, else 1; `go` stays 0 from the first non-finite step on, so that step's update and
///   every later one change nothing until the host has read the log and stopped the run.
#[allow(clippy::too_many_arguments)]
pub fn step_stats(
    dev: &Device,
    loss_sum: &Tensor,
    loss_scale: f32,
    norm2: &Tensor,
    flex_value: &Tensor,
    flex_coef: f32,
    clip: f32,
    control: &mut Tensor,
    step_log: &mut Tensor,
    slot: usize,
) -> Result<()> {
    const OP: &str = "step_stats";
    for t in [loss_sum, norm2, flex_value] {
        t.expect(OP, DType::F32)?;
        check_shape(OP, t, &[1])?;
    }
    check_control(OP, control)?;
    step_log.expect(OP, DType::F32)?;
    let slots = step_log.numel() / 4;
    if step_log.shape() != [slots, 4] || slot >= slots {
        return Err(Error::shape(OP, format!("slot {slot} of a step log of shape {:?} (want [slots, 4], slot < slots)", step_log.shape())));
    }
    let k = StatsParams { slot: slot as u32, clip, loss_scale, flex_coef };
    match dev {
        Device::Cpu(_) => {
            let (l, n2, f) = (loss_sum.host_f32(OP)?[0], norm2.host_f32(OP)?[0], flex_value.host_f32(OP)?[0]);
            let loss = k.loss_scale * l;
            let norm = n2.sqrt();
            let finite = loss.is_finite() && norm.is_finite();
            let c = control.host_f32_mut(OP)?;
            let go = finite && c[1] != 0.0;
            c[0] = if k.clip > 0.0 && norm > k.clip { k.clip / norm } else { 1.0 };
            c[1] = if go { 1.0 } else { 0.0 };
            let row = &mut step_log.host_f32_mut(OP)?[slot * 4..slot * 4 + 4];
            row.copy_from_slice(&[loss, norm, k.flex_coef * f, if finite { 1.0 } else { 0.0 }]);
        }
        Device::Gpu(gd) => {
            let bufs = [loss_sum.bind(OP)?, norm2.bind(OP)?, flex_value.bind(OP)?, control.bind(OP)?, step_log.bind(OP)?];
            STEP_STATS.dispatch(gd, &[], &k, bufs, [1, 1, 1])?;
        }
    }
    Ok(())
}

/// Labels for Sophia's GNB estimator: for each row of logits [N, V], a token sampled from softmax(row)
/// by Gumbel-max: argmax_v (logit_v - ln(-ln(u))) with u uniform in (0,1) from a counter-based hash of
/// (seed, row, v) that the CPU twin and the WGSL kernel compute identically. Rows whose `targets`
/// entry is IGNORE (cross_entropy::IGNORE) stay IGNORE. Returns u32 [N].
///
/// Ties go to the smaller token id; a row with no logit above -3e38 (all -inf or NaN) gets IGNORE.
pub fn sample_labels(dev: &Device, logits: &Tensor, targets: &Tensor, seed: u32) -> Result<Tensor> {
    const OP: &str = "sample_labels";
    logits.expect(OP, DType::F32)?;
    targets.expect(OP, DType::U32)?;
    let (rows, vocab) = dims2(logits);
    check_shape(OP, targets, &[rows])?;
    match dev {
        Device::Cpu(_) => {
            let (logits, targets) = (logits.host_f32(OP)?, targets.host_u32(OP)?);
            let labels: Vec<u32> = (0..rows)
                .map(|r| if targets[r] == IGNORE { IGNORE } else { cpu_sample_row(&logits[r * vocab..(r + 1) * vocab], seed, r as u32) })
                .collect();
            Tensor::from_u32(dev, "sample_labels", &[rows], &labels)
        }
        Device::Gpu(gd) => {
            let labels = Tensor::zeros(dev, "sample_labels", &[rows], DType::U32);
            let k = SampleParams { rows: rows as u32, vocab: vocab as u32, seed, ignore: IGNORE };
            let bufs = [logits.bind(OP)?, targets.bind(OP)?, labels.bind(OP)?];
            SAMPLE_LABELS.dispatch(gd, &[("WG", WG)], &k, bufs, groups(gd, rows, 1))?;
            Ok(labels)
        }
    }
}

/// (k + 1/2) / 2^23 for the top 23 bits k: exact in f32 on every device, never 0 or 1.
fn unit_interval(bits: u32) -> f32 {
    ((bits >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0)
}

/// The kernel's row loop in order; its comparison is a total order, so the kernel's tree
/// reduction picks the same token.
fn cpu_sample_row(row: &[f32], seed: u32, r: u32) -> u32 {
    let row_key = pcg(pcg(seed) ^ r);
    let (mut bv, mut bi) = (-3.0e38f32, IGNORE);
    for (t, &logit) in row.iter().enumerate() {
        let t = t as u32;
        let u = unit_interval(pcg(row_key ^ t));
        let val = logit - (-u.ln()).ln();
        if val > bv || (val == bv && t < bi) {
            (bv, bi) = (val, t);
        }
    }
    bi
}
