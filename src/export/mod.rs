//! What flexlora writes for other tools: an adapter merged into its base model (`merge`, as a
//! Hugging Face directory or a GGUF file), an adapter in llama.cpp's GGUF LoRA format
//! (`gguf_lora`, which also reads such files back), and logits as `.npy` for comparisons with
//! other implementations (`npy`).
//!
//! Everything here works on the host, one tensor at a time, through the loaders of
//! `model::load`: no device and no forward pass is involved. Native only (it writes files).

pub mod adapter;
pub mod gguf_lora;
pub mod merge;
mod merge_gguf;
pub mod npy;
mod staging;

pub use crate::model::load::convert::FloatType;
pub use adapter::HostAdapter;
pub use merge::{merge, MergeFormat, MergeOptions, MergeReport};

/// The ggml type `merge --format gguf` writes matrices in for `dtype`.
pub fn merge_gguf_type(dtype: FloatType) -> crate::model::load::GgmlType {
    merge_gguf::ggml_type(dtype)
}
