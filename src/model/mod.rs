//! Llama-family models: configuration, weights on a device, and the forward pass.
//!
//! Shape glossary: B batch, T tokens, S keys (cached plus new), C width, F MLP width, H heads,
//! K kv heads, D head size, V vocabulary, L layers.

pub mod config;
pub mod forward;
#[cfg(not(target_arch = "wasm32"))]
pub mod load;
pub mod tokenizer;
pub mod weights;

pub use config::{Arch, Config, HfConfig};
pub use forward::KvCache;
pub use weights::{Linear, MemorySource, Model, WeightSource};
