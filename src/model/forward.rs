//! Inference: the forward pass with a KV cache, on any device.
//!
//! x = embedding(tokens) [B*T, C]; every layer in inference mode (`Layer::infer`, in `layer`),
//! whose attention step is here: RoPE(q, k) at positions len..len+T, append k, v to the cache,
//! attention(q, cache). Then logits = rmsnorm(x)·Eᵀ (E the embedding when tied, else lm_head).

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::weights::Model;
use crate::ops::{attention, matmul_q8, rmsnorm, rope};
use crate::tensor::{DType, Tensor};

/// Keys and values of every layer for B sequences, with room for `cap` positions each.
#[derive(Debug)]
pub struct KvCache {
    pub k: Vec<Tensor>, // L x [B*cap, K*D]
    pub v: Vec<Tensor>, // L x [B*cap, K*D]
    pub b: usize,
    pub cap: usize,
    /// Positions filled so far (the same for every sequence).
    pub len: usize,
}

impl Model {
    pub fn new_cache(&self, dev: &Device, b: usize, cap: usize) -> KvCache {
        let kd = self.cfg.kv * self.cfg.d;
        let make = |name: &str| {
            (0..self.cfg.layers).map(|i| Tensor::zeros(dev, &format!("cache.{name}.{i}"), &[b * cap, kd], DType::F32)).collect()
        };
        KvCache { k: make("k"), v: make("v"), b, cap, len: 0 }
    }

    /// Runs `tokens` (B sequences of T new tokens each, row-major [B, T]) through the model after
    /// the cache's positions, appends their keys and values to the cache, and returns logits:
    /// [B*T, V] when `all_positions`, else the last position of each sequence [B, V].
    pub fn forward(&self, dev: &Device, tokens: &[u32], cache: &mut KvCache, all_positions: bool) -> Result<Tensor> {
        dev.on_pool(|| self.forward_here(dev, tokens, cache, all_positions))
    }

    /// `forward` on the calling thread.
    fn forward_here(&self, dev: &Device, tokens: &[u32], cache: &mut KvCache, all_positions: bool) -> Result<Tensor> {
        let cfg = &self.cfg;
        let b = cache.b;
        if b == 0 || tokens.is_empty() || tokens.len() % b != 0 {
            return Err(Error::shape("forward", format!("{} tokens do not split into {b} sequences", tokens.len())));
        }
        let t = tokens.len() / b;
        let s = cache.len + t;
        if s > cache.cap || s > self.rope.max_pos {
            return Err(Error::Limit {
                op: "forward",
                detail: format!("sequence of {s} positions"),
                limit: cache.cap.min(self.rope.max_pos) as u64,
                hint: "shorten the prompt or --max-new-tokens",
            });
        }
        let (h, kv, d) = (cfg.h, cfg.kv, cfg.d);
        let dims = attention::Dims { b, t, s, h, kv, d, scale: 1.0 / (d as f32).sqrt(), s_cap: cache.cap };
        let x = self.layers_with(dev, tokens, &mut |i, q, k, v| {
            let q = rope::forward(dev, &q.reshape(&[b * t, h, d])?, &self.rope, t, cache.len, rope::Layout::HalfSplit)?;
            let k = rope::forward(dev, &k.reshape(&[b * t, kv, d])?, &self.rope, t, cache.len, rope::Layout::HalfSplit)?;
            for bi in 0..b {
                let (from, to, n) = (bi * t * kv * d, (bi * cache.cap + cache.len) * kv * d, t * kv * d);
                cache.k[i].copy_from(dev, &k, from, to, n)?;
                cache.v[i].copy_from(dev, &v, from, to, n)?;
            }
            Ok(attention::forward(dev, &q.reshape(&[b * t, h * d])?, &cache.k[i], &cache.v[i], dims)?.0)
        })?;
        cache.len = s;
        let x = if all_positions || t == 1 {
            x
        } else {
            let mut last = Tensor::zeros(dev, "last", &[b, cfg.c], DType::F32);
            for bi in 0..b {
                last.copy_from(dev, &x, (bi * t + t - 1) * cfg.c, bi * cfg.c, cfg.c)?;
            }
            last
        };
        self.logits(dev, &x)
    }

    /// One decode step for several independent sequences, each with its own cache (of one
    /// sequence): `tokens[i]` continues `caches[i]`. The linears see the sequences as one [S, C]
    /// batch, so each weight is read once per step for all of them; RoPE and attention run per
    /// sequence at its own position. Returns the logits [S, V].
    pub fn decode_step(&self, dev: &Device, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        dev.on_pool(|| self.decode_step_here(dev, tokens, caches))
    }

    /// `decode_step` on the calling thread.
    fn decode_step_here(&self, dev: &Device, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let cfg = &self.cfg;
        if tokens.is_empty() || tokens.len() != caches.len() || caches.iter().any(|c| c.b != 1) {
            return Err(Error::shape("decode_step", format!("{} tokens for {} single-sequence caches", tokens.len(), caches.len())));
        }
        if let Some(c) = caches.iter().find(|c| c.len + 1 > c.cap || c.len + 1 > self.rope.max_pos) {
            return Err(Error::Limit {
                op: "decode_step",
                detail: format!("sequence of {} positions", c.len + 1),
                limit: c.cap.min(self.rope.max_pos) as u64,
                hint: "shorten the prompt or --max-new-tokens",
            });
        }
        let (h, kv, d) = (cfg.h, cfg.kv, cfg.d);
        let x = self.layers_with(dev, tokens, &mut |i, q, k, v| {
            let mut o = Tensor::zeros(dev, "decode.o", &[tokens.len(), h * d], DType::F32);
            for (si, cache) in caches.iter_mut().enumerate() {
                let row = |src: &Tensor, width: usize, shape: &[usize]| -> Result<Tensor> {
                    let mut r = Tensor::zeros(dev, "decode.row", &[1, width], DType::F32);
                    r.copy_from(dev, src, si * width, 0, width)?;
                    r.reshape(shape)
                };
                let qi = rope::forward(dev, &row(&q, h * d, &[1, h, d])?, &self.rope, 1, cache.len, rope::Layout::HalfSplit)?;
                let ki = rope::forward(dev, &row(&k, kv * d, &[1, kv, d])?, &self.rope, 1, cache.len, rope::Layout::HalfSplit)?;
                cache.k[i].copy_from(dev, &ki, 0, cache.len * kv * d, kv * d)?;
                cache.v[i].copy_from(dev, &v, si * kv * d, cache.len * kv * d, kv * d)?;
                let dims = attention::Dims { b: 1, t: 1, s: cache.len + 1, h, kv, d, scale: 1.0 / (d as f32).sqrt(), s_cap: cache.cap };
                let (oi, _) = attention::forward(dev, &qi.reshape(&[1, h * d])?, &cache.k[i], &cache.v[i], dims)?;
                o.copy_from(dev, &oi, 0, si * h * d, h * d)?;
            }
            Ok(o)
        })?;
        for cache in caches.iter_mut() {
            cache.len += 1;
        }
        self.logits(dev, &x)
    }

    /// Embeds `tokens` and runs every layer; `attend(layer, q, k, v)` turns the projections
    /// [rows, H*D], [rows, K*D], [rows, K*D] into the attention output [rows, H*D] (RoPE, cache and
    /// attention are where `forward` and `decode_step` differ). Returns the residual stream.
    fn layers_with(
        &self,
        dev: &Device,
        tokens: &[u32],
        attend: &mut dyn FnMut(usize, Tensor, Tensor, Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= cfg.vocab) {
            return Err(Error::shape("forward", format!("token id {bad} is outside the vocabulary of {}", cfg.vocab)));
        }
        let ids = Tensor::from_u32(dev, "tokens", &[tokens.len()], tokens)?;
        let mut x = self.embed.rows(dev, &ids)?; // [rows, C]
        for (i, layer) in self.layers.iter().enumerate() {
            layer.infer(dev, cfg, &mut x, &mut |q, k, v| attend(i, q, k, v))?;
        }
        Ok(x)
    }

    /// logits [rows, V] = rmsnorm(x)·Eᵀ, or through lm_head when untied; decode-sized batches on
    /// the CPU read the exact 8-bit copy of the weight when there is one.
    fn logits(&self, dev: &Device, x: &Tensor) -> Result<Tensor> {
        let (xn, _) = rmsnorm::forward(dev, x, &self.norm, self.cfg.eps)?;
        let rows = xn.shape()[0];
        if let (Some(q8), true) = (&self.head_q8, rows < matmul_q8::MAX_TOKENS) {
            let mut y = Tensor::zeros(dev, "logits", &[rows, self.cfg.vocab], DType::F32);
            q8.forward(xn.host_f32("logits")?, rows, y.host_f32_mut("logits")?);
            return Ok(y);
        }
        match &self.lm_head {
            Some(head) => Ok(head.forward(dev, &xn, crate::model::linear::Mode::Infer)?.0),
            None => self.embed.forward(dev, &xn, crate::model::linear::Mode::Infer),
        }
    }
}
