//! Loss and LoRA gradients of one batch: the training forward pass, which keeps what the backward
//! pass needs, and the backward pass through the whole model down to the embedding output. Every
//! step is an op from `ops`, so the same code runs on the CPU backend and on any GPU.
//!
//! Per layer (x [B*T, C], forward as in `model::forward`, LoRA terms included):
//!   h1 = rmsnorm(x); q, k, v = lin(h1); q, k = rope(q, k); o = attention(q, k, v); m = x + lin_o(o)
//!   h2 = rmsnorm(m); a = swiglu(lin_g(h2), lin_u(h2)); y = m + lin_d(a)
//! Backward, from dy: dm = dy + rmsnorm'(lin_g'(dg) + lin_u'(du)) with (dg, du) = swiglu'(lin_d'(dy));
//! dx = dm + rmsnorm'(lin_q'(rope'(dq)) + lin_k'(rope'(dk)) + lin_v'(dv)) with (dq, dk, dv) =
//! attention'(lin_o'(dm)).
//! A linear layer's input gradient is dy·W (fused NF4 `backward_dx` for 4-bit weights) plus the
//! adapter's s·drop'((dy·B)·A); its adapter gradients are dB = s·dyᵀ·xa and dA = s·(dy·B)ᵀ·drop(x),
//! with xa = drop(x)·Aᵀ saved by the forward pass. The frozen weights get no gradient.
//!
//! Dropout masks are a pure function of a per-step seed and the layer (see `ops::elementwise::dropout`),
//! so recomputing a layer during backward (`recompute`) reproduces its forward bit for bit.

use std::collections::BTreeMap;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::lora::{ParamKey, Side, Target};
use crate::model::weights::{Layer, Linear, Model, Weight};
use crate::ops::{attention, cross_entropy, elementwise, embedding, matmul, matmul_nf4, rmsnorm, rope, swiglu};
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

/// What a layer's backward pass needs.
struct Saved {
    h1: Tensor,
    rstd1: Tensor,
    q: Tensor, // after RoPE, [B*T, H*D]
    k: Tensor, // after RoPE, [B*T, K*D]
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    m: Tensor,
    h2: Tensor,
    rstd2: Tensor,
    g: Tensor,
    u: Tensor,
    /// x·Aᵀ per adapted target (index in `Target::ALL`).
    xa: [Option<Tensor>; 7],
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

fn linear_seed(seed: u32, layer: usize, target: Target) -> u32 {
    let slot = layer * Target::ALL.len() + target.index();
    elementwise::hash(seed ^ elementwise::hash(slot as u32 + 1))
}

/// y = x·Wᵀ + bias + s·(drop(x)·Aᵀ)·Bᵀ; also returns xa = drop(x)·Aᵀ when adapted.
fn linear_forward(dev: &Device, lin: &Linear, x: &Tensor, seed: Option<u32>) -> Result<(Tensor, Option<Tensor>)> {
    let mut y = lin.base(dev, x)?;
    let Some(l) = &lin.lora else { return Ok((y, None)) };
    let xa = match seed {
        Some(s) if l.dropout > 0.0 => matmul::forward(dev, &elementwise::dropout(dev, x, l.dropout, s)?, &l.a, false, true)?,
        _ => matmul::forward(dev, x, &l.a, false, true)?,
    };
    elementwise::accumulate(dev, &mut y, &matmul::forward(dev, &xa, &l.b, false, true)?, l.scale)?;
    Ok((y, Some(xa)))
}

/// dx of `linear_forward`; adds the adapter's gradients into `grads` = (dA, dB) when adapted.
fn linear_backward(
    dev: &Device,
    lin: &Linear,
    x: &Tensor,
    xa: Option<&Tensor>,
    dy: &Tensor,
    seed: Option<u32>,
    grads: Option<(&mut Tensor, &mut Tensor)>,
) -> Result<Tensor> {
    let mut dx = match &lin.weight {
        Weight::F32(w) => matmul::forward(dev, dy, w, false, false)?,
        Weight::Nf4(q) => matmul_nf4::backward_dx(dev, dy, q)?,
        Weight::Gguf(g) => crate::ops::matmul_gguf::backward_dx(dev, dy, g)?,
    };
    let (Some(l), Some(xa), Some((da, db))) = (&lin.lora, xa, grads) else { return Ok(dx) };
    let dropped = |t: &Tensor| -> Result<Option<Tensor>> {
        match seed {
            Some(s) if l.dropout > 0.0 => Ok(Some(elementwise::dropout(dev, t, l.dropout, s)?)),
            _ => Ok(None),
        }
    };
    elementwise::accumulate(dev, db, &matmul::forward(dev, dy, xa, true, false)?, l.scale)?;
    let dxa = matmul::forward(dev, dy, &l.b, false, false)?; // [N, R]
    let xd = dropped(x)?;
    elementwise::accumulate(dev, da, &matmul::forward(dev, &dxa, xd.as_ref().unwrap_or(x), true, false)?, l.scale)?;
    let dxl = matmul::forward(dev, &dxa, &l.a, false, false)?;
    elementwise::accumulate(dev, &mut dx, dropped(&dxl)?.as_ref().unwrap_or(&dxl), l.scale)?;
    Ok(dx)
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

    /// (dA, dB) of the adapter on `target` in `layer`, when it has one.
    fn pair_mut(&mut self, layer: usize, target: Target) -> Option<(&mut Tensor, &mut Tensor)> {
        let from = ParamKey { layer, target, side: Side::A };
        let to = ParamKey { layer, target, side: Side::B };
        let mut it = self.0.range_mut(from..=to).map(|(_, g)| g);
        Some((it.next()?, it.next()?))
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

    fn attention_dims(&self, b: usize, t: usize) -> attention::Dims {
        let c = &self.cfg;
        attention::Dims { b, t, s: t, h: c.h, kv: c.kv, d: c.d, scale: 1.0 / (c.d as f32).sqrt(), s_cap: t }
    }

    fn layer_forward(&self, dev: &Device, i: usize, x: &Tensor, b: usize, t: usize, seed: Option<u32>) -> Result<(Tensor, Saved)> {
        let (cfg, layer) = (&self.cfg, &self.layers[i]);
        let n = b * t;
        let ls = |target| seed.map(|s| linear_seed(s, i, target));
        let mut xa: [Option<Tensor>; 7] = Default::default();
        let (h1, rstd1) = rmsnorm::forward(dev, x, &layer.attn_norm, cfg.eps)?;
        let mut lin = |target: Target, input: &Tensor| -> Result<Tensor> {
            let (y, saved) = linear_forward(dev, self.linear(i, target), input, ls(target))?;
            xa[target.index()] = saved;
            Ok(y)
        };
        let q = lin(Target::Q, &h1)?.reshape(&[n, cfg.h, cfg.d])?;
        let k = lin(Target::K, &h1)?.reshape(&[n, cfg.kv, cfg.d])?;
        let v = lin(Target::V, &h1)?;
        let q = rope::forward(dev, &q, &self.rope, t, 0, rope::Layout::HalfSplit)?.reshape(&[n, cfg.h * cfg.d])?;
        let k = rope::forward(dev, &k, &self.rope, t, 0, rope::Layout::HalfSplit)?.reshape(&[n, cfg.kv * cfg.d])?;
        let (o, lse) = attention::forward(dev, &q, &k, &v, self.attention_dims(b, t))?;
        let m = elementwise::add(dev, x, &lin(Target::O, &o)?)?;
        let (h2, rstd2) = rmsnorm::forward(dev, &m, &layer.mlp_norm, cfg.eps)?;
        let g = lin(Target::Gate, &h2)?;
        let u = lin(Target::Up, &h2)?;
        let y = elementwise::add(dev, &m, &lin(Target::Down, &swiglu::forward(dev, &g, &u)?)?)?;
        Ok((y, Saved { h1, rstd1, q, k, v, o, lse, m, h2, rstd2, g, u, xa }))
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
        let mut x = embedding::forward(dev, &tokens, &self.embed)?;
        let (mut inputs, mut saved) = (Vec::with_capacity(cfg.layers), Vec::with_capacity(cfg.layers));
        for i in 0..self.layers.len() {
            let (y, s) = self.layer_forward(dev, i, &x, b, t, opts.dropout_seed)?;
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
            Some(head) => head.forward(dev, head_in)?,
            None => matmul::forward(dev, head_in, &self.embed, false, true)?,
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
            Some(head) => linear_backward(dev, head, &fwd.xn, None, &dlogits, None, None)?,
            None => matmul::forward(dev, &dlogits, &self.embed, false, false)?,
        };
        drop(dlogits);
        let dxn = match &fwd.rows {
            Some(r) => embedding::backward(dev, r, fwd.b * fwd.t, &dxs)?, // scatters rows back
            None => dxs,
        };
        let (mut dx, _) = rmsnorm::backward(dev, &fwd.x, &self.norm, &fwd.rstd, &dxn)?;
        for i in (0..self.layers.len()).rev() {
            let recomputed;
            let s = match &fwd.saved[i] {
                Some(s) => s,
                None => {
                    recomputed = self.layer_forward(dev, i, &fwd.inputs[i], fwd.b, fwd.t, fwd.seed)?.1;
                    &recomputed
                }
            };
            dx = self.layer_backward(dev, i, &fwd.inputs[i], s, &dx, fwd.b, fwd.t, fwd.seed, grads)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        dev: &Device,
        i: usize,
        x: &Tensor,
        s: &Saved,
        dy: &Tensor,
        b: usize,
        t: usize,
        seed: Option<u32>,
        grads: &mut Grads,
    ) -> Result<Tensor> {
        let (cfg, layer): (_, &Layer) = (&self.cfg, &self.layers[i]);
        let n = b * t;
        let mut lin = |target: Target, input: &Tensor, d: &Tensor| -> Result<Tensor> {
            let g = grads.pair_mut(i, target);
            let xa = s.xa[target.index()].as_ref();
            linear_backward(dev, self.linear(i, target), input, xa, d, seed.map(|sd| linear_seed(sd, i, target)), g)
        };
        // MLP: y = m + down(swiglu(gate(h2), up(h2))).
        // down_proj's input is needed only for its adapter's dA.
        let a = if self.linear(i, Target::Down).lora().is_some() { Some(swiglu::forward(dev, &s.g, &s.u)?) } else { None };
        let da = lin(Target::Down, a.as_ref().unwrap_or(dy), dy)?;
        drop(a);
        let (dg, du) = swiglu::backward(dev, &s.g, &s.u, &da)?;
        let mut dh2 = lin(Target::Gate, &s.h2, &dg)?;
        elementwise::accumulate(dev, &mut dh2, &lin(Target::Up, &s.h2, &du)?, 1.0)?;
        let (mut dm, _) = rmsnorm::backward(dev, &s.m, &layer.mlp_norm, &s.rstd2, &dh2)?;
        elementwise::accumulate(dev, &mut dm, dy, 1.0)?;
        // Attention: m = x + o_proj(attention(rope(q(h1)), rope(k(h1)), v(h1))).
        let do_ = lin(Target::O, &s.o, &dm)?;
        let (dq, dk, dv) = attention::backward(dev, &s.q, &s.k, &s.v, &s.o, &s.lse, &do_, self.attention_dims(b, t))?;
        let dq = rope::backward(dev, &dq.reshape(&[n, cfg.h, cfg.d])?, &self.rope, t, 0, rope::Layout::HalfSplit)?
            .reshape(&[n, cfg.h * cfg.d])?;
        let dk = rope::backward(dev, &dk.reshape(&[n, cfg.kv, cfg.d])?, &self.rope, t, 0, rope::Layout::HalfSplit)?
            .reshape(&[n, cfg.kv * cfg.d])?;
        let mut dh1 = lin(Target::Q, &s.h1, &dq)?;
        elementwise::accumulate(dev, &mut dh1, &lin(Target::K, &s.h1, &dk)?, 1.0)?;
        elementwise::accumulate(dev, &mut dh1, &lin(Target::V, &s.h1, &dv)?, 1.0)?;
        let (mut dx, _) = rmsnorm::backward(dev, x, &layer.attn_norm, &s.rstd1, &dh1)?;
        elementwise::accumulate(dev, &mut dx, &dm, 1.0)?;
        Ok(dx)
    }
}
