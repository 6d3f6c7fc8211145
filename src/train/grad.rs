//! Loss and LoRA gradients of one batch: the model-level training pass. Forward: embedding,
//! every layer in training mode (`model::layer::Layer::train`, which keeps what its backward
//! needs), final norm, output projection of the trained positions, cross-entropy. Backward runs
//! the same steps in reverse, down to the embedding output (the embedding is frozen). Every step
//! is an op from `ops`, so the same code runs on the CPU backend and on any GPU.
//!
//! With `recompute`, only each layer's input is kept and the layer runs forward again during
//! backward; dropout masks are a pure function of a per-step seed and the layer
//! (`model::linear::dropout_seed`), so the recomputed layer is bit-identical to the first.

use std::collections::BTreeMap;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::layer::{LayerGrads, Pass, Saved};
use crate::model::lora::{ParamKey, Side, Target};
use crate::model::weights::Model;
use crate::ops::{cross_entropy, embedding, rmsnorm};
use crate::tensor::{DType, Tensor};

/// How to run one batch.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Keep only each layer's input and recompute the layer during backward (less memory).
    pub recompute: bool,
    /// Dropout seed for this micro-batch; `None` turns dropout off (evaluation, gradient checks).
    pub dropout_seed: Option<u32>,
    /// Logits for every position. By default only positions with a target are projected to the
    /// vocabulary (the costliest product of a small model; MBPP with masked prompts trains ~1/3
    /// of its positions).
    pub all_logits: bool,
}

/// The forward pass of a batch, kept for backward.
pub struct Forward {
    b: usize,
    t: usize,
    inputs: Vec<Tensor>,       // L x layer input [B*T, C]
    saved: Vec<Option<Saved>>, // L, `None` when recomputing
    x: Tensor,                 // last layer's output
    xn: Tensor,
    rstd: Tensor,
    /// Which positions `logits` holds (`None`: all B*T, in order).
    rows: Option<Tensor>,
    /// Logits of those positions [M, V], and their targets [M] (u32, IGNORE where untrained).
    pub logits: Tensor,
    pub targets: Tensor,
    pub lse: Tensor, // [M]
    /// Loss per row of `logits`, 0 where the target is ignored.
    pub loss: Tensor, // [M]
    seed: Option<u32>,
}

/// Gradients of the adapter tensors, keyed like them (`ParamKey`): what `Model::backward` adds into.
pub struct Grads(BTreeMap<ParamKey, Tensor>);

impl Grads {
    /// A zero gradient for every adapter tensor attached to `model`.
    pub fn zeros(dev: &Device, model: &Model) -> Grads {
        Grads(
            model
                .lora_params()
                .into_iter()
                .map(|(k, t)| (k, Tensor::zeros(dev, &format!("grad.{}", k.peft_name()), t.shape(), DType::F32)))
                .collect(),
        )
    }

    /// Sets every gradient back to zero (fresh device buffers, as a new step needs).
    pub fn zero(&mut self, dev: &Device) {
        for g in self.0.values_mut() {
            *g = Tensor::zeros(dev, g.label(), &g.shape().to_vec(), DType::F32);
        }
    }

    pub fn get(&self, key: ParamKey) -> Option<&Tensor> {
        self.0.get(&key)
    }

    pub fn get_mut(&mut self, key: ParamKey) -> Option<&mut Tensor> {
        self.0.get_mut(&key)
    }

    /// (dA, dB) of every adapter in `layer`, by target (what `Layer::backward` adds into).
    fn layer_mut(&mut self, layer: usize) -> LayerGrads<'_> {
        let mut out = LayerGrads::default();
        let from = ParamKey { layer, target: Target::Q, side: Side::A };
        let to = ParamKey { layer, target: Target::Down, side: Side::B };
        let mut it = self.0.range_mut(from..=to);
        // Keys sort A before B within a target, and `backward` checked that both are present.
        while let (Some((key, da)), Some((_, db))) = (it.next(), it.next()) {
            out[key.target.index()] = Some((da, db));
        }
        out
    }

    /// (key, gradient) in key order.
    pub fn iter(&self) -> impl Iterator<Item = (ParamKey, &Tensor)> {
        self.0.iter().map(|(k, g)| (*k, g))
    }

    /// Gradients in key order.
    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.0.values()
    }

    pub fn tensors_mut(&mut self) -> impl Iterator<Item = (ParamKey, &mut Tensor)> {
        self.0.iter_mut().map(|(k, g)| (*k, g))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Model {
    /// Zeroed gradients, one per adapter tensor.
    pub fn zero_grads(&self, dev: &Device) -> Grads {
        Grads::zeros(dev, self)
    }

    /// Runs a batch (`ids` and `targets` [B, T] row-major, targets `cross_entropy::IGNORE` where
    /// not trained) through the model, keeping what `backward` needs.
    pub fn forward_train(&self, dev: &Device, ids: &[u32], targets: &[u32], b: usize, opts: Options) -> Result<Forward> {
        let cfg = &self.cfg;
        if b == 0 || ids.is_empty() || ids.len() % b != 0 || targets.len() != ids.len() {
            return Err(Error::shape(
                "forward_train",
                format!("{} tokens and {} targets do not split into {b} sequences", ids.len(), targets.len()),
            ));
        }
        let t = ids.len() / b;
        if t > self.rope.max_pos {
            return Err(Error::Limit {
                op: "forward_train",
                detail: format!("sequences of {t} tokens"),
                limit: self.rope.max_pos as u64,
                hint: "lower --max-len",
            });
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= cfg.vocab) {
            return Err(Error::shape("forward_train", format!("token id {bad} is outside the vocabulary of {}", cfg.vocab)));
        }
        let tokens = Tensor::from_u32(dev, "tokens", &[ids.len()], ids)?;
        let mut x = self.embed.rows(dev, &tokens)?;
        let (mut inputs, mut saved) = (Vec::with_capacity(cfg.layers), Vec::with_capacity(cfg.layers));
        for (i, layer) in self.layers.iter().enumerate() {
            let (y, s) = layer.train(dev, &x, &self.pass(b, t, i, opts.dropout_seed))?;
            inputs.push(x);
            saved.push(if opts.recompute { None } else { Some(s) });
            x = y;
        }
        let (xn, rstd) = rmsnorm::forward(dev, &x, &self.norm, cfg.eps)?;
        let mut picked: Vec<u32> = (0..ids.len() as u32).filter(|&i| targets[i as usize] != cross_entropy::IGNORE).collect();
        if picked.is_empty() {
            picked.push(0); // a batch with nothing to train still has one (ignored) row
        }
        let (rows, kept) = if opts.all_logits || picked.len() == ids.len() {
            (None, targets.to_vec())
        } else {
            let kept = picked.iter().map(|&i| targets[i as usize]).collect();
            (Some(Tensor::from_u32(dev, "trained positions", &[picked.len()], &picked)?), kept)
        };
        let targets = Tensor::from_u32(dev, "targets", &[kept.len()], &kept)?;
        let xs = rows.as_ref().map(|r| embedding::forward(dev, r, &xn)).transpose()?; // gathers rows
        let head_in = xs.as_ref().unwrap_or(&xn);
        let logits = match &self.lm_head {
            Some(head) => head.forward(dev, head_in, crate::model::linear::Mode::Train { dropout: None })?.0,
            None => self.embed.forward(dev, head_in, crate::model::linear::Mode::Train { dropout: None })?,
        };
        let (loss, lse) = cross_entropy::forward(dev, &logits, &targets)?;
        Ok(Forward { b, t, inputs, saved, x, xn, rstd, rows, logits, targets, lse, loss, seed: opts.dropout_seed })
    }

    /// Backpropagates `scale`·Σ loss(targets) from a forward pass and adds the adapter gradients
    /// into `grads`. `targets` (one per row of `fwd.logits`) default to the
    /// forward's; Sophia passes labels it sampled, since the log-sum-exp depends on the logits alone.
    pub fn backward(&self, dev: &Device, fwd: &Forward, targets: Option<&Tensor>, scale: f32, grads: &mut Grads) -> Result<()> {
        let targets = targets.unwrap_or(&fwd.targets);
        let keys = self.lora_keys();
        if !keys.iter().copied().eq(grads.0.keys().copied()) {
            return Err(Error::shape(
                "backward",
                format!("{} gradient tensors for {} adapter tensors (or for other ones)", grads.len(), keys.len()),
            ));
        }
        let dlogits = cross_entropy::backward(dev, &fwd.logits, targets, &fwd.lse, scale)?;
        let dxs = match &self.lm_head {
            Some(head) => head.backward(dev, &fwd.xn, None, &dlogits, None, None)?,
            None => self.embed.backward_dx(dev, &dlogits)?,
        };
        drop(dlogits);
        let dxn = match &fwd.rows {
            Some(r) => embedding::backward(dev, r, fwd.b * fwd.t, &dxs)?, // scatters rows back
            None => dxs,
        };
        let mut dx = rmsnorm::backward_dx(dev, &fwd.x, &self.norm, &fwd.rstd, &dxn)?;
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let pass = self.pass(fwd.b, fwd.t, i, fwd.seed);
            let recomputed;
            let s = match &fwd.saved[i] {
                Some(s) => s,
                None => {
                    recomputed = layer.train(dev, &fwd.inputs[i], &pass)?.1;
                    &recomputed
                }
            };
            dx = layer.backward(dev, &fwd.inputs[i], s, &dx, &pass, grads.layer_mut(i))?;
        }
        Ok(())
    }

    /// Layer `layer`'s view of a training pass over B sequences of T tokens.
    fn pass(&self, b: usize, t: usize, layer: usize, seed: Option<u32>) -> Pass<'_> {
        Pass { cfg: &self.cfg, rope: &self.rope, b, t, layer, seed }
    }
}
