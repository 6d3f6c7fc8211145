//! LoRA adapters (Hu et al. 2021) on the frozen linear layers: y = x·Wᵀ + s·(drop(x)·Aᵀ)·Bᵀ with
//! A [R, in], B [out, R] and s = alpha/R (or alpha/√R with rsLoRA, Kalajdzievski 2023).
//!
//! A starts as PEFT's `kaiming_uniform_(a=√5)`, i.e. uniform in ±1/√in, and B at zero, so a fresh
//! adapter leaves the model's outputs exactly as they were. Names follow PEFT's state dict
//! (`base_model.model.model.layers.{i}.mlp.gate_proj.lora_A.weight`), so `adapter_model.safetensors`
//! loads in Hugging Face PEFT and PEFT adapters load here (`load::peft`).

use serde::{Deserialize, Serialize};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::linear::Linear;
use crate::model::weights::Model;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// A linear layer LoRA can adapt, named as in Hugging Face Llama/Qwen2 modules. Ordered as in
/// the layer (`ALL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    #[serde(rename = "q_proj")]
    Q,
    #[serde(rename = "k_proj")]
    K,
    #[serde(rename = "v_proj")]
    V,
    #[serde(rename = "o_proj")]
    O,
    #[serde(rename = "gate_proj")]
    Gate,
    #[serde(rename = "up_proj")]
    Up,
    #[serde(rename = "down_proj")]
    Down,
}

impl Target {
    /// In layer order; `index` is the position here.
    pub const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The module's name inside a layer (`self_attn.q_proj`, `mlp.gate_proj`, ...).
    pub fn module(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }

    /// The short name users write (`q_proj`, `gate_proj`, ...); also accepts `q`, `gate`, ....
    pub fn name(self) -> &'static str {
        self.module().rsplit('.').next().unwrap_or_default()
    }

    pub fn parse(s: &str) -> Result<Target> {
        let s = s.trim();
        Target::ALL.into_iter().find(|t| t.name() == s || t.name().trim_end_matches("_proj") == s).ok_or_else(|| Error::InvalidArgument {
            flag: "--lora-targets",
            detail: format!("unknown module `{s}`; choose from q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"),
        })
    }
}

/// `--lora-targets`: the short names (`q_proj`, ...), also without `_proj`.
#[cfg(not(target_arch = "wasm32"))]
impl clap::ValueEnum for Target {
    fn value_variants<'a>() -> &'a [Self] {
        &Target::ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()).alias(self.name().trim_end_matches("_proj")))
    }
}

/// What to adapt and how. Defaults: r = 8, alpha = 16, dropout 0.05 on the MLP (FLeX's best
/// targets), plain alpha/r scaling. Also `flexlora train`'s `--lora-*` flags (`train::config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::Args))]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// LoRA rank r.
    #[cfg_attr(not(target_arch = "wasm32"), arg(id = "lora_rank", long = "lora-rank", value_name = "R", default_value_t = LoraConfig::default().rank))]
    pub rank: usize,
    /// LoRA alpha: the adapter's output is scaled by alpha/r (alpha/sqrt(r) with --rslora).
    #[cfg_attr(not(target_arch = "wasm32"), arg(id = "lora_alpha", long = "lora-alpha", value_name = "ALPHA", default_value_t = LoraConfig::default().alpha))]
    pub alpha: f32,
    /// Dropout probability on the adapter's input while training.
    #[cfg_attr(
        not(target_arch = "wasm32"),
        arg(id = "lora_dropout", long = "lora-dropout", value_name = "P", default_value_t = LoraConfig::default().dropout)
    )]
    pub dropout: f32,
    /// Scale by alpha/sqrt(r) (rsLoRA) instead of alpha/r.
    #[cfg_attr(not(target_arch = "wasm32"), arg(id = "lora_rslora", long = "rslora"))]
    pub rslora: bool,
    /// The modules to adapt, comma-separated.
    #[cfg_attr(
        not(target_arch = "wasm32"),
        arg(
            id = "lora_targets",
            long = "lora-targets",
            value_name = "MODULES",
            value_enum,
            value_delimiter = ',',
            default_value = "gate_proj,up_proj,down_proj"
        )
    )]
    pub targets: Vec<Target>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig { rank: 8, alpha: 16.0, dropout: 0.05, rslora: false, targets: vec![Target::Gate, Target::Up, Target::Down] }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        if self.rslora {
            self.alpha / (self.rank as f32).sqrt()
        } else {
            self.alpha / self.rank as f32
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |flag, detail: String| Err(Error::InvalidArgument { flag, detail });
        if self.rank == 0 {
            return bad("--lora-rank", "the rank must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("--lora-dropout", format!("{} is outside [0, 1)", self.dropout));
        }
        if self.targets.is_empty() {
            return bad("--lora-targets", "choose at least one module".into());
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return bad("--lora-alpha", format!("{} must be a positive number", self.alpha));
        }
        Ok(())
    }
}

/// One adapter pair on a linear layer.
#[derive(Debug)]
pub struct Lora {
    pub a: Tensor, // [R, in]
    pub b: Tensor, // [out, R]
    pub scale: f32,
    pub dropout: f32,
}

/// NaN or inf in a weight poisons every output silently (empty completions, `null` perplexity):
/// refuse it when the tensor is loaded, naming the file, tensor and element.
pub fn check_finite(file: &str, tensor: &str, data: &[f32]) -> Result<()> {
    match data.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::Weights {
            file: file.into(),
            tensor: tensor.into(),
            detail: format!(
                "element {i} of {} is {}; the file is damaged or was saved from a diverged run: use an intact copy",
                data.len(),
                data[i]
            ),
        }),
    }
}

/// Which matrix of an adapter pair: A [R, in] or B [out, R].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    A,
    B,
}

impl Side {
    fn of(self, l: &Lora) -> &Tensor {
        match self {
            Side::A => &l.a,
            Side::B => &l.b,
        }
    }
}

/// Names one trainable adapter tensor: the A or B matrix of the adapter on `target` in `layer`.
/// Gradients, optimizer state and checkpoints are keyed by it; its order (layer, target, side)
/// is the order of PEFT files and of every list of adapter tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamKey {
    pub layer: usize,
    pub target: Target,
    pub side: Side,
}

impl ParamKey {
    /// The tensor's PEFT state-dict name (`base_model.model.model.layers.3.mlp.up_proj.lora_B.weight`).
    pub fn peft_name(&self) -> String {
        let (a, b) = peft_names(self.layer, self.target);
        match self.side {
            Side::A => a,
            Side::B => b,
        }
    }
}

/// The PEFT state-dict names of layer `layer`'s adapter on `target`: (lora_A, lora_B).
pub fn peft_names(layer: usize, target: Target) -> (String, String) {
    let p = format!("base_model.model.model.layers.{layer}.{}", target.module());
    (format!("{p}.lora_A.weight"), format!("{p}.lora_B.weight"))
}

impl Model {
    /// The linear layer `target` of layer `i`.
    pub fn linear(&self, i: usize, target: Target) -> &Linear {
        self.layers[i].linears()[target.index()]
    }

    pub fn linear_mut(&mut self, i: usize, target: Target) -> &mut Linear {
        self.layers[i].linears_mut().into_iter().nth(target.index()).expect("Layer::linears_mut has every target")
    }

    /// Attaches a fresh adapter to every target of every layer: A from PEFT's Kaiming-uniform
    /// init drawn from `seed`, B zero. Replaces any adapter already attached.
    pub fn attach_lora(&mut self, dev: &Device, cfg: &LoraConfig, seed: u64) -> Result<()> {
        cfg.validate()?;
        self.lora = Some(cfg.clone());
        let mut rng = Rng::new(seed);
        for i in 0..self.layers.len() {
            for &t in &cfg.targets {
                let lin = self.linear_mut(i, t);
                let (out, inp) = (lin.weight.shape()[0], lin.weight.shape()[1]);
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..cfg.rank * inp).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect();
                let (na, nb) = peft_names(i, t);
                lin.lora = Some(Lora {
                    a: Tensor::from_f32(dev, &na, &[cfg.rank, inp], &a)?,
                    b: Tensor::zeros(dev, &nb, &[out, cfg.rank], crate::tensor::DType::F32),
                    scale: cfg.scale(),
                    dropout: cfg.dropout,
                });
            }
        }
        Ok(())
    }

    /// Attaches an adapter from PEFT-named tensors (`get(name)` gives shape and values), checking
    /// every shape against the model. `origin` names the file in errors.
    pub fn attach_lora_from(
        &mut self,
        dev: &Device,
        cfg: &LoraConfig,
        origin: &str,
        get: &mut dyn FnMut(&str) -> Result<Option<(Vec<usize>, Vec<f32>)>>,
    ) -> Result<()> {
        cfg.validate()?;
        // Every tensor is read and checked before any is attached: a bad one leaves the model as it was.
        let mut loaded = Vec::new();
        for i in 0..self.layers.len() {
            for &t in &cfg.targets {
                let (na, nb) = peft_names(i, t);
                let lin = self.linear(i, t);
                let (out, inp) = (lin.weight.shape()[0], lin.weight.shape()[1]);
                let mut take = |name: &str, shape: [usize; 2]| -> Result<Tensor> {
                    let (got, data) = get(name)?.ok_or_else(|| Error::MissingTensor {
                        file: origin.into(),
                        tensor: name.into(),
                        needed_by: format!("the adapter config (targets {:?}) at layer {i}", cfg.targets),
                        hint: "the adapter was saved for another model or other target modules",
                    })?;
                    if got != shape {
                        return Err(Error::Weights {
                            file: origin.into(),
                            tensor: name.into(),
                            detail: format!("shape {got:?}, but this model with rank {} needs {shape:?}", cfg.rank),
                        });
                    }
                    check_finite(origin, name, &data)?;
                    Tensor::from_f32(dev, name, &shape, &data)
                };
                let a = take(&na, [cfg.rank, inp])?;
                let b = take(&nb, [out, cfg.rank])?;
                loaded.push((i, t, Lora { a, b, scale: cfg.scale(), dropout: cfg.dropout }));
            }
        }
        for lin in self.layers.iter_mut().flat_map(|l| l.linears_mut()) {
            lin.lora = None;
        }
        for (i, t, lora) in loaded {
            self.linear_mut(i, t).lora = Some(lora);
        }
        self.lora = Some(cfg.clone());
        Ok(())
    }

    /// The key of every adapter tensor attached, in key order (layer, target, A then B): the order
    /// of gradients, optimizer state and checkpoints.
    pub fn lora_keys(&self) -> Vec<ParamKey> {
        self.lora_params().into_iter().map(|(k, _)| k).collect()
    }

    /// Every adapter tensor with its key, in key order.
    pub fn lora_params(&self) -> Vec<(ParamKey, &Tensor)> {
        let mut out = Vec::new();
        for layer in 0..self.layers.len() {
            for target in Target::ALL {
                if let Some(l) = self.linear(layer, target).lora() {
                    out.push((ParamKey { layer, target, side: Side::A }, &l.a));
                    out.push((ParamKey { layer, target, side: Side::B }, &l.b));
                }
            }
        }
        out
    }

    /// The adapter tensor `key` names, if that adapter is attached.
    pub fn lora_param(&self, key: ParamKey) -> Option<&Tensor> {
        let l = self.layers.get(key.layer)?;
        let l = l.linears()[key.target.index()].lora()?;
        Some(key.side.of(l))
    }

    pub fn lora_param_mut(&mut self, key: ParamKey) -> Option<&mut Tensor> {
        if key.layer >= self.layers.len() {
            return None;
        }
        let l = self.linear_mut(key.layer, key.target).lora.as_mut()?;
        Some(match key.side {
            Side::A => &mut l.a,
            Side::B => &mut l.b,
        })
    }

    /// Every adapter tensor with its PEFT name, in key order (what `load::peft::save` writes).
    pub fn lora_tensors(&self) -> Vec<(String, &Tensor)> {
        self.lora_params().into_iter().map(|(k, t)| (k.peft_name(), t)).collect()
    }

    /// (trainable parameters, all parameters including the frozen base).
    pub fn trainable_params(&self) -> (usize, usize) {
        let lora: usize = self.lora_tensors().iter().map(|(_, t)| t.numel()).sum();
        (lora, self.weight_bytes().1 + lora)
    }
}
