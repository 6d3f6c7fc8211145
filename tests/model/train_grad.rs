//! The training backward pass on tiny random models: every LoRA gradient against central finite
//! differences of the loss (CPU), GPU gradients against CPU ones, activation recomputation, and a
//! fresh adapter leaving the model unchanged.

use crate::common::*;
use crate::forward::{random_weights, tiny_config};
use flexlora::model::{Arch, LoraConfig, Model, Target, WeightFormat};
use flexlora::ops::cross_entropy::IGNORE;
use flexlora::train::grad::Options;
use flexlora::{Device, Tensor};

/// Two sequences of 7 tokens; the first has its first 3 targets masked (a prompt), the second
/// ends in 2 pads.
fn batch(vocab: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(5);
    let ids: Vec<u32> = (0..14).map(|_| rng.below(vocab as u64) as u32).collect();
    let mut targets = vec![IGNORE; 14];
    for s in 0..2 {
        for p in 0..6 {
            targets[s * 7 + p] = ids[s * 7 + p + 1];
        }
    }
    for p in [0, 1, 2, 7 + 4, 7 + 5] {
        targets[p] = IGNORE;
    }
    (ids, targets)
}

/// A tiny model with an adapter on `targets` whose B matrices are random (a fresh B = 0 would make
/// every dA zero and the check blind).
fn adapted(dev: &Device, arch: Arch, format: WeightFormat, lora: &LoraConfig) -> Model {
    let mut cfg = tiny_config(arch);
    if format != WeightFormat::F32 {
        cfg.f = 48; // the GPU's fused NF4 kernels need rows that start on a packed word (K % 8 == 0)
    }
    let mut model = Model::load(dev, cfg.clone(), &mut random_weights(&cfg, 7), format).unwrap();
    model.attach_lora(dev, lora, 11).unwrap();
    let mut rng = Rng::new(13);
    for key in model.lora_keys() {
        let t = model.lora_param_mut(key).unwrap();
        let v = rng.vec(t.numel(), 0.3);
        *t = Tensor::from_f32(dev, &t.label().to_string(), &t.shape().to_vec(), &v).unwrap();
    }
    model
}

fn loss_and_grads(dev: &Device, model: &Model, opts: Options) -> (f64, Vec<Vec<f32>>) {
    let (ids, targets) = batch(model.cfg.vocab);
    let n = targets.iter().filter(|&&t| t != IGNORE).count();
    let fwd = model.forward_train(dev, &ids, &targets, 2, opts).unwrap();
    let mut grads = model.zero_grads(dev);
    model.backward(dev, &fwd, None, 1.0 / n as f32, &mut grads).unwrap();
    let loss = read(dev, &fwd.loss).iter().map(|&l| l as f64).sum::<f64>() / n as f64;
    (loss, grads.tensors().map(|g| read(dev, g)).collect())
}

fn all_targets(dropout: f32) -> LoraConfig {
    LoraConfig { rank: 3, alpha: 6.0, dropout, rslora: false, targets: Target::ALL.to_vec() }
}

#[test]
fn lora_gradients_match_finite_differences() {
    let dev = cpu();
    for (arch, dropout) in [(Arch::Llama, 0.0), (Arch::Qwen2, 0.2)] {
        let mut model = adapted(&dev, arch, WeightFormat::F32, &all_targets(dropout));
        let opts = Options { recompute: false, dropout_seed: Some(77), all_logits: false };
        let (_, grads) = loss_and_grads(&dev, &model, opts);
        let keys = model.lora_keys();
        let names: Vec<String> = keys.iter().map(|k| k.peft_name()).collect();
        let mut rng = Rng::new(3);
        let mut checked = 0;
        for (ti, name) in names.iter().enumerate() {
            let gmax = grads[ti].iter().fold(0f32, |m, g| m.max(g.abs()));
            assert!(gmax > 0.0, "{arch:?} {name}: gradient is all zero");
            for _ in 0..3 {
                let i = rng.below(grads[ti].len() as u64) as usize;
                let h = 1e-2f32;
                let mut at = |delta: f32| {
                    model.lora_param_mut(keys[ti]).unwrap().host_f32_mut("test").unwrap()[i] += delta;
                    loss_and_grads(&dev, &model, opts).0
                };
                let lp = at(h);
                let lm = at(-2.0 * h);
                at(h);
                let fd = ((lp - lm) / (2.0 * h as f64)) as f32;
                let got = grads[ti][i];
                assert!(
                    (got - fd).abs() <= 0.02 * fd.abs() + 0.005 * gmax + 1e-5,
                    "{arch:?} {name}[{i}]: analytic {got} vs finite difference {fd} (largest |grad| {gmax})"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 3 * 2 * 7 * 2);
    }
}

#[test]
fn recomputing_activations_gives_identical_gradients() {
    let dev = cpu();
    let model = adapted(&dev, Arch::Qwen2, WeightFormat::F32, &all_targets(0.1));
    let saved = loss_and_grads(&dev, &model, Options { recompute: false, dropout_seed: Some(5), all_logits: false });
    let recomputed = loss_and_grads(&dev, &model, Options { recompute: true, dropout_seed: Some(5), all_logits: false });
    assert_eq!(saved, recomputed);
    // Projecting only the trained positions to the vocabulary changes nothing but the work done.
    let every_row = loss_and_grads(&dev, &model, Options { recompute: false, dropout_seed: Some(5), all_logits: true });
    assert!((every_row.0 - saved.0).abs() < 1e-6 * saved.0, "loss {} vs {}", every_row.0, saved.0);
    for (i, (a, b)) in every_row.1.iter().zip(&saved.1).enumerate() {
        assert_close(&format!("gradient {i}, all logits vs trained rows"), a, b, 1e-6, 1e-4);
    }
    let other_seed = loss_and_grads(&dev, &model, Options { recompute: false, dropout_seed: Some(6), all_logits: false });
    assert_ne!(saved.1, other_seed.1, "dropout seed must change the gradients");
}

#[test]
fn gpu_gradients_match_cpu() {
    let Some(gpu) = gpu() else { return };
    for (arch, format) in [(Arch::Llama, WeightFormat::F32), (Arch::Qwen2, WeightFormat::Nf4 { blocksize: 64 })] {
        let lora = all_targets(0.1);
        let opts = Options { recompute: arch == Arch::Qwen2, dropout_seed: Some(9), all_logits: arch == Arch::Qwen2 };
        let (lc, gc) = loss_and_grads(&cpu(), &adapted(&cpu(), arch, format, &lora), opts);
        let (lg, gg) = loss_and_grads(gpu, &adapted(gpu, arch, format, &lora), opts);
        assert!((lc - lg).abs() < 1e-4 * lc.abs(), "{arch:?}: loss CPU {lc} vs GPU {lg}");
        for (i, (g, c)) in gg.iter().zip(&gc).enumerate() {
            let gmax = c.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_close(&format!("{arch:?} gradient {i}"), g, c, 2e-3 * gmax + 1e-6, 2e-3);
        }
    }
}

/// A fresh adapter (B = 0) leaves the logits of the base model exactly as they were.
#[test]
fn fresh_adapter_reproduces_the_base_model() {
    let dev = cpu();
    let cfg = tiny_config(Arch::Llama);
    let mut model = Model::load(&dev, cfg.clone(), &mut random_weights(&cfg, 7), WeightFormat::Nf4 { blocksize: 64 }).unwrap();
    let (ids, targets) = batch(cfg.vocab);
    let all = Options { recompute: false, dropout_seed: None, all_logits: true };
    let base = read(&dev, &model.forward_train(&dev, &ids, &targets, 2, all).unwrap().logits);
    model.attach_lora(&dev, &LoraConfig::default(), 1).unwrap();
    let fwd = model.forward_train(&dev, &ids, &targets, 2, Options { dropout_seed: Some(1), ..all }).unwrap();
    assert_eq!(read(&dev, &fwd.logits), base);
    let mut cache = model.new_cache(&dev, 2, 7);
    assert_close("inference logits", &read(&dev, &model.forward(&dev, &ids, &mut cache, true).unwrap()), &base, 1e-5, 1e-5);
    let (trainable, total) = model.trainable_params();
    assert_eq!(trainable, 2 * 8 * ((32 + 44) * 2 + (44 + 32)));
    assert!(total > trainable);
}
