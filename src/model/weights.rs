//! The model's weights on a device, and the `WeightSource` trait that loaders implement.
//! The base model is frozen: nothing here changes after loading.

use std::collections::HashMap;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::layer::Layer;
use crate::model::linear::{Linear, Mode};
use crate::model::load::GgmlType;
use crate::model::lora::LoraConfig;
use crate::ops::matmul_gguf::{self, GgufTensor};
use crate::ops::quant_nf4::{self, Nf4Tensor};
use crate::ops::{embedding, matmul, matmul_nf4};
use crate::ops::{matmul_q8::Q8Matrix, rope::RopeTables};
use crate::tensor::Tensor;

/// Where weights come from: a safetensors directory, a GGUF file, or memory (tests). Tensors are
/// asked for by their Hugging Face names (`model.layers.0.self_attn.q_proj.weight`), row-major f32,
/// in Hugging Face's layout (a source holding llama.cpp's permuted Q/K rows undoes that itself).
pub trait WeightSource {
    /// The file or directory, for error messages.
    fn origin(&self) -> String;
    fn contains(&self, name: &str) -> bool;
    /// One tensor: its shape and its values.
    fn get(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>)>;
    /// One matrix as the file stores it, when that is a GGUF block format the fused kernels take
    /// (`matmul_gguf::TYPES`): its type, shape [N, K] and packed rows in Hugging Face row order.
    /// `None` (the default) for sources without blocks.
    fn get_blocks(&mut self, name: &str) -> Result<Option<(GgmlType, Vec<usize>, Vec<u8>)>> {
        let _ = name;
        Ok(None)
    }
}

/// Weights held in memory, keyed by Hugging Face name (tests, conversions).
#[derive(Debug, Default, Clone)]
pub struct MemorySource(pub HashMap<String, (Vec<usize>, Vec<f32>)>);

impl WeightSource for MemorySource {
    fn origin(&self) -> String {
        "in-memory weights".into()
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
    fn get(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        self.0.get(name).cloned().ok_or_else(|| Error::Weights { file: self.origin(), tensor: name.into(), detail: "missing".into() })
    }
}

/// How frozen linear weights are held on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    /// NF4 with one f32 scale per block (QLoRA's base-weight format), quantized as each tensor
    /// arrives: on the GPU by the `quant_nf4` kernel, on the CPU by its twin.
    Nf4 {
        blocksize: usize,
    },
    /// What the file holds: a GGUF's quantized blocks stay as they are (`Weight::Gguf`, exact
    /// weights) on every device; anything else (f16/bf16/f32 checkpoints) becomes NF4 with blocks
    /// of 64, as QLoRA does.
    Auto,
}

/// A frozen linear weight [out, in].
#[derive(Debug)]
pub enum Weight {
    F32(Tensor),
    Nf4(Nf4Tensor),
    /// A GGUF file's own blocks (`ops::matmul_gguf`).
    Gguf(GgufTensor),
}

impl Weight {
    /// x [.., in] -> x·Wᵀ [.., out]. In `Mode::Infer`, products over GGUF blocks on the CPU take
    /// 8-bit activations (`matmul_gguf::forward_int8`); training's are f32.
    pub fn forward(&self, dev: &Device, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match self {
            Weight::F32(w) => matmul::forward(dev, x, w, false, true),
            Weight::Nf4(q) => matmul_nf4::forward(dev, x, q),
            Weight::Gguf(g) if mode == Mode::Infer => matmul_gguf::forward_int8(dev, x, g),
            Weight::Gguf(g) => matmul_gguf::forward(dev, x, g),
        }
    }

    /// dy [.., out] -> dy·W [.., in], the input gradient of `forward` (W is frozen).
    pub fn backward_dx(&self, dev: &Device, dy: &Tensor) -> Result<Tensor> {
        match self {
            Weight::F32(w) => matmul::forward(dev, dy, w, false, false),
            Weight::Nf4(q) => matmul_nf4::backward_dx(dev, dy, q),
            Weight::Gguf(g) => matmul_gguf::backward_dx(dev, dy, g),
        }
    }

    /// Rows `ids` [T] (u32) of W [V, C] -> [T, C]: the embedding lookup, from an f32 table or the
    /// file's blocks (an id ≥ V gives a zero row). NF4 tables do not occur (`Model::load` keeps
    /// the embedding f32 or in blocks).
    pub fn rows(&self, dev: &Device, ids: &Tensor) -> Result<Tensor> {
        match self {
            Weight::F32(t) => embedding::forward(dev, ids, t),
            Weight::Gguf(g) => matmul_gguf::gather(dev, ids, g),
            Weight::Nf4(q) => Err(Error::shape("embedding", format!("the table `{}` is NF4, which has no row lookup", q.packed.label()))),
        }
    }
}

impl Weight {
    pub fn shape(&self) -> &[usize] {
        match self {
            Weight::F32(t) => t.shape(),
            Weight::Nf4(q) => &q.shape,
            Weight::Gguf(g) => &g.shape,
        }
    }

    /// Bytes held on the device.
    pub fn bytes(&self) -> u64 {
        match self {
            Weight::F32(t) => t.bytes(),
            Weight::Nf4(q) => q.packed.bytes() + q.absmax.bytes(),
            Weight::Gguf(g) => g.bytes(),
        }
    }
}

#[derive(Debug)]
pub struct Model {
    pub cfg: Config,
    /// The token embedding [V, C]: f32, or the file's blocks under `WeightFormat::Auto`. A tied
    /// model's output projection is this matrix (`Weight::forward`).
    pub embed: Weight,
    pub layers: Vec<Layer>,
    pub norm: Tensor, // [C]
    /// The output projection [V, C]; `None` when tied to `embed`.
    pub lm_head: Option<Linear>,
    /// On the CPU, an exact 8-bit copy of the output projection for decode steps (see
    /// `ops::matmul_q8`); `None` on the GPU or when the weight is not exactly 8-bit.
    pub head_q8: Option<Q8Matrix>,
    pub rope: RopeTables,
    /// The attached adapter's configuration (the tensors live in each `Linear`).
    pub lora: Option<LoraConfig>,
}

/// The Hugging Face names of every tensor of `cfg`'s model, with their shapes.
pub fn tensor_names(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let (c, f, hd, kd) = (cfg.c, cfg.f, cfg.h * cfg.d, cfg.kv * cfg.d);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab, c])];
    for i in 0..cfg.layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), vec![c]));
        for (name, rows, cols) in [("q_proj", hd, c), ("k_proj", kd, c), ("v_proj", kd, c), ("o_proj", c, hd)] {
            out.push((format!("{p}.self_attn.{name}.weight"), vec![rows, cols]));
            if cfg.qkv_bias && name != "o_proj" {
                out.push((format!("{p}.self_attn.{name}.bias"), vec![rows]));
            }
        }
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![c]));
        for (name, rows, cols) in [("gate_proj", f, c), ("up_proj", f, c), ("down_proj", c, f)] {
            out.push((format!("{p}.mlp.{name}.weight"), vec![rows, cols]));
        }
    }
    out.push(("model.norm.weight".to_string(), vec![c]));
    if !cfg.tied {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab, c]));
    }
    out
}

/// Largest position the RoPE tables cover (memory: 2 · max_pos · D/2 floats).
const MAX_ROPE_POSITIONS: usize = 32_768;

impl Model {
    /// Loads every tensor from `src` one at a time, checking each shape against `cfg`; linear
    /// weights are stored as `format` says. The embedding stays in the file's blocks under Auto,
    /// else f32; norms and biases are f32.
    pub fn load(dev: &Device, cfg: Config, src: &mut dyn WeightSource, format: WeightFormat) -> Result<Model> {
        let extra = format!("model.layers.{}.input_layernorm.weight", cfg.layers);
        if src.contains(&extra) {
            let detail =
                format!("the file has a layer {} but the config's num_hidden_layers is {}; fix the config", cfg.layers, cfg.layers);
            return Err(Error::Weights { file: src.origin(), tensor: extra, detail });
        }
        let take = |src: &mut dyn WeightSource, name: &str, shape: &[usize]| -> Result<Tensor> {
            let (got, data) = src.get(name)?;
            if got != shape {
                return Err(Error::Weights {
                    file: src.origin(),
                    tensor: name.into(),
                    detail: format!("shape {got:?}, but the config implies {shape:?}"),
                });
            }
            crate::model::lora::check_finite(&src.origin(), name, &data)?;
            Tensor::from_f32(dev, name, shape, &data)
        };
        // A matrix as the file's blocks, when `format` keeps them and the file has them.
        let blocks = |src: &mut dyn WeightSource, name: &str, shape: [usize; 2]| -> Result<Option<Weight>> {
            let got = match format {
                WeightFormat::Auto => src.get_blocks(name)?,
                _ => None,
            };
            let Some((ty, got, bytes)) = got else { return Ok(None) };
            if got != shape {
                let detail = format!("shape {got:?}, but the config implies {shape:?}");
                return Err(Error::Weights { file: src.origin(), tensor: name.into(), detail });
            }
            Ok(Some(Weight::Gguf(GgufTensor::new(dev, &format!("{}: {name}", src.origin()), ty, &got, &bytes)?)))
        };
        let (c, f, hd, kd) = (cfg.c, cfg.f, cfg.h * cfg.d, cfg.kv * cfg.d);
        // The embedding in blocks: Qwen2.5-0.5B's [151936, 896] Q5_0 table is 94 MiB, not 545.
        let embed = match blocks(src, "model.embed_tokens.weight", [cfg.vocab, c])? {
            Some(w) => w,
            None => Weight::F32(take(src, "model.embed_tokens.weight", &[cfg.vocab, c])?),
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("model.layers.{i}");
            let mut lin = |name: &str, rows: usize, cols: usize, bias: bool| -> Result<Linear> {
                let name_w = format!("{p}.{name}.weight");
                let weight = match (blocks(src, &name_w, [rows, cols])?, format) {
                    (Some(w), _) => w,
                    (None, WeightFormat::F32) => Weight::F32(take(src, &name_w, &[rows, cols])?),
                    (None, WeightFormat::Nf4 { blocksize }) => {
                        Weight::Nf4(quant_nf4::quantize(dev, &take(src, &name_w, &[rows, cols])?, blocksize)?)
                    }
                    (None, WeightFormat::Auto) => Weight::Nf4(quant_nf4::quantize(dev, &take(src, &name_w, &[rows, cols])?, 64)?),
                };
                let bias = if bias { Some(take(src, &format!("{p}.{name}.bias"), &[rows])?) } else { None };
                Ok(Linear { weight, bias, lora: None })
            };
            let b = cfg.qkv_bias;
            let q = lin("self_attn.q_proj", hd, c, b)?;
            let k = lin("self_attn.k_proj", kd, c, b)?;
            let v = lin("self_attn.v_proj", kd, c, b)?;
            let o = lin("self_attn.o_proj", c, hd, false)?;
            let gate = lin("mlp.gate_proj", f, c, false)?;
            let up = lin("mlp.up_proj", f, c, false)?;
            let down = lin("mlp.down_proj", c, f, false)?;
            let attn_norm = take(src, &format!("{p}.input_layernorm.weight"), &[c])?;
            let mlp_norm = take(src, &format!("{p}.post_attention_layernorm.weight"), &[c])?;
            layers.push(Layer { attn_norm, q, k, v, o, mlp_norm, gate, up, down });
        }
        let norm = take(src, "model.norm.weight", &[c])?;
        // An untied output projection stays in the file's blocks under Auto, like the
        // other linears (Qwen2.5-0.5B's [151936, 896] matrix: 110 MiB of Q6_K instead of 545 MiB
        // of f32, read at every decode step).
        let head = match cfg.tied {
            true => None,
            false => Some(match blocks(src, "lm_head.weight", [cfg.vocab, c])? {
                Some(w) => w,
                None => Weight::F32(take(src, "lm_head.weight", &[cfg.vocab, c])?),
            }),
        };
        let head_q8 = match (dev, &head, &embed) {
            (Device::Cpu(_), None, Weight::F32(embed)) => Q8Matrix::exact(embed.host_f32("load")?, cfg.vocab, c),
            (Device::Cpu(_), Some(Weight::F32(h)), _) => Q8Matrix::exact(h.host_f32("load")?, cfg.vocab, c),
            _ => None,
        };
        let lm_head = head.map(|weight| Linear { weight, bias: None, lora: None });
        let rope = RopeTables::new(dev, &cfg.inv_freq(), cfg.max_pos.clamp(1, MAX_ROPE_POSITIONS))?;
        Ok(Model { cfg, embed, layers, norm, lm_head, head_q8, rope, lora: None })
    }
}

impl Model {
    /// Bytes of weights one decode step reads: every layer's weights and norms, and the output
    /// projection (its 8-bit copy when decode uses one); of the embedding only one row.
    pub fn decode_weight_bytes(&self) -> u64 {
        let head = match (&self.head_q8, &self.lm_head) {
            (Some(q8), _) => q8.bytes(),
            (None, Some(h)) => h.weight.bytes(),
            (None, None) => self.embed.bytes(),
        };
        let layers: u64 = (self.layers.iter())
            .map(|l| {
                let lin: u64 = l.linears().iter().map(|x| x.bytes()).sum();
                lin + l.attn_norm.bytes() + l.mlp_norm.bytes()
            })
            .sum();
        head + self.norm.bytes() + layers + (4 * self.cfg.c) as u64
    }

    /// Device bytes of all weights and the parameter count (for "bytes per parameter" reports).
    pub fn weight_bytes(&self) -> (u64, usize) {
        let mut bytes = self.embed.bytes() + self.norm.bytes() + self.head_q8.as_ref().map_or(0, |h| h.bytes());
        let mut params = self.embed.shape().iter().product::<usize>() + self.norm.numel();
        let mut lin = |l: &Linear| {
            bytes += l.bytes();
            params += l.weight.shape().iter().product::<usize>() + l.bias.as_ref().map_or(0, |b| b.numel());
        };
        for layer in &self.layers {
            for l in layer.linears() {
                lin(l);
            }
        }
        if let Some(h) = &self.lm_head {
            lin(h);
        }
        let norms = self.layers.iter().flat_map(|l| [&l.attn_norm, &l.mlp_norm]);
        for n in norms {
            bytes += n.bytes();
            params += n.numel();
        }
        (bytes, params)
    }
}
