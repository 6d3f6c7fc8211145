//! Several LoRA adapters loaded over one base model, at most one applied at a time (the browser
//! demo's adapter switch and its base/adapted comparison). Switching moves each adapter's device
//! tensors between this set and the model's linear layers: nothing is re-read or re-uploaded, and
//! the base weights are never touched (adapters stay unmerged).

use crate::error::Result;
use crate::model::lora::{Lora, LoraConfig, Target};
use crate::model::weights::Model;

/// One loaded adapter while it is not applied: its config and its (layer, target, pair) tensors.
struct Parked {
    name: String,
    cfg: LoraConfig,
    pairs: Vec<(usize, Target, Lora)>,
}

#[derive(Default)]
pub struct AdapterSet {
    /// Every loaded adapter; the active one's `pairs` are empty (they sit in the model).
    adapters: Vec<Parked>,
    active: Option<usize>,
}

impl AdapterSet {
    pub fn new() -> Self {
        AdapterSet::default()
    }

    /// Names and configs of the loaded adapters, in load order.
    pub fn list(&self) -> Vec<(&str, &LoraConfig)> {
        self.adapters.iter().map(|p| (p.name.as_str(), &p.cfg)).collect()
    }

    /// The applied adapter's index, or None when the model runs as the base.
    pub fn active(&self) -> Option<usize> {
        self.active
    }

    /// Loads an adapter with `attach(model)` (e.g. `peft::attach_bytes`) and keeps it in the set,
    /// not applied; returns its index. On failure the model is left as the base, whatever the
    /// attach had done before it failed (a half-attached adapter would be silently wrong).
    pub fn load(&mut self, model: &mut Model, name: &str, attach: impl FnOnce(&mut Model) -> Result<LoraConfig>) -> Result<usize> {
        self.activate(model, None)?;
        let cfg = match attach(model) {
            Ok(cfg) => cfg,
            Err(e) => {
                detach(model);
                return Err(e);
            }
        };
        let pairs = detach(model);
        self.adapters.push(Parked { name: name.to_string(), cfg, pairs });
        Ok(self.adapters.len() - 1)
    }

    /// Applies adapter `index`, or none (the base model) with `None`.
    pub fn activate(&mut self, model: &mut Model, index: Option<usize>) -> Result<()> {
        if let Some(i) = index {
            if i >= self.adapters.len() {
                return Err(crate::error::Error::InvalidArgument {
                    flag: "adapter",
                    detail: format!("no adapter #{i}: {} are loaded", self.adapters.len()),
                });
            }
        }
        if self.active == index {
            return Ok(());
        }
        if let Some(cur) = self.active.take() {
            self.adapters[cur].pairs = detach(model);
        }
        if let Some(i) = index {
            let parked = &mut self.adapters[i];
            for (layer, target, lora) in parked.pairs.drain(..) {
                model.linear_mut(layer, target).lora = Some(lora);
            }
            model.lora = Some(parked.cfg.clone());
            self.active = Some(i);
        }
        Ok(())
    }

    /// Device bytes held by all loaded adapters.
    pub fn bytes(&self, model: &Model) -> u64 {
        let parked: u64 = self.adapters.iter().flat_map(|p| &p.pairs).map(|(_, _, l)| l.a.bytes() + l.b.bytes()).sum();
        parked + model.lora_tensors().iter().map(|(_, t)| t.bytes()).sum::<u64>()
    }
}

/// Takes every adapter pair out of the model's linears, leaving the base model.
fn detach(model: &mut Model) -> Vec<(usize, Target, Lora)> {
    let mut pairs = Vec::new();
    for layer in 0..model.layers.len() {
        for t in Target::ALL {
            if let Some(l) = model.linear_mut(layer, t).lora.take() {
                pairs.push((layer, t, l));
            }
        }
    }
    model.lora = None;
    pairs
}
