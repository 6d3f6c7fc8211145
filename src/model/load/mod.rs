//! Readers for model files. Each reader validates what it reads and names the file and tensor in
//! its errors; none of them builds a model or copies tensor data it is not asked for.
//!
//! - `gguf`: llama.cpp's GGUF container (metadata, tensor table, zero-copy tensor views, writer).
//! - `ggml_blocks`: the ggml tensor types and their dequantizers to f32.

pub mod ggml_blocks;
pub mod gguf;

pub use ggml_blocks::GgmlType;
pub use gguf::{GgufFile, GgufWriter, TensorInfo, TensorView, Value};
