//! Training: LoRA adapters over a frozen (NF4) base, the backward pass, optimizers and the loop.
//!
//! - `config`: the run's settings (TOML + flags), learning-rate schedules.
//! - `data`: MBPP / JSONL examples, tokenization with prompt masking, batches, the seeded loader.
//! - `grad`: the training forward pass and the backward pass to the LoRA weights.
//! - `run`: the loop (accumulation, FLeX penalty, clipping, AdamW/Sophia), `Trainer`, `run`.
//! - `checkpoint`: atomic checkpoints and exact resume. `metrics`: metrics.jsonl and loss.svg.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod grad;
pub mod metrics;
pub mod run;
