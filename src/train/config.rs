//! What a training run does: one `TrainConfig`, read from a TOML file (`--config`) and then
//! overridden by flags, saved with every checkpoint so `--resume` continues the same run.

#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::lora::LoraConfig;
use crate::ops::optim::{AdamW, Sophia};
use crate::ops::spectral::Spectral;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adamw,
    Sophia,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

/// FLeX's spectral penalty: `off`, `train` (added to the loss with its gradient) or `published`
/// (computed and logged, no gradient: what the paper's code did).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum FlexMode {
    Off,
    Train,
    Published,
}

/// Which LoRA matrices the penalty covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
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
    /// Ranges the penalty is defined for: λ ≥ 0, T in [0, 1] (0: a flat 1 - φ_high, see
    /// `Spectral::rho`), φ_low and φ_high in [0, 1] (ρ(k) =
    /// 1 - φ stays within [0, 1], so the penalty never rewards a frequency).
    pub fn validate(&self) -> Result<()> {
        let bad = |flag, detail: String| Err(Error::InvalidArgument { flag, detail });
        if !(self.lambda >= 0.0 && self.lambda.is_finite()) {
            return bad("--flex-lambda", format!("{} must be a finite number >= 0", self.lambda));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return bad("--flex-threshold", format!("{} is outside [0, 1] (the share of the n = N/2+1 frequency bins)", self.threshold));
        }
        for (flag, v) in [("--flex-phi-low", self.phi_low), ("--flex-phi-high", self.phi_high)] {
            if !(0.0..=1.0).contains(&v) {
                return bad(flag, format!("{v} is outside [0, 1] (the penalty weight is 1 - phi)"));
            }
        }
        Ok(())
    }

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
    /// Held-out examples whose loss is logged every `val_every` steps (and at the end): `auto`
    /// (MBPP's validation split when training on MBPP's train split, else none), `none`,
    /// `mbpp:SPLIT` or a JSONL file (`train::validate`).
    pub val_data: String,
    /// Validate every N steps and at the run's last step; 0 = never.
    pub val_every: usize,
    /// Only the first N validation examples (0 = all), so validation stays cheap.
    pub val_limit: usize,
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
            val_data: "auto".into(),
            val_every: 50,
            val_limit: 32,
            lora: LoraConfig::default(),
            flex: FlexConfig::default(),
        }
    }
}

impl TrainConfig {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_toml(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_at(path, "read"))?;
        toml::from_str(&text).map_err(|e| Error::Config { file: path.display().to_string(), detail: e.to_string() })
    }

    /// The settings in the TOML file `path` laid over `base` (a resumed run's saved settings):
    /// keys the file leaves out keep `base`'s values, not the defaults.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_toml_over(path: &Path, base: &TrainConfig) -> Result<TrainConfig> {
        let bad = |detail: String| Error::Config { file: path.display().to_string(), detail };
        let text = std::fs::read_to_string(path).map_err(crate::error::io_at(path, "read"))?;
        let over: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut merged = toml::Table::try_from(base).map_err(|e| bad(e.to_string()))?;
        fn merge(into: &mut toml::Table, from: toml::Table) {
            for (k, v) in from {
                match (into.get_mut(&k), v) {
                    (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                    (_, v) => {
                        into.insert(k, v);
                    }
                }
            }
        }
        merge(&mut merged, over);
        merged.try_into().map_err(|e: toml::de::Error| bad(e.to_string()))
    }

    #[cfg(not(target_arch = "wasm32"))]
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
        if !(self.clip >= 0.0 && self.clip.is_finite()) {
            return bad("--clip", &format!("{} must be a finite number >= 0 (0 disables clipping)", self.clip));
        }
        if self.keep_checkpoints == 0 {
            return bad("keep_checkpoints", "must be at least 1 (the newest checkpoint is what --resume continues)");
        }
        self.flex.validate()?;
        self.lora.validate()
    }

    /// Settings a resumed run may change: how long it runs, how often and how many checkpoints it
    /// keeps, memory-for-compute (`recompute` gives the same numbers), where the data directory is,
    /// the model path (its identity is checked separately) and validation (it never changes an
    /// update). `out` is always the run's own directory. Everything else would silently change the
    /// run, so a resume refuses it.
    pub const RESUMABLE: [&'static str; 10] =
        ["steps", "epochs", "save_every", "keep_checkpoints", "recompute", "data_dir", "model", "val_data", "val_every", "val_limit"];

    /// Takes the `RESUMABLE` settings from `other` (the flags or the edited `config.toml` of a
    /// resumed run), keeping the rest.
    pub fn take_resumable(&mut self, other: &TrainConfig) {
        (self.steps, self.epochs, self.save_every, self.keep_checkpoints) =
            (other.steps, other.epochs, other.save_every, other.keep_checkpoints);
        (self.recompute, self.data_dir, self.model) = (other.recompute, other.data_dir.clone(), other.model.clone());
        (self.val_data, self.val_every, self.val_limit) = (other.val_data.clone(), other.val_every, other.val_limit);
    }

    /// Differences between `self` and `other` as `key: self -> other` lines (nested keys dotted),
    /// leaving out the keys in `except`.
    pub fn differences(&self, other: &TrainConfig, except: &[&str]) -> Vec<String> {
        let a = serde_json::to_value(self).unwrap_or_default();
        let b = serde_json::to_value(other).unwrap_or_default();
        json_differences(&a, &b, "").into_iter().filter(|d| !except.iter().any(|k| d.starts_with(&format!("{k}:")))).collect()
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

/// `key: a -> b` for every leaf where two JSON values differ (objects walked by key).
pub fn json_differences(a: &serde_json::Value, b: &serde_json::Value, prefix: &str) -> Vec<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            let null = Value::Null;
            keys.into_iter()
                .flat_map(|k| {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    json_differences(x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), &p)
                })
                .collect()
        }
        _ if a == b => Vec::new(),
        _ => vec![format!("{prefix}: {} -> {}", show(a), show(b))],
    }
}

/// A JSON value as the user wrote it: an f32 setting (stored as f64 in JSON) with its f32 digits.
fn show(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(f) if v.is_f64() && (f as f32) as f64 == f => format!("{}", f as f32),
        _ => v.to_string(),
    }
}
