//! Readers for the model files users bring in. Each validates what it reads and names the file
//! and tensor in its errors.
//!
//! - `gguf`: llama.cpp's GGUF container (metadata, tensor table, zero-copy tensor views, writer);
//!   parsing works on bytes, so the browser build has it too.
//! - `ggml_blocks`: the ggml tensor types and their dequantizers to f32.
//! - `safetensors` (native): Hugging Face model directories, memory-mapped.

pub mod ggml_blocks;
pub mod gguf;
#[cfg(not(target_arch = "wasm32"))]
pub mod safetensors;

pub use ggml_blocks::GgmlType;
pub use gguf::{GgufFile, GgufWriter, TensorInfo, TensorView, Value};

#[cfg(not(target_arch = "wasm32"))]
/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> crate::error::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let fail = |e: std::io::Error| crate::error::Error::Config { file: path.display().to_string(), detail: format!("cannot write: {e}") };
    std::fs::write(&tmp, bytes).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}
