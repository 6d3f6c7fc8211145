//! Model configuration: a serde mirror of Hugging Face `config.json` (`HfConfig`), validated once
//! into the internal `Config` that the rest of the engine uses.

use serde::Deserialize;

use crate::error::{Error, Result};

/// Architectures flexlora runs. Both are decoder-only with RMSNorm, RoPE, GQA and SwiGLU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, Code Llama, TinyLlama, SmolLM/SmolLM2.
    Llama,
    /// Qwen2: Llama plus biases on q, k and v.
    Qwen2,
}

pub const SUPPORTED: &str = "llama (LlamaForCausalLM: Llama 2/3, Code Llama, TinyLlama, SmolLM2) and qwen2 (Qwen2ForCausalLM)";

/// Llama 3's RoPE frequency scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// How RoPE frequencies are scaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Llama 3's (`rope_scaling.rope_type == "llama3"`).
    Llama3(Llama3Scaling),
    /// Positions divided by `factor` (`rope_type == "linear"`, GGUF `rope.scaling.type = linear`).
    Linear { factor: f64 },
    /// One divisor per frequency pair [D/2]: GGUF's `rope_freqs` tensor, which is how llama.cpp's
    /// converter stores Llama 3 scaling when its parameters cannot be recognized from it.
    Divisors(Vec<f64>),
}

/// The validated configuration. Shapes: C width, F MLP width, H heads, K kv heads, D head size,
/// L layers, V vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub arch: Arch,
    pub c: usize,
    pub f: usize,
    pub h: usize,
    pub kv: usize,
    pub d: usize,
    pub layers: usize,
    pub vocab: usize,
    pub eps: f32,
    pub rope_base: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_pos: usize,
    /// The output projection reuses the embedding matrix.
    pub tied: bool,
    pub qkv_bias: bool,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
}

/// `eos_token_id` is a number or a list in the wild.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// The fields of `config.json` that flexlora reads.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub num_hidden_layers: usize,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub head_dim: Option<usize>,
    #[serde(default)]
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<OneOrMany>,
    /// The MLP's activation; flexlora implements SwiGLU's `silu` only.
    #[serde(default)]
    pub hidden_act: Option<String>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_max_pos() -> usize {
    2048
}

impl HfConfig {
    /// Validates into `Config`; `source` names the file in errors.
    pub fn validate(&self, source: &str) -> Result<Config> {
        let bad = |detail: String| Error::Config { file: source.to_string(), detail };
        let arch = match self.model_type.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => {
                let named = self.architectures.join(", ");
                return Err(bad(format!("model_type `{other}` ({named}) is not supported; supported: {SUPPORTED}")));
            }
        };
        let (c, h) = (self.hidden_size, self.num_attention_heads);
        let kv = self.num_key_value_heads.unwrap_or(h);
        if c == 0 || h == 0 || kv == 0 || h % kv != 0 {
            return Err(bad(format!(
                "hidden_size {c}, num_attention_heads {h}, num_key_value_heads {kv}: heads must be > 0 and divisible by kv heads"
            )));
        }
        let d = self.head_dim.unwrap_or(c / h);
        if d == 0 || d % 2 != 0 || d > crate::ops::attention::D_MAX {
            return Err(bad(format!("head size {d} must be even and at most {}", crate::ops::attention::D_MAX)));
        }
        if self.num_hidden_layers == 0 || self.vocab_size == 0 || self.intermediate_size == 0 {
            return Err(bad("num_hidden_layers, vocab_size and intermediate_size must be > 0".into()));
        }
        // Values the forward pass would take at face value and compute garbage (or NaN) with.
        if let Some(act) = self.hidden_act.as_deref().filter(|a| !matches!(*a, "silu" | "swish")) {
            return Err(bad(format!(
                "hidden_act `{act}` is not supported: flexlora's MLP is SwiGLU with silu (the Llama/Qwen2 activation)"
            )));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite() && (self.rms_norm_eps as f32) > 0.0) {
            return Err(bad(format!("rms_norm_eps {} must be a small positive number (Llama uses 1e-5 or 1e-6)", self.rms_norm_eps)));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(bad(format!("rope_theta {} must be a positive number (Llama uses 10000 to 500000)", self.rope_theta)));
        }
        if self.max_position_embeddings == 0 {
            return Err(bad("max_position_embeddings must be > 0".into()));
        }
        let rope_scaling = match &self.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("");
                match kind {
                    "llama3" => {
                        Some(RopeScaling::Llama3(serde_json::from_value(v.clone()).map_err(|e| bad(format!("rope_scaling: {e}")))?))
                    }
                    "linear" => match v.get("factor").and_then(|f| f.as_f64()) {
                        Some(factor) if factor > 0.0 => Some(RopeScaling::Linear { factor }),
                        _ => return Err(bad("rope_scaling: linear scaling needs a positive `factor`".into())),
                    },
                    "default" => None,
                    other => return Err(bad(format!("rope_scaling type `{other}` is not supported (llama3, linear)"))),
                }
            }
        };
        let eos = match &self.eos_token_id {
            None => vec![],
            Some(OneOrMany::One(x)) => vec![*x],
            Some(OneOrMany::Many(v)) => v.clone(),
        };
        Ok(Config {
            arch,
            c,
            f: self.intermediate_size,
            h,
            kv,
            d,
            layers: self.num_hidden_layers,
            vocab: self.vocab_size,
            eps: self.rms_norm_eps as f32,
            rope_base: self.rope_theta,
            rope_scaling,
            max_pos: self.max_position_embeddings,
            tied: self.tie_word_embeddings,
            qkv_bias: arch == Arch::Qwen2 || self.attention_bias,
            bos: self.bos_token_id,
            eos,
        })
    }
}

impl Config {
    /// RoPE inverse frequencies [D/2], with the configured scaling applied.
    pub fn inv_freq(&self) -> Vec<f64> {
        let base = crate::ops::rope::RopeTables::inv_freq(self.d, self.rope_base);
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Llama3(s)) => llama3_inv_freq(&base, s),
            Some(RopeScaling::Linear { factor }) => base.into_iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Divisors(div)) => base.into_iter().zip(div).map(|(f, d)| f / d).collect(),
        }
    }

    /// The HF `config.json` for this configuration (used by `convert` and by tests).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let (arch, ty) = match self.arch {
            Arch::Llama => ("LlamaForCausalLM", "llama"),
            Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        };
        let mut v = serde_json::json!({
            "architectures": [arch],
            "model_type": ty,
            "hidden_size": self.c,
            "intermediate_size": self.f,
            "num_attention_heads": self.h,
            "num_key_value_heads": self.kv,
            "head_dim": self.d,
            "num_hidden_layers": self.layers,
            "vocab_size": self.vocab,
            "rms_norm_eps": self.eps,
            "rope_theta": self.rope_base,
            "max_position_embeddings": self.max_pos,
            "tie_word_embeddings": self.tied,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if self.arch == Arch::Llama && self.qkv_bias {
            v["attention_bias"] = true.into();
        }
        // Divisors have no config.json form; `convert` refuses them before writing.
        match &self.rope_scaling {
            Some(RopeScaling::Llama3(s)) => {
                v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                    "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_max_position_embeddings});
            }
            Some(RopeScaling::Linear { factor }) => v["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": factor}),
            Some(RopeScaling::Divisors(_)) | None => {}
        }
        if let Some(b) = self.bos {
            v["bos_token_id"] = b.into();
        }
        match self.eos.as_slice() {
            [] => {}
            [e] => v["eos_token_id"] = (*e).into(),
            many => v["eos_token_id"] = many.to_vec().into(),
        }
        v
    }

    /// Parameters of the base model (embedding counted once when tied).
    pub fn n_params(&self) -> usize {
        let attn = self.c * self.h * self.d * 2
            + self.c * self.kv * self.d * 2
            + if self.qkv_bias { self.h * self.d + 2 * self.kv * self.d } else { 0 };
        let mlp = 3 * self.c * self.f;
        let per_layer = attn + mlp + 2 * self.c;
        self.vocab * self.c * if self.tied { 1 } else { 2 } + self.layers * per_layer + self.c
    }
}

/// Llama 3 scaling of inverse frequencies `base` [D/2]: long wavelengths slowed by `factor`,
/// short ones kept, a smooth blend between (as transformers' `_compute_llama3_parameters`).
pub fn llama3_inv_freq(base: &[f64], s: &Llama3Scaling) -> Vec<f64> {
    let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    base.iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen > low_wavelen {
                f / s.factor
            } else if wavelen < high_wavelen {
                f
            } else {
                let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * f / s.factor + smooth * f
            }
        })
        .collect()
}
