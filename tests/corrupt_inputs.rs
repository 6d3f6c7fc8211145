//! A corpus of corrupt and contradictory inputs, as a hostile user would bring them: Hugging Face
//! model directories, adapters, training configs, data files, checkpoints, evaluation output
//! directories and command-line flags. Every case must end in an error that names the file, tensor
//! or flag at fault, and must leave every file that existed before it byte for byte unchanged.
//!
//! Cases call the library where the input reaches it through a library function, and run the
//! built binary where the case is about a command-line flag.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::copy_dir;

use flexlora::eval::job::{self, EvalConfig, TaskSet};
use flexlora::model::load::{self, peft, safetensors};
use flexlora::model::tokenizer::gpt2_tokenizer_json;
use flexlora::model::{weights::tensor_names, Arch, Config, WeightFormat};
use flexlora::train::checkpoint;
use flexlora::train::config::TrainConfig;
use flexlora::train::run::{self, Trainer};
use flexlora::Device;

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// A tiny Llama whose linear weights quantize to NF4 (every matrix a multiple of 64 values).
fn tiny_config() -> Config {
    Config {
        arch: Arch::Llama,
        c: 32,
        f: 48,
        h: 4,
        kv: 2,
        d: 8,
        layers: 2,
        vocab: 61,
        eps: 1e-5,
        rope_base: 10000.0,
        rope_scaling: None,
        max_pos: 64,
        tied: true,
        qkv_bias: false,
        bos: Some(1),
        eos: vec![2],
    }
}

fn random_weights(cfg: &Config, seed: u64) -> Tensors {
    let mut rng = flexlora::rng::Rng::new(seed);
    tensor_names(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let norm = name.ends_with("norm.weight");
            let data = (0..n).map(|_| (rng.uniform() as f32 * 2.0 - 1.0) * 0.3 + if norm { 1.0 } else { 0.0 }).collect();
            (name, shape, data)
        })
        .collect()
}

/// Writes a Hugging Face directory: config.json (after `edit`), model.safetensors, tokenizer.json
/// (two specials, then single characters) and a tokenizer_config.json with a ChatML template.
fn write_model(dir: &Path, cfg: &Config, tensors: &Tensors, edit: impl FnOnce(&mut serde_json::Value)) {
    std::fs::create_dir_all(dir).unwrap();
    safetensors::write(&dir.join("model.safetensors"), tensors, None).unwrap();
    let mut json = cfg.to_hf_json();
    edit(&mut json);
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let mut toks = vec!["<|bos|>".to_string(), "<|eos|>".to_string(), "Ġ".to_string()];
    toks.extend(('a'..='z').chain('A'..='Z').chain('0'..='9').map(String::from));
    toks.truncate(cfg.vocab);
    let types: Vec<i32> = (0..toks.len()).map(|i| if i < 2 { 3 } else { 1 }).collect();
    std::fs::write(dir.join("tokenizer.json"), gpt2_tokenizer_json(&toks, &[], &types, "smollm", None).unwrap().to_string()).unwrap();
    let template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}";
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::json!({ "chat_template": template }).to_string()).unwrap();
}

fn good_model(dir: &Path) -> PathBuf {
    let cfg = tiny_config();
    write_model(dir, &cfg, &random_weights(&cfg, 5), |_| {});
    dir.to_path_buf()
}

/// Every file under `dirs` with a hash of its bytes.
fn snapshot(dirs: &[&Path]) -> BTreeMap<PathBuf, (u64, u64)> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, (u64, u64)>) {
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                walk(&e.path(), out);
            }
        } else if let Ok(bytes) = std::fs::read(p) {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            out.insert(p.to_path_buf(), (bytes.len() as u64, h.finish()));
        }
    }
    let mut out = BTreeMap::new();
    for d in dirs {
        walk(d, &mut out);
    }
    out
}

/// Runs cases and collects every failure, so one broken case does not hide the others.
struct Corpus {
    cases: usize,
    failures: Vec<String>,
}

impl Corpus {
    fn new() -> Self {
        Corpus { cases: 0, failures: Vec::new() }
    }

    fn judge(&mut self, name: &str, msg: Option<String>, needles: &[&str], before: BTreeMap<PathBuf, (u64, u64)>, watch: &[&Path]) {
        self.cases += 1;
        match msg {
            None => self.failures.push(format!("{name}: succeeded, expected an error naming {needles:?}")),
            Some(m) => {
                let missing: Vec<&&str> = needles.iter().filter(|n| !m.contains(**n)).collect();
                if !missing.is_empty() {
                    self.failures.push(format!("{name}: the error does not name {missing:?}: {m}"));
                }
            }
        }
        let after = snapshot(watch);
        let changed: Vec<&PathBuf> = before.keys().filter(|p| after.get(*p) != before.get(*p)).collect();
        if !changed.is_empty() {
            self.failures.push(format!("{name}: files changed or removed: {changed:?}"));
        }
    }

    /// A library call that must fail with an error containing every needle, changing nothing in `watch`.
    fn lib<T>(&mut self, name: &str, watch: &[&Path], f: impl FnOnce() -> flexlora::Result<T>, needles: &[&str]) {
        let before = snapshot(watch);
        let msg = f().err().map(|e| e.to_string());
        self.judge(name, msg, needles, before, watch);
    }

    /// The binary with `args` must exit with an error whose message contains every needle.
    fn cli(&mut self, name: &str, watch: &[&Path], args: &[&str], needles: &[&str]) {
        let before = snapshot(watch);
        let out = Command::new(env!("CARGO_BIN_EXE_flexlora")).args(args).output().unwrap();
        let msg = (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).to_string());
        self.judge(name, msg, needles, before, watch);
    }

    fn finish(self, at_least: usize) {
        assert!(self.failures.is_empty(), "{} of {} cases failed:\n{}", self.failures.len(), self.cases, self.failures.join("\n"));
        assert!(self.cases >= at_least, "only {} cases ran", self.cases);
        eprintln!("{} corrupt-input cases, each refused clearly with nothing changed", self.cases);
    }
}

fn open(dir: &Path) -> flexlora::Result<(flexlora::model::Model, flexlora::model::tokenizer::Tokenizer)> {
    load::open(&Device::cpu(), dir, WeightFormat::F32)
}

fn set(name: &'static str, v: serde_json::Value) -> impl FnOnce(&mut serde_json::Value) {
    move |j| j[name] = v
}

#[test]
fn corrupt_model_directories_are_refused_by_name() {
    let root = support::tmpdir("corrupt", "models");
    let mut c = Corpus::new();
    let cfg = tiny_config();
    let w = random_weights(&cfg, 5);
    let case = |tag: &str| root.join(tag);

    let d = case("json");
    write_model(&d, &cfg, &w, |_| {});
    std::fs::write(d.join("config.json"), "{\"hidden_size\": 32,").unwrap();
    c.lib("config.json not JSON", &[&root], || open(&d), &["config.json"]);

    let d = case("nohidden");
    write_model(&d, &cfg, &w, |j| {
        j.as_object_mut().unwrap().remove("hidden_size");
    });
    c.lib("config.json without hidden_size", &[&root], || open(&d), &["config.json", "hidden_size"]);

    let d = case("gelu");
    write_model(&d, &cfg, &w, set("hidden_act", "gelu".into()));
    c.lib("hidden_act gelu", &[&root], || open(&d), &["config.json", "hidden_act", "gelu"]);

    let d = case("eps");
    write_model(&d, &cfg, &w, set("rms_norm_eps", (-1.0).into()));
    c.lib("rms_norm_eps -1", &[&root], || open(&d), &["config.json", "rms_norm_eps"]);

    let d = case("theta");
    write_model(&d, &cfg, &w, set("rope_theta", 0.0.into()));
    c.lib("rope_theta 0", &[&root], || open(&d), &["config.json", "rope_theta"]);

    let d = case("layers");
    write_model(&d, &cfg, &w, set("num_hidden_layers", 1.into()));
    c.lib("num_hidden_layers below the tensors", &[&root], || open(&d), &["layers", "model.layers.1", "num_hidden_layers"]);

    let d = case("type");
    write_model(&d, &cfg, &w, set("model_type", "gpt2".into()));
    c.lib("model_type gpt2", &[&root], || open(&d), &["config.json", "model_type", "gpt2"]);

    let d = case("kv");
    write_model(&d, &cfg, &w, set("num_key_value_heads", 3.into()));
    c.lib("kv heads not dividing heads", &[&root], || open(&d), &["config.json", "num_key_value_heads"]);

    let d = case("yarn");
    write_model(&d, &cfg, &w, set("rope_scaling", serde_json::json!({"rope_type": "yarn", "factor": 4.0})));
    c.lib("rope_scaling yarn", &[&root], || open(&d), &["config.json", "rope_scaling", "yarn"]);

    for (tag, tensor, value) in [
        ("nan", "model.layers.1.mlp.up_proj.weight", f32::NAN),
        ("inf", "model.embed_tokens.weight", f32::INFINITY),
        ("norm-inf", "model.norm.weight", f32::NEG_INFINITY),
    ] {
        let d = case(tag);
        let mut w2 = w.clone();
        w2.iter_mut().find(|t| t.0 == tensor).unwrap().2[3] = value;
        write_model(&d, &cfg, &w2, |_| {});
        c.lib(&format!("{value} in {tensor}"), &[&root], || open(&d), &[tensor, "element 3", &value.to_string()]);
    }

    let d = case("truncated");
    write_model(&d, &cfg, &w, |_| {});
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    c.lib("truncated model.safetensors", &[&root], || open(&d), &["model.safetensors"]);

    let d = case("missing-tensor");
    let w2: Tensors = w.iter().filter(|t| t.0 != "model.layers.0.self_attn.k_proj.weight").cloned().collect();
    write_model(&d, &cfg, &w2, |_| {});
    c.lib("a tensor missing", &[&root], || open(&d), &["model.layers.0.self_attn.k_proj.weight"]);

    let d = case("shape");
    let mut w2 = w.clone();
    let t = w2.iter_mut().find(|t| t.0 == "model.layers.0.mlp.down_proj.weight").unwrap();
    t.1 = vec![48, 32];
    write_model(&d, &cfg, &w2, |_| {});
    c.lib("a tensor of the wrong shape", &[&root], || open(&d), &["model.layers.0.mlp.down_proj.weight", "shape"]);

    let d = case("no-tokenizer");
    write_model(&d, &cfg, &w, |_| {});
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    c.lib("tokenizer.json missing", &[&root], || open(&d), &["tokenizer.json"]);

    let d = case("bad-tokenizer");
    write_model(&d, &cfg, &w, |_| {});
    std::fs::write(d.join("tokenizer.json"), "{\"model\": 5}").unwrap();
    c.lib("tokenizer.json damaged", &[&root], || open(&d), &["tokenizer.json"]);

    c.lib("no model at the path", &[&root], || open(&root.join("nowhere")), &["nowhere"]);

    // --chat needs a chat template it understands; without --chat the same model loads fine.
    let d = case("chat-json");
    write_model(&d, &cfg, &w, |_| {});
    std::fs::write(d.join("tokenizer_config.json"), "{\"chat_template\": ").unwrap();
    c.lib(
        "tokenizer_config.json damaged, --chat",
        &[&root],
        || open(&d)?.1.checked_chat_prompt(None, "hi"),
        &["tokenizer_config.json", "--chat"],
    );
    let d = case("chat-none");
    write_model(&d, &cfg, &w, |_| {});
    std::fs::remove_file(d.join("tokenizer_config.json")).unwrap();
    c.lib("no chat template, --chat", &[&root], || open(&d)?.1.checked_chat_prompt(None, "hi"), &["--chat", "no chat template"]);
    let d = case("chat-odd");
    write_model(&d, &cfg, &w, |_| {});
    std::fs::write(d.join("tokenizer_config.json"), r#"{"chat_template": "{{ messages[0]['content'] }} ###"}"#).unwrap();
    c.lib("unrecognized chat template, --chat", &[&root], || open(&d)?.1.checked_chat_prompt(None, "hi"), &["--chat", "not a format"]);
    assert!(open(&d).unwrap().1.chat_prompt(None, "hi") == "hi");

    c.finish(20);
    let _ = std::fs::remove_dir_all(&root);
}

/// Writes an adapter directory for `model` (rank 4 on `targets`) whose config and tensors the
/// closure may edit.
fn write_adapter(dir: &Path, targets: &[&str], edit_cfg: impl FnOnce(&mut serde_json::Value), edit_tensors: impl FnOnce(&mut Tensors)) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = tiny_config();
    let mut tensors: Tensors = Vec::new();
    for i in 0..cfg.layers {
        for t in targets {
            let target = flexlora::model::Target::parse(t).unwrap();
            let (na, nb) = flexlora::model::lora::peft_names(i, target);
            let (out, inp) = match *t {
                "q_proj" | "o_proj" => (32, 32),
                "k_proj" | "v_proj" => (16, 32),
                "gate_proj" | "up_proj" => (48, 32),
                _ => (32, 48),
            };
            tensors.push((na, vec![4, inp], vec![0.01; 4 * inp]));
            tensors.push((nb, vec![out, 4], vec![0.02; out * 4]));
        }
    }
    edit_tensors(&mut tensors);
    safetensors::write(&dir.join(peft::WEIGHTS_FILE), &tensors, None).unwrap();
    let lcfg = flexlora::model::LoraConfig {
        rank: 4,
        targets: targets.iter().map(|t| flexlora::model::Target::parse(t).unwrap()).collect(),
        ..Default::default()
    };
    let mut json: serde_json::Value = serde_json::from_str(&peft::config_json(&lcfg, "tiny")).unwrap();
    edit_cfg(&mut json);
    std::fs::write(dir.join(peft::CONFIG_FILE), json.to_string()).unwrap();
}

#[test]
fn corrupt_adapters_are_refused_by_name() {
    let root = support::tmpdir("corrupt", "adapters");
    let model_dir = good_model(&root.join("model"));
    let mut c = Corpus::new();
    let attach = |dir: &Path| -> flexlora::Result<()> {
        let (mut m, _) = open(&model_dir)?;
        peft::load(&Device::cpu(), &mut m, dir).map(|_| ())
    };
    let good = root.join("good");
    write_adapter(&good, &["q_proj", "down_proj"], |_| {}, |_| {});
    attach(&good).expect("the intact adapter loads");
    let mlp = ["q_proj", "down_proj"];

    let d = root.join("layers");
    write_adapter(&d, &mlp, |j| j["layers_to_transform"] = serde_json::json!([0]), |_| {});
    c.lib("layers_to_transform", &[&root], || attach(&d), &["adapter_config.json", "layers_to_transform"]);

    let d = root.join("pattern");
    write_adapter(&d, &mlp, |j| j["rank_pattern"] = serde_json::json!({"q_proj": 8}), |_| {});
    c.lib("rank_pattern", &[&root], || attach(&d), &["adapter_config.json", "rank_pattern"]);

    let d = root.join("outside");
    write_adapter(&d, &mlp, |j| j["target_modules"] = serde_json::json!(["q_proj"]), |_| {});
    c.lib(
        "tensors for a module outside target_modules",
        &[&root],
        || attach(&d),
        &["adapter_model.safetensors", "mlp.down_proj.lora_A.weight", "target_modules"],
    );

    let d = root.join("layer5");
    write_adapter(
        &d,
        &mlp,
        |_| {},
        |t| t.push(("base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight".into(), vec![4, 32], vec![0.0; 128])),
    );
    c.lib("a tensor for layer 5 of 2", &[&root], || attach(&d), &["layers.5.self_attn.q_proj.lora_A.weight", "layer 5", "2 layers"]);

    let d = root.join("nan");
    write_adapter(&d, &mlp, |_| {}, |t| t[3].2[7] = f32::NAN);
    c.lib("NaN in lora_B", &[&root], || attach(&d), &["adapter_model.safetensors", "layers.0.mlp.down_proj.lora_B.weight", "NaN"]);

    let d = root.join("rank");
    write_adapter(&d, &mlp, |j| j["r"] = 8.into(), |_| {});
    c.lib("config rank 8, tensors rank 4", &[&root], || attach(&d), &["lora_A.weight", "rank 8"]);

    let d = root.join("dora");
    write_adapter(&d, &mlp, |j| j["use_dora"] = true.into(), |_| {});
    c.lib("use_dora", &[&root], || attach(&d), &["adapter_config.json", "use_dora"]);

    let d = root.join("json");
    write_adapter(&d, &mlp, |_| {}, |_| {});
    std::fs::write(d.join(peft::CONFIG_FILE), "{\"r\": 4").unwrap();
    c.lib("adapter_config.json not JSON", &[&root], || attach(&d), &["adapter_config.json"]);

    let d = root.join("noweights");
    write_adapter(&d, &mlp, |_| {}, |_| {});
    std::fs::remove_file(d.join(peft::WEIGHTS_FILE)).unwrap();
    c.lib("adapter_model.safetensors missing", &[&root], || attach(&d), &["adapter_model.safetensors"]);

    let d = root.join("pickle");
    write_adapter(&d, &mlp, |_| {}, |_| {});
    std::fs::rename(d.join(peft::WEIGHTS_FILE), d.join("adapter_model.bin")).unwrap();
    c.lib("only adapter_model.bin", &[&root], || attach(&d), &["adapter_model.bin", "safe_serialization"]);

    let d = root.join("missing");
    write_adapter(&d, &mlp, |_| {}, |t| t.retain(|x| !x.0.contains("layers.1.self_attn.q_proj.lora_B")));
    c.lib("a LoRA tensor missing", &[&root], || attach(&d), &["layers.1.self_attn.q_proj.lora_B.weight"]);

    let d = root.join("lm_head");
    write_adapter(&d, &mlp, |j| j["target_modules"] = serde_json::json!(["q_proj", "lm_head"]), |_| {});
    c.lib("target module lm_head", &[&root], || attach(&d), &["adapter_config.json", "lm_head"]);

    let d = root.join("truncated");
    write_adapter(&d, &mlp, |_| {}, |_| {});
    let bytes = std::fs::read(d.join(peft::WEIGHTS_FILE)).unwrap();
    std::fs::write(d.join(peft::WEIGHTS_FILE), &bytes[..bytes.len() - 100]).unwrap();
    c.lib("truncated adapter", &[&root], || attach(&d), &["adapter_model.safetensors"]);

    c.finish(13);
    let _ = std::fs::remove_dir_all(&root);
}

fn write_data(path: &Path) {
    let lines: Vec<String> = (0..6)
        .map(|i| {
            let p = ["def add", "def sub", "def mul", "print x", "return y", "class A"][i];
            format!(r#"{{"prompt": "{p} ", "completion": "abc {} xyz"}}"#, "q".repeat(i + 1))
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

fn train_config(model: &Path, data: &Path, out: &Path) -> TrainConfig {
    let mut c = TrainConfig {
        model: model.to_path_buf(),
        data: data.display().to_string(),
        out: out.to_path_buf(),
        batch_size: 2,
        steps: 4,
        lr: 1e-2,
        warmup_steps: 1,
        save_every: 2,
        seed: 3,
        ..Default::default()
    };
    c.lora.rank = 4;
    c
}

fn new_trainer(cfg: &TrainConfig, resume: Option<&Path>) -> flexlora::Result<Trainer> {
    let dev = Device::cpu();
    let (model, tok) = run::load_model(&dev, cfg)?;
    Trainer::new(dev, model, &tok, cfg.clone(), resume)
}

fn train(cfg: &TrainConfig, resume: Option<&Path>) -> flexlora::Result<run::Summary> {
    flexlora::device::block_on(None, run::run(new_trainer(cfg, resume)?, &mut |_| {}))
}

#[test]
fn corrupt_training_inputs_and_checkpoints_are_refused_by_name() {
    let root = support::tmpdir("corrupt", "train");
    let model_dir = good_model(&root.join("model"));
    let data = root.join("data.jsonl");
    write_data(&data);
    let run_dir = root.join("run");
    let cfg = train_config(&model_dir, &data, &run_dir);
    train(&cfg, None).unwrap();
    let mut c = Corpus::new();
    let fresh = |tag: &str| train_config(&model_dir, &data, &root.join(tag));

    // Settings.
    let toml = root.join("bad.toml");
    std::fs::write(&toml, "steps = 3\nlearning_rate = 0.1\n").unwrap();
    c.lib("unknown key in the TOML", &[&root], || TrainConfig::from_toml(&toml), &["bad.toml", "learning_rate"]);
    let toml2 = root.join("broken.toml");
    std::fs::write(&toml2, "steps = = 3\n").unwrap();
    c.lib("TOML syntax error", &[&root], || TrainConfig::from_toml(&toml2), &["broken.toml"]);
    for (name, flag, edit) in [
        ("clip -1", "--clip", (|c: &mut TrainConfig| c.clip = -1.0) as fn(&mut TrainConfig)),
        ("clip NaN", "--clip", |c| c.clip = f32::NAN),
        ("FLeX threshold 1.5", "--flex-threshold", |c| c.flex.threshold = 1.5),
        ("FLeX threshold NaN", "--flex-threshold", |c| c.flex.threshold = f32::NAN),
        ("FLeX phi_high -0.1", "--flex-phi-high", |c| c.flex.phi_high = -0.1),
        ("FLeX phi_low 2", "--flex-phi-low", |c| c.flex.phi_low = 2.0),
        ("FLeX lambda -1", "--flex-lambda", |c| c.flex.lambda = -1.0),
        ("lr NaN", "--lr", |c| c.lr = f32::NAN),
        ("lora alpha inf", "--lora-alpha", |c| c.lora.alpha = f32::INFINITY),
        ("lora rank 100000", "--lora-rank", |c| c.lora.rank = 100_000),
        ("batch size 10^9", "--batch-size", |c| c.batch_size = 1_000_000_000),
    ] {
        let mut cfg = fresh("new");
        edit(&mut cfg);
        c.lib(name, &[&root], || new_trainer(&cfg, None), &[flag]);
    }

    // Data files.
    let bad = root.join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\"\n").unwrap();
    let cfg2 = TrainConfig { data: bad.display().to_string(), ..fresh("new") };
    c.lib("JSONL line 2 cut short", &[&root], || new_trainer(&cfg2, None), &["bad.jsonl", "line 2"]);
    let keys = root.join("keys.jsonl");
    std::fs::write(&keys, "{\"question\": \"a\", \"answer\": \"b\"}\n").unwrap();
    let cfg2 = TrainConfig { data: keys.display().to_string(), ..fresh("new") };
    c.lib("JSONL with other keys", &[&root], || new_trainer(&cfg2, None), &["keys.jsonl", "line 1"]);
    let cfg2 = TrainConfig { data: root.join("absent.jsonl").display().to_string(), ..fresh("new") };
    c.lib("data file missing", &[&root], || new_trainer(&cfg2, None), &["absent.jsonl"]);
    let empty = root.join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let cfg2 = TrainConfig { data: empty.display().to_string(), ..fresh("new") };
    c.lib("empty data file", &[&root], || new_trainer(&cfg2, None), &["--data", "empty.jsonl"]);
    let long = root.join("long-prompts.jsonl");
    std::fs::write(&long, "{\"prompt\": \"abcdefghijklmnopqrstuvwxyz\", \"completion\": \"x\"}\n").unwrap();
    let cfg2 = TrainConfig { data: long.display().to_string(), max_len: 8, ..fresh("new") };
    c.lib("every completion masked or truncated away", &[&root], || new_trainer(&cfg2, None), &["--max-len", "--no-mask-prompt"]);

    // A new run into a directory that holds one.
    c.lib("new run into an existing run", &[&root], || new_trainer(&cfg, None), &["--out", "--resume", "already holds a training run"]);

    // Resume: settings that may not change, edits, another model, damaged files.
    for (name, needle, edit) in [
        ("resume with another --lr", "lr: ", (|c: &mut TrainConfig| c.lr = 0.5) as fn(&mut TrainConfig)),
        ("resume with another --lora-rank", "lora.rank: 4 -> 16", |c| c.lora.rank = 16),
        ("resume with another optimizer", "optimizer: \"adamw\" -> \"sophia\"", |c| {
            c.optimizer = flexlora::train::config::OptimizerKind::Sophia
        }),
        ("resume with another --data", "data: ", |c| c.data = "mbpp".into()),
        ("resume with another --seed", "seed: 3 -> 4", |c| c.seed = 4),
    ] {
        let mut cfg2 = cfg.clone();
        edit(&mut cfg2);
        c.lib(name, &[&root], || new_trainer(&cfg2, Some(&run_dir)), &["step-0000004", needle, "steps"]);
    }
    let toml_path = run_dir.join("config.toml");
    let orig = std::fs::read_to_string(&toml_path).unwrap();
    let mut edited = TrainConfig::from_toml(&toml_path).unwrap();
    edited.lr = 0.5;
    std::fs::write(&toml_path, edited.to_toml()).unwrap();
    c.lib("config.toml edited before resume", &[&root], || new_trainer(&cfg, Some(&run_dir)), &["config.toml", "lr: 0.01", "0.5"]);
    std::fs::write(&toml_path, &orig).unwrap();
    let other = root.join("other-model");
    let tc = tiny_config();
    write_model(&other, &tc, &random_weights(&tc, 99), |_| {});
    let cfg2 = TrainConfig { model: other.clone(), ..cfg.clone() };
    c.lib("resume on a same-shape model with other weights", &[&root], || new_trainer(&cfg2, Some(&run_dir)), &["other-model", "--model"]);
    let cfg2 = TrainConfig { steps: 3, ..cfg.clone() };
    let step4 = run_dir.join("checkpoints/step-0000004");
    c.lib("resume asking for fewer steps than done", &[&root], || new_trainer(&cfg2, Some(&run_dir)), &["--steps", "4 steps already"]);
    let ck = step4.join(checkpoint::FILE);
    let orig_ck = std::fs::read(&ck).unwrap();
    std::fs::write(&ck, &orig_ck[..orig_ck.len() / 2]).unwrap();
    c.lib("checkpoint.safetensors cut short", &[&root], || new_trainer(&cfg, Some(&run_dir)), &["checkpoint.safetensors", "truncated"]);
    std::fs::write(&ck, &orig_ck).unwrap();
    let lone = root.join("lone-step");
    copy_dir(&step4, &lone);
    c.lib("resume a step directory outside a run", &[&root], || new_trainer(&cfg, Some(&lone)), &["lone-step", "checkpoints/"]);
    let (tensors, mut meta) = safetensors::read_all(&ck).unwrap();
    meta.insert("flexlora.checkpoint.version".into(), "99".into());
    let list: Vec<(String, Vec<usize>, Vec<f32>)> = tensors.into_iter().map(|(n, (s, d))| (n, s, d)).collect();
    safetensors::write(&ck, &list, Some(meta)).unwrap();
    c.lib(
        "checkpoint.safetensors from a newer flexlora",
        &[&root],
        || new_trainer(&cfg, Some(&run_dir)),
        &["checkpoint.safetensors", "newer flexlora", "version 99"],
    );
    std::fs::write(&ck, &orig_ck).unwrap();
    c.lib("resume from a directory without checkpoints", &[&root], || new_trainer(&cfg, Some(&root.join("model"))), &["no checkpoint"]);
    new_trainer(&cfg, Some(&run_dir)).expect("the intact run resumes");

    c.finish(30);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn eval_outputs_and_flags_are_refused_by_name() {
    let root = support::tmpdir("corrupt", "eval");
    let model_dir = good_model(&root.join("model"));
    let adapter = root.join("adapter");
    write_adapter(&adapter, &["q_proj"], |_| {}, |_| {});
    let mut c = Corpus::new();
    let m = model_dir.to_str().unwrap();
    let gen = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["generate", "--device", "cpu", "--weights", "f32", "--model", m, "--prompt", "abc", "--max-new-tokens", "2"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cli = |c: &mut Corpus, name: &str, args: Vec<String>, needles: &[&str]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        c.cli(name, &[&root], &a, needles);
    };
    cli(&mut c, "--temperature -1", gen(&["--temperature=-1"]), &["--temperature"]);
    cli(&mut c, "--temperature nan", gen(&["--temperature", "nan"]), &["--temperature"]);
    cli(&mut c, "--top-p 0", gen(&["--temperature", "0.7", "--top-p", "0"]), &["--top-p"]);
    cli(&mut c, "--top-p 1.5", gen(&["--top-p", "1.5"]), &["--top-p"]);
    cli(&mut c, "--stop \"\"", gen(&["--stop", ""]), &["--stop"]);
    std::fs::remove_file(model_dir.join("tokenizer_config.json")).unwrap();
    cli(&mut c, "--chat without a template", gen(&["--chat"]), &["--chat"]);
    cli(
        &mut c,
        "--adapter with a NaN",
        {
            let d = root.join("nan-adapter");
            write_adapter(&d, &["q_proj"], |_| {}, |t| t[0].2[0] = f32::INFINITY);
            let mut v = gen(&[]);
            v.extend(["--adapter".to_string(), d.display().to_string()]);
            v
        },
        &["nan-adapter", "lora_A.weight", "inf"],
    );
    let data = root.join("data.jsonl");
    write_data(&data);
    let train = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["train", "--device", "cpu", "--model", m, "--data", data.to_str().unwrap(), "--out", root.join("run").to_str().unwrap()]
                .iter()
                .map(|s| s.to_string())
                .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    cli(&mut c, "train --clip -1", train(&["--clip=-1"]), &["--clip"]);
    cli(&mut c, "train --flex-threshold 2", train(&["--flex-threshold", "2"]), &["--flex-threshold"]);
    cli(&mut c, "train --flex-phi-low -1", train(&["--flex-phi-low=-1"]), &["--flex-phi-low"]);
    cli(&mut c, "train --lora-rank 100000", train(&["--lora-rank", "100000"]), &["--lora-rank"]);
    cli(&mut c, "train --batch-size 1000000000", train(&["--batch-size", "1000000000", "--steps", "1"]), &["--batch-size"]);
    cli(&mut c, "train --resume of no run", train(&["--resume", root.join("nothing").to_str().unwrap()]), &["nothing"]);

    if let Some(data_dir) = support::data_dir("HumanEval.jsonl.gz") {
        let out = root.join("eval-out");
        let ecfg = |adapter_fp: bool| EvalConfig {
            model: format!("{m} + adapter {}", adapter.display()),
            task: TaskSet::Humaneval,
            limit: Some(1),
            ids: None,
            samples: 1,
            temperature: 0.0,
            top_p: 0.95,
            max_new_tokens: 4,
            seed: 0,
            flex_template: false,
            protocol: job::PROTOCOL,
            provenance: job::provenance(&model_dir, adapter_fp.then_some(adapter.as_path())).unwrap(),
            task_file: None,
            shard: None,
        };
        let dev = Device::cpu();
        let (mut model, tok) = open(&model_dir).unwrap();
        peft::load(&dev, &mut model, &adapter).unwrap();
        // An earlier evaluation of this adapter, then the adapter retrained in place.
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&ecfg(true)).unwrap()).unwrap();
        std::fs::write(
            out.join("samples.jsonl"),
            "{\"task_id\": \"HumanEval/0\", \"sample\": 0, \"completion\": \"    pass\", \"finish\": \"eos\"}\n",
        )
        .unwrap();
        write_adapter(&adapter, &["q_proj"], |_| {}, |t| t[0].2[0] = 0.5);
        let run = |cfg: &EvalConfig| flexlora::device::block_on(None, job::run(&dev, &model, &tok, &data_dir, &out, cfg, 1, &mut |_| {}));
        c.lib(
            "eval after the adapter was retrained in place",
            &[&root],
            || run(&ecfg(true)),
            &["config.json", "other model or adapter files", "--out"],
        );
        c.lib("eval with other settings", &[&root], || run(&EvalConfig { samples: 2, ..ecfg(true) }), &["config.json", "samples: 1 -> 2"]);
        c.lib("eval --top-p 0", &[&root], || run(&EvalConfig { top_p: 0.0, ..ecfg(true) }), &["--top-p"]);
        c.lib("eval --samples 0", &[&root], || run(&EvalConfig { samples: 0, ..ecfg(true) }), &["--samples"]);
        std::fs::write(out.join("config.json"), "{\"model\": ").unwrap();
        c.lib("eval config.json damaged", &[&root], || run(&ecfg(true)), &["config.json", "damaged"]);
        let ppl_out = root.join("ppl-out");
        std::fs::create_dir_all(&ppl_out).unwrap();
        std::fs::write(ppl_out.join("summary.json"), "{}").unwrap();
        let eval_into_ppl =
            |cfg: &EvalConfig| flexlora::device::block_on(None, job::run(&dev, &model, &tok, &data_dir, &ppl_out, cfg, 1, &mut |_| {}));
        c.lib("pass@k eval into a perplexity directory", &[&root], || eval_into_ppl(&ecfg(true)), &["--out", "ppl-out"]);
        c.finish(19);
    } else {
        c.finish(13);
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// Item 1 and 10 of the issue: `--resume B` on a copy of run A writes only into B (A is untouched),
/// and leftover temporary checkpoint directories are removed when a run resumes.
#[test]
fn resume_writes_only_into_the_resumed_run_and_removes_leftovers() {
    let root = support::tmpdir("corrupt", "copy");
    let model_dir = good_model(&root.join("model"));
    let data = root.join("data.jsonl");
    write_data(&data);
    let a = root.join("A");
    let cfg = train_config(&model_dir, &data, &a);
    train(&cfg, None).unwrap();
    let b = root.join("B");
    copy_dir(&a, &b);
    std::fs::remove_dir_all(b.join("checkpoints/step-0000004")).unwrap();
    let leftover = b.join("checkpoints/.tmp-step-0000003-999999");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("adapter_model.safetensors"), b"half").unwrap();
    let before_a = snapshot(&[&a]);
    // The config still names A as `out` (as the checkpoint's settings do): the resume must not follow it.
    let tr = new_trainer(&cfg, Some(&b)).unwrap();
    assert_eq!(tr.cfg.out, b);
    assert_eq!(tr.session.step, 2);
    assert!(!leftover.exists(), "the leftover temporary checkpoint is still there");
    let summary = flexlora::device::block_on(None, run::run(tr, &mut |_| {})).unwrap();
    assert_eq!(summary.steps, 4);
    assert_eq!(snapshot(&[&a]), before_a, "resuming B changed files of A");
    assert!(b.join("checkpoints/step-0000004").join(checkpoint::FILE).exists());
    let metrics = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "{metrics}");
    // The resumed B ends where A ended: same data order, same updates.
    let (ta, tb) = (
        std::fs::read(a.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(b.join("adapter/adapter_model.safetensors")).unwrap(),
    );
    assert_eq!(ta, tb, "the resumed run differs from the uninterrupted one");
    // keep_checkpoints = 3 by default: the run keeps step 2 and step 4 only (it wrote two).
    assert_eq!(checkpoint::list(&b.join("checkpoints")).unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(&root);
}

/// Examples left without a target are skipped and counted, not trained on as loss 0.
#[test]
fn examples_without_targets_are_skipped_and_counted() {
    let root = support::tmpdir("corrupt", "targets");
    let model_dir = good_model(&root.join("model"));
    let data = root.join("mixed.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"abcdefghijklmnopqrstuvwxyz\", \"completion\": \"x\"}\n{\"prompt\": \"ab\", \"completion\": \"cd\"}\n",
    )
    .unwrap();
    let cfg = TrainConfig { max_len: 10, ..train_config(&model_dir, &data, &root.join("out")) };
    let mut tr = new_trainer(&cfg, None).unwrap();
    assert_eq!((tr.stats.examples, tr.stats.without_targets), (2, 1));
    let r = flexlora::device::block_on(None, tr.step()).unwrap();
    assert!(r.targets > 0 && r.loss > 0.0, "{r:?}");
    let _ = std::fs::remove_dir_all(&root);
}
