//! The training loop end to end on a tiny random model written to disk: the loss goes down while
//! the NF4 base stays bit-identical; a run killed with SIGKILL and resumed gives the same loss
//! sequence as an uninterrupted run; damaged or mismatched checkpoints are refused clearly.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::formats::{tmpdir, write_hf};
use crate::forward::{random_weights, tiny_config};
use flexlora::model::{Arch, Weight};
use flexlora::train::config::{OptimizerKind, TrainConfig};
use flexlora::train::run::{self, Trainer};
use flexlora::Device;

/// A tiny model directory (NF4-friendly widths) and a JSONL file of prompt/completion pairs.
pub fn fixture(tag: &str) -> (PathBuf, PathBuf) {
    let dir = tmpdir(tag);
    let mut cfg = tiny_config(Arch::Llama);
    cfg.f = 48;
    write_hf(&dir, &cfg, &random_weights(&cfg, 21));
    let data = dir.join("data.jsonl");
    let lines: Vec<String> = (0..6)
        .map(|i| {
            let p = ["def add", "def sub", "def mul", "print x", "return y", "class A"][i];
            format!(r#"{{"prompt": "{p} ", "completion": "abc {} xyz"}}"#, "q".repeat(i + 1))
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    (dir, data)
}

pub fn config(model: &Path, data: &Path, out: &Path) -> TrainConfig {
    let mut c = TrainConfig {
        model: model.to_path_buf(),
        data: data.display().to_string(),
        out: out.to_path_buf(),
        batch_size: 2,
        steps: 12,
        lr: 1e-2,
        warmup_steps: 2,
        save_every: 4,
        seed: 3,
        ..Default::default()
    };
    c.lora.rank = 4;
    c.lora.dropout = 0.1;
    c
}

fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect()
}

fn packed_bases(model: &flexlora::model::Model) -> Vec<u32> {
    let mut out = Vec::new();
    for l in &model.layers {
        for lin in l.linears() {
            match &lin.weight {
                Weight::Nf4(q) => out.extend_from_slice(q.packed.host_u32("test").unwrap()),
                Weight::F32(_) | Weight::Gguf(_) => panic!("expected NF4 base weights (a Hugging Face directory loads as NF4)"),
            }
        }
    }
    out
}

#[test]
fn training_lowers_the_loss_and_leaves_the_nf4_base_untouched() {
    let (dir, data) = fixture("lower");
    for optimizer in [OptimizerKind::Adamw, OptimizerKind::Sophia] {
        let out = dir.join(format!("run-{optimizer:?}"));
        let mut cfg = config(&dir, &data, &out);
        cfg.optimizer = optimizer;
        cfg.steps = 30;
        cfg.hessian_every = 2;
        if optimizer == OptimizerKind::Sophia {
            cfg.lr = 2e-2;
        }
        let dev = Device::cpu();
        let (model, tok) = run::load_model(&dev, &cfg).unwrap();
        let before = packed_bases(&model);
        let mut tr = Trainer::new(dev, model, &tok, cfg, None).unwrap();
        let mut seen = Vec::new();
        while !tr.done() {
            seen.push(flexlora::device::block_on(None, tr.step()).unwrap().loss);
        }
        assert_eq!(packed_bases(&tr.model), before, "{optimizer:?}: the frozen NF4 base changed");
        let (first, last) = (seen[..3].iter().sum::<f64>() / 3.0, seen[seen.len() - 3..].iter().sum::<f64>() / 3.0);
        assert!(last < 0.7 * first, "{optimizer:?}: loss {first:.4} -> {last:.4} ({seen:?})");
    }
}

#[test]
fn killed_run_resumes_to_the_same_loss_sequence() {
    let (dir, data) = fixture("resume");
    let bin = env!("CARGO_BIN_EXE_flexlora");
    let run = |out: &Path, extra: &[&str]| {
        let mut cmd = Command::new(bin);
        cmd.args(["train", "--device", "cpu", "--model"]).arg(&dir).arg("--data").arg(&data).arg("--out").arg(out);
        cmd.args(["--steps", "150", "--batch-size", "2", "--lr", "0.01", "--save-every", "1", "--lora-rank", "4", "--seed", "3"]);
        cmd.args(["--lora-targets", "down_proj,q_proj,gate_proj"]); // any order resumes
        cmd.args(extra);
        cmd
    };
    let full = dir.join("full");
    assert!(run(&full, &[]).output().unwrap().status.success());
    let want = losses(&full);
    assert_eq!(want.len(), 150);

    let cut = dir.join("cut");
    let mut child = run(&cut, &[]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let ckpts = cut.join("checkpoints");
    let t0 = std::time::Instant::now();
    while !ckpts.join("step-0000005").exists() {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = losses(&cut).len();
    assert!(partial < 150, "the run finished before it could be killed");
    let out = run(&cut, &["--resume"]).arg(&cut).output().unwrap();
    assert!(out.status.success(), "resume failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resumed from"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(losses(&cut), want, "killed after {partial} steps; the resumed loss sequence differs");
    assert!(cut.join("adapter/adapter_model.safetensors").exists() && cut.join("loss.svg").exists());
}

#[test]
fn damaged_or_mismatched_checkpoints_are_refused() {
    let (dir, data) = fixture("damaged");
    let out = dir.join("run");
    let dev = Device::cpu();
    let cfg = config(&dir, &data, &out);
    let (model, tok) = run::load_model(&dev, &cfg).unwrap();
    let tr = Trainer::new(Device::cpu(), model, &tok, cfg.clone(), None).unwrap();
    let ckpt = flexlora::device::block_on(None, tr.save()).unwrap();
    let err = |cfg: &TrainConfig, model_dir: &Path| -> String {
        let mut c = cfg.clone();
        c.model = model_dir.to_path_buf();
        let (model, tok) = run::load_model(&dev, &c).unwrap();
        match Trainer::new(Device::cpu(), model, &tok, c, Some(&out)) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    assert_eq!(err(&cfg, &dir), "", "an intact checkpoint must resume");

    // Another model (different width).
    let other = tmpdir("damaged-other");
    let mut ocfg = tiny_config(Arch::Llama);
    ocfg.f = 56;
    write_hf(&other, &ocfg, &random_weights(&ocfg, 1));
    let e = err(&cfg, &other);
    assert!(e.contains("model of shape") && e.contains("--model"), "{e}");

    // A different rank written into the checkpoint's adapter config.
    let file = ckpt.join(flexlora::train::checkpoint::FILE);
    let bytes = std::fs::read(&file).unwrap();
    let mut saved = flexlora::train::state::Checkpoint::decode("t", &bytes).unwrap();
    saved.lora.rank = 8;
    std::fs::write(&file, saved.encode().unwrap()).unwrap();
    let e = err(&cfg, &dir);
    assert!(e.contains("lora_A.weight") && e.contains("rank 8") && e.contains("checkpoint.safetensors"), "{e}");

    // A truncated checkpoint.
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(&cfg, &dir);
    assert!(e.contains("checkpoint.safetensors") && e.contains("truncated"), "{e}");
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(err(&cfg, &dir), "");
}

/// A loss that turns NaN/inf stops the run with a message naming the step and the last good
/// checkpoint, and that checkpoint stays intact.
#[test]
fn diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let (dir, data) = fixture("nan");
    let out = dir.join("run");
    let mut cfg = config(&dir, &data, &out);
    cfg.save_every = 1;
    cfg.clip = 0.0;
    cfg.warmup_steps = 0;
    cfg.schedule = flexlora::train::config::Schedule::Constant;
    let dev = Device::cpu();
    let (model, tok) = run::load_model(&dev, &cfg).unwrap();
    let mut tr = Trainer::new(dev, model, &tok, cfg, None).unwrap();
    flexlora::device::block_on(None, tr.step()).unwrap();
    let good = flexlora::device::block_on(None, tr.save()).unwrap();
    // An absurd learning rate from here on makes the adapter overflow within a few steps.
    tr.cfg.lr = 1e30;
    let err =
        (0..20).find_map(|_| flexlora::device::block_on(None, tr.step()).err()).expect("the loss never became non-finite").to_string();
    assert!(err.contains("training stopped at step") && err.contains(&good.display().to_string()), "{err}");
    let state = flexlora::train::checkpoint::load_state(&good).unwrap();
    assert_eq!(state.step, 1);
    assert!(flexlora::train::checkpoint::resolve(&out).unwrap() == good);
}

/// `--config FILE.toml` holds any setting; unknown keys are refused with the file named.
#[test]
fn toml_config_round_trips_and_rejects_unknown_keys() {
    let dir = tmpdir("toml");
    let path = dir.join("run.toml");
    std::fs::write(
        &path,
        "steps = 7\nlr = 0.001\noptimizer = \"sophia\"\n[lora]\nrank = 4\ntargets = [\"q_proj\", \"down_proj\"]\n[flex]\nmode = \"published\"\nlambda = 0.5\n",
    )
    .unwrap();
    let c = TrainConfig::from_toml(&path).unwrap();
    assert_eq!((c.steps, c.lr, c.optimizer, c.lora.rank), (7, 1e-3, OptimizerKind::Sophia, 4));
    assert_eq!(c.lora.targets, vec![flexlora::model::Target::Q, flexlora::model::Target::Down]);
    assert_eq!((c.flex.mode, c.flex.lambda), (flexlora::train::config::FlexMode::Published, 0.5));
    assert_eq!(c.max_len, TrainConfig::default().max_len, "unset keys keep their defaults");
    let again: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
    assert_eq!(again, c);
    std::fs::write(&path, "steps = 7\nlearning_rate = 0.1\n").unwrap();
    let e = TrainConfig::from_toml(&path).unwrap_err().to_string();
    assert!(e.contains("run.toml") && e.contains("learning_rate"), "{e}");
}

/// Queuing steps and reading their numbers back once per interval (what `run` does on a GPU)
/// reports the same steps and leaves the same adapter as reading back after every step; and when a
/// queued step turns non-finite, the read-back stops at it and neither it nor the steps queued
/// after it changed the adapter.
#[test]
fn steps_read_back_per_interval_match_steps_read_one_by_one() {
    use flexlora::device::block_on;
    let (dir, data) = fixture("interval");
    let mut cfg = config(&dir, &data, &dir.join("run"));
    cfg.steps = 7;
    let adapter =
        |tr: &Trainer| -> Vec<Vec<f32>> { tr.model.lora_params().into_iter().map(|(_, t)| t.host_f32("test").unwrap().to_vec()).collect() };
    let new = |cfg: &flexlora::train::config::TrainConfig| {
        let dev = Device::cpu();
        let (model, tok) = run::load_model(&dev, cfg).unwrap();
        Trainer::new(dev, model, &tok, cfg.clone(), None).unwrap()
    };
    let mut one = new(&cfg);
    let each: Vec<_> = (0..7).map(|_| block_on(None, one.step()).unwrap()).collect();
    let mut batched = new(&cfg);
    batched.session.set_readback_every(&Device::cpu(), 3).unwrap();
    let mut reports = Vec::new();
    while !batched.done() {
        batched.queue().unwrap();
        if batched.session.queued() == 3 || batched.done() {
            let f = block_on(None, batched.flush()).unwrap();
            assert!(f.error.is_none());
            reports.extend(f.reports);
        }
    }
    let key = |r: &run::StepReport| (r.step, r.loss.to_bits(), r.grad_norm.to_bits(), r.tokens, r.targets);
    assert_eq!(reports.iter().map(key).collect::<Vec<_>>(), each.iter().map(key).collect::<Vec<_>>());
    assert_eq!(adapter(&batched), adapter(&one));

    // Divergence inside an interval: queue steps at an absurd learning rate, then read back.
    let mut cfg = cfg;
    cfg.steps = 40;
    cfg.clip = 0.0;
    cfg.warmup_steps = 0;
    cfg.schedule = flexlora::train::config::Schedule::Constant;
    let mut tr = new(&cfg);
    block_on(None, tr.step()).unwrap();
    tr.cfg.lr = 1e30;
    tr.session.set_readback_every(&Device::cpu(), 20).unwrap();
    for _ in 0..20 {
        tr.queue().unwrap();
    }
    let f = block_on(None, tr.flush()).unwrap();
    let err = f.error.expect("the loss never became non-finite in 20 steps at lr 1e30").to_string();
    let good = f.reports.len();
    assert!(good < 20 && err.contains(&format!("at step {}:", good + 2)), "{good} good steps, then: {err}");
    // The same run stepped one by one up to the last good step has the same adapter.
    let mut again = new(&cfg);
    block_on(None, again.step()).unwrap();
    again.cfg.lr = 1e30;
    for _ in 0..good {
        block_on(None, again.step()).unwrap();
    }
    assert_eq!(adapter(&tr), adapter(&again), "the failed step or a later one changed the adapter");
}
