//! The model layer. So far only `load`: readers for the model files users bring in (GGUF and the
//! ggml block formats inside it). Configs, weights, forward and backward arrive with the model.
//!
//! Shape glossary: B batch, T tokens, C model width, F MLP width, H heads, K kv heads, D head size,
//! V vocabulary, R LoRA rank, L layers, N a flattened length.

pub mod load;
