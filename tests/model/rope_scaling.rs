//! GGUF RoPE scaling (llama.cpp conventions) against the Hugging Face model and an independent
//! computation: Llama 3 scaling stored as a `rope_freqs` tensor (as convert_hf_to_gguf.py writes
//! it) gives the logits of the HF directory with that `rope_scaling`; `rope.scaling.type = linear`
//! gives the f64 reference with positions divided by the factor; yarn is a clear error.

use std::path::Path;

use crate::common::*;
use crate::formats::{tmpdir, write_gguf_with, write_hf};
use crate::forward::{random_weights, reference_logits_pos_div, tiny_config};
use flexlora::model::load::{self, gguf::Array, gguf::Value};
use flexlora::model::{Arch, Config, Llama3Scaling, RopeScaling, WeightFormat};

/// Positions up to 47, so the slow frequency pairs turn far enough for scaling to show.
fn tokens() -> Vec<u32> {
    (0..48).map(|i| (i * 7 + 3) % 61).collect()
}

fn logits(path: &Path) -> Vec<f32> {
    let dev = cpu();
    let (model, _) = load::open(&dev, path, WeightFormat::F32).unwrap();
    let t = tokens();
    let mut cache = model.new_cache(&dev, 1, t.len());
    read(&dev, &model.forward(&dev, &t, &mut cache, true).unwrap())
}

fn tokenizer_meta(cfg: &Config) -> Vec<(&'static str, Value)> {
    let toks: Vec<String> = (0..cfg.vocab).map(|i| format!("t{i}")).collect();
    vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", Value::Array(Array::String(toks))),
        ("tokenizer.ggml.merges", Value::Array(Array::String(vec![]))),
    ]
}

/// llama.cpp's converter's `rope_freqs` for Llama 3 scaling, computed as it does (torch f32).
fn converter_rope_freqs(cfg: &Config, s: &Llama3Scaling) -> Vec<f32> {
    let (factor, low, high, old) =
        (s.factor as f32, s.low_freq_factor as f32, s.high_freq_factor as f32, s.original_max_position_embeddings as f32);
    (0..cfg.d / 2)
        .map(|i| {
            let freq = 1.0 / (cfg.rope_base as f32).powf((2 * i) as f32 / cfg.d as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < old / high {
                1.0
            } else if wavelen > old / low {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn gguf_rope_freqs_match_the_hf_llama3_model() {
    let mut cfg = tiny_config(Arch::Llama);
    // With D = 8 and base 1e4 the wavelengths are 6.3, 63, 628 and 6283: one pair kept, one
    // blended, two slowed by the factor.
    let s = Llama3Scaling { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64.0 };
    let w = random_weights(&cfg, 31);
    let dir = tmpdir("rope-llama3");
    let plain = dir.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    write_hf(&plain, &cfg, &w);
    cfg.rope_scaling = Some(RopeScaling::Llama3(s));
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    write_hf(&hf, &cfg, &w);
    let want = logits(&hf);
    let unscaled = logits(&plain);
    assert!(max_diff(&want, &unscaled) > 1e-2, "scaling must change these logits ({})", max_diff(&want, &unscaled));

    let freqs = vec![("rope_freqs.weight", converter_rope_freqs(&cfg, &s))];
    // With the original context length in the metadata the factors are read back as Llama 3
    // scaling: identical logits, and `convert` writes the same rope_scaling.
    let mut meta = tokenizer_meta(&cfg);
    meta.push(("llama.rope.scaling.original_context_length", Value::U32(64)));
    let known = dir.join("known.gguf");
    write_gguf_with(&known, &cfg, &w, "llama", meta, &freqs);
    let got = load::open_config(&known).unwrap();
    assert_eq!(got.rope_scaling, Some(RopeScaling::Llama3(s)));
    assert_close("rope_freqs (recognized) vs HF", &logits(&known), &want, 0.0, 0.0);
    load::convert_to_hf(&known, &dir.join("converted")).unwrap();
    assert_close("converted vs HF", &logits(&dir.join("converted")), &want, 0.0, 0.0);

    // Without it (8192 assumed) they do not fit the formula and are used as divisors directly:
    // the same model up to the f32 rounding of the factors.
    let raw = dir.join("raw.gguf");
    write_gguf_with(&raw, &cfg, &w, "llama", tokenizer_meta(&cfg), &freqs);
    assert!(matches!(load::open_config(&raw).unwrap().rope_scaling, Some(RopeScaling::Divisors(_))));
    assert_close("rope_freqs (divisors) vs HF", &logits(&raw), &want, 1e-5, 1e-5);
    let err = load::convert_to_hf(&raw, &dir.join("raw-converted")).unwrap_err().to_string();
    assert!(err.contains("raw.gguf") && err.contains("rope_freqs"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gguf_linear_rope_scaling_divides_positions() {
    let cfg = tiny_config(Arch::Llama);
    let w = random_weights(&cfg, 32);
    let dir = tmpdir("rope-linear");
    let path = dir.join("linear.gguf");
    let mut meta = tokenizer_meta(&cfg);
    meta.push(("llama.rope.scaling.type", Value::String("linear".into())));
    meta.push(("llama.rope.scaling.factor", Value::F32(4.0)));
    write_gguf_with(&path, &cfg, &w, "llama", meta, &[]);
    let got = logits(&path);
    let t = tokens();
    assert_close("linear x4 vs reference", &got, &reference_logits_pos_div(&cfg, &w, &t, 4.0), 1e-4, 1e-4);
    let unscaled = reference_logits_pos_div(&cfg, &w, &t, 1.0);
    assert!(max_diff(&got, &unscaled) > 1e-2, "scaling must change these logits");

    let mut meta = tokenizer_meta(&cfg);
    meta.push(("llama.rope.scaling.type", Value::String("yarn".into())));
    meta.push(("llama.rope.scaling.factor", Value::F32(4.0)));
    let yarn = dir.join("yarn.gguf");
    write_gguf_with(&yarn, &cfg, &w, "llama", meta, &[]);
    let err = load::open_config(&yarn).unwrap_err().to_string();
    assert!(err.contains("yarn.gguf") && err.contains("`yarn` is not supported"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
