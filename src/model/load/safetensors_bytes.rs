//! Safetensors held in memory (target independent, so the browser build has it): one file's
//! tensors converted to f32, and f32 tensors written as one file's bytes with a deterministic
//! header. The native directory reader (`safetensors.rs`) memory-maps files and uses the same
//! conversion; its writer uses `serialize`.

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

/// f32 tensors (name, shape, data) and optional `__metadata__` as the bytes of one safetensors
/// file, with the JSON header's keys in sorted order. `safetensors::serialize` writes the metadata
/// in a `HashMap`'s order, which changes from map to map: without sorting, the same adapter would
/// not be the same bytes twice (and a resumed run's files would not equal the uninterrupted run's).
/// The header stays padded with spaces to a multiple of 8 bytes. `origin` names the file in errors.
pub fn serialize(origin: &str, tensors: &[(String, Vec<usize>, Vec<f32>)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let fail = |detail: String| Error::Config { file: origin.to_string(), detail };
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, shape, data)| {
            let v = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                .map_err(|e| fail(format!("{n}: {e}")))?;
            Ok((n.clone(), v))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, metadata).map_err(|e| fail(e.to_string()))?;
    sorted_header(&bytes).map_err(fail)
}

fn sorted_header(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let n = bytes.get(..8).and_then(|b| b.try_into().ok()).map(|b: [u8; 8]| u64::from_le_bytes(b) as usize).ok_or("no header length")?;
    let header = bytes.get(8..8 + n).ok_or("header past the end")?;
    // serde_json's map is a BTreeMap (no `preserve_order`): serializing it sorts the keys.
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|e| format!("header: {e}"))?;
    let mut json = serde_json::to_vec(&value).map_err(|e| format!("header: {e}"))?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}
