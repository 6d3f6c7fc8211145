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
        task_file: None,
        shard: None,
    };
    let out = dir.join("out");
    let first = flexlora::device::block_on(None, job::run(&dev, &model, &tok, &data, &out, &ecfg, 3, &mut |_| {})).unwrap();
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
    let second = flexlora::device::block_on(None, job::run(&dev, &model, &tok, &data, &out, &ecfg, 3, &mut |_| {})).unwrap();
    assert_eq!((second.reused_tasks, second.generated_tokens), (2, 0));
    let other = EvalConfig { samples: 4, ..ecfg };
    let err = flexlora::device::block_on(None, job::run(&dev, &model, &tok, &data, &out, &other, 3, &mut |_| {})).unwrap_err().to_string();
    assert!(err.contains("other settings"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--shard K/N` + `eval merge` equal a one-machine run: the same samples and results in the same
/// order, the same summary. Sampled (temperature 0.8, 2 samples), so each task's seed matters.
#[test]
fn shards_merged_equal_one_machine_run() {
    use flexlora::eval::shard::{merge, Shard};
    let Some(data) = crate::support::data_dir("HumanEval.jsonl.gz") else { return };
    let cfg = flexlora::model::Config { max_pos: 1024, ..tiny_config(Arch::Llama) };
    let dir = tmpdir("eval-shards");
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    write_hf(&model_dir, &cfg, &random_weights(&cfg, 32));
    let dev = cpu();
    let (model, tok) = load::open(&dev, &model_dir, WeightFormat::F32).unwrap();
    let one = EvalConfig {
        model: model_dir.display().to_string(),
        task: TaskSet::Humaneval,
        limit: Some(5),
        ids: None,
        samples: 2,
        temperature: 0.8,
        top_p: 0.95,
        max_new_tokens: 5,
        seed: 3,
        flex_template: false,
        protocol: job::PROTOCOL,
        provenance: job::provenance(&model_dir, None).unwrap(),
        task_file: None,
        shard: None,
    };
    flexlora::device::block_on(None, job::run(&dev, &model, &tok, &data, &dir.join("one"), &one, 4, &mut |_| {})).unwrap();
    let mut shard_dirs = Vec::new();
    for index in [2, 1, 3] {
        let d = dir.join(format!("shard{index}"));
        let shard = Some(Shard { index, count: 3 });
        let r =
            flexlora::device::block_on(None, job::run(&dev, &model, &tok, &data, &d, &EvalConfig { shard, ..one.clone() }, 4, &mut |_| {}))
                .unwrap();
        assert_eq!(r.summary.tasks, Shard { index, count: 3 }.range(5).len());
        shard_dirs.push(d);
    }
    // Incomplete or mixed sets of shards are refused.
    let err = merge(&shard_dirs[..2], &dir.join("partial")).unwrap_err().to_string();
    assert!(err.contains("missing") && err.contains("3/3"), "{err}");
    let dup = [shard_dirs[0].clone(), shard_dirs[0].clone(), shard_dirs[1].clone()];
    assert!(merge(&dup, &dir.join("dup")).unwrap_err().to_string().contains("both shard"));
    let merged = merge(&shard_dirs, &dir.join("merged")).unwrap();
    assert_eq!((merged.shards, merged.tasks, merged.samples), (3, 5, 10));

    let read = |d: &str, f: &str| std::fs::read_to_string(dir.join(d).join(f)).unwrap();
    let json = |d: &str, f: &str| -> serde_json::Value { serde_json::from_str(&read(d, f)).unwrap() };
    let results = |d: &str| -> Vec<serde_json::Value> {
        read(d, "results.jsonl")
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("duration_ms");
                v
            })
            .collect()
    };
    assert_eq!(read("merged", "samples.jsonl"), read("one", "samples.jsonl"));
    assert_eq!(results("merged"), results("one"));
    assert_eq!(json("merged", "config.json"), json("one", "config.json"));
    let (m, o) = (json("merged", "summary.json"), json("one", "summary.json"));
    assert_eq!(m["config"], o["config"]);
    assert_eq!(m["report"]["summary"], o["report"]["summary"]);
    assert_eq!((&m["report"]["passed"], &m["report"]["samples"]), (&o["report"]["passed"], &o["report"]["samples"]));
    assert_eq!(m["report"]["generated_tokens"], o["report"]["generated_tokens"]);
    // Shards of another evaluation do not mix in.
    let other = dir.join("other3");
    flexlora::device::block_on(
        None,
        job::run(
            &dev,
            &model,
            &tok,
            &data,
            &other,
            &EvalConfig { seed: 4, shard: Some(Shard { index: 3, count: 3 }), ..one.clone() },
            4,
            &mut |_| {},
        ),
    )
    .unwrap();
    let err = merge(&[shard_dirs[0].clone(), shard_dirs[1].clone(), other], &dir.join("mixed")).unwrap_err().to_string();
    assert!(err.contains("different evaluations") && err.contains("seed"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
