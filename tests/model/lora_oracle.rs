//! The independent oracle: loss, logits and every LoRA gradient of two tiny random models computed
//! by PyTorch + PEFT in float64 (`scripts/fixtures/make_lora_oracle.py`, committed output in
//! `tests/fixtures/lora_oracle.safetensors`) must be reproduced by flexlora on every device.

use std::collections::HashMap;

use crate::common::*;
use flexlora::model::load::peft;
use flexlora::model::{HfConfig, MemorySource, Model, WeightFormat};
use flexlora::ops::cross_entropy::IGNORE;
use flexlora::train::grad::Options;
use flexlora::Device;
use safetensors::{Dtype, SafeTensors};

struct Case {
    meta: HashMap<String, String>,
    f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    i32s: HashMap<String, Vec<i32>>,
}

fn fixture() -> Case {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/lora_oracle.safetensors");
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (mut f32s, mut i32s) = (HashMap::new(), HashMap::new());
    for (name, v) in st.tensors() {
        match v.dtype() {
            Dtype::F32 => {
                f32s.insert(
                    name,
                    (v.shape().to_vec(), v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()),
                );
            }
            Dtype::I32 => {
                i32s.insert(name, v.data().chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect());
            }
            d => panic!("{name}: unexpected dtype {d:?}"),
        }
    }
    Case { meta: meta.metadata().clone().unwrap(), f32s, i32s }
}

fn check_case(dev: &Device, case: &Case, n: usize) {
    let p = format!("case{n}.");
    let hf: HfConfig = serde_json::from_str(&case.meta[&format!("{p}config")]).unwrap();
    let cfg = hf.validate("oracle config").unwrap();
    let base = MemorySource(
        case.f32s.iter().filter_map(|(k, v)| k.strip_prefix(&format!("{p}base.")).map(|name| (name.to_string(), v.clone()))).collect(),
    );
    let lora = peft::parse_config("oracle lora", &case.meta[&format!("{p}lora")]).unwrap();
    let mut model = Model::load(dev, cfg.clone(), &mut base.clone(), WeightFormat::F32).unwrap();

    let ids: Vec<u32> = case.i32s[&format!("{p}input_ids")].iter().map(|&i| i as u32).collect();
    let labels = &case.i32s[&format!("{p}labels")];
    let (b, t) = (2, ids.len() / 2);
    // HF shifts inside the model: position j predicts labels[j + 1].
    let targets: Vec<u32> = (0..b * t).map(|i| if i % t + 1 < t && labels[i + 1] >= 0 { labels[i + 1] as u32 } else { IGNORE }).collect();
    let n_targets = targets.iter().filter(|&&x| x != IGNORE).count();
    let opts = Options { recompute: false, dropout_seed: None, all_logits: true };

    let base_fwd = model.forward_train(dev, &ids, &targets, b, opts).unwrap();
    assert_close(&format!("case{n} base logits"), &read(dev, &base_fwd.logits), &case.f32s[&format!("{p}base_logits")].1, 2e-5, 1e-4);

    let mut adapter = case.f32s.clone();
    model.attach_lora_from(dev, &lora, "oracle adapter", &mut |name| Ok(adapter.remove(&format!("{p}adapter.{name}")))).unwrap();
    let fwd = model.forward_train(dev, &ids, &targets, b, opts).unwrap();
    assert_close(&format!("case{n} LoRA logits"), &read(dev, &fwd.logits), &case.f32s[&format!("{p}logits")].1, 2e-5, 1e-4);
    let loss = read(dev, &fwd.loss).iter().map(|&l| l as f64).sum::<f64>() / n_targets as f64;
    let want = case.f32s[&format!("{p}loss")].1[0] as f64;
    assert!((loss - want).abs() < 1e-5 * want.abs(), "case{n}: loss {loss} vs PEFT {want}");

    let mut grads = model.zero_grads(dev);
    model.backward(dev, &fwd, None, 1.0 / n_targets as f32, &mut grads).unwrap();
    let names: Vec<String> = model.lora_tensors().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), case.f32s.keys().filter(|k| k.starts_with(&format!("{p}grad."))).count(), "case{n}: adapter tensor count");
    for (name, g) in names.iter().zip(grads.tensors()) {
        let want = &case.f32s[&format!("{p}grad.{name}")].1;
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "case{n} {name}: the oracle gradient is zero");
        assert_close(&format!("case{n} grad {name}"), &read(dev, g), want, 1e-4 * scale + 1e-7, 1e-3);
    }
}

#[test]
fn matches_pytorch_peft_on_the_cpu() {
    let case = fixture();
    check_case(&cpu(), &case, 0);
    check_case(&cpu(), &case, 1);
}

#[test]
fn matches_pytorch_peft_on_the_gpu() {
    let Some(gpu) = gpu() else { return };
    let case = fixture();
    check_case(gpu, &case, 0);
    check_case(gpu, &case, 1);
}
