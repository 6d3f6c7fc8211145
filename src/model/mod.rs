//! Llama-family models: configuration, file readers, tokenizer, weights on a device, and the
//! forward pass.
//!
//! Shape glossary: B batch, T tokens, S keys (cached plus new), C width, F MLP width, H heads,
//! K kv heads, D head size, V vocabulary, R LoRA rank, L layers, N a flattened length.

pub mod adapter_set;
pub mod config;
pub mod forward;
pub mod generate;
pub mod load;
pub mod lora;
pub mod tokenizer;
pub mod weights;

pub use config::{Arch, Config, HfConfig, Llama3Scaling, RopeScaling};
pub use forward::KvCache;
pub use lora::{LoraConfig, ParamKey, Side, Target};
pub use weights::{Linear, MemorySource, Model, Weight, WeightFormat, WeightSource};
