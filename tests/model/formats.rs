//! The same tiny random model written by the test as a Hugging Face directory and as a GGUF file
//! (with llama.cpp's Q/K row permutation) loads to identical logits; GGUF -> convert -> load gives
//! the same logits again; malformed inputs give errors that name the file.

use std::path::{Path, PathBuf};

use crate::common::*;
use crate::forward::{random_weights, tiny_config};
use flexlora::model::load::{self, gguf::Value, safetensors, GgufWriter};
use flexlora::model::tokenizer::gpt2_tokenizer_json;
use flexlora::model::{weights::tensor_names, Arch, Config, MemorySource, WeightFormat};

pub fn tmpdir(tag: &str) -> PathBuf {
    crate::support::tmpdir("formats", tag)
}

/// A byte-level vocabulary of `n` tokens: two specials, then single printable characters.
fn vocab(n: usize) -> (Vec<String>, Vec<i32>) {
    let mut toks = vec!["<|bos|>".to_string(), "<|eos|>".to_string(), "Ġ".to_string()];
    toks.extend(('a'..='z').chain('A'..='Z').chain('0'..='9').map(String::from));
    toks.truncate(n);
    let types = (0..toks.len()).map(|i| if i < 2 { 3 } else { 1 }).collect();
    (toks, types)
}

pub fn write_hf(dir: &Path, cfg: &Config, w: &MemorySource) {
    let tensors: Vec<_> = tensor_names(cfg).into_iter().map(|(n, _)| (n.clone(), w.0[&n].0.clone(), w.0[&n].1.clone())).collect();
    safetensors::write(&dir.join("model.safetensors"), &tensors, None).unwrap();
    std::fs::write(dir.join("config.json"), cfg.to_hf_json().to_string()).unwrap();
    let (toks, types) = vocab(cfg.vocab);
    std::fs::write(dir.join("tokenizer.json"), gpt2_tokenizer_json(&toks, &[], &types, "smollm", None).unwrap().to_string()).unwrap();
}

/// Inverse of the loader's unpermute: Hugging Face halves -> llama.cpp interleaved pairs.
pub fn permute(data: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let d = data.len() / cols / heads;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let (hf, gg) = (h * d + j * (d / 2) + i, h * d + 2 * i + j);
                out[gg * cols..(gg + 1) * cols].copy_from_slice(&data[hf * cols..(hf + 1) * cols]);
            }
        }
    }
    out
}

pub fn write_gguf(path: &Path, cfg: &Config, w: &MemorySource, arch: &str) {
    let (toks, types) = vocab(cfg.vocab);
    let tokenizer = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", Value::Array(load::gguf::Array::String(toks))),
        ("tokenizer.ggml.token_type", Value::Array(load::gguf::Array::I32(types))),
        ("tokenizer.ggml.merges", Value::Array(load::gguf::Array::String(vec![]))),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ("tokenizer.ggml.eos_token_id", Value::U32(1)),
    ];
    write_gguf_with(path, cfg, w, arch, tokenizer, &[]);
}

/// A GGUF of the model in `w` with the given tokenizer metadata (and any extra keys) and extra
/// f32 tensors (name, values; 1-D).
pub fn write_gguf_with(path: &Path, cfg: &Config, w: &MemorySource, arch: &str, extra: Vec<(&str, Value)>, tensors: &[(&str, Vec<f32>)]) {
    let mut g = GgufWriter::new();
    let a = |k: &str| format!("{arch}.{k}");
    g.add_metadata("general.architecture", Value::String(arch.into())).unwrap();
    g.add_metadata(a("block_count"), Value::U32(cfg.layers as u32)).unwrap();
    g.add_metadata(a("embedding_length"), Value::U32(cfg.c as u32)).unwrap();
    g.add_metadata(a("feed_forward_length"), Value::U32(cfg.f as u32)).unwrap();
    g.add_metadata(a("attention.head_count"), Value::U32(cfg.h as u32)).unwrap();
    g.add_metadata(a("attention.head_count_kv"), Value::U32(cfg.kv as u32)).unwrap();
    g.add_metadata(a("attention.layer_norm_rms_epsilon"), Value::F32(cfg.eps)).unwrap();
    g.add_metadata(a("rope.freq_base"), Value::F32(cfg.rope_base as f32)).unwrap();
    g.add_metadata(a("context_length"), Value::U32(cfg.max_pos as u32)).unwrap();
    for (k, v) in extra {
        g.add_metadata(k, v).unwrap();
    }
    for (name, shape) in tensor_names(cfg) {
        let mut data = w.0[&name].1.clone();
        let gname = name
            .replace("model.embed_tokens", "token_embd")
            .replace("model.norm", "output_norm")
            .replace("lm_head", "output")
            .replace("model.layers.", "blk.")
            .replace("input_layernorm", "attn_norm")
            .replace("self_attn.q_proj", "attn_q")
            .replace("self_attn.k_proj", "attn_k")
            .replace("self_attn.v_proj", "attn_v")
            .replace("self_attn.o_proj", "attn_output")
            .replace("post_attention_layernorm", "ffn_norm")
            .replace("mlp.gate_proj", "ffn_gate")
            .replace("mlp.up_proj", "ffn_up")
            .replace("mlp.down_proj", "ffn_down");
        if cfg.arch == Arch::Llama && gname.contains("attn_q.") {
            data = permute(&data, cfg.h, *shape.last().unwrap());
        } else if cfg.arch == Arch::Llama && gname.contains("attn_k.") {
            data = permute(&data, cfg.kv, *shape.last().unwrap());
        }
        g.add_f32(gname, &shape, &data).unwrap();
    }
    for (name, values) in tensors {
        g.add_f32(*name, &[values.len()], values).unwrap();
    }
    g.write_file(path).unwrap();
}

pub fn logits_of(path: &Path) -> Vec<f32> {
    let dev = cpu();
    let (model, _) = load::open(&dev, path, WeightFormat::F32).unwrap();
    let mut cache = model.new_cache(&dev, 1, 8);
    read(&dev, &model.forward(&dev, &[0, 5, 17, 9, 33], &mut cache, true).unwrap())
}

#[test]
fn hf_gguf_and_converted_models_give_identical_logits() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let cfg = tiny_config(arch);
        let w = random_weights(&cfg, 21);
        let dir = tmpdir(&format!("{arch:?}"));
        std::fs::create_dir_all(dir.join("hf")).unwrap();
        write_hf(&dir.join("hf"), &cfg, &w);
        let gguf = dir.join("model.gguf");
        write_gguf(&gguf, &cfg, &w, if arch == Arch::Llama { "llama" } else { "qwen2" });
        let hf = logits_of(&dir.join("hf"));
        assert_close(&format!("{arch:?}: GGUF vs HF"), &logits_of(&gguf), &hf, 0.0, 0.0);
        load::convert_to_hf(&gguf, &dir.join("converted")).unwrap();
        assert_close(&format!("{arch:?}: converted vs HF"), &logits_of(&dir.join("converted")), &hf, 0.0, 0.0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn bad_inputs_name_the_file() {
    let cfg = tiny_config(Arch::Llama);
    let w = random_weights(&cfg, 22);
    let dir = tmpdir("bad");
    // A GGUF of an architecture flexlora does not run.
    let gguf = dir.join("gpt2.gguf");
    write_gguf(&gguf, &cfg, &w, "gpt2");
    let err = load::open(&cpu(), &gguf, WeightFormat::F32).unwrap_err().to_string();
    assert!(err.contains("gpt2.gguf") && err.contains("not supported") && err.contains("llama"), "{err}");
    // A truncated safetensors file.
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    write_hf(&hf, &cfg, &w);
    let st = hf.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let err = load::open(&cpu(), &hf, WeightFormat::F32).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    // A tokenizer larger than the embedding.
    write_hf(&hf, &cfg, &w);
    let (mut toks, mut types) = vocab(cfg.vocab);
    toks.extend((0..10).map(|i| format!("<extra{i}>")));
    types.extend([1; 10]);
    std::fs::write(hf.join("tokenizer.json"), gpt2_tokenizer_json(&toks, &[], &types, "smollm", None).unwrap().to_string()).unwrap();
    let err = load::open(&cpu(), &hf, WeightFormat::F32).unwrap_err().to_string();
    assert!(err.contains("do not match") && err.contains(&cfg.vocab.to_string()), "{err}");
    // A missing path says how to get the default model.
    let err = load::open(&cpu(), &dir.join("nope.gguf"), WeightFormat::F32).unwrap_err().to_string();
    assert!(err.contains("nope.gguf") && err.contains("fetch-model"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
