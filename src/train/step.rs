//! One optimizer step, the same for `flexlora train` (`run::Trainer::step`) and
//! `flexlora bench train`: forward and backward of every micro-batch with the gradients accumulated
//! on the device, Sophia's curvature refresh, the FLeX penalty, the global gradient norm and
//! clipping, and the update of every adapter tensor.

use crate::device::{block_on, Device};
use crate::error::{Error, Result};
use crate::model::lora::Side;
use crate::model::weights::Model;
use crate::ops::{elementwise, optim, spectral};
use crate::tensor::Tensor;
use crate::train::adapter::AdapterStore;
use crate::train::config::{FlexConfig, FlexMatrices, FlexMode};
use crate::train::data::Batch;
use crate::train::grad::{Grads, Options};
use crate::train::optimizer::Optimizer;

/// What a step needs besides the model, its training state and the batches.
#[derive(Debug, Clone, Copy)]
pub struct StepSettings<'a> {
    /// Steps done before this one (the step's seeds, its bias correction, Sophia's schedule).
    pub step: usize,
    /// The run's seed: dropout masks and Sophia's labels are pure functions of it and `step`.
    pub seed: u64,
    pub lr: f32,
    /// Largest global gradient norm; a larger one is scaled down to it. 0 disables clipping.
    pub clip: f32,
    /// Recompute each layer's activations during backward instead of keeping them.
    pub recompute: bool,
    pub flex: &'a FlexConfig,
}

/// What a step measured.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// Mean loss over the step's targets.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// FLeX penalty λ·mean_W penalty(W) before the update, when FLeX is not off.
    pub flex_penalty: Option<f64>,
}

/// Seed of step `step`'s micro-batch `j` in a run seeded `run_seed`: `salt` 0 for dropout, 1 for
/// Sophia's sampled labels.
pub fn seed(run_seed: u64, step: usize, j: usize, salt: u32) -> u32 {
    let h = elementwise::hash;
    h((run_seed as u32) ^ h((run_seed >> 32) as u32 ^ h(step as u32 ^ h(j as u32 * 2 + salt))))
}

/// One optimizer step over `batches` (the micro-batches of gradient accumulation): the loss is
/// the mean over all their targets. A loss or gradient norm that is not finite is refused before
/// any adapter tensor changes (`Error::Training`).
pub fn step(
    dev: &Device,
    model: &mut Model,
    store: &mut AdapterStore,
    opt: &dyn Optimizer,
    batches: &[Batch],
    s: &StepSettings,
) -> Result<StepOutcome> {
    let targets: usize = batches.iter().map(|b| b.n_targets).sum();
    store.grads.zero(dev);
    let scale = 1.0 / targets.max(1) as f32;
    let curvature = opt.estimates_curvature(s.step);
    let mut loss_sum = 0f64;
    for (j, batch) in batches.iter().enumerate() {
        let opts = Options { recompute: s.recompute, dropout_seed: Some(seed(s.seed, s.step, j, 0)), all_logits: false };
        let fwd = model.forward_train(dev, &batch.ids, &batch.targets, batch.b, opts)?;
        model.backward(dev, &fwd, None, scale, &mut store.grads)?;
        if curvature && j + 1 == batches.len() && batch.n_targets > 0 {
            // Gauss-Newton-Bartlett: the gradient of the loss on labels the model samples itself.
            let labels = optim::sample_labels(dev, &fwd.logits, &fwd.targets, seed(s.seed, s.step, j, 1))?;
            let mut ghat = model.zero_grads(dev);
            model.backward(dev, &fwd, Some(&labels), 1.0 / batch.n_targets as f32, &mut ghat)?;
            store.update_curvature(dev, opt, &ghat, batch.n_targets as f32)?;
        }
        loss_sum += block_on(Some(dev), fwd.loss.to_vec_f32(dev))?.iter().map(|&l| l as f64).sum::<f64>();
    }
    let loss = loss_sum * scale as f64;
    let flex_penalty = flex(dev, model, &mut store.grads, s.flex)?;
    let norm2 = block_on(Some(dev), optim::sum_squares(dev, &store.grads.tensors().collect::<Vec<_>>())?.to_vec_f32(dev))?[0] as f64;
    let grad_norm = norm2.sqrt();
    if !loss.is_finite() || !grad_norm.is_finite() {
        return Err(Error::Training {
            step: s.step + 1,
            detail: format!("the loss is {loss} and the gradient norm {grad_norm}"),
            hint: "lower --lr or check the data".into(),
        });
    }
    let clip = if s.clip > 0.0 && grad_norm > s.clip as f64 { (s.clip as f64 / grad_norm) as f32 } else { 1.0 };
    store.update(dev, model, opt, s.lr, s.step as u32 + 1, clip)?;
    dev.flush();
    Ok(StepOutcome { loss, grad_norm, flex_penalty })
}

/// FLeX: λ·mean over the chosen LoRA matrices of their spectral penalty; in `train` mode its
/// gradient is added to the LoRA gradients on the device.
fn flex(dev: &Device, model: &Model, grads: &mut Grads, f: &FlexConfig) -> Result<Option<f64>> {
    if f.mode == FlexMode::Off {
        return Ok(None);
    }
    let chosen = |side: Side| match f.matrices {
        FlexMatrices::A => side == Side::A,
        FlexMatrices::B => side == Side::B,
        FlexMatrices::Both => true,
    };
    let ws: Vec<&Tensor> = model.lora_params().into_iter().filter(|(k, _)| chosen(k.side)).map(|(_, t)| t).collect();
    let coef = f.lambda / ws.len().max(1) as f32;
    let mut gs: Vec<&mut Tensor> = grads.tensors_mut().filter(|(k, _)| chosen(k.side)).map(|(_, g)| g).collect();
    let grads = if f.mode == FlexMode::Train { Some(gs.as_mut_slice()) } else { None };
    // penalty_batch stacks same-shape matrices into one batched transform.
    let value = spectral::penalty_batch(dev, &ws, grads, coef, &f.spectral())?;
    let total = block_on(Some(dev), value.to_vec_f32(dev))?[0] as f64;
    Ok(Some(coef as f64 * total))
}
