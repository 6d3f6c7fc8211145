//! Training: LoRA adapters over a frozen (NF4) base, the backward pass, optimizers and the loop.
//!
//! - `config`: the run's settings (also `flexlora train`'s flags; TOML, resume and flag
//!   precedence), learning-rate schedules.
//! - `data`: in memory, the examples `crate::data::text` reads (MBPP / JSONL) tokenized with
//!   prompt masking, batches, the seeded loader.
//! - `grad`: the training forward pass and the backward pass to the LoRA weights.
//! - `step`: one optimizer step (accumulation, FLeX penalty, clipping, update), shared with
//!   `flexlora bench train`.
//! - `adapter`: the adapter's training state keyed by (layer, target, A|B): gradients and the
//!   optimizer's named state. `optimizer`: AdamW and Sophia behind one trait.
//! - `session`: one run in memory (examples, loader, optimizer, adapter state, step log):
//!   `queue` a step, `flush` the queued steps' numbers; what native and browser training share.
//! - `run`: `Trainer` (data files, resume, checkpoints, validation around a `Session`) and `run`,
//!   the loop to the end.
//! - `checkpoint`: atomic checkpoints and exact resume. `metrics`: metrics.jsonl and loss.svg.
//! - `state`: the training state as one file's bytes, the same natively and in the browser.
//! - `memory`: the bytes a run needs on its device, estimated before it starts.
//! - `validate`: the held-out examples and their loss every N steps (no dropout, no gradient).
//!
//! The step and what it needs (`config`, `data`, `grad`, `step`, `adapter`, `optimizer`,
//! `session`, `state`, `memory`) work in memory and compile for the browser (`web` trains with
//! them); `run`, `checkpoint`, `metrics` and `validate` read or write files and are native only.

pub mod adapter;
#[cfg(not(target_arch = "wasm32"))]
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod grad;
pub mod memory;
#[cfg(not(target_arch = "wasm32"))]
pub mod metrics;
pub mod optimizer;
#[cfg(not(target_arch = "wasm32"))]
pub mod run;
pub mod session;
pub mod state;
pub mod step;
#[cfg(not(target_arch = "wasm32"))]
pub mod validate;
