//! The training state of an adapter, keyed like its tensors (`ParamKey`: layer, target, A or B):
//! each LoRA matrix's gradient and its optimizer state, by the optimizer's state names. The
//! matrices themselves live in the model's linear layers, where inference reads them;
//! `Model::lora_param_mut` finds each by the same key. Adding a trainable tensor therefore means
//! attaching it to the model: its gradient, state and checkpoint entries follow from its key.

use std::collections::{BTreeMap, HashMap};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::lora::ParamKey;
use crate::model::weights::Model;
use crate::tensor::{DType, Tensor};
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

    /// Zero gradients and the optimizer state `saved` of a checkpoint (`origin` names it),
    /// keyed `<state>.<PEFT name>`: one tensor per state name and adapter tensor of `model`, each
    /// of its parameter's shape (`state::Checkpoint::check_tensors` checks this first, to say
    /// what is wrong with the file; this refuses any mismatch left).
    pub fn load(
        dev: &Device,
        model: &Model,
        opt: &dyn Optimizer,
        origin: &str,
        mut saved: HashMap<String, (Vec<usize>, Vec<f32>)>,
    ) -> Result<AdapterStore> {
        let names = opt.state_names();
        let fail = |detail: String| Error::Checkpoint { path: origin.to_string(), detail };
        let mut state = BTreeMap::new();
        for (k, p) in model.lora_params() {
            let mut per_key = Vec::with_capacity(names.len());
            for n in names {
                let name = format!("{n}.{}", k.peft_name());
                let (shape, data) = saved.remove(&name).ok_or_else(|| fail(format!("optimizer state `{name}` is missing")))?;
                if shape != p.shape() {
                    return Err(fail(format!("optimizer state `{name}` has shape {shape:?}, expected {:?}", p.shape())));
                }
                per_key.push(Tensor::from_f32(dev, &name, &shape, &data)?);
            }
            state.insert(k, per_key);
        }
        if let Some(extra) = saved.keys().next() {
            return Err(fail(format!("unexpected optimizer state `{extra}`: the checkpoint is from another optimizer or adapter")));
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

fn detached(key: ParamKey) -> Error {
    Error::Optimizer {
        op: "update",
        detail: format!("the adapter tensor {} has training state but is not attached to the model", key.peft_name()),
        hint: "build the training state after attaching the adapter, and do not swap adapters during a run",
    }
}
