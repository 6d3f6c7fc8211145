//! The GGUF side of `flexlora merge`: every tensor of the base GGUF in its order, the adapted
//! linears with s·B·A added, matrices written in the chosen float type and vectors (norms,
//! `rope_freqs`) in f32, all metadata copied (architecture, hyperparameters, tokenizer, chat
//! template) except `general.file_type`, which is set to the new type, plus `flexlora.merge.*`
//! keys naming the adapter and the scale.
//!
//! The base's quantized blocks are dequantized, not re-quantized: the file holds the exact merged
//! weights of the dequantized base (re-quantizing to the base's own block types would need
//! quantizers flexlora does not have; llama.cpp's `llama-quantize` does it from this file).
//! Tensors are produced one at a time as the file is written, so memory holds one tensor.

use std::path::Path;

use super::adapter::{weight_name, HostAdapter};
use crate::error::Result;
use crate::model::config::{Arch, Config};
use crate::model::load::convert::FloatType;
use crate::model::load::gguf_model::{gguf_name, permute_rows};
use crate::model::load::{GgmlType, GgufFile, GgufWriter, Value};
use crate::model::lora::Target;

/// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`) for a file of this type.
fn file_type(dtype: FloatType) -> u32 {
    match dtype {
        FloatType::F32 => 0,
        FloatType::F16 => 1,
        FloatType::BF16 => 32,
    }
}

pub fn ggml_type(dtype: FloatType) -> GgmlType {
    match dtype {
        FloatType::F32 => GgmlType::F32,
        FloatType::F16 => GgmlType::F16,
        FloatType::BF16 => GgmlType::BF16,
    }
}

/// Rows of an update in the GGUF's own order: llama.cpp's converter interleaves Llama's q/k rows.
pub fn to_gguf_rows(cfg: &Config, target: Target, rows: Vec<f32>, cols: usize) -> Vec<f32> {
    match (cfg.arch, target) {
        (Arch::Llama, Target::Q) => permute_rows(&rows, cfg.h, cols),
        (Arch::Llama, Target::K) => permute_rows(&rows, cfg.kv, cols),
        _ => rows,
    }
}

/// Writes the merged GGUF to `path`; returns how many linears received an update.
pub fn write(file: &GgufFile, cfg: &Config, host: &HostAdapter, dtype: FloatType, path: &Path) -> Result<usize> {
    let adapted: std::collections::HashMap<String, (usize, Target)> =
        host.pairs.keys().filter_map(|&(l, t)| Some((gguf_name(&weight_name(l, t))?, (l, t)))).collect();
    let mut w = GgufWriter::new();
    for (key, value) in file.metadata() {
        if key == "general.file_type" || key.starts_with("flexlora.merge.") {
            continue;
        }
        w.add_metadata(key, value.clone())?;
    }
    w.add_metadata("general.file_type", Value::U32(file_type(dtype)))?;
    w.add_metadata("flexlora.merge.adapter", Value::String(host.dir.display().to_string()))?;
    w.add_metadata("flexlora.merge.lora_r", Value::U32(host.cfg.rank as u32))?;
    w.add_metadata("flexlora.merge.lora_alpha", Value::F32(host.cfg.alpha))?;
    w.add_metadata("flexlora.merge.use_rslora", Value::Bool(host.cfg.rslora))?;
    w.add_metadata("flexlora.merge.scale", Value::F32(host.cfg.scale()))?;
    w.add_metadata(
        "flexlora.merge.weights",
        Value::String(format!("{}: the base's blocks dequantized, the adapter added, not re-quantized", dtype.name())),
    )?;
    // Declared now, produced one at a time while the file is written: the merge holds one
    // tensor in memory, not the model.
    for info in file.tensors() {
        let shape = info.shape();
        if shape.len() < 2 && info.ggml_type == GgmlType::F32 {
            w.add_tensor(info.name.clone(), GgmlType::F32, &shape, file.tensor(&info.name)?.data)?;
        } else {
            w.add_tensor_later(info.name.clone(), if shape.len() < 2 { GgmlType::F32 } else { ggml_type(dtype) }, &shape)?;
        }
    }
    let mut merged = 0;
    w.write_file_with(path, &mut |name| {
        let view = file.tensor(name)?;
        let shape = view.shape();
        let mut data = view.to_f32()?;
        if shape.len() < 2 {
            return Ok(FloatType::F32.encode(&data));
        }
        if let Some(&(layer, target)) = adapted.get(name) {
            let cols = shape[shape.len() - 1];
            let delta = to_gguf_rows(cfg, target, host.delta(layer, target).unwrap_or_default(), cols);
            if delta.len() != data.len() {
                return Err(crate::error::Error::Weights {
                    file: file.name().into(),
                    tensor: name.into(),
                    detail: format!("shape {shape:?} does not take the adapter's update of {} values", delta.len()),
                });
            }
            data.iter_mut().zip(&delta).for_each(|(x, d)| *x += d);
            merged += 1;
        }
        Ok(dtype.encode(&data))
    })?;
    Ok(merged)
}
