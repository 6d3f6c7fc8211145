use crate::common::*;
use flexlora::model::{weights::tensor_names, Arch, Config, MemorySource, Model, WeightFormat};
use flexlora::Device;

pub fn tiny_config(arch: Arch) -> Config {
    Config {
        arch,
        c: 32,
        f: 44,
        h: 4,
        kv: 2,
        d: 8,
        layers: 2,
        vocab: 61,
        eps: 1e-5,
        rope_base: 10000.0,
        rope_scaling: None,
        max_pos: 64,
        tied: arch == Arch::Llama,
        qkv_bias: arch == Arch::Qwen2,
        bos: Some(1),
        eos: vec![2],
    }
}

pub fn random_weights(cfg: &Config, seed: u64) -> MemorySource {
    let mut rng = Rng::new(seed);
    let mut src = MemorySource::default();
    for (name, shape) in tensor_names(cfg) {
        let n = shape.iter().product();
        let data = if name.ends_with("norm.weight") { rng.vec(n, 0.2).iter().map(|x| 1.0 + x).collect() } else { rng.vec(n, 0.3) };
        src.0.insert(name, (shape, data));
    }
    src
}

/// A direct f64 implementation of the Llama forward pass over a whole sequence (no cache, no
/// shared code with the engine): the independent check of how the ops are composed.
fn reference_logits(cfg: &Config, w: &MemorySource, tokens: &[u32]) -> Vec<f32> {
    reference_logits_pos_div(cfg, w, tokens, 1.0)
}

/// `reference_logits` with every RoPE position divided by `pos_div` (linear scaling).
pub fn reference_logits_pos_div(cfg: &Config, w: &MemorySource, tokens: &[u32], pos_div: f64) -> Vec<f32> {
    let get = |n: &str| -> Vec<f64> { w.0[n].1.iter().map(|&x| x as f64).collect() };
    let (c, hh, kv, d, t) = (cfg.c, cfg.h, cfg.kv, cfg.d, tokens.len());
    let lin = |x: &[f64], wname: &str, out: usize, inp: usize| -> Vec<f64> {
        let wt = get(wname);
        let rows = x.len() / inp;
        let mut y = vec![0f64; rows * out];
        for r in 0..rows {
            for o in 0..out {
                y[r * out + o] = (0..inp).map(|i| x[r * inp + i] * wt[o * inp + i]).sum();
            }
        }
        let bname = wname.replace(".weight", ".bias");
        if w.0.contains_key(&bname) {
            let bv = get(&bname);
            for r in 0..rows {
                for o in 0..out {
                    y[r * out + o] += bv[o];
                }
            }
        }
        y
    };
    let norm = |x: &[f64], wname: &str| -> Vec<f64> {
        let wt = get(wname);
        x.chunks(c)
            .flat_map(|row| {
                let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / c as f64 + cfg.eps as f64).sqrt();
                row.iter().zip(&wt).map(move |(v, g)| v * r * g).collect::<Vec<_>>()
            })
            .collect()
    };
    let rope = |x: &mut [f64], heads: usize| {
        for pos in 0..t {
            for hd in 0..heads {
                for i in 0..d / 2 {
                    let ang = pos as f64 / pos_div * cfg.rope_base.powf(-(2.0 * i as f64) / d as f64);
                    let o = (pos * heads + hd) * d;
                    let (a, b) = (x[o + i], x[o + i + d / 2]);
                    x[o + i] = a * ang.cos() - b * ang.sin();
                    x[o + i + d / 2] = a * ang.sin() + b * ang.cos();
                }
            }
        }
    };
    let emb = get("model.embed_tokens.weight");
    let mut x: Vec<f64> = tokens.iter().flat_map(|&id| emb[id as usize * c..(id as usize + 1) * c].to_vec()).collect();
    for l in 0..cfg.layers {
        let p = format!("model.layers.{l}");
        let hn = norm(&x, &format!("{p}.input_layernorm.weight"));
        let mut q = lin(&hn, &format!("{p}.self_attn.q_proj.weight"), hh * d, c);
        let mut k = lin(&hn, &format!("{p}.self_attn.k_proj.weight"), kv * d, c);
        let v = lin(&hn, &format!("{p}.self_attn.v_proj.weight"), kv * d, c);
        rope(&mut q, hh);
        rope(&mut k, kv);
        let mut att = vec![0f64; t * hh * d];
        for hd in 0..hh {
            let g = hd / (hh / kv);
            for i in 0..t {
                let s: Vec<f64> = (0..=i)
                    .map(|j| (0..d).map(|e| q[(i * hh + hd) * d + e] * k[(j * kv + g) * d + e]).sum::<f64>() / (d as f64).sqrt())
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for e in 0..d {
                    att[(i * hh + hd) * d + e] = (0..=i).map(|j| (s[j] - m).exp() / z * v[(j * kv + g) * d + e]).sum();
                }
            }
        }
        let o = lin(&att, &format!("{p}.self_attn.o_proj.weight"), c, hh * d);
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        let hn = norm(&x, &format!("{p}.post_attention_layernorm.weight"));
        let gt = lin(&hn, &format!("{p}.mlp.gate_proj.weight"), cfg.f, c);
        let up = lin(&hn, &format!("{p}.mlp.up_proj.weight"), cfg.f, c);
        let act: Vec<f64> = gt.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
        let dn = lin(&act, &format!("{p}.mlp.down_proj.weight"), c, cfg.f);
        x.iter_mut().zip(&dn).for_each(|(a, b)| *a += b);
    }
    let xn = norm(&x, "model.norm.weight");
    let head = if cfg.tied { "model.embed_tokens.weight" } else { "lm_head.weight" };
    lin(&xn, head, cfg.vocab, c).iter().map(|&v| v as f32).collect()
}

fn load(dev: &Device, cfg: &Config, w: &MemorySource) -> Model {
    Model::load(dev, cfg.clone(), &mut w.clone(), WeightFormat::F32).unwrap()
}

#[test]
fn full_forward_matches_independent_reference() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let cfg = tiny_config(arch);
        let w = random_weights(&cfg, 7);
        let tokens = [1u32, 17, 42, 5, 60, 33, 2];
        let dev = cpu();
        let model = load(&dev, &cfg, &w);
        let mut cache = model.new_cache(&dev, 1, 16);
        let logits = read(&dev, &model.forward(&dev, &tokens, &mut cache, true).unwrap());
        assert_close(&format!("{arch:?} logits vs reference"), &logits, &reference_logits(&cfg, &w, &tokens), 1e-4, 1e-4);
    }
}

/// Prefill then token-by-token decode with the cache gives the logits of one full pass, also with
/// several sequences in a batch.
#[test]
fn cached_decode_matches_full_forward_batched() {
    let cfg = tiny_config(Arch::Llama);
    let w = random_weights(&cfg, 8);
    let dev = cpu();
    let model = load(&dev, &cfg, &w);
    let seqs = [[3u32, 9, 27, 14, 50, 8], [1u32, 2, 3, 4, 5, 6]];
    let full: Vec<Vec<f32>> = seqs.iter().map(|s| reference_logits(&cfg, &w, s)).collect();
    let mut cache = model.new_cache(&dev, 2, 10);
    let prefill: Vec<u32> = seqs.iter().flat_map(|s| s[..3].to_vec()).collect();
    let mut steps = vec![read(&dev, &model.forward(&dev, &prefill, &mut cache, false).unwrap())];
    for pos in 3..6 {
        let next: Vec<u32> = seqs.iter().map(|s| s[pos]).collect();
        steps.push(read(&dev, &model.forward(&dev, &next, &mut cache, false).unwrap()));
    }
    let v = cfg.vocab;
    for (step, logits) in steps.iter().enumerate() {
        for (bi, want) in full.iter().enumerate() {
            let pos = step + 2;
            assert_close(&format!("seq {bi} pos {pos}"), &logits[bi * v..(bi + 1) * v], &want[pos * v..(pos + 1) * v], 1e-4, 1e-4);
        }
    }
}

#[test]
fn gpu_logits_match_cpu() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let cfg = tiny_config(arch);
        let w = random_weights(&cfg, 9);
        cpu_vs_gpu(&format!("{arch:?} model"), 1e-4, 1e-3, |dev| {
            let model = load(dev, &cfg, &w);
            let mut cache = model.new_cache(dev, 1, 12);
            let prefill = read(dev, &model.forward(dev, &[1, 5, 9, 13], &mut cache, true).unwrap());
            let decode = read(dev, &model.forward(dev, &[7], &mut cache, false).unwrap());
            vec![prefill, decode]
        });
    }
}

#[test]
fn wrong_shape_names_the_tensor() {
    let cfg = tiny_config(Arch::Llama);
    let mut w = random_weights(&cfg, 10);
    w.0.get_mut("model.layers.1.mlp.up_proj.weight").unwrap().0 = vec![cfg.c, cfg.f];
    let err = Model::load(&cpu(), cfg, &mut w, WeightFormat::F32).unwrap_err().to_string();
    assert!(err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("[44, 32]"), "{err}");
}

#[test]
fn config_json_parses_llama3_scaling_and_rejects_unknown_architectures() {
    let json = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":4096,"intermediate_size":14336,
        "num_attention_heads":32,"num_key_value_heads":8,"num_hidden_layers":32,"vocab_size":128256,"rms_norm_eps":1e-5,
        "rope_theta":500000.0,"max_position_embeddings":131072,"tie_word_embeddings":false,"bos_token_id":128000,
        "eos_token_id":[128001,128008,128009],"rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
        "original_max_position_embeddings":8192,"rope_type":"llama3"}}"#;
    let cfg: flexlora::model::HfConfig = serde_json::from_str(json).unwrap();
    let cfg = cfg.validate("config.json").unwrap();
    assert_eq!((cfg.d, cfg.kv, cfg.eos.len(), cfg.tied), (128, 8, 3, false));
    let plain = flexlora::ops::rope::RopeTables::inv_freq(128, 500000.0);
    let scaled = cfg.inv_freq();
    // High frequencies (wavelength < 8192/4) are kept, low ones (wavelength > 8192) divided by 8,
    // and the band between is a blend (HF `_compute_llama3_parameters`).
    assert_eq!(scaled[0], plain[0]);
    assert!((scaled[63] - plain[63] / 8.0).abs() < 1e-18);
    let mid = (0..64).find(|&i| {
        let w = 2.0 * std::f64::consts::PI / plain[i];
        w > 2048.0 && w < 8192.0
    });
    let i = mid.expect("a frequency in the blended band");
    assert!(scaled[i] < plain[i] && scaled[i] > plain[i] / 8.0);
    let bad = json.replace(r#""model_type":"llama""#, r#""model_type":"mistral""#);
    let err = serde_json::from_str::<flexlora::model::HfConfig>(&bad).unwrap().validate("config.json").unwrap_err().to_string();
    assert!(err.contains("mistral") && err.contains("supported"), "{err}");
}

/// NF4 base weights (quantized while loading) give the logits of an f32 model holding the
/// dequantized weights, take 4.5 bits per linear weight, and agree on GPU and CPU.
#[test]
fn nf4_weights_track_f32_and_agree_across_devices() {
    // K must be a multiple of 8 for the GPU kernels: F = 48.
    let cfg = Config { f: 48, ..tiny_config(Arch::Llama) };
    let w = random_weights(&cfg, 12);
    let tokens = [1u32, 7, 30, 2, 44, 9];
    let nf4 = WeightFormat::Nf4 { blocksize: 64 };
    let dev = cpu();
    let logits = |format| {
        let model = Model::load(&dev, cfg.clone(), &mut w.clone(), format).unwrap();
        let mut cache = model.new_cache(&dev, 1, 8);
        read(&dev, &model.forward(&dev, &tokens, &mut cache, true).unwrap())
    };
    let q = logits(nf4);
    // The same model with every linear weight replaced by its NF4 round trip, run in f32.
    let mut rt = w.clone();
    for (name, (_, data)) in rt.0.iter_mut() {
        if name.ends_with("_proj.weight") {
            let packed = flexlora::quant::nf4::quantize(data, 64).unwrap();
            let mut back = vec![0f32; data.len()];
            flexlora::quant::nf4::dequantize_into(&packed.packed, &packed.absmax, 64, &mut back).unwrap();
            *data = back;
        }
    }
    let model_rt = Model::load(&dev, cfg.clone(), &mut rt, WeightFormat::F32).unwrap();
    let mut cache = model_rt.new_cache(&dev, 1, 8);
    assert_close(
        "NF4 model vs f32 model of dequantized weights",
        &q,
        &read(&dev, &model_rt.forward(&dev, &tokens, &mut cache, true).unwrap()),
        1e-4,
        1e-4,
    );
    let full = logits(WeightFormat::F32);
    let err = (full.iter().zip(&q).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>()
        / full.iter().map(|a| (*a as f64).powi(2)).sum::<f64>())
    .sqrt();
    assert!(err > 1e-4 && err < 0.5, "relative L2 distance of NF4 and f32 logits {err}");
    let model = Model::load(&dev, cfg.clone(), &mut w.clone(), nf4).unwrap();
    let (bytes, params) = model.weight_bytes();
    let linear = cfg.layers * (cfg.c * cfg.h * cfg.d * 2 + cfg.c * cfg.kv * cfg.d * 2 + 3 * cfg.c * cfg.f);
    let dense = params - linear; // embedding and norms stay f32
    let linear_bytes = bytes as f64 - 4.0 * dense as f64;
    assert!((linear_bytes * 8.0 / linear as f64 - 4.5).abs() < 0.05, "{} bits per NF4 weight", linear_bytes * 8.0 / linear as f64);
    cpu_vs_gpu("NF4 model", 1e-4, 1e-3, |dev| {
        let model = Model::load(dev, cfg.clone(), &mut w.clone(), nf4).unwrap();
        let mut cache = model.new_cache(dev, 1, 8);
        vec![read(dev, &model.forward(dev, &tokens, &mut cache, true).unwrap())]
    });
}

/// `decode_step` advances sequences sitting at different positions, each with its own cache, and
/// gives each one the logits of a full pass over its sequence; the GPU agrees with the CPU.
#[test]
fn decode_step_over_ragged_sequences_matches_reference() {
    let cfg = tiny_config(Arch::Qwen2);
    let w = random_weights(&cfg, 12);
    let seqs: [&[u32]; 3] = [&[3, 9, 27, 14, 50, 8, 11], &[1, 2, 3, 4], &[7, 7, 30, 41, 9, 2, 19]];
    let prompt_lens = [4, 2, 5];
    let run = |dev: &Device| -> Vec<Vec<f32>> {
        let model = load(dev, &cfg, &w);
        let mut caches: Vec<_> = seqs
            .iter()
            .zip(prompt_lens)
            .map(|(s, p)| {
                let mut c = model.new_cache(dev, 1, s.len());
                model.forward(dev, &s[..p], &mut c, false).unwrap();
                c
            })
            .collect();
        let mut out = vec![];
        // Two steps: every sequence takes its next token at its own position.
        for step in 0..2 {
            let tokens: Vec<u32> = seqs.iter().zip(prompt_lens).map(|(s, p)| s[p + step]).collect();
            let mut refs: Vec<_> = caches.iter_mut().collect();
            out.push(read(dev, &model.decode_step(dev, &tokens, &mut refs).unwrap()));
        }
        out
    };
    let v = cfg.vocab;
    let got = run(&cpu());
    for (bi, (s, p)) in seqs.iter().zip(prompt_lens).enumerate() {
        let full = reference_logits(&cfg, &w, s);
        for (step, logits) in got.iter().enumerate() {
            let pos = p + step;
            assert_close(&format!("seq {bi} pos {pos}"), &logits[bi * v..(bi + 1) * v], &full[pos * v..(pos + 1) * v], 1e-4, 1e-4);
        }
    }
    cpu_vs_gpu("decode_step", 1e-4, 1e-3, run);
}
