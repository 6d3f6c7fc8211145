//! The optimizers a run can use, behind one trait: each names the state it keeps per parameter
//! (checkpoints store it under those names) and updates one parameter in place from its gradient.
//! The kernels and their CPU twins are `ops::optim`; this module only decides which runs when.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::optim;
use crate::tensor::Tensor;
use crate::train::config::{OptimizerKind, TrainConfig};

/// One optimizer's update rule over one parameter tensor.
pub trait Optimizer {
    /// The state kept per parameter, by name, in the order `update` takes it: AdamW's first and
    /// second moments `["m", "v"]`, Sophia's momentum and Hessian estimate `["m", "h"]`.
    /// Checkpoints name each tensor `<state>.<PEFT name of the parameter>`.
    fn state_names(&self) -> &'static [&'static str];

    /// Updates `p` in place from its gradient `g` with learning rate `lr`; `step` counts optimizer
    /// steps from 1. `control` ([scale, go] on the device, `ops::optim::control`) scales the
    /// gradient (the clipping factor) or, with go 0, skips the update.
    #[allow(clippy::too_many_arguments)]
    fn update(&self, dev: &Device, p: &mut Tensor, g: &Tensor, state: &mut [Tensor], lr: f32, step: u32, control: &Tensor) -> Result<()>;

    /// Whether step `step` (0-based) also refreshes a curvature estimate from a gradient on
    /// labels the model samples itself (Sophia's Gauss-Newton-Bartlett Hessian); AdamW never does.
    fn estimates_curvature(&self, _step: usize) -> bool {
        false
    }

    /// Folds `ghat`, the gradient on sampled labels of a micro-batch with `n_targets` targets,
    /// into the curvature state.
    fn update_curvature(&self, _dev: &Device, _state: &mut [Tensor], _ghat: &Tensor, _n_targets: f32) -> Result<()> {
        Ok(())
    }
}

/// The optimizer `cfg` asks for.
pub fn from_config(cfg: &TrainConfig) -> Box<dyn Optimizer> {
    match cfg.optimizer {
        OptimizerKind::Adamw => Box::new(AdamW(cfg.adamw)),
        OptimizerKind::Sophia => Box::new(SophiaG { hp: cfg.sophia, hessian_every: cfg.hessian_every }),
    }
}

fn wrong_state(op: &'static str, want: &[&str], got: usize) -> Error {
    Error::Optimizer { op, detail: format!("{got} state tensors, but it keeps {want:?}"), hint: "build the state with AdapterStore::new" }
}

/// AdamW (decoupled weight decay), PyTorch semantics.
pub struct AdamW(pub optim::AdamW);

impl Optimizer for AdamW {
    fn state_names(&self) -> &'static [&'static str] {
        &["m", "v"]
    }

    fn update(&self, dev: &Device, p: &mut Tensor, g: &Tensor, state: &mut [Tensor], lr: f32, step: u32, control: &Tensor) -> Result<()> {
        let [m, v] = state else { return Err(wrong_state("adamw", self.state_names(), state.len())) };
        optim::adamw(dev, p, g, m, v, &self.0, lr, step, control)
    }
}

/// SophiaG with its Hessian estimate refreshed every `hessian_every` steps.
pub struct SophiaG {
    pub hp: optim::Sophia,
    pub hessian_every: usize,
}

impl Optimizer for SophiaG {
    fn state_names(&self) -> &'static [&'static str] {
        &["m", "h"]
    }

    fn update(&self, dev: &Device, p: &mut Tensor, g: &Tensor, state: &mut [Tensor], lr: f32, _step: u32, control: &Tensor) -> Result<()> {
        let [m, h] = state else { return Err(wrong_state("sophia", self.state_names(), state.len())) };
        optim::sophia(dev, p, g, m, h, &self.hp, lr, control)
    }

    fn estimates_curvature(&self, step: usize) -> bool {
        step % self.hessian_every.max(1) == 0
    }

    fn update_curvature(&self, dev: &Device, state: &mut [Tensor], ghat: &Tensor, n_targets: f32) -> Result<()> {
        let [_, h] = state else { return Err(wrong_state("sophia_hessian", self.state_names(), state.len())) };
        optim::sophia_hessian(dev, h, ghat, self.hp.beta2, n_targets)
    }
}
