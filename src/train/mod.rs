//! Training: LoRA adapters, the backward pass, optimizers and the loop.

pub mod data;
