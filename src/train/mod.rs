//! Training: LoRA adapters over a frozen (NF4) base, the backward pass, optimizers and the loop.
//!
//! - `config`: the run's settings (TOML + flags), learning-rate schedules.
//! - `data`: MBPP / JSONL examples, tokenization with prompt masking, batches, the seeded loader.
//! - `grad`: the training forward pass and the backward pass to the LoRA weights.
//! - `step`: one optimizer step (accumulation, FLeX penalty, clipping, update), shared with
//!   `flexlora bench train`.
//! - `adapter`: the adapter's training state keyed by (layer, target, A|B): gradients and the
//!   optimizer's named state. `optimizer`: AdamW and Sophia behind one trait.
//! - `run`: `Trainer` (data, resume, checkpoints around `step`) and `run`, the loop to the end.
//! - `checkpoint`: atomic checkpoints and exact resume. `metrics`: metrics.jsonl and loss.svg.
//! - `state`: the training state as one file's bytes, the same natively and in the browser.
//! - `memory`: the bytes a run needs on its device, estimated before it starts.
//! - `validate`: the held-out examples and their loss every N steps (no dropout, no gradient).

pub mod adapter;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod grad;
pub mod memory;
pub mod metrics;
pub mod optimizer;
pub mod run;
pub mod state;
pub mod step;
pub mod validate;
