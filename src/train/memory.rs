//! How many bytes a training run needs on its device, worked out before it starts from the
//! shapes alone (no allocation, no file system: the browser page calls it to refuse a run that
//! will not fit instead of crashing the tab; `flexlora train` prints it and refuses a run larger
//! than the host's available memory).
//!
//! The parts follow what `train::grad` and `train::step` allocate, all f32 unless said:
//! - weights: the frozen model as loaded (`Weights`), plus the RoPE tables;
//! - adapter: the LoRA matrices, their gradients, the optimizer's two state tensors each, and for
//!   Sophia the gradient on sampled labels of its curvature steps (one more copy);
//! - activations: what the forward pass keeps for backward: every layer's input, and per layer
//!   (all of them, or with `recompute` only the one being recomputed) `grad::Saved`: the norms'
//!   outputs and statistics, q, k, v, the attention output and its log-sum-exp, the residual,
//!   the MLP's gate and up outputs, and x·Aᵀ of each adapted linear;
//! - logits: the trained positions' logits and their gradient ([M, V] each, alive together at
//!   the start of backward);
//! - working: one layer's backward buffers (gradients of its MLP and attention tensors, which
//!   live to the end of the layer's backward), attention's per-thread score blocks and the CPU's
//!   dK/dV accumulators, the dequantization tiles.
//!
//! Shapes: B batch, T the longest sequence of a micro-batch, N = B·T, M the positions with a
//! target in the worst micro-batch (at most N), C width, F MLP width, H heads, K kv heads, D head
//! size, V vocabulary, R rank, L layers.

use crate::model::config::Config;
use crate::model::lora::{LoraConfig, Target};

/// How the frozen weights are held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Weights {
    F32,
    /// NF4 codes (4 bits a weight) and one f32 scale per block of `blocksize` weights.
    Nf4 {
        blocksize: usize,
    },
    /// A GGUF file's own blocks at `bits_per_weight` on average over the linear weights (Q4_1 is
    /// 5.0, Q8_0 8.5, Q4_K_M about 4.9); the embedding is held as f32.
    Blocks {
        bits_per_weight: f64,
    },
    /// A model already loaded: `Model::weight_bytes().0`, exact (it also counts the CPU's 8-bit
    /// copy of the output projection, which the kinds above leave out).
    Loaded {
        bytes: u64,
    },
}

/// The optimizer, for the size of its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Optimizer {
    AdamW,
    Sophia,
}

/// A run's shape.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    pub model: &'a Config,
    pub weights: Weights,
    pub lora: &'a LoraConfig,
    /// Sequences per micro-batch (B).
    pub batch_size: usize,
    /// Tokens of the longest sequence (T; a micro-batch is padded to its longest).
    pub seq_len: usize,
    /// Positions with a target in the worst micro-batch (M ≤ B·T): only those are projected to
    /// the vocabulary. B·T when unknown.
    pub trained: usize,
    pub recompute: bool,
    pub optimizer: Optimizer,
    /// Threads that run CPU kernels (each has its own attention and dequantization scratch); 1 on
    /// a GPU.
    pub threads: usize,
}

/// The estimate, by part, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Estimate {
    pub weights: u64,
    pub adapter: u64,
    pub activations: u64,
    pub logits: u64,
    pub working: u64,
    /// The largest single buffer (the page compares it with WebGPU's `maxStorageBufferBindingSize`).
    pub largest_buffer: u64,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.weights + self.adapter + self.activations + self.logits + self.working
    }

    /// Everything but the weights: what training adds to a loaded model.
    pub fn training(&self) -> u64 {
        self.total() - self.weights
    }
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        write!(
            f,
            "about {:.0} MiB (weights {:.0}, adapter and optimizer {:.1}, activations {:.0}, logits {:.0}, working buffers {:.0})",
            mib(self.total()),
            mib(self.weights),
            mib(self.adapter),
            mib(self.activations),
            mib(self.logits),
            mib(self.working)
        )
    }
}

/// [out, in] of linear layer `t` in a model of configuration `cfg`.
pub fn linear_shape(cfg: &Config, t: Target) -> [usize; 2] {
    let (c, f, hd, kd) = (cfg.c, cfg.f, cfg.h * cfg.d, cfg.kv * cfg.d);
    match t {
        Target::Q => [hd, c],
        Target::K | Target::V => [kd, c],
        Target::O => [c, hd],
        Target::Gate | Target::Up => [f, c],
        Target::Down => [c, f],
    }
}

/// Adapter parameters (A and B of every adapted linear in every layer).
pub fn adapter_params(cfg: &Config, lora: &LoraConfig) -> u64 {
    let per_layer: usize = lora.targets.iter().map(|&t| linear_shape(cfg, t).iter().sum::<usize>() * lora.rank).sum();
    (per_layer * cfg.layers) as u64
}

/// Bytes of the frozen weights held as `w`, and the RoPE tables.
pub fn weight_bytes(cfg: &Config, w: Weights) -> u64 {
    const MAX_ROPE_POSITIONS: usize = 32_768; // as `model::weights`
    let rope = (cfg.max_pos.clamp(1, MAX_ROPE_POSITIONS) * cfg.d * 4) as u64;
    let (c, v) = (cfg.c as u64, cfg.vocab as u64);
    let linear = |n: u64| -> u64 {
        match w {
            Weights::F32 | Weights::Loaded { .. } => 4 * n,
            Weights::Nf4 { blocksize } => n.div_ceil(8) * 4 + n.div_ceil(blocksize.max(1) as u64) * 4,
            Weights::Blocks { bits_per_weight } => (n as f64 * bits_per_weight / 8.0).ceil() as u64,
        }
    };
    if let Weights::Loaded { bytes } = w {
        return bytes + rope;
    }
    let per_layer: u64 = Target::ALL.iter().map(|&t| linear_shape(cfg, t).iter().product::<usize>() as u64).map(linear).sum();
    let bias = if cfg.qkv_bias { ((cfg.h + 2 * cfg.kv) * cfg.d) as u64 * 4 } else { 0 };
    let norms = (2 * c * cfg.layers as u64 + c) * 4;
    // The embedding and an untied output head stay in a GGUF's own blocks, else f32.
    let matrix = |n: u64| match w {
        Weights::Blocks { .. } => linear(n),
        _ => 4 * n,
    };
    let head = if cfg.tied { 0 } else { matrix(v * c) };
    (per_layer + bias) * cfg.layers as u64 + norms + matrix(v * c) + head + rope
}

/// The bytes `run` needs on its device (see the module docs for what each part counts).
pub fn estimate(run: &Run) -> Estimate {
    let cfg = run.model;
    let f32s = |n: u64| 4 * n;
    let (b, t) = (run.batch_size.max(1) as u64, run.seq_len.max(1) as u64);
    let n = b * t;
    let m = (run.trained as u64).clamp(1, n);
    let (c, f, h, v, layers) = (cfg.c as u64, cfg.f as u64, cfg.h as u64, cfg.vocab as u64, cfg.layers as u64);
    let (hd, kd) = ((cfg.h * cfg.d) as u64, (cfg.kv * cfg.d) as u64);
    let (r, targets) = (run.lora.rank as u64, run.lora.targets.len() as u64);

    let p = adapter_params(cfg, run.lora);
    let copies = match run.optimizer {
        Optimizer::AdamW => 4,  // the matrices, their gradients, m, v
        Optimizer::Sophia => 5, // ... m, h, and the gradient on sampled labels
    };
    let adapter = f32s(p * copies);

    // grad::Saved of one layer: h1, m, h2 [N, C]; q, o [N, H·D]; k, v [N, K·D]; g, u [N, F];
    // rstd1, rstd2 [N]; lse [B, H, T]; x·Aᵀ [N, R] per adapted linear.
    let saved = f32s(n * (3 * c + 2 * hd + 2 * kd + 2 * f + 2 + h + r * targets));
    let inputs = f32s(layers * n * c);
    // After the last layer: its output and the final norm's output [N, C], rstd [N], tokens [N],
    // and per trained position its row index, target, log-sum-exp and loss.
    let tail = f32s(2 * n * c + 2 * n + 4 * m);
    let activations = inputs + if run.recompute { saved } else { layers * saved } + tail;

    let logits = 2 * f32s(m * v);

    // One layer's backward: the gradients of the MLP (down's input, gate's and up's outputs,
    // [N, F] each, alive to the layer's end), of q, k, v before and after RoPE, of the attention
    // output, and of five [N, C] tensors (dy, dh2, dm, dh1, dx); a linear's dx·W product and its
    // dropout mask copy of the input ([N, F] at most); the CPU's dK/dV accumulators over heads
    // [B, H, 2·T, D]; per thread, attention's score blocks (P and dP [T, T]) and a dequantized
    // tile of 128 weight rows.
    let threads = run.threads.max(1) as u64;
    let layer_grads = f32s(n * (3 * f + 5 * c + 3 * hd + 3 * kd) + 2 * n * f.max(c));
    let attention = f32s(2 * n * hd) + threads * f32s(2 * t * t);
    let tiles = threads * f32s(128 * f.max(c).max(hd));
    let working = layer_grads + attention + tiles;

    let largest_buffer = [f32s(m * v), f32s(v * c), f32s(n * f), f32s(n * hd)].into_iter().max().unwrap_or(0);
    Estimate { weights: weight_bytes(cfg, run.weights), adapter, activations, logits, working, largest_buffer }
}

/// The estimate for training `model` (loaded, its weights counted exactly) with `cfg` on
/// `examples` (the longest sets T, the `batch_size` with the most targets set M), with `threads`
/// CPU threads (1 on a GPU): what `flexlora train` and the page check before a run starts.
pub fn of_run(
    model: &crate::model::Model,
    cfg: &crate::train::config::TrainConfig,
    examples: &[crate::train::data::Example],
    threads: usize,
) -> Estimate {
    let longest = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let mut targets: Vec<usize> = examples.iter().map(|e| e.targets()).collect();
    targets.sort_unstable_by(|a, b| b.cmp(a));
    estimate(&Run {
        model: &model.cfg,
        weights: Weights::Loaded { bytes: model.weight_bytes().0 },
        lora: &cfg.lora,
        batch_size: cfg.batch_size,
        seq_len: longest,
        trained: targets.iter().take(cfg.batch_size).sum(),
        recompute: cfg.recompute,
        optimizer: match cfg.optimizer {
            crate::train::config::OptimizerKind::Adamw => Optimizer::AdamW,
            crate::train::config::OptimizerKind::Sophia => Optimizer::Sophia,
        },
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Arch;

    fn smollm2_135m() -> Config {
        Config {
            arch: Arch::Llama,
            c: 576,
            f: 1536,
            h: 9,
            kv: 3,
            d: 64,
            layers: 30,
            vocab: 49152,
            eps: 1e-5,
            rope_base: 100000.0,
            rope_scaling: None,
            max_pos: 8192,
            tied: true,
            qkv_bias: false,
            bos: None,
            eos: vec![2],
        }
    }

    /// The adapter count is PEFT's (SmolLM2-135M, r = 8 on q, v: 460,800 trainable parameters, as
    /// `print_trainable_parameters` reports), and each part grows as its formula says.
    #[test]
    fn parts_scale_as_their_shapes() {
        let cfg = smollm2_135m();
        let lora = LoraConfig { rank: 8, targets: vec![Target::Q, Target::V], ..Default::default() };
        assert_eq!(adapter_params(&cfg, &lora), 460_800);
        let run = Run {
            model: &cfg,
            weights: Weights::Nf4 { blocksize: 64 },
            lora: &lora,
            batch_size: 2,
            seq_len: 128,
            trained: 256,
            recompute: false,
            optimizer: Optimizer::AdamW,
            threads: 1,
        };
        let e = estimate(&run);
        assert_eq!(e.adapter, 460_800 * 4 * 4);
        assert_eq!(e.logits, 2 * 256 * 49152 * 4);
        assert_eq!(estimate(&Run { optimizer: Optimizer::Sophia, ..run.clone() }).adapter, 460_800 * 4 * 5);
        // Recompute keeps one layer's saved tensors instead of L.
        let rc = estimate(&Run { recompute: true, ..run.clone() });
        assert!(rc.activations * 5 < e.activations, "{rc:?} vs {e:?}");
        // Twice the batch, twice the activations and logits.
        let b2 = estimate(&Run { batch_size: 4, trained: 512, ..run.clone() });
        assert_eq!(b2.activations, 2 * e.activations);
        assert_eq!(b2.logits, 2 * e.logits);
        // NF4 at blocks of 64: 4.5 bits a linear weight; f32 weights are 32 bits.
        let linear: u64 = Target::ALL.iter().map(|&t| linear_shape(&cfg, t).iter().product::<usize>() as u64).sum::<u64>() * 30;
        let f = weight_bytes(&cfg, Weights::F32);
        assert_eq!(f - weight_bytes(&cfg, Weights::Nf4 { blocksize: 64 }), linear * 4 - linear * 9 / 16);
        assert_eq!(weight_bytes(&cfg, Weights::Loaded { bytes: 1000 }), 1000 + 8192 * 64 * 4);
    }
}
