//! One optimizer step, the same for `flexlora train` (`run::Trainer::step`), `flexlora bench
//! train` and the browser: forward and backward of every micro-batch with the gradients
//! accumulated on the device, Sophia's curvature refresh, the FLeX penalty, the global gradient
//! norm and clipping, and the update of every adapter tensor. All of it stays on the device: the
//! loss, the norm, the clip factor and the FLeX value are device tensors, and the step's numbers
//! go to a `StepLog` that the caller reads back once per log interval.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::lora::Side;
use crate::model::weights::Model;
use crate::ops::{elementwise, optim, spectral};
use crate::tensor::{DType, Tensor};
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

/// What a step measured, as read back from its `StepLog`.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// Steps done after this one (1 for the first step of a run).
    pub step: usize,
    /// Mean loss over the step's targets.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// FLeX penalty λ·mean_W penalty(W) before the update, when FLeX is not off.
    pub flex_penalty: Option<f64>,
}

/// The numbers of the steps since the last read-back, kept on the device, and the `control` the
/// updates read ([clip factor, go], `ops::optim::step_stats`). A step appends one row and never
/// waits on the device; `read` brings all rows back at once, once per log interval.
pub struct StepLog {
    control: Tensor,
    rows: Tensor,
    /// (step number after the step, whether FLeX ran) of each row written since the last read.
    pending: Vec<(usize, bool)>,
}

/// What `StepLog::read` found: the steps before the first non-finite one, and that one's error.
pub struct Logged {
    pub steps: Vec<StepOutcome>,
    /// `Error::Training` for the first step whose loss or gradient norm was not finite: its update
    /// and every later one changed nothing.
    pub error: Option<Error>,
}

impl StepLog {
    /// A log with room for `capacity` steps between read-backs.
    pub fn new(dev: &Device, capacity: usize) -> Result<StepLog> {
        let capacity = capacity.max(1);
        Ok(StepLog {
            control: optim::control(dev, 1.0)?,
            rows: Tensor::zeros(dev, "step log", &[capacity, 4], DType::F32),
            pending: Vec::with_capacity(capacity),
        })
    }

    pub fn capacity(&self) -> usize {
        self.rows.shape()[0]
    }

    /// Steps written since the last read.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.capacity()
    }

    /// Reads the rows written since the last read (one read-back) and empties the log.
    pub async fn read(&mut self, dev: &Device) -> Result<Logged> {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return Ok(Logged { steps: vec![], error: None });
        }
        let rows = self.rows.to_vec_f32(dev).await?;
        let mut steps = Vec::with_capacity(pending.len());
        for (row, &(step, flex)) in rows.chunks_exact(4).zip(&pending) {
            let [loss, norm, penalty, finite] = [row[0], row[1], row[2], row[3]];
            if finite == 0.0 {
                let error = Error::Training {
                    step,
                    detail: format!("the loss is {loss} and the gradient norm {norm}"),
                    hint: "lower --lr or check the data".into(),
                };
                return Ok(Logged { steps, error: Some(error) });
            }
            steps.push(StepOutcome { step, loss: loss as f64, grad_norm: norm as f64, flex_penalty: flex.then_some(penalty as f64) });
        }
        Ok(Logged { steps, error: None })
    }
}

/// Seed of step `step`'s micro-batch `j` in a run seeded `run_seed`: `salt` 0 for dropout, 1 for
/// Sophia's sampled labels.
pub fn seed(run_seed: u64, step: usize, j: usize, salt: u32) -> u32 {
    let h = elementwise::hash;
    h((run_seed as u32) ^ h((run_seed >> 32) as u32 ^ h(step as u32 ^ h(j as u32 * 2 + salt))))
}

/// One optimizer step over `batches` (the micro-batches of gradient accumulation): the loss is
/// the mean over all their targets. Nothing is read back: the step's numbers go to a row of `log`
/// (`StepLog::read` returns them), and a step whose loss or gradient norm is not finite changes no
/// adapter tensor, nor does any step after it. `log` must have room (`StepLog::is_full`).
pub fn step(
    dev: &Device,
    model: &mut Model,
    store: &mut AdapterStore,
    opt: &dyn Optimizer,
    batches: &[Batch],
    s: &StepSettings,
    log: &mut StepLog,
) -> Result<()> {
    if log.is_full() {
        return Err(Error::Optimizer {
            op: "step",
            detail: format!("the step log holds {} steps and was not read", log.capacity()),
            hint: "read the log (StepLog::read) at least every `capacity` steps",
        });
    }
    let targets: usize = batches.iter().map(|b| b.n_targets).sum();
    store.grads.zero(dev);
    let scale = 1.0 / targets.max(1) as f32;
    let curvature = opt.estimates_curvature(s.step);
    let mut losses = Vec::with_capacity(batches.len());
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
        losses.push(fwd.loss);
    }
    let loss_sum = optim::sum(dev, &losses.iter().collect::<Vec<_>>())?;
    drop(losses);
    let (flex_value, flex_coef) = match flex(dev, model, &mut store.grads, s.flex)? {
        Some((value, coef)) => (value, coef),
        None => (Tensor::zeros(dev, "flex off", &[1], DType::F32), 0.0),
    };
    let norm2 = optim::sum_squares(dev, &store.grads.tensors().collect::<Vec<_>>())?;
    let slot = log.pending.len();
    optim::step_stats(dev, &loss_sum, scale, &norm2, &flex_value, flex_coef, s.clip, &mut log.control, &mut log.rows, slot)?;
    log.pending.push((s.step + 1, s.flex.mode != FlexMode::Off));
    store.update(dev, model, opt, s.lr, s.step as u32 + 1, &log.control)?;
    dev.flush();
    Ok(())
}

/// FLeX: the summed spectral penalty of the chosen LoRA matrices on the device and λ / their
/// count (the penalty is λ·mean); in `train` mode its gradient is added to the LoRA gradients.
fn flex(dev: &Device, model: &Model, grads: &mut Grads, f: &FlexConfig) -> Result<Option<(Tensor, f32)>> {
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
    Ok(Some((value, coef)))
}
