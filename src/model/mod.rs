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
