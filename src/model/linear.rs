//! The linear layer, frozen weight plus optional LoRA adapter, in both directions. Inference
//! and training call the same `forward`; training passes a dropout seed and keeps the adapter's
//! activation for `backward`.
//!
//! Forward: y = x·Wᵀ + bias + s·(drop(x)·Aᵀ)·Bᵀ, with W [out, in], A [R, in], B [out, R] and s
//! the adapter's scale (`lora::Lora`). It returns xa = drop(x)·Aᵀ [N, R] too, for backward.
//! Backward, from dy [N, out]: dx = dy·W + s·drop'((dy·B)·A) (dy·W by the fused NF4/GGUF
//! `backward_dx` for quantized weights); the adapter gets dB += s·dyᵀ·xa and
//! dA += s·(dy·B)ᵀ·drop(x). The frozen W and bias get no gradient.
//!
//! Dropout masks are a pure function of the seed (`dropout_seed`: one per step, layer and
//! target) and the element index (`ops::elementwise::dropout`), so a layer recomputed during
//! backward reproduces its forward bit for bit, and backward's drop' uses the same mask.

use crate::device::Device;
use crate::error::Result;
use crate::model::lora::{Lora, Target};
use crate::model::weights::Weight;
use crate::ops::{elementwise, matmul};
use crate::tensor::Tensor;

/// A frozen linear layer y = x · Wᵀ (+ bias), with an optional trainable LoRA adapter.
#[derive(Debug)]
pub struct Linear {
    pub weight: Weight,       // [out, in]
    pub bias: Option<Tensor>, // [out]
    pub lora: Option<Lora>,
}

/// The dropout seed of the adapter on `target` in layer `layer`, from the micro-batch's seed.
pub fn dropout_seed(seed: u32, layer: usize, target: Target) -> u32 {
    let slot = layer * Target::ALL.len() + target.index();
    elementwise::hash(seed ^ elementwise::hash(slot as u32 + 1))
}

/// How a linear runs, the one difference between the layer's two modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Training and loss evaluation: f32 activations (gradients come from the f32 model), and
    /// the adapter's dropout with this seed (`dropout_seed`), or none.
    Train { dropout: Option<u32> },
    /// Inference: no dropout; products over GGUF blocks quantize x to 8-bit blocks as llama.cpp
    /// does (`matmul_gguf::forward_int8`).
    Infer,
}

impl Linear {
    /// The frozen part, x [N, in] -> x·Wᵀ + bias [N, out], with f32 activations.
    pub fn base(&self, dev: &Device, x: &Tensor) -> Result<Tensor> {
        self.base_in(dev, x, Mode::Train { dropout: None })
    }

    fn base_in(&self, dev: &Device, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut y = self.weight.forward(dev, x, mode)?;
        if let Some(b) = &self.bias {
            elementwise::add_bias(dev, &mut y, b)?;
        }
        Ok(y)
    }

    /// x [N, in] -> (y [N, out], xa = drop(x)·Aᵀ [N, R] when adapted), in `mode` (dropout
    /// only in training, with the seed it carries).
    pub fn forward(&self, dev: &Device, x: &Tensor, mode: Mode) -> Result<(Tensor, Option<Tensor>)> {
        let mut y = self.base_in(dev, x, mode)?;
        let dropout = match mode {
            Mode::Train { dropout } => dropout,
            Mode::Infer => None,
        };
        let Some(l) = &self.lora else { return Ok((y, None)) };
        // Inference: each row alone (`forward_rows`), so a sequence's tokens do not depend on
        // which other sequences share its decode step.
        let product = |a: &Tensor, w: &Tensor| match mode {
            Mode::Infer => matmul::forward_rows(dev, a, w),
            Mode::Train { .. } => matmul::forward(dev, a, w, false, true),
        };
        let xa = match l.drop(dev, x, dropout)? {
            Some(xd) => product(&xd, &l.a)?,
            None => product(x, &l.a)?,
        };
        elementwise::accumulate(dev, &mut y, &product(&xa, &l.b)?, l.scale)?;
        Ok((y, Some(xa)))
    }

    /// dx [N, in] of `forward` given its input x, its xa and dy [N, out]; adds the adapter's
    /// gradients into `grads` = (dA, dB) when adapted. Without `grads` (a frozen projection such
    /// as the output head) only dx is computed.
    pub fn backward(
        &self,
        dev: &Device,
        x: &Tensor,
        xa: Option<&Tensor>,
        dy: &Tensor,
        dropout: Option<u32>,
        grads: Option<(&mut Tensor, &mut Tensor)>,
    ) -> Result<Tensor> {
        let mut dx = self.weight.backward_dx(dev, dy)?;
        let (Some(l), Some(xa), Some((da, db))) = (&self.lora, xa, grads) else { return Ok(dx) };
        elementwise::accumulate(dev, db, &matmul::forward(dev, dy, xa, true, false)?, l.scale)?;
        let dxa = matmul::forward(dev, dy, &l.b, false, false)?; // [N, R]
        let xd = l.drop(dev, x, dropout)?;
        elementwise::accumulate(dev, da, &matmul::forward(dev, &dxa, xd.as_ref().unwrap_or(x), true, false)?, l.scale)?;
        let dxl = matmul::forward(dev, &dxa, &l.a, false, false)?;
        elementwise::accumulate(dev, &mut dx, l.drop(dev, &dxl, dropout)?.as_ref().unwrap_or(&dxl), l.scale)?;
        Ok(dx)
    }

    /// This layer's adapter, for the loops that walk every trainable tensor.
    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// Device bytes of the frozen weight and bias.
    pub fn bytes(&self) -> u64 {
        self.weight.bytes() + self.bias.as_ref().map_or(0, |b| b.bytes())
    }

    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }
}

impl Lora {
    /// drop(t) under `seed`, or `None` when dropout is off (no seed, or probability 0), so that
    /// callers use `t` itself without a copy.
    fn drop(&self, dev: &Device, t: &Tensor, seed: Option<u32>) -> Result<Option<Tensor>> {
        match seed {
            Some(s) if self.dropout > 0.0 => Ok(Some(elementwise::dropout(dev, t, self.dropout, s)?)),
            _ => Ok(None),
        }
    }
}
