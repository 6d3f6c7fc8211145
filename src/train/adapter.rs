//! The training state of an adapter, keyed like its tensors (`ParamKey`: layer, target, A or B):
//! each LoRA matrix's gradient and its optimizer state, by the optimizer's state names. The
//! matrices themselves live in the model's linear layers, where inference reads them;
//! `Model::lora_param_mut` finds each by the same key. Adding a trainable tensor therefore means
//! attaching it to the model: its gradient, state and checkpoint entries follow from its key.

use std::collections::BTreeMap;
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::lora::ParamKey;
use crate::model::weights::Model;
use crate::tensor::{DType, Tensor};
#[cfg(not(target_arch = "wasm32"))]
use crate::train::checkpoint;
use crate::train::grad::Grads;
use crate::train::optimizer::Optimizer;

pub struct AdapterStore {
    /// The gradient of every adapter tensor, accumulated over a step's micro-batches.
    pub grads: Grads,
    /// Optimizer state per tensor, in `state_names` order.
    state: BTreeMap<ParamKey, Vec<Tensor>>,
    state_names: &'static [&'static str],
}

impl AdapterStore {
    /// Zero gradients and zero optimizer state for every adapter tensor attached to `model`.
    pub fn new(dev: &Device, model: &Model, opt: &dyn Optimizer) -> AdapterStore {
        let names = opt.state_names();
        let state = model
            .lora_params()
            .into_iter()
            .map(|(k, p)| (k, names.iter().map(|n| Tensor::zeros(dev, &format!("{n}.{}", k.peft_name()), p.shape(), DType::F32)).collect()))
            .collect();
        AdapterStore { grads: Grads::zeros(dev, model), state, state_names: names }
    }

    /// Zero gradients and the optimizer state saved in checkpoint `ckpt` (every entry checked
    /// against the model's adapter: names and shapes).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(dev: &Device, model: &Model, opt: &dyn Optimizer, ckpt: &Path) -> Result<AdapterStore> {
        let names = opt.state_names();
        let want = checkpoint_names(model, names);
        let mut loaded = checkpoint::load_optimizer(dev, ckpt, &want)?.into_iter();
        let keys = model.lora_keys();
        // `want` is grouped by state name, then in key order; `load_optimizer` returned exactly it.
        let mut per_name: Vec<std::vec::IntoIter<Tensor>> =
            names.iter().map(|_| loaded.by_ref().take(keys.len()).collect::<Vec<_>>().into_iter()).collect();
        let mut state = BTreeMap::new();
        for k in keys {
            let s: Option<Vec<Tensor>> = per_name.iter_mut().map(|it| it.next()).collect();
            let s = s.ok_or_else(|| Error::Checkpoint {
                path: ckpt.display().to_string(),
                detail: format!("the optimizer state of {} is missing", k.peft_name()),
            })?;
            state.insert(k, s);
        }
        Ok(AdapterStore { grads: Grads::zeros(dev, model), state, state_names: names })
    }

    /// The optimizer state as (checkpoint name, tensor): every tensor of the first state name in
    /// key order, then the second's (`m.<PEFT name>`..., then `v.<PEFT name>`...).
    pub fn named_state(&self) -> Vec<(String, &Tensor)> {
        let mut out = Vec::new();
        for (i, n) in self.state_names.iter().enumerate() {
            for (k, s) in &self.state {
                out.push((format!("{n}.{}", k.peft_name()), &s[i]));
            }
        }
        out
    }

    /// One optimizer update of every adapter tensor in `model` from its accumulated gradient,
    /// scaled or skipped by `control` ([scale, go] on the device, `ops::optim::control`).
    pub fn update(&mut self, dev: &Device, model: &mut Model, opt: &dyn Optimizer, lr: f32, step: u32, control: &Tensor) -> Result<()> {
        for (key, state) in self.state.iter_mut() {
            let (p, g) = (model.lora_param_mut(*key), self.grads.get(*key));
            let (Some(p), Some(g)) = (p, g) else { return Err(detached(*key)) };
            opt.update(dev, p, g, state, lr, step, control)?;
        }
        Ok(())
    }

    /// Folds the gradient on sampled labels (`ghat`, keyed like the adapter) into the optimizer's
    /// curvature state.
    pub fn update_curvature(&mut self, dev: &Device, opt: &dyn Optimizer, ghat: &Grads, n_targets: f32) -> Result<()> {
        for (key, state) in self.state.iter_mut() {
            let g = ghat.get(*key).ok_or_else(|| detached(*key))?;
            opt.update_curvature(dev, state, g, n_targets)?;
        }
        Ok(())
    }
}

/// (checkpoint name, shape) of each optimizer state tensor, in `AdapterStore::named_state` order.
#[cfg(not(target_arch = "wasm32"))]
fn checkpoint_names(model: &Model, state_names: &[&str]) -> Vec<(String, Vec<usize>)> {
    let params = model.lora_params();
    state_names.iter().flat_map(|n| params.iter().map(move |(k, p)| (format!("{n}.{}", k.peft_name()), p.shape().to_vec()))).collect()
}

fn detached(key: ParamKey) -> Error {
    Error::Optimizer {
        op: "update",
        detail: format!("the adapter tensor {} has training state but is not attached to the model", key.peft_name()),
        hint: "build the training state after attaching the adapter, and do not swap adapters during a run",
    }
}
