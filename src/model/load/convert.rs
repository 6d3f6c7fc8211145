//! `flexlora convert`: a model flexlora reads, written as a Hugging Face directory
//! (config.json, tokenizer.json, tokenizer_config.json, model.safetensors in f32), so other tools
//! read what flexlora reads; `flexlora merge` writes through the same code in f16 or bf16 too.
//! Tensors are streamed one at a time into the safetensors file: its header is computed from the
//! shapes first, so no step holds more than one tensor in memory.

use std::io::Write;
use std::path::Path;

use crate::error::{io_at, Error, Result};
use crate::model::config::{Config, RopeScaling};
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::{tensor_names, WeightSource};

/// A float type weights are written in (`merge --dtype`, `export-lora --dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FloatType {
    F32,
    F16,
    #[value(name = "bf16")]
    BF16,
}

impl FloatType {
    pub fn name(self) -> &'static str {
        match self {
            FloatType::F32 => "f32",
            FloatType::F16 => "f16",
            FloatType::BF16 => "bf16",
        }
    }
    /// safetensors' dtype string.
    pub fn safetensors(self) -> &'static str {
        match self {
            FloatType::F32 => "F32",
            FloatType::F16 => "F16",
            FloatType::BF16 => "BF16",
        }
    }
    /// config.json's `torch_dtype`.
    pub fn torch(self) -> &'static str {
        match self {
            FloatType::F32 => "float32",
            FloatType::F16 => "float16",
            FloatType::BF16 => "bfloat16",
        }
    }
    pub fn bytes_per_value(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::BF16 => 2,
        }
    }
    /// The values as little-endian bytes of this type, each rounded to nearest.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            FloatType::F32 => bytemuck::cast_slice(values).to_vec(),
            FloatType::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
            FloatType::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        }
    }
}

/// Writes the model from `src` (configured by `cfg`) and its tokenizer into directory `out`.
pub fn to_hf_dir(cfg: &Config, src: &mut dyn WeightSource, tok: &Tokenizer, out: &Path) -> Result<()> {
    to_hf_dir_as(cfg, src, Some(tok), out, FloatType::F32)
}

/// [`to_hf_dir`] with the weights in `dtype`; without a tokenizer, no tokenizer files are written.
pub fn to_hf_dir_as(cfg: &Config, src: &mut dyn WeightSource, tok: Option<&Tokenizer>, out: &Path, dtype: FloatType) -> Result<()> {
    if let Some(RopeScaling::Divisors(_)) = cfg.rope_scaling {
        return Err(Error::Config {
            file: src.origin(),
            detail: "its rope_freqs tensor is not Llama 3 scaling with recognizable parameters, and config.json has no way to \
                     state per-frequency divisors; convert the original Hugging Face checkpoint instead"
                .into(),
        });
    }
    std::fs::create_dir_all(out).map_err(io_at(out, "create"))?;
    let names = tensor_names(cfg);
    // safetensors layout: u64 header length, JSON header (offsets into the data), data.
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in &names {
        let bytes = shape.iter().product::<usize>() * dtype.bytes_per_value();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype.safetensors(), "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt", "converted_by": "flexlora"}));
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    head.resize(head.len().next_multiple_of(8), b' ');
    let path = out.join("model.safetensors");
    let tmp = out.join("model.safetensors.tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io_at(&tmp, "create"))?);
    f.write_all(&(head.len() as u64).to_le_bytes()).and_then(|_| f.write_all(&head)).map_err(io_at(&tmp, "write"))?;
    for (name, shape) in &names {
        let (got, data) = src.get(name)?;
        if &got != shape {
            return Err(Error::Weights { file: src.origin(), tensor: name.clone(), detail: format!("shape {got:?}, expected {shape:?}") });
        }
        f.write_all(&dtype.encode(&data)).map_err(io_at(&tmp, "write"))?;
    }
    f.into_inner().map_err(|e| io_at(&tmp, "write")(e.into_error()))?.sync_all().map_err(io_at(&tmp, "write"))?;
    std::fs::rename(&tmp, &path).map_err(io_at(&path, "rename"))?;

    let write_json = |file: &str, v: &serde_json::Value| -> Result<()> {
        let text = serde_json::to_string_pretty(v).map_err(|e| Error::Config { file: file.into(), detail: e.to_string() })?;
        crate::model::load::write_atomic(&out.join(file), text.as_bytes())
    };
    let mut config = cfg.to_hf_json();
    config["torch_dtype"] = dtype.torch().into();
    write_json("config.json", &config)?;
    let Some(tok) = tok else { return Ok(()) };
    let tok_json: serde_json::Value =
        serde_json::from_str(&tok.json).map_err(|e| Error::Config { file: "tokenizer.json".into(), detail: e.to_string() })?;
    write_json("tokenizer.json", &tok_json)?;
    let mut tc = serde_json::json!({"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": false});
    let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    if let Some(b) = name(tok.bos) {
        tc["bos_token"] = b.into();
    }
    if let Some(e) = name(tok.eos.first().copied()) {
        tc["eos_token"] = e.into();
    }
    if let Some(t) = &tok.chat_template {
        tc["chat_template"] = t.clone().into();
    }
    write_json("tokenizer_config.json", &tc)
}
