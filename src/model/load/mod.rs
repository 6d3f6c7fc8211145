//! Readers for the model files users bring in. Each validates what it reads and names the file
//! and tensor in its errors.
//!
//! - `gguf`: llama.cpp's GGUF container (metadata, tensor table, zero-copy tensor views, writer);
//!   parsing works on bytes, so the browser build has it too.
//! - `ggml_blocks`: the ggml tensor types and their dequantizers to f32.
//! - `gguf_model`: a model's config, tensors (HF names) and tokenizer from a GGUF file.
//! - `safetensors` (native): Hugging Face model directories, memory-mapped.
//! - `convert` (native): any model we read, written as a Hugging Face directory.
//! - `safetensors_bytes`: one safetensors file held in memory, as f32 tensors.
//! - `peft`: LoRA adapters in Hugging Face PEFT's directory layout (from bytes anywhere; from and
//!   to directories natively).

#[cfg(not(target_arch = "wasm32"))]
pub mod convert;
pub mod fingerprint;
pub mod ggml_blocks;
pub mod gguf;
pub mod gguf_model;
pub mod peft;
#[cfg(not(target_arch = "wasm32"))]
pub mod safetensors;
pub mod safetensors_bytes;

pub use ggml_blocks::GgmlType;
pub use gguf::{GgufFile, GgufWriter, TensorInfo, TensorView, Value};

#[cfg(not(target_arch = "wasm32"))]
/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> crate::error::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let fail = |e: std::io::Error| crate::error::Error::Config { file: path.display().to_string(), detail: format!("cannot write: {e}") };
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all() // the bytes are on disk before the name points at them
    };
    write().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Opens a model and its tokenizer: a Hugging Face directory (config.json, tokenizer.json,
/// safetensors) or a `.gguf` file.
#[cfg(not(target_arch = "wasm32"))]
pub fn open(
    dev: &crate::device::Device,
    path: &std::path::Path,
    format: crate::model::WeightFormat,
) -> crate::error::Result<(crate::model::Model, crate::model::tokenizer::Tokenizer)> {
    use crate::model::Model;
    check_exists(path)?;
    if path.is_dir() {
        let cfg = safetensors::read_config(path)?;
        let mut src = safetensors::SafetensorsDir::open(path)?;
        let tok = hf_tokenizer(path, &cfg)?;
        let model = Model::load(dev, cfg, &mut src, format)?;
        Ok((model, tok))
    } else {
        let file = GgufFile::open(path)?;
        let cfg = gguf_model::config(&file)?;
        let tok = gguf_model::tokenizer(&file, &cfg)?;
        let model = Model::load(dev, cfg.clone(), &mut gguf_model::GgufSource { file: &file, cfg }, format)?;
        Ok((model, tok))
    }
}

/// Converts the model at `input` (GGUF file or HF directory) into a Hugging Face directory `out`.
#[cfg(not(target_arch = "wasm32"))]
pub fn convert_to_hf(input: &std::path::Path, out: &std::path::Path) -> crate::error::Result<()> {
    check_exists(input)?;
    if input.is_dir() {
        let cfg = safetensors::read_config(input)?;
        let mut src = safetensors::SafetensorsDir::open(input)?;
        let tok = hf_tokenizer(input, &cfg)?;
        convert::to_hf_dir(&cfg, &mut src, &tok, out)
    } else {
        let file = GgufFile::open(input)?;
        let cfg = gguf_model::config(&file)?;
        let tok = gguf_model::tokenizer(&file, &cfg)?;
        convert::to_hf_dir(&cfg, &mut gguf_model::GgufSource { file: &file, cfg: cfg.clone() }, &tok, out)
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn check_exists(path: &std::path::Path) -> crate::error::Result<()> {
    if path.exists() {
        return Ok(());
    }
    Err(crate::error::Error::Config {
        file: path.display().to_string(),
        detail: "no such file or directory; pass --model a .gguf file or a Hugging Face model directory (scripts/fetch-model.sh gets the default)".into(),
    })
}

/// A Hugging Face directory's tokenizer.json, with the chat template from tokenizer_config.json.
/// A tokenizer with more ids than the embedding has rows would index past it: that is an error.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn hf_tokenizer(dir: &std::path::Path, cfg: &crate::model::Config) -> crate::error::Result<crate::model::tokenizer::Tokenizer> {
    let tok_path = dir.join("tokenizer.json");
    let json = std::fs::read_to_string(&tok_path).map_err(crate::error::io_at(&tok_path, "read"))?;
    // A damaged tokenizer_config.json matters only to --chat: keep why, so --chat can say it.
    let cfg_path = dir.join("tokenizer_config.json");
    let template_err = |detail: String| crate::error::Error::Config { file: cfg_path.display().to_string(), detail };
    let (template, template_error) = match std::fs::read_to_string(&cfg_path).map(|t| serde_json::from_str::<serde_json::Value>(&t)) {
        Err(_) => (None, None),
        Ok(Err(e)) => (None, Some(template_err(format!("not valid JSON ({e})")))),
        Ok(Ok(v)) => match v.get("chat_template") {
            None | Some(serde_json::Value::Null) => (None, None),
            Some(serde_json::Value::String(t)) => (Some(t.clone()), None),
            Some(_) => (None, Some(template_err("`chat_template` is not a string (a list of named templates is not supported)".into()))),
        },
    };
    let mut tok = crate::model::tokenizer::Tokenizer::from_json(&tok_path.display().to_string(), json, cfg.bos, cfg.eos.clone(), template)?;
    tok.chat_template_error = template_error;
    if tok.vocab_size() > cfg.vocab {
        return Err(crate::error::Error::Config {
            file: dir.display().to_string(),
            detail: format!(
                "tokenizer.json has {} tokens but the embedding has {} rows: tokenizer and model do not match",
                tok.vocab_size(),
                cfg.vocab
            ),
        });
    }
    Ok(tok)
}

/// The configuration of a model file or directory, without loading its weights.
#[cfg(not(target_arch = "wasm32"))]
pub fn open_config(path: &std::path::Path) -> crate::error::Result<crate::model::Config> {
    check_exists(path)?;
    if path.is_dir() {
        safetensors::read_config(path)
    } else {
        gguf_model::config(&GgufFile::open(path)?)
    }
}
