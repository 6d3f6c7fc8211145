//! What a training run does: one `TrainConfig`, saved with every checkpoint so `--resume`
//! continues the same run. It is also `flexlora train`'s flags (clap derive on native targets: the
//! doc comments of the fields are the help text), and `TrainConfig::layered` applies the order of
//! its sources: a resumed run's saved settings (else the defaults), then a TOML file
//! (`--config`), then the flags given on the command line. The struct and its rules (`validate`,
//! `lr_at`, what a resume may change) build for the browser too; reading files and flags is
//! native only.

#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::lora::LoraConfig;
use crate::model::Weights;
use crate::ops::optim::{AdamW, Sophia};
use crate::ops::spectral::Spectral;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW (PyTorch semantics, decoupled weight decay; `[adamw]` in the TOML file).
    Adamw,
    /// SophiaG with a Hessian estimate every --hessian-every steps (`[sophia]` in the TOML file).
    Sophia,
}

/// The learning rate after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The peak learning rate throughout.
    Constant,
    /// Linear decay to lr x min_lr_ratio.
    Linear,
    /// Cosine decay to lr x min_lr_ratio.
    Cosine,
}

/// FLeX's spectral penalty: `off`, `train` (added to the loss with its gradient) or `published`
/// (computed and logged, no gradient: what the paper's code did).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum FlexMode {
    /// No penalty.
    Off,
    /// Added to the loss, with its gradient.
    Train,
    /// Computed and logged, no gradient (what the paper's code did).
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

/// FLeX's settings; the `--flex-*` flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::Args))]
#[serde(deny_unknown_fields, default)]
pub struct FlexConfig {
    /// FLeX spectral penalty: off, train (with gradient) or published (logged only, like the paper's code).
    #[cfg_attr(
        not(target_arch = "wasm32"),
        arg(id = "flex_mode", long = "flex-mode", value_name = "MODE", value_enum, ignore_case = true, default_value_t = FlexConfig::default().mode)
    )]
    pub mode: FlexMode,
    /// FLeX: weight lambda of the penalty (mean over the chosen matrices).
    #[cfg_attr(not(target_arch = "wasm32"), arg(id = "flex_lambda", long = "flex-lambda", value_name = "LAMBDA", default_value_t = FlexConfig::default().lambda))]
    pub lambda: f32,
    /// Which LoRA matrices the penalty covers.
    #[cfg_attr(
        not(target_arch = "wasm32"),
        arg(id = "flex_matrices", long = "flex-matrices", value_name = "MATRICES", value_enum, ignore_case = true, default_value_t = FlexConfig::default().matrices)
    )]
    pub matrices: FlexMatrices,
    /// T: the frequency share (of n = N/2+1) where the penalty weight reaches 1 - phi_high: it ramps
    /// from 1 - phi_low at k = 0 to 1 - phi_high at k = n·T.
    #[cfg_attr(
        not(target_arch = "wasm32"),
        arg(id = "flex_threshold", long = "flex-threshold", value_name = "T", default_value_t = FlexConfig::default().threshold)
    )]
    pub threshold: f32,
    /// FLeX: the penalty weight at frequency 0 is 1 - phi_low.
    #[cfg_attr(not(target_arch = "wasm32"), arg(id = "flex_phi_low", long = "flex-phi-low", value_name = "PHI", default_value_t = FlexConfig::default().phi_low))]
    pub phi_low: f32,
    /// FLeX: the penalty weight from frequency n*T on is 1 - phi_high.
    #[cfg_attr(
        not(target_arch = "wasm32"),
        arg(id = "flex_phi_high", long = "flex-phi-high", value_name = "PHI", default_value_t = FlexConfig::default().phi_high)
    )]
    pub phi_high: f32,
    /// Flatten each row separately instead of the whole matrix.
    #[cfg_attr(not(target_arch = "wasm32"), arg(id = "flex_per_row", long = "flex-per-row"))]
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

/// A training run's settings; `flexlora train`'s flags (the doc comments are their help).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::Args))]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// A .gguf file or a Hugging Face model directory.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_os_t = TrainConfig::default().model))]
    pub model: PathBuf,
    /// Training examples: `mbpp` (MBPP's train split), `mbpp:SPLIT` (train, validation, test or
    /// all) from the dataset directory, or a JSONL file of {"prompt","completion"} or {"text"} lines.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().data))]
    pub data: String,
    /// Dataset directory (default: $FLEXLORA_DATA, else ../shared/data).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    pub data_dir: Option<PathBuf>,
    /// Output directory: checkpoints, metrics.jsonl, loss.svg, adapter/, summary.json (and eval/ with --eval-every).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_os_t = TrainConfig::default().out))]
    pub out: PathBuf,
    /// How the frozen base weights are held.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, value_enum, ignore_case = true, default_value_t = TrainConfig::default().weights))]
    pub weights: Weights,
    /// Tokens per example; longer ones are truncated.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().max_len))]
    pub max_len: usize,
    /// Train on the prompt tokens too (by default only the completion is in the loss).
    #[cfg_attr(not(target_arch = "wasm32"), arg(id = "mask_prompt", long = "no-mask-prompt", action = clap::ArgAction::SetFalse))]
    pub mask_prompt: bool,
    /// Sequences per micro-batch.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().batch_size))]
    pub batch_size: usize,
    /// Micro-batches whose gradients are accumulated into one optimizer step.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().grad_accum))]
    pub grad_accum: usize,
    /// Optimizer steps (0: --epochs passes over the data).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().steps))]
    pub steps: usize,
    /// Passes over the data when --steps is 0.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().epochs))]
    pub epochs: usize,
    /// Peak learning rate.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().lr))]
    pub lr: f32,
    /// Learning-rate schedule after --warmup-steps of linear warmup.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, value_enum, ignore_case = true, default_value_t = TrainConfig::default().schedule))]
    pub schedule: Schedule,
    /// Steps of linear warmup from 0 to --lr.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().warmup_steps))]
    pub warmup_steps: usize,
    /// The linear and cosine schedules end at lr x this.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().min_lr_ratio))]
    pub min_lr_ratio: f32,
    /// Global gradient-norm clip (0 disables).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().clip))]
    pub clip: f32,
    /// The optimizer.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, value_enum, ignore_case = true, default_value_t = TrainConfig::default().optimizer))]
    pub optimizer: OptimizerKind,
    /// AdamW's hyper-parameters (`[adamw]` in the TOML file; no flags).
    #[cfg_attr(not(target_arch = "wasm32"), arg(skip = TrainConfig::default().adamw))]
    pub adamw: AdamW,
    /// Sophia's hyper-parameters (`[sophia]` in the TOML file; no flags).
    #[cfg_attr(not(target_arch = "wasm32"), arg(skip = TrainConfig::default().sophia))]
    pub sophia: Sophia,
    /// Sophia: Hessian estimate every k steps.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().hessian_every))]
    pub hessian_every: usize,
    /// Seed of the adapter's initialization, the data order, dropout and Sophia's sampled labels.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().seed))]
    pub seed: u64,
    /// Checkpoint every N steps (0: only at the end; the end always is).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().save_every))]
    pub save_every: usize,
    /// Checkpoints kept (the newest ones; at least 1).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().keep_checkpoints))]
    pub keep_checkpoints: usize,
    /// Recompute activations per layer during backward (less memory, ~1/3 more compute, same numbers).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    pub recompute: bool,
    /// Held-out examples for the validation loss: auto (MBPP validation, tasks 511-600, when
    /// training on MBPP's train split; else none), none, mbpp:SPLIT or a JSONL file.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().val_data))]
    pub val_data: String,
    /// Validation loss every N steps and at the end, into metrics.jsonl (0: never).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().val_every))]
    pub val_every: usize,
    /// Only the first N validation examples (0: all), so validation stays cheap.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = TrainConfig::default().val_limit))]
    pub val_limit: usize,
    #[cfg_attr(not(target_arch = "wasm32"), command(flatten, next_help_heading = "LoRA"))]
    pub lora: LoraConfig,
    #[cfg_attr(not(target_arch = "wasm32"), command(flatten, next_help_heading = "FLeX"))]
    pub flex: FlexConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: PathBuf::from("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            data: "mbpp".into(),
            data_dir: None,
            out: PathBuf::from("runs/train"),
            weights: Weights::Auto,
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

/// Reading the settings from files and flags (native only: the browser builds a `TrainConfig`).
#[cfg(not(target_arch = "wasm32"))]
impl TrainConfig {
    /// The run's settings from their sources, each over the one before: `base` (a resumed run's
    /// saved settings, else the defaults); the TOML file `file` (keys it leaves out keep `base`'s
    /// values); then the flags given on the command line in `matches` (`flexlora train`'s, which
    /// hold `TrainConfig`'s flags, alone or flattened): a flag left at its default overrides
    /// nothing. Validated.
    pub fn layered(base: Option<TrainConfig>, file: Option<&Path>, matches: &clap::ArgMatches) -> Result<TrainConfig> {
        let c = match (file, base) {
            (Some(p), Some(b)) => TrainConfig::from_toml_over(p, &b)?,
            (Some(p), None) => TrainConfig::from_toml(p)?,
            (None, b) => b.unwrap_or_default(),
        };
        let c = c.with_flags(matches)?;
        c.validate()?;
        Ok(c)
    }

    /// `self` with the value of every `TrainConfig` flag given on the command line in `matches`.
    /// A flag's id is its setting's path with `_` for the dot (`lr`, `lora_rank` for `lora.rank`),
    /// so a new setting needs no code here (a unit test checks every flag).
    pub fn with_flags(self, matches: &clap::ArgMatches) -> Result<TrainConfig> {
        use clap::{parser::ValueSource, Args, FromArgMatches};
        let bad = |detail: String| Error::Config { file: "the command line".into(), detail };
        let flags = TrainConfig::from_arg_matches(matches).map_err(|e| bad(e.to_string()))?;
        let mut into = toml::Table::try_from(&self).map_err(|e| bad(e.to_string()))?;
        let from = toml::Table::try_from(&flags).map_err(|e| bad(e.to_string()))?;
        for arg in TrainConfig::augment_args(clap::Command::new("train")).get_arguments() {
            let id = arg.get_id().as_str();
            if matches.value_source(id) != Some(ValueSource::CommandLine) {
                continue;
            }
            let (table, key) = setting_of(&from, id);
            let value = match table {
                None => from.get(key),
                Some(t) => from.get(t).and_then(|v| v.get(key)),
            };
            let Some(value) = value.cloned() else { return Err(bad(format!("the flag `{id}` names no setting"))) };
            match table {
                None => into.insert(key.into(), value),
                Some(t) => match into.get_mut(t) {
                    Some(toml::Value::Table(nested)) => nested.insert(key.into(), value),
                    _ => return Err(bad(format!("the flag `{id}` names no setting"))),
                },
            };
        }
        into.try_into().map_err(|e: toml::de::Error| bad(e.to_string()))
    }

    pub fn from_toml(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io_at(path, "read"))?;
        toml::from_str(&text).map_err(|e| Error::Config { file: path.display().to_string(), detail: e.to_string() })
    }

    /// The settings in the TOML file `path` laid over `base` (a resumed run's saved settings):
    /// keys the file leaves out keep `base`'s values, not the defaults.
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

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// The table (`lora`, `flex`) and key of the setting the flag `id` sets in `config` (a
/// `TrainConfig` as TOML): `id` is the path with `_` for the dot, `lora_rank` for `lora.rank`.
#[cfg(not(target_arch = "wasm32"))]
fn setting_of<'a>(config: &toml::Table, id: &'a str) -> (Option<&'a str>, &'a str) {
    for (table, v) in config {
        if let (toml::Value::Table(_), Some(key)) = (v, id.strip_prefix(table.as_str()).and_then(|r| r.strip_prefix('_'))) {
            return (Some(&id[..table.len()]), key);
        }
    }
    (None, id)
}

impl TrainConfig {
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
        if !(self.clip >= 0.0 && self.clip.is_finite()) {
            return bad("--clip", &format!("{} must be a finite number >= 0 (0 disables clipping)", self.clip));
        }
        if self.keep_checkpoints == 0 {
            return bad("--keep-checkpoints", "must be at least 1 (the newest checkpoint is what --resume continues)");
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

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use clap::{Args, Command};

    fn command() -> Command {
        TrainConfig::augment_args(Command::new("train"))
    }

    fn matches(cmd: Command, argv: &[&str]) -> clap::ArgMatches {
        cmd.try_get_matches_from(std::iter::once("train").chain(argv.iter().copied())).unwrap()
    }

    /// For every flag, a value other than the default.
    const SAMPLES: &[(&str, &[&str])] = &[
        ("model", &["--model", "m.gguf"]),
        ("data", &["--data", "mbpp:validation"]),
        ("data_dir", &["--data-dir", "d"]),
        ("out", &["--out", "o"]),
        ("weights", &["--weights", "f32"]),
        ("max_len", &["--max-len", "64"]),
        ("mask_prompt", &["--no-mask-prompt"]),
        ("batch_size", &["--batch-size", "2"]),
        ("grad_accum", &["--grad-accum", "3"]),
        ("steps", &["--steps", "9"]),
        ("epochs", &["--epochs", "2"]),
        ("lr", &["--lr", "0.01"]),
        ("schedule", &["--schedule", "constant"]),
        ("warmup_steps", &["--warmup-steps", "1"]),
        ("min_lr_ratio", &["--min-lr-ratio", "0.5"]),
        ("clip", &["--clip", "0.5"]),
        ("optimizer", &["--optimizer", "sophia"]),
        ("hessian_every", &["--hessian-every", "3"]),
        ("seed", &["--seed", "7"]),
        ("save_every", &["--save-every", "5"]),
        ("keep_checkpoints", &["--keep-checkpoints", "2"]),
        ("recompute", &["--recompute"]),
        ("val_data", &["--val-data", "none"]),
        ("val_every", &["--val-every", "3"]),
        ("val_limit", &["--val-limit", "4"]),
        ("lora_rank", &["--lora-rank", "4"]),
        ("lora_alpha", &["--lora-alpha", "8"]),
        ("lora_dropout", &["--lora-dropout", "0.1"]),
        ("lora_rslora", &["--rslora"]),
        ("lora_targets", &["--lora-targets", "q_proj,v"]),
        ("flex_mode", &["--flex-mode", "off"]),
        ("flex_lambda", &["--flex-lambda", "0.5"]),
        ("flex_matrices", &["--flex-matrices", "a"]),
        ("flex_threshold", &["--flex-threshold", "0.25"]),
        ("flex_phi_low", &["--flex-phi-low", "0.5"]),
        ("flex_phi_high", &["--flex-phi-high", "0.2"]),
        ("flex_per_row", &["--flex-per-row"]),
    ];

    /// Each flag given alone changes its own setting and nothing else; the list covers every flag,
    /// so a new setting cannot be left out of `with_flags`.
    #[test]
    fn every_flag_sets_its_own_setting() {
        let ids: Vec<String> = command().get_arguments().map(|a| a.get_id().to_string()).collect();
        let listed: Vec<String> = SAMPLES.iter().map(|(id, _)| id.to_string()).collect();
        assert_eq!(ids, listed, "every flag needs a sample here");
        for (id, argv) in SAMPLES {
            let c = TrainConfig::default().with_flags(&matches(command(), argv)).unwrap();
            let d = TrainConfig::default().differences(&c, &[]);
            assert_eq!(d.len(), 1, "{argv:?}: {d:?}");
            let key = d[0].split(':').next().unwrap().replace('.', "_");
            assert_eq!(&key, id, "{argv:?} changed {}", d[0]);
        }
        let c = TrainConfig::default().with_flags(&matches(command(), &["--lora-targets", "q_proj,v"])).unwrap();
        assert_eq!(c.lora.targets, [crate::model::Target::Q, crate::model::Target::V]);
        assert!(command().try_get_matches_from(["train", "--lora-targets", "q_proj,x"]).is_err());
        assert!(command().try_get_matches_from(["train", "--weights", "f16"]).is_err());
    }

    /// `--help` shows every flag with its help, and its default unless it is an on/off flag or
    /// has none (`--data-dir`); the defaults shown are the struct's; flags with a fixed set of
    /// values list them.
    #[test]
    fn help_shows_every_flag_with_default_and_choices() {
        use clap::FromArgMatches;
        for a in command().get_arguments() {
            let id = a.get_id().as_str();
            assert!(a.get_help().is_some_and(|h| !h.to_string().is_empty()), "--{id} has no help");
            let switch = matches!(a.get_action(), clap::ArgAction::SetTrue | clap::ArgAction::SetFalse);
            assert!(switch || id == "data_dir" || !a.get_default_values().is_empty(), "--{id} shows no default");
            let choices = ["weights", "schedule", "optimizer", "lora_targets", "flex_mode", "flex_matrices"].contains(&id);
            assert_eq!(!a.get_possible_values().is_empty(), choices || switch, "--{id}: possible values");
        }
        assert_eq!(TrainConfig::from_arg_matches(&matches(command(), &[])).unwrap(), TrainConfig::default());
        let help = command().render_help().to_string();
        for needle in ["[default: auto]", "[possible values: constant, linear, cosine]", "[default: gate_proj,up_proj,down_proj]"] {
            assert!(help.contains(needle), "`{needle}` not in:\n{help}");
        }
    }

    fn temp_toml(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("flexlora-config-{}-{name}.toml", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A resumed run's settings, then the TOML file, then the flags given on the command line;
    /// a flag left at its default overrides nothing, and flags of the front end around
    /// `TrainConfig` are ignored.
    #[test]
    fn flags_over_file_over_resumed_settings() {
        let base = TrainConfig { lr: 0.3, seed: 9, steps: 2, batch_size: 2, recompute: true, mask_prompt: false, ..TrainConfig::default() };
        let file = temp_toml("layers", "lr = 0.1\nsteps = 5\n[lora]\nrank = 16\n");
        let front = command().arg(clap::Arg::new("resume").long("resume"));
        let m = matches(front, &["--steps", "7", "--lora-alpha", "4", "--resume", "x"]);
        let c = TrainConfig::layered(Some(base.clone()), Some(&file), &m).unwrap();
        assert_eq!((c.lr, c.steps, c.seed, c.batch_size), (0.1, 7, 9, 2), "lr from the file, steps from the flag, the rest resumed");
        assert_eq!((c.lora.rank, c.lora.alpha), (16, 4.0));
        assert!(c.recompute && !c.mask_prompt, "on/off settings not given stay as they were");
        // Without a file: the flags over the resumed settings; without either: the defaults.
        let c = TrainConfig::layered(Some(base.clone()), None, &matches(command(), &["--seed", "1"])).unwrap();
        assert_eq!(c, TrainConfig { seed: 1, ..base });
        let c = TrainConfig::layered(None, Some(&file), &matches(command(), &[])).unwrap();
        assert_eq!(c, TrainConfig { lr: 0.1, steps: 5, lora: LoraConfig { rank: 16, ..LoraConfig::default() }, ..TrainConfig::default() });
        // The result is validated, naming the flag.
        let e = TrainConfig::layered(None, None, &matches(command(), &["--lr", "0"])).unwrap_err().to_string();
        assert!(e.contains("--lr"), "{e}");
        std::fs::remove_file(&file).unwrap();
    }

    /// A config written as TOML (`config.toml` of a run) reads back the same, `weights` by name.
    #[test]
    fn toml_round_trips() {
        let c = TrainConfig { weights: Weights::Auto, data_dir: Some("d".into()), ..TrainConfig::default() };
        let file = temp_toml("round", &c.to_toml());
        assert!(c.to_toml().contains("weights = \"auto\""), "{}", c.to_toml());
        assert_eq!(TrainConfig::from_toml(&file).unwrap(), c);
        std::fs::remove_file(&file).unwrap();
    }
}
