//! Llama-family models: configuration, file readers, tokenizer, weights on a device, the layer
//! (`layer`: inference and training modes, backward) and its LoRA linear (`linear`), and the
//! inference pass (`forward`, `generate`). The model-level training pass is `train::grad`.
//!
//! Shape glossary: B batch, T tokens, S keys (cached plus new), C width, F MLP width, H heads,
//! K kv heads, D head size, V vocabulary, R LoRA rank, L layers, N a flattened length.

pub mod adapter_set;
pub mod config;
pub mod forward;
pub mod generate;
pub mod layer;
pub mod linear;
pub mod load;
pub mod lora;
pub mod tokenizer;
pub mod weights;

pub use config::{Arch, Config, HfConfig, Llama3Scaling, RopeScaling};
pub use forward::KvCache;
pub use layer::Layer;
pub use linear::Linear;
pub use lora::{LoraConfig, ParamKey, Side, Target};
pub use weights::{MemorySource, Model, Weight, WeightFormat, WeightSource};

/// A model with its tokenizer and, when `adapter` names a PEFT adapter directory, that adapter
/// attached (its config returned): what `flexlora generate` and `flexlora eval` run.
#[cfg(not(target_arch = "wasm32"))]
pub fn open_with_adapter(
    dev: &crate::device::Device,
    path: &std::path::Path,
    format: WeightFormat,
    adapter: Option<&std::path::Path>,
) -> crate::error::Result<(Model, tokenizer::Tokenizer, Option<LoraConfig>)> {
    let (mut model, tok) = load::open(dev, path, format)?;
    let lora = adapter.map(|a| load::peft::load(dev, &mut model, a)).transpose()?;
    Ok((model, tok, lora))
}

/// How the frozen base weights are held (`--weights`, `TrainConfig::weights`); `format` is what
/// the loader takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Weights {
    /// The default: a GGUF file's own quantized blocks, embedding and output projection included
    /// (the exact model, and the fastest CPU decode), on the CPU and the GPU; NF4 for
    /// f16/bf16/f32 checkpoints (QLoRA's base).
    Auto,
    /// f32, 4 bytes per parameter.
    F32,
    /// NF4 with blocks of 64, quantized while loading (QLoRA's base; a GGUF's blocks are
    /// re-quantized, so the model is no longer exactly the file's).
    Nf4,
}

impl Weights {
    pub fn format(self) -> WeightFormat {
        match self {
            Weights::Auto => WeightFormat::Auto,
            Weights::F32 => WeightFormat::F32,
            Weights::Nf4 => WeightFormat::Nf4 { blocksize: 64 },
        }
    }

    /// The value as spelled in flags and config files.
    pub fn name(self) -> &'static str {
        match self {
            Weights::Auto => "auto",
            Weights::F32 => "f32",
            Weights::Nf4 => "nf4",
        }
    }
}
