//! A small end-to-end `flexlora eval` run on a tiny random model: generation, the sandbox and
//! scoring produce well-formed result files, and a second run reuses the finished samples.

use crate::common::*;
use crate::formats::{tmpdir, write_hf};
use crate::forward::{random_weights, tiny_config};
use flexlora::eval::job::{self, EvalConfig, TaskSet};
use flexlora::model::{load, Arch, WeightFormat};

#[test]
fn tiny_model_eval_writes_well_formed_results_and_resumes() {
    let Some(data) = crate::support::data_dir("HumanEval.jsonl.gz") else { return };
    // Room for HumanEval's longest prompts.
    let cfg = flexlora::model::Config { max_pos: 1024, ..tiny_config(Arch::Llama) };
    let dir = tmpdir("eval");
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    write_hf(&model_dir, &cfg, &random_weights(&cfg, 31));
    let dev = cpu();
    let (model, tok) = load::open(&dev, &model_dir, WeightFormat::F32).unwrap();
    let ecfg = EvalConfig {
        model: model_dir.display().to_string(),
        task: TaskSet::Humaneval,
        limit: Some(2),
        ids: None,
        samples: 3,
        temperature: 0.8,
        top_p: 0.95,
        max_new_tokens: 6,
        seed: 1,
        flex_template: false,
        protocol: job::PROTOCOL,
        provenance: job::provenance(&model_dir, None).unwrap(),
    };
    let out = dir.join("out");
    let first = job::run(&dev, &model, &tok, &data, &out, &ecfg, 3, &mut |_| {}).unwrap();
    assert_eq!((first.summary.tasks, first.samples, first.reused_tasks), (2, 6, 0));
    // Random weights cannot solve HumanEval: every sample fails, with a reason.
    assert_eq!(first.passed, 0);
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = results.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    for l in &lines {
        assert!(l["task_id"].as_str().unwrap().starts_with("HumanEval/"));
        assert!(l["outcome"].as_str().is_some_and(|o| o != "passed") && !l["reason"].as_str().unwrap().is_empty(), "{l}");
    }
    assert_eq!(std::fs::read_to_string(out.join("samples.jsonl")).unwrap().lines().count(), 6);
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["report"]["summary"]["pass_at"][0]["k"], 1);
    assert_eq!(summary["report"]["summary"]["pass_at"][0]["value"], 0.0);
    // Same settings: nothing is generated again. Other settings: refused.
    let second = job::run(&dev, &model, &tok, &data, &out, &ecfg, 3, &mut |_| {}).unwrap();
    assert_eq!((second.reused_tasks, second.generated_tokens), (2, 0));
    let other = EvalConfig { samples: 4, ..ecfg };
    let err = job::run(&dev, &model, &tok, &data, &out, &other, 3, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("other settings"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
