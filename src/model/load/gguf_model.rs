//! A Llama-family model from a GGUF file: the configuration from its metadata, its tensors under
//! Hugging Face names (with llama.cpp's Q/K row permutation undone), and its tokenizer.

use crate::error::{Error, Result};
use crate::model::config::{llama3_inv_freq, Arch, Config, Llama3Scaling, RopeScaling, SUPPORTED};
use crate::model::load::{GgmlType, GgufFile};
use crate::model::tokenizer::{gpt2_tokenizer_json, llama_spm_tokenizer_json, Tokenizer};
use crate::model::weights::WeightSource;

/// Reads the model configuration from `<arch>.*` metadata keys.
pub fn config(f: &GgufFile) -> Result<Config> {
    let arch_name = f.architecture()?.to_string();
    if !matches!(arch_name.as_str(), "llama" | "qwen2") {
        return Err(Error::Config {
            file: f.name().into(),
            detail: format!("GGUF architecture `{arch_name}` is not supported; supported: {SUPPORTED}"),
        });
    }
    let key = |k: &str| format!("{arch_name}.{k}");
    let c = f.get_usize(&key("embedding_length"))?;
    let h = f.get_usize(&key("attention.head_count"))?;
    let kv = f.opt_usize(&key("attention.head_count_kv"))?.unwrap_or(h);
    let d = f.opt_usize(&key("rope.dimension_count"))?.unwrap_or(c / h.max(1));
    let embd = f.tensor("token_embd.weight")?;
    let vocab = embd.shape()[0];
    let hf = crate::model::config::HfConfig {
        architectures: vec![],
        model_type: arch_name.clone(),
        hidden_size: c,
        intermediate_size: f.get_usize(&key("feed_forward_length"))?,
        num_attention_heads: h,
        num_key_value_heads: Some(kv),
        num_hidden_layers: f.get_usize(&key("block_count"))?,
        vocab_size: vocab,
        rms_norm_eps: f.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
        rope_theta: f.opt_f64(&key("rope.freq_base"))?.unwrap_or(10000.0),
        rope_scaling: None,
        max_position_embeddings: f.opt_usize(&key("context_length"))?.unwrap_or(2048),
        tie_word_embeddings: f.tensor_opt("output.weight").is_none(),
        head_dim: Some(d),
        attention_bias: false,
        bos_token_id: f.opt_u32("tokenizer.ggml.bos_token_id")?,
        eos_token_id: None,
        hidden_act: None,
    };
    let mut cfg = hf.validate(f.name())?;
    cfg.eos = f.opt_u32("tokenizer.ggml.eos_token_id")?.into_iter().collect();
    cfg.rope_scaling = rope_scaling(f, &arch_name, &cfg)?;
    Ok(cfg)
}

/// RoPE scaling from llama.cpp's conventions: `rope.scaling.type = linear` with
/// `rope.scaling.factor` (or the older `rope.scale_linear`) divides positions by the factor; a
/// `rope_freqs.weight` tensor [D/2] divides each pair's frequency (how Llama 3 scaling is
/// stored). Such divisors are read back as Llama 3 scaling when they match its formula for
/// `rope.scaling.original_context_length` (else 8192) and the published low/high frequency
/// factors 1 and 4, so the model equals its Hugging Face twin exactly and `convert` can write
/// config.json; otherwise they are used as they are. Other types (yarn, longrope) are errors.
fn rope_scaling(f: &GgufFile, arch: &str, cfg: &Config) -> Result<Option<RopeScaling>> {
    let key = |k: &str| format!("{arch}.{k}");
    let bad = |detail: String| Error::Config { file: f.name().into(), detail };
    let linear = match f.opt_str(&key("rope.scaling.type"))? {
        None | Some("none") => f.opt_f64(&key("rope.scale_linear"))?.unwrap_or(1.0),
        Some("linear") => f.opt_f64(&key("rope.scaling.factor"))?.ok_or_else(|| bad(format!("{} is missing", key("rope.scaling.factor"))))?,
        Some(other) => {
            return Err(bad(format!(
                "GGUF rope scaling type `{other}` is not supported (linear, and llama3 through the rope_freqs tensor are); use the Hugging Face checkpoint"
            )))
        }
    };
    if !(linear > 0.0 && linear.is_finite()) {
        return Err(bad(format!("rope scaling factor {linear} must be positive")));
    }
    let Some(view) = f.tensor_opt("rope_freqs.weight") else {
        return Ok((linear != 1.0).then_some(RopeScaling::Linear { factor: linear }));
    };
    let div: Vec<f64> = view.to_f32()?.into_iter().map(|x| x as f64 * linear).collect();
    if div.len() != cfg.d / 2 || div.iter().any(|&x| !(x > 0.0 && x.is_finite())) {
        return Err(bad(format!("rope_freqs.weight has {} values, expected {} positive ones (head size / 2)", div.len(), cfg.d / 2)));
    }
    if div.iter().all(|&x| x == 1.0) {
        return Ok(None);
    }
    let base = crate::ops::rope::RopeTables::inv_freq(cfg.d, cfg.rope_base);
    let original = f.opt_usize(&key("rope.scaling.original_context_length"))?.unwrap_or(8192) as f64;
    let factor = div.iter().cloned().fold(1.0, f64::max);
    let s = Llama3Scaling { factor, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: original };
    // The converter computes in f32: allow its rounding, nothing more.
    let matches = llama3_inv_freq(&base, &s).iter().zip(&base).zip(&div).all(|((l, b), d)| ((b / l) / d - 1.0).abs() < 1e-5);
    Ok(Some(if matches { RopeScaling::Llama3(s) } else { RopeScaling::Divisors(div) }))
}

/// The GGUF name of a Hugging Face tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        let (i, rest) = rest.split_once('.')?;
        let (module, kind) = rest.rsplit_once('.')?;
        let g = match module {
            "input_layernorm" => "attn_norm",
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "post_attention_layernorm" => "ffn_norm",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            _ => return None,
        };
        return Some(format!("blk.{i}.{g}.{kind}"));
    }
    Some(
        match hf {
            "model.embed_tokens.weight" => "token_embd.weight",
            "model.norm.weight" => "output_norm.weight",
            "lm_head.weight" => "output.weight",
            _ => return None,
        }
        .to_string(),
    )
}

/// llama.cpp stores Llama's q/k rows per head as interleaved pairs (2i, 2i+1) where Hugging Face
/// has halves (i, i + D/2). Returns rows in Hugging Face order. Rows are `cols` items of any
/// type: values, or the packed bytes of a quantized row (rows are whole blocks).
pub fn unpermute_rows<T: Copy + Default>(data: &[T], heads: usize, cols: usize) -> Vec<T> {
    move_rows(data, heads, cols, true)
}

/// The inverse of [`unpermute_rows`]: Hugging Face q/k rows in llama.cpp's interleaved order (what
/// its converter writes for Llama models).
pub fn permute_rows<T: Copy + Default>(data: &[T], heads: usize, cols: usize) -> Vec<T> {
    move_rows(data, heads, cols, false)
}

/// Row 2i+j of each head's llama.cpp order is row j·D/2 + i of its Hugging Face order; `to_hf`
/// says which way to move them.
fn move_rows<T: Copy + Default>(data: &[T], heads: usize, cols: usize, to_hf: bool) -> Vec<T> {
    let rows = data.len() / cols;
    let d = rows / heads;
    let mut out = vec![T::default(); data.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let (gguf, hf) = (h * d + 2 * i + j, h * d + j * (d / 2) + i);
                let (src, dst) = if to_hf { (gguf, hf) } else { (hf, gguf) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Tensors of a GGUF model under Hugging Face names, dequantized to f32 one at a time.
pub struct GgufSource<'a> {
    pub file: &'a GgufFile,
    pub cfg: Config,
}

impl WeightSource for GgufSource<'_> {
    fn origin(&self) -> String {
        self.file.name().to_string()
    }
    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.file.tensor_opt(&g).is_some())
    }
    fn get(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let g = gguf_name(name).ok_or_else(|| Error::Weights {
            file: self.origin(),
            tensor: name.into(),
            detail: "no GGUF equivalent".into(),
        })?;
        let view = self.file.tensor(&g)?;
        let shape = view.shape();
        let mut data = view.to_f32()?;
        self.file.release(&g);
        // Only Llama conversions permute; Qwen2's keep Hugging Face order.
        if self.cfg.arch == Arch::Llama {
            let cols = if shape.len() == 2 { shape[1] } else { 1 };
            if name.contains("self_attn.q_proj.") {
                data = unpermute_rows(&data, self.cfg.h, cols);
            } else if name.contains("self_attn.k_proj.") {
                data = unpermute_rows(&data, self.cfg.kv, cols);
            }
        }
        Ok((shape, data))
    }

    fn get_blocks(&mut self, name: &str) -> Result<Option<(GgmlType, Vec<usize>, Vec<u8>)>> {
        let Some(g) = gguf_name(name) else { return Ok(None) };
        let Some(view) = self.file.tensor_opt(&g) else { return Ok(None) };
        let shape = view.shape();
        // Plain float matrices are kept as blocks only when they are halves (an f32 one is
        // already the F32 format's weight).
        if shape.len() != 2 || !crate::ops::matmul_gguf::TYPES.contains(&view.ggml_type()) || view.ggml_type() == GgmlType::F32 {
            return Ok(None);
        }
        let mut bytes = view.data.to_vec();
        self.file.release(&g);
        let row_bytes = bytes.len() / shape[0].max(1);
        if self.cfg.arch == Arch::Llama {
            if name.contains("self_attn.q_proj.") {
                bytes = unpermute_rows(&bytes, self.cfg.h, row_bytes);
            } else if name.contains("self_attn.k_proj.") {
                bytes = unpermute_rows(&bytes, self.cfg.kv, row_bytes);
            }
        }
        Ok(Some((view.ggml_type(), shape, bytes)))
    }
}

/// The tokenizer embedded in a GGUF file: GPT-2 style byte-level BPE (`gpt2`) or SentencePiece
/// BPE (`llama`).
pub fn tokenizer(f: &GgufFile, cfg: &Config) -> Result<Tokenizer> {
    let model = f.get_str("tokenizer.ggml.model")?;
    let tokens = f.get_str_array("tokenizer.ggml.tokens")?;
    let types = f.opt_i32_array("tokenizer.ggml.token_type")?.map(|t| t.to_vec()).unwrap_or_else(|| vec![1; tokens.len()]);
    if tokens.len() != cfg.vocab {
        return Err(Error::Config {
            file: f.name().into(),
            detail: format!("the tokenizer has {} tokens but token_embd has {} rows", tokens.len(), cfg.vocab),
        });
    }
    let json = match model {
        "gpt2" => {
            let add_bos = f.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
            let merges = f.get_str_array("tokenizer.ggml.merges")?;
            let pre = f.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
            gpt2_tokenizer_json(tokens, merges, &types, pre, if add_bos { cfg.bos } else { None })?
        }
        "llama" => {
            // llama.cpp adds BOS to SentencePiece vocabularies unless the file says otherwise.
            let add_bos = f.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(true);
            let scores = f.get_f32_array("tokenizer.ggml.scores")?;
            let unk = f.opt_u32("tokenizer.ggml.unknown_token_id")?.unwrap_or(0);
            llama_spm_tokenizer_json(tokens, scores, &types, unk, if add_bos { cfg.bos } else { None })
                .map_err(|e| Error::Config { file: f.name().into(), detail: e.to_string() })?
        }
        other => {
            return Err(Error::Config {
                file: f.name().into(),
                detail: format!(
                    "tokenizer.ggml.model `{other}` is not supported yet (gpt2-style BPE and llama SentencePiece BPE are); use the Hugging Face directory with tokenizer.json"
                ),
            })
        }
    };
    let template = f.opt_str("tokenizer.chat_template")?.map(String::from);
    Tokenizer::from_json(f.name(), json.to_string(), cfg.bos, cfg.eos.clone(), template)
}
