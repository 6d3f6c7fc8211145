//! `flexlora merge` and `flexlora export-lora` round trips on the default SmolLM2 model (a Llama,
//! so its GGUF q/k rows are permuted): an adapter with random nonzero B on all seven linears
//! (rsLoRA, so the scale is alpha/√r), merged into a Hugging Face directory and into a GGUF, read
//! back by flexlora, gives the logits of the unmerged adapter; the GGUF LoRA reads back to the
//! same tensors and scale; bad inputs are refused without writing anything.
//! Model path: $FLEXLORA_MODEL_GGUF, else models/ (a loud skip without it; a failure under CI).

#[path = "ops/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flexlora::export::{gguf_lora, merge, FloatType, HostAdapter, MergeFormat, MergeOptions};
use flexlora::model::load::{self, peft, GgufFile, Value};
use flexlora::model::{LoraConfig, Target, WeightFormat};
use flexlora::rng::Rng;
use flexlora::Tensor;

fn model_path() -> Option<PathBuf> {
    let p = std::env::var_os("FLEXLORA_MODEL_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if p.exists() {
        return Some(p);
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but the default model is missing at {}", p.display());
    eprintln!("\n*** skipped: {} not found (run scripts/fetch-model.sh): merge/export NOT tested ***\n", p.display());
    None
}

/// The adapter on disk and the logits it gives, computed once for every test of this file.
struct Fixture {
    model: PathBuf,
    dir: PathBuf,
    adapter: PathBuf,
    ids: Vec<u32>,
    /// [T, V] with the adapter attached (unmerged), the dequantized base in f32.
    adapted: Vec<f32>,
    /// [T, V] of the base alone.
    base: Vec<f32>,
    lora: LoraConfig,
}

fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let model = model_path()?;
        let dev = common::cpu();
        let dir = support::tmpdir("export", "fixture");
        let (mut m, tok) = load::open(&dev, &model, WeightFormat::F32).unwrap();
        let ids = tok.encode("def add(a, b):\n    return a + b\n", true).unwrap();
        let lora = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, rslora: true, targets: Target::ALL.to_vec() };
        let forward = |m: &flexlora::model::Model| {
            let mut cache = m.new_cache(&dev, 1, ids.len());
            common::read(&dev, &m.forward(&dev, &ids, &mut cache, true).unwrap())
        };
        let base = forward(&m);
        m.attach_lora(&dev, &lora, 7).unwrap();
        // B starts at zero (a fresh adapter is the base); give it values so the merge matters.
        let mut rng = Rng::new(11);
        for key in m.lora_keys().into_iter().filter(|k| k.side == flexlora::model::Side::B) {
            let t = m.lora_param_mut(key).unwrap();
            let (shape, label) = (t.shape().to_vec(), t.label().to_string());
            let v: Vec<f32> = (0..shape.iter().product()).map(|_| ((rng.uniform() * 2.0 - 1.0) * 0.08) as f32).collect();
            *t = Tensor::from_f32(&dev, &label, &shape, &v).unwrap();
        }
        let adapter = dir.join("adapter");
        flexlora::device::block_on(None, peft::save(&dev, &m, &adapter, "SmolLM2-135M-Instruct")).unwrap();
        let adapted = forward(&m);
        Some(Fixture { model, dir, adapter, ids, adapted, base, lora })
    })
    .as_ref()
}

fn logits_of(path: &Path, f: &Fixture) -> Vec<f32> {
    let dev = common::cpu();
    let (m, _) = load::open(&dev, path, WeightFormat::F32).unwrap();
    let mut cache = m.new_cache(&dev, 1, f.ids.len());
    common::read(&dev, &m.forward(&dev, &f.ids, &mut cache, true).unwrap())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The merged model's logits against the unmerged adapter's, within `atol` + `rtol`·|want|; the
/// adapter's own effect on the logits must be far above that, or the comparison would prove nothing.
fn check_logits(what: &str, got: &[f32], f: &Fixture, atol: f32, rtol: f32) {
    let effect = max_diff(&f.adapted, &f.base);
    let err = max_diff(got, &f.adapted);
    eprintln!("{what}: max |merged - adapted| = {err:.3e} (the adapter moves logits by up to {effect:.3})");
    assert!(effect > 10.0 * atol, "{what}: the adapter changes logits by only {effect}; the test would prove nothing");
    common::assert_close(what, got, &f.adapted, atol, rtol);
}

fn opts(format: MergeFormat, dtype: FloatType) -> MergeOptions {
    MergeOptions { format, dtype, force: false }
}

#[test]
fn adapter_safetensors_carry_rank_and_alpha() {
    let Some(f) = fixture() else { return };
    let (_, meta) = load::safetensors::read_all(&f.adapter.join(peft::WEIGHTS_FILE)).unwrap();
    assert_eq!(meta.get("r").map(String::as_str), Some("4"));
    assert_eq!(meta.get("lora_alpha").map(String::as_str), Some("8"));
    assert_eq!(meta.get("use_rslora").map(String::as_str), Some("true"));
    assert_eq!(meta.get("target_modules").map(String::as_str), Some("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"));
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
}

#[test]
fn merged_hf_directory_f32_gives_the_adapted_logits() {
    let Some(f) = fixture() else { return };
    let out = f.dir.join("merged-hf-f32");
    let r = merge(&f.model, &f.adapter, &out, &opts(MergeFormat::Hf, FloatType::F32)).unwrap();
    assert_eq!(r.merged, 30 * 7);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "flexlora_merge.json"] {
        assert!(out.join(file).is_file(), "{file} missing from the merged directory");
    }
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "float32");
    // f32 weights: the only difference is where s·B·A is rounded (once into W' here, per product
    // at run time), ~1e-7 relative per weight, grown through 30 layers to ~1e-4 in the logits.
    check_logits("HF f32 merge", &logits_of(&out, f), f, 1e-3, 1e-4);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn merged_hf_directory_f16_refuses_then_replaces_an_existing_output() {
    let Some(f) = fixture() else { return };
    let out = support::tmpdir("export", "hf-f16").join("merged");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let err = merge(&f.model, &f.adapter, &out, &opts(MergeFormat::Hf, FloatType::F16)).unwrap_err().to_string();
    assert!(err.contains("not empty") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("keep.txt")).unwrap(), "mine");
    let leftovers: Vec<_> =
        std::fs::read_dir(out.parent().unwrap()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).collect();
    assert!(leftovers.is_empty(), "temporary output left behind: {leftovers:?}");

    let forced = MergeOptions { force: true, ..opts(MergeFormat::Hf, FloatType::F16) };
    merge(&f.model, &f.adapter, &out, &forced).unwrap();
    assert!(!out.join("keep.txt").exists(), "--force must replace the directory, not mix into it");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "float16");
    // f16 rounds every weight by up to 2^-11 relative (the base's Q4_1 values and the update
    // alike), an error of ~1e-2 on logits of magnitude ~20 after 30 layers: the tolerance is that
    // of an f16 checkpoint against its f32 original, not of the merge.
    // (bf16 keeps 8 bits of mantissa instead of 11: about 5x the error.)
    check_logits("HF f16 merge", &logits_of(&out, f), f, 0.1, 0.005);
    std::fs::remove_dir_all(out.parent().unwrap()).unwrap();
}

#[test]
fn merged_gguf_gives_the_adapted_logits_and_keeps_the_base_metadata() {
    let Some(f) = fixture() else { return };
    let base = GgufFile::open(&f.model).unwrap();
    for (dtype, atol, rtol, file_type) in
        [(FloatType::F32, 1e-3, 1e-4, 0u32), (FloatType::F16, 0.1, 0.005, 1), (FloatType::BF16, 0.25, 0.02, 32)]
    {
        let out = f.dir.join(format!("merged-{}.gguf", dtype.name()));
        let r = merge(&f.model, &f.adapter, &out, &opts(MergeFormat::Gguf, dtype)).unwrap();
        assert_eq!(r.merged, 30 * 7);
        let g = GgufFile::open(&out).unwrap();
        for (key, value) in base.metadata().filter(|(k, _)| *k != "general.file_type") {
            assert_eq!(g.get(key), Some(value), "metadata key {key} not copied from the base");
        }
        assert_eq!(g.get("general.file_type"), Some(&Value::U32(file_type)));
        assert_eq!(g.get("flexlora.merge.lora_r"), Some(&Value::U32(4)));
        assert_eq!(g.get("flexlora.merge.scale"), Some(&Value::F32(4.0)));
        assert_eq!(g.tensors().len(), base.tensors().len());
        for t in g.tensors() {
            let want = if t.dims.len() == 1 { flexlora::model::load::GgmlType::F32 } else { flexlora::export::merge_gguf_type(dtype) };
            assert_eq!(t.ggml_type, want, "{}", t.name);
        }
        check_logits(&format!("GGUF {} merge", dtype.name()), &logits_of(&out, f), f, atol, rtol);
        drop(g);
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn exported_gguf_lora_reads_back_with_the_same_tensors_and_scale() {
    let Some(f) = fixture() else { return };
    let cfg = load::open_config(&f.model).unwrap();
    let host = HostAdapter::read(&f.adapter, &cfg, "SmolLM2").unwrap();
    let out = f.dir.join("lora.gguf");
    let r = gguf_lora::export(&host, &cfg, FloatType::F32, &out, false).unwrap();
    assert_eq!((r.tensors, r.arch), (30 * 7 * 2, "llama"));
    // llama.cpp scales by alpha / r: rsLoRA's alpha/√r needs alpha·√r = 8·2.
    assert_eq!(r.alpha, 16.0);

    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get_str("general.type").unwrap(), "adapter");
    assert_eq!(g.get_str("adapter.type").unwrap(), "lora");
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_f32("adapter.lora.alpha").unwrap(), 16.0);
    // Shapes as llama.cpp checks them: a ne = [in, r], b ne = [r, out].
    let a = g.tensor("blk.0.attn_k.weight.lora_a").unwrap();
    let b = g.tensor("blk.0.attn_k.weight.lora_b").unwrap();
    assert_eq!((a.info.dims.clone(), b.info.dims.clone()), (vec![576, 4], vec![4, 192]));
    // B's q/k rows are in llama.cpp's interleaved order, like the base's k weight.
    let (_, b_hf) = &host.pairs[&(0, Target::K)];
    let b_file = b.to_f32().unwrap();
    assert_ne!(&b_file, b_hf, "k's lora_b must be permuted for a Llama GGUF");
    assert_eq!(b_file, load::gguf_model::permute_rows(b_hf, cfg.kv, 4));
    let (_, up_b) = &host.pairs[&(5, Target::Up)];
    assert_eq!(&g.tensor("blk.5.ffn_up.weight.lora_b").unwrap().to_f32().unwrap(), up_b);

    // Read back: every PEFT tensor equal, the same scale, and the same logits.
    let (lora, tensors) = gguf_lora::read(&out, &cfg).unwrap();
    assert_eq!(lora.rank, 4);
    assert!((lora.scale() - f.lora.scale()).abs() <= 1e-6 * f.lora.scale(), "{} vs {}", lora.scale(), f.lora.scale());
    for (&(layer, t), (a, b)) in &host.pairs {
        let (na, nb) = flexlora::model::lora::peft_names(layer, t);
        assert_eq!(&tensors[&na].1, a, "{na}");
        assert_eq!(&tensors[&nb].1, b, "{nb}");
    }
    let dev = common::cpu();
    let (mut m, _) = load::open(&dev, &f.model, WeightFormat::F32).unwrap();
    gguf_lora::attach(&dev, &mut m, &out).unwrap();
    let mut cache = m.new_cache(&dev, 1, f.ids.len());
    let got = common::read(&dev, &m.forward(&dev, &f.ids, &mut cache, true).unwrap());
    check_logits("GGUF LoRA read back", &got, f, 1e-4, 1e-5);

    // Without rsLoRA the exported alpha is PEFT's.
    let plain = LoraConfig { rslora: false, ..host.cfg.clone() };
    assert_eq!(gguf_lora::llama_cpp_alpha(&plain), 8.0);
    // An existing output is not overwritten.
    let err = gguf_lora::export(&host, &cfg, FloatType::F32, &out, false).unwrap_err().to_string();
    assert!(err.contains("--force"), "{err}");
}

#[test]
fn merge_refuses_bad_inputs_and_writes_nothing() {
    let Some(f) = fixture() else { return };
    let dir = support::tmpdir("export", "refusals");
    // An adapter for another model: the same names, an input width of 64 instead of 576.
    let other = dir.join("other-adapter");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(f.adapter.join(peft::CONFIG_FILE), other.join(peft::CONFIG_FILE)).unwrap();
    let (tensors, _) = load::safetensors::read_all(&f.adapter.join(peft::WEIGHTS_FILE)).unwrap();
    let small: Vec<(String, Vec<usize>, Vec<f32>)> = tensors
        .into_iter()
        .map(|(n, (s, _))| {
            let s = if n.contains("lora_A") { vec![s[0], 64] } else { s };
            let len = s.iter().product();
            (n, s, vec![0.01; len])
        })
        .collect();
    load::safetensors::write(&other.join(peft::WEIGHTS_FILE), &small, None).unwrap();
    let out = dir.join("out");
    let err = merge(&f.model, &other, &out, &opts(MergeFormat::Hf, FloatType::F16)).unwrap_err().to_string();
    assert!(err.contains("lora_A") && err.contains("another model") && err.contains("adapter_model.safetensors"), "{err}");
    let err = gguf_lora::export(
        &HostAdapter::read(&f.adapter, &load::open_config(&f.model).unwrap(), "m").unwrap(),
        &load::open_config(&f.model).unwrap(),
        FloatType::F32,
        Path::new("/proc/flexlora-no/lora.gguf"),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("/proc/flexlora-no") && err.contains("does not exist"), "{err}");
    // Nowhere to write.
    let err =
        merge(&f.model, &f.adapter, Path::new("/proc/flexlora-merge-out"), &opts(MergeFormat::Hf, FloatType::F16)).unwrap_err().to_string();
    assert!(err.contains("cannot write here") && err.contains("/proc"), "{err}");
    // gguf output needs a GGUF base.
    let hf_base = dir.join("hf-base");
    std::fs::create_dir_all(&hf_base).unwrap();
    std::fs::write(hf_base.join("config.json"), load::open_config(&f.model).unwrap().to_hf_json().to_string()).unwrap();
    let err = merge(&hf_base, &f.adapter, &out, &opts(MergeFormat::Gguf, FloatType::F16)).unwrap_err().to_string();
    assert!(err.contains("--format") && err.contains("GGUF base"), "{err}");
    assert!(!out.exists(), "a refused merge wrote {}", out.display());
    let names: Vec<String> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "temporary output left behind: {names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
