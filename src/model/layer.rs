//! One transformer layer (Llama's pre-norm block), forward in two modes and backward.
//!
//! Forward (x [N, C] with N = B·T rows; `lin` is `Linear::forward`, LoRA included):
//!   h1 = rmsnorm(x); q, k, v = lin_q(h1), lin_k(h1), lin_v(h1); o = attention(rope(q), rope(k), v)
//!   m = x + lin_o(o); h2 = rmsnorm(m); y = m + lin_down(swiglu(lin_gate(h2), lin_up(h2))).
//! The two modes share everything but attention and the residual adds:
//! - `infer`: RoPE, the KV cache and attention are the caller's (`attend`: the many-token forward
//!   and the batched decode step differ there); the residual stream is updated in place (no new
//!   buffer per layer and token); nothing is saved; no dropout.
//! - `train`: B sequences from position 0 without a cache; dropout on the adapters' inputs;
//!   returns y as a new tensor (the caller keeps x) and `Saved`, what `backward` needs.
//!
//! Backward, from dy, runs the block in reverse:
//!   dm = dy + rmsnorm'(lin_gate'(dg) + lin_up'(du)) with (dg, du) = swiglu'(lin_down'(dy));
//!   dx = dm + rmsnorm'(lin_q'(rope'(dq)) + lin_k'(rope'(dk)) + lin_v'(dv))
//!   with (dq, dk, dv) = attention'(lin_o'(dm)). The norms are frozen: only their dx.

use crate::device::Device;
use crate::error::Result;
use crate::model::config::Config;
use crate::model::linear::{dropout_seed, Linear, Mode};
use crate::model::lora::Target;
use crate::ops::rope::{self, RopeTables};
use crate::ops::{attention, elementwise, rmsnorm, swiglu};
use crate::tensor::Tensor;

#[derive(Debug)]
pub struct Layer {
    pub attn_norm: Tensor, // [C]
    pub q: Linear,         // [H*D, C]
    pub k: Linear,         // [K*D, C]
    pub v: Linear,         // [K*D, C]
    pub o: Linear,         // [C, H*D]
    pub mlp_norm: Tensor,  // [C]
    pub gate: Linear,      // [F, C]
    pub up: Linear,        // [F, C]
    pub down: Linear,      // [C, F]
}

/// A training pass as one layer sees it: B sequences of T tokens from position 0, the layer's
/// index and the micro-batch's dropout seed (`None`: dropout off).
#[derive(Debug, Clone, Copy)]
pub struct Pass<'a> {
    pub cfg: &'a Config,
    pub rope: &'a RopeTables,
    pub b: usize,
    pub t: usize,
    pub layer: usize,
    pub seed: Option<u32>,
}

impl Pass<'_> {
    /// The dropout seed of the adapter on `target` in this layer.
    fn dropout(&self, target: Target) -> Option<u32> {
        self.seed.map(|s| dropout_seed(s, self.layer, target))
    }

    fn attention_dims(&self) -> attention::Dims {
        let c = self.cfg;
        attention::Dims { b: self.b, t: self.t, s: self.t, h: c.h, kv: c.kv, d: c.d, scale: 1.0 / (c.d as f32).sqrt(), s_cap: self.t }
    }
}

/// What a layer's backward pass needs from its forward pass (besides the input x).
pub struct Saved {
    h1: Tensor,    // rmsnorm(x) [N, C]
    rstd1: Tensor, // [N]
    q: Tensor,     // after RoPE, [N, H*D]
    k: Tensor,     // after RoPE, [N, K*D]
    v: Tensor,     // [N, K*D]
    o: Tensor,     // attention output [N, H*D]
    lse: Tensor,   // attention's log-sum-exp [B, H, T]
    m: Tensor,     // x + lin_o(o) [N, C]
    h2: Tensor,    // rmsnorm(m) [N, C]
    rstd2: Tensor, // [N]
    g: Tensor,     // lin_gate(h2) [N, F]
    u: Tensor,     // lin_up(h2) [N, F]
    /// drop(input)·Aᵀ [N, R] per adapted target (index in `Target::ALL`).
    xa: Xa,
}

/// The adapters' xa = drop(input)·Aᵀ per target; `Linear::backward` takes them back.
type Xa = [Option<Tensor>; 7];

/// (dA, dB) of each target's adapter in one layer, `None` where the target has none.
pub type LayerGrads<'a> = [Option<(&'a mut Tensor, &'a mut Tensor)>; 7];

impl Layer {
    /// The seven linear layers in `lora::Target::ALL` order (q, k, v, o, gate, up, down).
    pub fn linears(&self) -> [&Linear; 7] {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down]
    }

    pub fn linears_mut(&mut self) -> [&mut Linear; 7] {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.o, &mut self.gate, &mut self.up, &mut self.down]
    }

    /// Inference: x [N, C] becomes the layer's output in place. `attend(q, k, v)` takes the
    /// projections [N, H*D], [N, K*D], [N, K*D] (before RoPE) and returns attention's output [N, H*D].
    pub fn infer(
        &self,
        dev: &Device,
        cfg: &Config,
        x: &mut Tensor,
        attend: &mut dyn FnMut(Tensor, Tensor, Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        let mut xa = Xa::default();
        let infer = |_| Mode::Infer;
        let (_, q, k, v) = self.attn_in(dev, cfg, x, &infer, &mut xa)?;
        let o = attend(q, k, v)?;
        elementwise::accumulate(dev, x, &self.lin(dev, Target::O, &o, &infer, &mut xa)?, 1.0)?;
        let (_, mlp) = self.mlp(dev, cfg, x, &infer, &mut xa)?;
        elementwise::accumulate(dev, x, &mlp, 1.0)
    }

    /// Training: x [N, C] -> (y [N, C], what `backward` needs).
    pub fn train(&self, dev: &Device, x: &Tensor, p: &Pass) -> Result<(Tensor, Saved)> {
        let (cfg, n) = (p.cfg, p.b * p.t);
        let dropout = |target| Mode::Train { dropout: p.dropout(target) };
        let mut xa = Xa::default();
        let ((h1, rstd1), q, k, v) = self.attn_in(dev, cfg, x, &dropout, &mut xa)?;
        let q =
            rope::forward(dev, &q.reshape(&[n, cfg.h, cfg.d])?, p.rope, p.t, 0, rope::Layout::HalfSplit)?.reshape(&[n, cfg.h * cfg.d])?;
        let k =
            rope::forward(dev, &k.reshape(&[n, cfg.kv, cfg.d])?, p.rope, p.t, 0, rope::Layout::HalfSplit)?.reshape(&[n, cfg.kv * cfg.d])?;
        let (o, lse) = attention::forward(dev, &q, &k, &v, p.attention_dims())?;
        let m = elementwise::add(dev, x, &self.lin(dev, Target::O, &o, &dropout, &mut xa)?)?;
        let ((h2, rstd2, g, u), mlp) = self.mlp(dev, cfg, &m, &dropout, &mut xa)?;
        let y = elementwise::add(dev, &m, &mlp)?;
        Ok((y, Saved { h1, rstd1, q, k, v, o, lse, m, h2, rstd2, g, u, xa }))
    }

    /// One linear of the layer, keeping its adapter's xa.
    fn lin(&self, dev: &Device, target: Target, x: &Tensor, mode: &dyn Fn(Target) -> Mode, xa: &mut Xa) -> Result<Tensor> {
        let (y, a) = self.linears()[target.index()].forward(dev, x, mode(target))?;
        xa[target.index()] = a;
        Ok(y)
    }

    /// The attention block's input side: ((h1, rstd1), q, k, v) with h1 = rmsnorm(x).
    #[allow(clippy::type_complexity)]
    fn attn_in(
        &self,
        dev: &Device,
        cfg: &Config,
        x: &Tensor,
        dropout: &dyn Fn(Target) -> Mode,
        xa: &mut Xa,
    ) -> Result<((Tensor, Tensor), Tensor, Tensor, Tensor)> {
        let (h1, rstd1) = rmsnorm::forward(dev, x, &self.attn_norm, cfg.eps)?;
        let q = self.lin(dev, Target::Q, &h1, dropout, xa)?;
        let k = self.lin(dev, Target::K, &h1, dropout, xa)?;
        let v = self.lin(dev, Target::V, &h1, dropout, xa)?;
        Ok(((h1, rstd1), q, k, v))
    }

    /// The MLP block without its residual: ((h2, rstd2, g, u), lin_down(swiglu(g, u))) with
    /// h2 = rmsnorm(m), g = lin_gate(h2), u = lin_up(h2).
    #[allow(clippy::type_complexity)]
    fn mlp(
        &self,
        dev: &Device,
        cfg: &Config,
        m: &Tensor,
        dropout: &dyn Fn(Target) -> Mode,
        xa: &mut Xa,
    ) -> Result<((Tensor, Tensor, Tensor, Tensor), Tensor)> {
        let (h2, rstd2) = rmsnorm::forward(dev, m, &self.mlp_norm, cfg.eps)?;
        let g = self.lin(dev, Target::Gate, &h2, dropout, xa)?;
        let u = self.lin(dev, Target::Up, &h2, dropout, xa)?;
        let out = self.lin(dev, Target::Down, &swiglu::forward(dev, &g, &u)?, dropout, xa)?;
        Ok(((h2, rstd2, g, u), out))
    }

    /// dx [N, C] from dy [N, C], given the layer's input x and its `Saved`; adds the adapters'
    /// gradients into `grads`. Runs the block in reverse: MLP first, then attention.
    pub fn backward(&self, dev: &Device, x: &Tensor, s: &Saved, dy: &Tensor, p: &Pass, mut grads: LayerGrads) -> Result<Tensor> {
        let (cfg, n) = (p.cfg, p.b * p.t);
        let mut lin = |target: Target, input: &Tensor, d: &Tensor| -> Result<Tensor> {
            let (i, xa) = (target.index(), s.xa[target.index()].as_ref());
            self.linears()[i].backward(dev, input, xa, d, p.dropout(target), grads[i].take())
        };
        // MLP: y = m + down(swiglu(gate(h2), up(h2))).
        // down_proj's input is needed only for its adapter's dA.
        let a = if self.down.lora().is_some() { Some(swiglu::forward(dev, &s.g, &s.u)?) } else { None };
        let da = lin(Target::Down, a.as_ref().unwrap_or(dy), dy)?;
        drop(a);
        let (dg, du) = swiglu::backward(dev, &s.g, &s.u, &da)?;
        let mut dh2 = lin(Target::Gate, &s.h2, &dg)?;
        elementwise::accumulate(dev, &mut dh2, &lin(Target::Up, &s.h2, &du)?, 1.0)?;
        let mut dm = rmsnorm::backward_dx(dev, &s.m, &self.mlp_norm, &s.rstd2, &dh2)?;
        elementwise::accumulate(dev, &mut dm, dy, 1.0)?;
        // Attention: m = x + o_proj(attention(rope(q(h1)), rope(k(h1)), v(h1))).
        let do_ = lin(Target::O, &s.o, &dm)?;
        let (dq, dk, dv) = attention::backward(dev, &s.q, &s.k, &s.v, &s.o, &s.lse, &do_, p.attention_dims())?;
        let dq =
            rope::backward(dev, &dq.reshape(&[n, cfg.h, cfg.d])?, p.rope, p.t, 0, rope::Layout::HalfSplit)?.reshape(&[n, cfg.h * cfg.d])?;
        let dk = rope::backward(dev, &dk.reshape(&[n, cfg.kv, cfg.d])?, p.rope, p.t, 0, rope::Layout::HalfSplit)?
            .reshape(&[n, cfg.kv * cfg.d])?;
        let mut dh1 = lin(Target::Q, &s.h1, &dq)?;
        elementwise::accumulate(dev, &mut dh1, &lin(Target::K, &s.h1, &dk)?, 1.0)?;
        elementwise::accumulate(dev, &mut dh1, &lin(Target::V, &s.h1, &dv)?, 1.0)?;
        let mut dx = rmsnorm::backward_dx(dev, x, &self.attn_norm, &s.rstd1, &dh1)?;
        elementwise::accumulate(dev, &mut dx, &dm, 1.0)?;
        Ok(dx)
    }
}
