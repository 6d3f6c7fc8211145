//! What a training run does: one `TrainConfig`, read from a TOML file (`--config`) and then
//! overridden by flags, saved with every checkpoint so `--resume` continues the same run.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::lora::LoraConfig;
use crate::ops::optim::{AdamW, Sophia};
use crate::ops::spectral::Spectral;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adamw,
    Sophia,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

/// FLeX's spectral penalty: `off`, `train` (added to the loss with its gradient) or `published`
/// (computed and logged, no gradient: what the paper's code did).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlexMode {
    Off,
    Train,
    Published,
}

/// Which LoRA matrices the penalty covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlexMatrices {
    A,
    B,
    Both,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlexConfig {
    pub mode: FlexMode,
    pub lambda: f32,
    pub matrices: FlexMatrices,
    /// T: the penalty weight ρ(k) ramps from 1-φ_low at k = 0 to 1-φ_high at k = n·T (`ops::spectral`).
    pub threshold: f32,
    pub phi_low: f32,
    pub phi_high: f32,
    /// Flatten each row separately instead of the whole matrix.
    pub per_row: bool,
}

impl FlexConfig {
    pub fn spectral(&self) -> Spectral {
        Spectral { threshold: self.threshold, phi_low: self.phi_low, phi_high: self.phi_high, per_row: self.per_row }
    }
}

impl Default for FlexConfig {
    /// FLeX as the paper defines it, with its best run: λ = 0.02, T = 0.5, φ_low = 1.0, φ_high = 0.1, on A and B.
    fn default() -> Self {
        let s = Spectral::default();
        FlexConfig {
            mode: FlexMode::Train,
            lambda: 0.02,
            matrices: FlexMatrices::Both,
            threshold: s.threshold,
            phi_low: s.phi_low,
            phi_high: s.phi_high,
            per_row: s.per_row,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// A GGUF file or a Hugging Face directory.
    pub model: PathBuf,
    /// `mbpp` (MBPP's train split from the data directory), `mbpp:validation`, or a JSONL file.
    pub data: String,
    /// The data directory (MBPP and the evaluation sets); else FLEXLORA_DATA, else ../shared/data.
    pub data_dir: Option<PathBuf>,
    pub out: PathBuf,
    /// Base weights on the device: `nf4` (QLoRA, the default), `auto` (a GGUF's own blocks on
    /// the CPU, else NF4) or `f32`.
    pub weights: String,
    pub max_len: usize,
    pub mask_prompt: bool,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Optimizer steps; 0 means `epochs` passes over the data.
    pub steps: usize,
    pub epochs: usize,
    pub lr: f32,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    /// The cosine/linear schedules end at lr·min_lr_ratio.
    pub min_lr_ratio: f32,
    /// Global gradient-norm clipping; 0 disables.
    pub clip: f32,
    pub optimizer: OptimizerKind,
    pub adamw: AdamW,
    pub sophia: Sophia,
    /// Sophia's Hessian estimate every k steps.
    pub hessian_every: usize,
    pub seed: u64,
    /// Checkpoint every N steps (and always at the end); 0 = only at the end.
    pub save_every: usize,
    pub keep_checkpoints: usize,
    /// Recompute each layer's activations during backward (less memory, ~1/3 more compute).
    pub recompute: bool,
    pub lora: LoraConfig,
    pub flex: FlexConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: PathBuf::from("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            data: "mbpp".into(),
            data_dir: None,
            out: PathBuf::from("runs/train"),
            weights: "nf4".into(),
            max_len: 512,
            mask_prompt: true,
            batch_size: 4,
            grad_accum: 1,
            steps: 0,
            epochs: 1,
            lr: 2e-4,
            schedule: Schedule::Cosine,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            clip: 1.0,
            optimizer: OptimizerKind::Adamw,
            adamw: AdamW::default(),
            sophia: Sophia::default(),
            hessian_every: 10,
            seed: 0,
            save_every: 50,
            keep_checkpoints: 3,
            recompute: false,
            lora: LoraConfig::default(),
            flex: FlexConfig::default(),
        }
    }
}

impl TrainConfig {
    pub fn from_toml(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_at(path, "read"))?;
        toml::from_str(&text).map_err(|e| Error::Config { file: path.display().to_string(), detail: e.to_string() })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |flag, detail: &str| Err(Error::InvalidArgument { flag, detail: detail.into() });
        if self.batch_size == 0 {
            return bad("--batch-size", "must be at least 1");
        }
        if self.grad_accum == 0 {
            return bad("--grad-accum", "must be at least 1");
        }
        if self.max_len < 2 {
            return bad("--max-len", "must be at least 2 tokens");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("--lr", "must be a positive number");
        }
        if self.steps == 0 && self.epochs == 0 {
            return bad("--steps", "set --steps or --epochs above 0");
        }
        if self.hessian_every == 0 {
            return bad("--hessian-every", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad("--min-lr-ratio", "must be within [0, 1]");
        }
        if !matches!(self.weights.as_str(), "auto" | "nf4" | "f32") {
            return bad("--weights", "choose auto, nf4 or f32");
        }
        self.lora.validate()
    }

    /// Learning rate at optimizer step `step` (0-based) of `total`: linear warmup, then constant,
    /// linear decay or cosine decay to lr·min_lr_ratio.
    pub fn lr_at(&self, step: usize, total: usize) -> f32 {
        let w = self.warmup_steps;
        if step < w {
            return self.lr * (step + 1) as f32 / w as f32;
        }
        let floor = self.lr * self.min_lr_ratio;
        let progress = if total > w + 1 { (step - w) as f32 / (total - w - 1) as f32 } else { 1.0 }.min(1.0);
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Linear => floor + (self.lr - floor) * (1.0 - progress),
            Schedule::Cosine => floor + (self.lr - floor) * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()),
        }
    }
}
