//! Inference: the forward pass with a KV cache, on any device.
//!
//! Per layer (x [B*T, C]):
//!   h = rmsnorm(x); q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ (+ bias); RoPE(q, k) at positions len..len+T;
//!   append k, v to the cache; x += attention(q, cache)·Woᵀ;
//!   h = rmsnorm(x); x += (silu(h·Wgᵀ) ⊙ h·Wuᵀ)·Wdᵀ.
//! Then logits = rmsnorm(x)·Eᵀ (E the embedding when tied, else lm_head).

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::weights::Model;
use crate::ops::{attention, elementwise, embedding, matmul, rmsnorm, rope, swiglu};
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
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= cfg.vocab) {
            return Err(Error::shape("forward", format!("token id {bad} is outside the vocabulary of {}", cfg.vocab)));
        }
        let (h, kv, d) = (cfg.h, cfg.kv, cfg.d);
        let ids = Tensor::from_u32(dev, "tokens", &[b * t], tokens)?;
        let mut x = embedding::forward(dev, &ids, &self.embed)?; // [B*T, C]
        let dims = attention::Dims { b, t, s, h, kv, d, scale: 1.0 / (d as f32).sqrt(), s_cap: cache.cap };
        for (i, layer) in self.layers.iter().enumerate() {
            let (hn, _) = rmsnorm::forward(dev, &x, &layer.attn_norm, cfg.eps)?;
            let q = layer.q.forward(dev, &hn)?.reshape(&[b * t, h, d])?;
            let k = layer.k.forward(dev, &hn)?.reshape(&[b * t, kv, d])?;
            let v = layer.v.forward(dev, &hn)?;
            let q = rope::forward(dev, &q, &self.rope, t, cache.len, rope::Layout::HalfSplit)?.reshape(&[b * t, h * d])?;
            let k = rope::forward(dev, &k, &self.rope, t, cache.len, rope::Layout::HalfSplit)?;
            for bi in 0..b {
                let (from, to, n) = (bi * t * kv * d, (bi * cache.cap + cache.len) * kv * d, t * kv * d);
                cache.k[i].copy_from(dev, &k, from, to, n)?;
                cache.v[i].copy_from(dev, &v, from, to, n)?;
            }
            let (o, _) = attention::forward(dev, &q, &cache.k[i], &cache.v[i], dims)?;
            elementwise::accumulate(dev, &mut x, &layer.o.forward(dev, &o)?, 1.0)?;
            let (hn, _) = rmsnorm::forward(dev, &x, &layer.mlp_norm, cfg.eps)?;
            let g = layer.gate.forward(dev, &hn)?;
            let u = layer.up.forward(dev, &hn)?;
            let mlp = layer.down.forward(dev, &swiglu::forward(dev, &g, &u)?)?;
            elementwise::accumulate(dev, &mut x, &mlp, 1.0)?;
        }
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
        let (xn, _) = rmsnorm::forward(dev, &x, &self.norm, cfg.eps)?;
        match &self.lm_head {
            Some(head) => head.forward(dev, &xn),
            None => matmul::forward(dev, &xn, &self.embed, false, true),
        }
    }
}
