//! `flexlora merge` and `export-lora` on tiny random Llama and Qwen2 models (Qwen2 has q/k/v
//! biases and no q/k permutation), from a Hugging Face directory and from a GGUF written with the
//! test's own q/k permutation (`formats::permute`, independent of the library's): every merged
//! model gives the unmerged adapter's logits, and the GGUF LoRA reads back to the same logits.

use crate::common::*;
use crate::formats::{logits_of, permute, tmpdir, write_gguf, write_hf};
use crate::forward::{random_weights, tiny_config};
use flexlora::export::{gguf_lora, merge, FloatType, HostAdapter, MergeFormat, MergeOptions};
use flexlora::model::load::{self, peft, GgufFile};
use flexlora::model::{Arch, LoraConfig, Side, Target, WeightFormat};

#[test]
fn merged_tiny_models_and_gguf_loras_give_the_adapted_logits() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let cfg = tiny_config(arch);
        let w = random_weights(&cfg, 5);
        let dir = tmpdir(&format!("merge-{arch:?}"));
        let (hf, gguf) = (dir.join("hf"), dir.join("model.gguf"));
        std::fs::create_dir_all(&hf).unwrap();
        write_hf(&hf, &cfg, &w);
        write_gguf(&gguf, &cfg, &w, if arch == Arch::Llama { "llama" } else { "qwen2" });

        let dev = cpu();
        let (mut m, _) = load::open(&dev, &hf, WeightFormat::F32).unwrap();
        let lora = LoraConfig { rank: 3, alpha: 5.0, dropout: 0.0, rslora: false, targets: Target::ALL.to_vec() };
        m.attach_lora(&dev, &lora, 1).unwrap();
        let mut rng = Rng::new(2);
        for key in m.lora_keys().into_iter().filter(|k| k.side == Side::B) {
            let t = m.lora_param_mut(key).unwrap();
            let (shape, label) = (t.shape().to_vec(), t.label().to_string());
            *t = flexlora::Tensor::from_f32(&dev, &label, &shape, &rng.vec(shape.iter().product(), 0.5)).unwrap();
        }
        let adapter = dir.join("adapter");
        flexlora::device::block_on(None, peft::save(&dev, &m, &adapter, "tiny")).unwrap();
        let mut cache = m.new_cache(&dev, 1, 8);
        let want = read(&dev, &m.forward(&dev, &[0, 5, 17, 9, 33], &mut cache, true).unwrap());
        let base = logits_of(&hf);
        let effect = want.iter().zip(&base).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(effect > 0.1, "{arch:?}: the adapter moves logits by only {effect}");

        let f32_opts = |format| MergeOptions { format, dtype: FloatType::F32, force: false };
        for (from, format, out) in [
            (&hf, MergeFormat::Hf, dir.join("from-hf")),
            (&gguf, MergeFormat::Hf, dir.join("from-gguf")),
            (&gguf, MergeFormat::Gguf, dir.join("merged.gguf")),
        ] {
            let r = merge(from, &adapter, &out, &f32_opts(format)).unwrap();
            assert_eq!(r.merged, cfg.layers * 7);
            assert_close(&format!("{arch:?}: merge {} -> {:?}", from.display(), format), &logits_of(&out), &want, 1e-5, 1e-5);
        }
        // A Hugging Face base keeps its own tokenizer files.
        assert_eq!(std::fs::read(dir.join("from-hf/tokenizer.json")).unwrap(), std::fs::read(hf.join("tokenizer.json")).unwrap());

        let host = HostAdapter::read(&adapter, &cfg, "tiny").unwrap();
        let lora_gguf = dir.join("lora.gguf");
        let r = gguf_lora::export(&host, &cfg, FloatType::F32, &lora_gguf, false).unwrap();
        assert_eq!(r.alpha, 5.0);
        let g = GgufFile::open(&lora_gguf).unwrap();
        let (_, b_q) = &host.pairs[&(1, Target::Q)];
        let want_b = if arch == Arch::Llama { permute(b_q, cfg.h, 3) } else { b_q.clone() };
        assert_eq!(g.tensor("blk.1.attn_q.weight.lora_b").unwrap().to_f32().unwrap(), want_b, "{arch:?}: q's lora_b row order");
        for from in [&hf, &gguf] {
            let (mut m2, _) = load::open(&dev, from, WeightFormat::F32).unwrap();
            gguf_lora::attach(&dev, &mut m2, &lora_gguf).unwrap();
            let mut cache = m2.new_cache(&dev, 1, 8);
            let got = read(&dev, &m2.forward(&dev, &[0, 5, 17, 9, 33], &mut cache, true).unwrap());
            assert_close(&format!("{arch:?}: GGUF LoRA read back onto {}", from.display()), &got, &want, 1e-6, 1e-6);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
