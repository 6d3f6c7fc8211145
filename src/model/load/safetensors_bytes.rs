//! Safetensors held in memory (target independent, so the browser build has it): one file's
//! tensors converted to f32. The native directory reader (`safetensors.rs`) memory-maps files and
//! uses the same conversion.

use std::collections::HashMap;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Converts one safetensors tensor's bytes to f32.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        _ => return None,
    })
}

/// Tensors of one small safetensors file (adapters, optimizer state) as f32, with the file's
/// metadata. `origin` names the file in errors, which say whether it looks truncated.
pub fn read_all(origin: &str, bytes: &[u8]) -> Result<(HashMap<String, (Vec<usize>, Vec<f32>)>, HashMap<String, String>)> {
    let bad = |e: safetensors::SafeTensorError| Error::Config {
        file: origin.to_string(),
        detail: format!("not a valid safetensors file ({e}); is it truncated?"),
    };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(bad)?;
    let st = SafeTensors::deserialize(bytes).map_err(bad)?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let data = to_f32(view.dtype(), view.data()).ok_or_else(|| Error::Weights {
            file: origin.to_string(),
            tensor: name.clone(),
            detail: format!("dtype {:?} is not supported (F32, F16, BF16)", view.dtype()),
        })?;
        out.insert(name, (view.shape().to_vec(), data));
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}
