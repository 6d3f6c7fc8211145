//! `flexlora merge`: the base model with an adapter folded in, W' = W + s·B·A for every adapted
//! linear (s = alpha/r, or alpha/√r with rsLoRA), written as a Hugging Face directory
//! (config.json, model.safetensors under Hugging Face names and layouts, the tokenizer) or, from a
//! GGUF base, as a GGUF with the base's metadata and tokenizer.
//!
//! The base is read through the ordinary loaders (`model::load`), which give every tensor in
//! Hugging Face order (llama.cpp's Q/K row permutation undone), so the update is added where the
//! adapter was trained; the GGUF writer permutes merged Q/K rows back. The output appears whole or
//! not at all (`staging`).

use std::path::{Path, PathBuf};

use super::adapter::HostAdapter;
use super::staging::Staging;
use crate::error::{Error, Result};
use crate::model::load::convert::{self, FloatType};
use crate::model::load::{gguf_model, safetensors, GgufFile};
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::WeightSource;

/// `merge --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MergeFormat {
    /// A Hugging Face directory (transformers' `from_pretrained`).
    Hf,
    /// One GGUF file (llama.cpp), from a GGUF base.
    Gguf,
}

#[derive(Debug, Clone)]
pub struct MergeOptions {
    pub format: MergeFormat,
    /// The type of every matrix written (vectors such as norms stay f32 in GGUF, as llama.cpp's
    /// converter keeps them).
    pub dtype: FloatType,
    /// Replace an existing output.
    pub force: bool,
}

/// What was written, for the command's output.
#[derive(Debug)]
pub struct MergeReport {
    pub out: PathBuf,
    pub format: MergeFormat,
    pub dtype: FloatType,
    /// Linear layers that received an update.
    pub merged: usize,
    /// The factor s the updates were scaled by.
    pub scale: f32,
    /// Things the user should know (a tokenizer that could not be written, ...).
    pub notes: Vec<String>,
}

/// Tokenizer files of a Hugging Face base copied into a merged directory as they are (they
/// describe the same vocabulary; the converted tokenizer.json is replaced by the original).
const HF_SIDE_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",
];

/// The base's tensors with the adapter's updates added to the adapted linears.
struct Merged<'a> {
    inner: &'a mut dyn WeightSource,
    adapter: &'a HostAdapter,
    merged: usize,
}

impl WeightSource for Merged<'_> {
    fn origin(&self) -> String {
        self.inner.origin()
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn get(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (shape, mut data) = self.inner.get(name)?;
        if let Some((layer, target)) = self.adapter.key_of(name) {
            let delta = self.adapter.delta(layer, target).unwrap_or_default();
            if delta.len() != data.len() {
                return Err(Error::Weights {
                    file: self.inner.origin(),
                    tensor: name.into(),
                    detail: format!("shape {shape:?} does not take the adapter's update of {} values", delta.len()),
                });
            }
            data.iter_mut().zip(&delta).for_each(|(w, d)| *w += d);
            self.merged += 1;
        }
        Ok((shape, data))
    }
}

/// Merges the PEFT adapter at `adapter` into the model at `model` (GGUF file or Hugging Face
/// directory) and writes the result to `out`.
pub fn merge(model: &Path, adapter: &Path, out: &Path, opts: &MergeOptions) -> Result<MergeReport> {
    let cfg = crate::model::load::open_config(model)?;
    let origin = model.display().to_string();
    let host = HostAdapter::read(adapter, &cfg, &origin)?;
    let mut notes = Vec::new();
    let expected = host.pairs.len();
    let merged = match opts.format {
        MergeFormat::Hf => {
            let staging = Staging::begin(out, true, opts.force, "--force")?;
            let (merged, tok_note) = if model.is_dir() {
                let mut src = safetensors::SafetensorsDir::open(model)?;
                let tok = crate::model::load::hf_tokenizer(model, &cfg);
                write_hf(&cfg, &mut src, tok, &host, &staging.tmp, opts.dtype)?
            } else {
                let file = GgufFile::open(model)?;
                let tok = gguf_model::tokenizer(&file, &cfg);
                write_hf(&cfg, &mut gguf_model::GgufSource { file: &file, cfg: cfg.clone() }, tok, &host, &staging.tmp, opts.dtype)?
            };
            notes.extend(tok_note);
            if model.is_dir() {
                for f in HF_SIDE_FILES {
                    let from = model.join(f);
                    if from.is_file() {
                        std::fs::copy(&from, staging.tmp.join(f)).map_err(crate::error::io_at(&from, "copy"))?;
                    }
                }
            }
            write_provenance(&staging.tmp, model, &host, opts)?;
            check_count(merged, expected, &origin)?;
            staging.finish()?;
            merged
        }
        MergeFormat::Gguf => {
            if model.is_dir() {
                return Err(Error::InvalidArgument {
                    flag: "--format",
                    detail: format!(
                        "gguf needs a GGUF base (its metadata and tokenizer are copied), but {origin} is a Hugging Face directory; \
                         merge with --format hf and convert the result with llama.cpp's convert_hf_to_gguf.py"
                    ),
                });
            }
            let file = GgufFile::open(model)?;
            let staging = Staging::begin(out, false, opts.force, "--force")?;
            let merged = super::merge_gguf::write(&file, &cfg, &host, opts.dtype, &staging.tmp)?;
            check_count(merged, expected, &origin)?;
            staging.finish()?;
            merged
        }
    };
    Ok(MergeReport { out: out.to_path_buf(), format: opts.format, dtype: opts.dtype, merged, scale: host.cfg.scale(), notes })
}

/// Writes the merged Hugging Face directory; a tokenizer that could not be built is left out
/// with a note saying why.
fn write_hf(
    cfg: &crate::model::Config,
    src: &mut dyn WeightSource,
    tok: Result<Tokenizer>,
    host: &HostAdapter,
    dir: &Path,
    dtype: FloatType,
) -> Result<(usize, Option<String>)> {
    let (tok, note) = match tok {
        Ok(t) => (Some(t), None),
        Err(e) => (None, Some(format!("no tokenizer files were written ({e}); copy the base model's tokenizer.json next to config.json"))),
    };
    let mut merged = Merged { inner: src, adapter: host, merged: 0 };
    convert::to_hf_dir_as(cfg, &mut merged, tok.as_ref(), dir, dtype)?;
    Ok((merged.merged, note))
}

fn check_count(merged: usize, expected: usize, origin: &str) -> Result<()> {
    if merged == expected {
        return Ok(());
    }
    Err(Error::Config {
        file: origin.into(),
        detail: format!("only {merged} of the adapter's {expected} linear layers were found in the model; nothing was written"),
    })
}

/// `flexlora_merge.json`: which base and adapter the directory was made from, and how.
fn write_provenance(dir: &Path, model: &Path, host: &HostAdapter, opts: &MergeOptions) -> Result<()> {
    let v = serde_json::json!({
        "base_model": model.display().to_string(),
        "adapter": host.dir.display().to_string(),
        "r": host.cfg.rank,
        "lora_alpha": host.cfg.alpha,
        "use_rslora": host.cfg.rslora,
        "scale": host.cfg.scale(),
        "target_modules": host.cfg.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "dtype": opts.dtype.name(),
    });
    crate::model::load::write_atomic(&dir.join("flexlora_merge.json"), serde_json::to_string_pretty(&v).unwrap_or_default().as_bytes())
}
