//! flexlora: 4-bit QLoRA fine-tuning and evaluation of code LLMs on any GPU through WebGPU (wgpu),
//! and on the CPU.
//!
//! Layers, bottom to top: `device` (CPU backend or a wgpu GPU, tensors, kernel dispatch),
//! `ops` (every op forward and backward, WGSL kernel and CPU twin side by side), `quant` (NF4 and
//! QLoRA double quantization bit-compatible with bitsandbytes, and its 4-bit safetensors format),
//! `model` (configuration, file readers, tokenizer, weights, forward pass with a KV cache, generation),
//! `eval` (benchmark tasks, the sandbox that runs generated programs, pass@k).
//!
//! Shape glossary used in every doc comment and kernel binding:
//! B batch, T tokens, S keys (T plus cached positions), C model width, F MLP width, H heads,
//! K kv heads, D head size, V vocabulary, R LoRA rank, L layers, N a flattened length.

pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod model;
pub mod ops;
pub mod plot;
pub mod quant;
pub mod rng;
pub mod selftest;
pub mod shaders;
pub mod tensor;
pub mod train;

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
#[cfg(not(target_arch = "wasm32"))]
pub mod export;
#[cfg(not(target_arch = "wasm32"))]
pub mod serve;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use device::{Device, DeviceChoice};
pub use error::{Error, Result};
pub use tensor::{DType, Tensor};
