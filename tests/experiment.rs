//! `flexlora experiment`: the statistics against hand-worked cases, specs that must be refused,
//! and the runner end to end on the real small model (SmolLM2-135M, one training step, two MBJP
//! tasks), resumed without redoing finished runs.

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};

use flexlora::eval::passk::pass_at_k;
use flexlora::experiment::{report, runner, spec, stats};
use flexlora::rng::Rng;

// ---------------------------------------------------------------------------------------------
// Statistics

#[test]
fn mcnemar_exact_matches_hand_worked_values() {
    // b = 10, c = 2: n = 12, P(X <= 2) = (C(12,0) + C(12,1) + C(12,2)) / 2^12 = (1 + 12 + 66) / 4096,
    // two-sided p = 2 * 79 / 4096 = 0.03857421875.
    let p = stats::mcnemar_exact(10, 2);
    assert!((p - 158.0 / 4096.0).abs() < 1e-12, "{p}");
    assert_eq!(stats::mcnemar_exact(2, 10), p, "symmetric in b and c");
    // b = 0, c = 6: 2 * (1/64).
    assert!((stats::mcnemar_exact(0, 6) - 2.0 / 64.0).abs() < 1e-12);
    // b = 3, c = 4: 2 * (1 + 7 + 21 + 35) / 128 = 1.0 (capped).
    assert_eq!(stats::mcnemar_exact(3, 4), 1.0);
    // b = 1, c = 7: 2 * (1 + 8) / 256 = 0.0703125.
    assert!((stats::mcnemar_exact(1, 7) - 18.0 / 256.0).abs() < 1e-12);
    assert_eq!(stats::mcnemar_exact(0, 0), 1.0, "no discordant pair: no evidence");
    // Hundreds of discordant pairs: finite, and near the normal approximation (z = 50/sqrt(550)
    // = 2.13, two-sided 0.033; the exact binomial test is a little more conservative).
    let big = stats::mcnemar_exact(300, 250);
    assert!(big > 0.03 && big < 0.045, "{big}");
    assert_eq!(stats::discordant(&[true, true, false, false, true], &[true, false, true, true, false]), (2, 2));
}

#[test]
fn pass_at_k_hand_worked() {
    // n = 10, c = 3, k = 5: 1 - C(7,5)/C(10,5) = 1 - 21/252.
    assert!((pass_at_k(10, 3, 5).unwrap() - (1.0 - 21.0 / 252.0)).abs() < 1e-12);
    assert_eq!(pass_at_k(1, 1, 1), Some(1.0));
    assert_eq!(pass_at_k(4, 1, 1), Some(0.25));
}

#[test]
fn paired_bootstrap_hand_worked_deterministic_and_covers() {
    // Every task gains exactly 1: every replicate's mean is 1.
    let all = vec![(vec![0.0; 5], vec![1.0; 5])];
    let i = stats::paired_bootstrap(&all, 1000, 3).unwrap();
    assert_eq!((i.diff, i.lo, i.hi), (1.0, 1.0, 1.0));
    // Two tasks with differences 0 and 1: a replicate's mean is 0, 1/2 or 1 with probabilities
    // 1/4, 1/2, 1/4, so the 2.5% and 97.5% quantiles are 0 and 1.
    let two = vec![(vec![0.0, 0.0], vec![0.0, 1.0])];
    let i = stats::paired_bootstrap(&two, 4000, 7).unwrap();
    assert_eq!((i.diff, i.lo, i.hi), (0.5, 0.0, 1.0));
    // Pooling over seeds averages each task over seeds first: seed 0 gains on task 0, seed 1 on
    // task 1, so every task's pooled difference is 1/2 and the interval collapses onto it.
    let seeds = vec![(vec![0.0, 0.0], vec![1.0, 0.0]), (vec![0.0, 0.0], vec![0.0, 1.0])];
    let i = stats::paired_bootstrap(&seeds, 500, 1).unwrap();
    assert_eq!((i.diff, i.lo, i.hi), (0.5, 0.5, 0.5));
    // Same inputs and seed: the same interval.
    let mut rng = Rng::new(11);
    let mut coin = |p: f64| if rng.uniform() < p { 1.0 } else { 0.0 };
    let data = vec![((0..80).map(|_| coin(0.3)).collect::<Vec<_>>(), (0..80).map(|_| coin(0.5)).collect::<Vec<_>>())];
    let a = stats::paired_bootstrap(&data, 2000, 5).unwrap();
    assert_eq!(a, stats::paired_bootstrap(&data, 2000, 5).unwrap());
    assert!(a.lo < a.diff && a.diff < a.hi);
    // Mismatched task counts or nothing to resample: no interval.
    assert!(stats::paired_bootstrap(&[(vec![0.0], vec![0.0, 1.0])], 100, 0).is_none());
    assert!(stats::paired_bootstrap(&[], 100, 0).is_none());

    // Coverage: tasks whose reference passes with probability 0.3 and arm with 0.45 (true
    // difference 0.15); the 95% interval should hold it in about 95% of experiments.
    let mut rng = Rng::new(2024);
    let (sims, tasks) = (300, 120);
    let mut covered = 0;
    for s in 0..sims {
        let (r, a): (Vec<f64>, Vec<f64>) =
            (0..tasks).map(|_| ((rng.uniform() < 0.3) as u8 as f64, (rng.uniform() < 0.45) as u8 as f64)).unzip();
        let i = stats::paired_bootstrap(&[(r, a)], 400, s).unwrap();
        covered += (i.lo <= 0.15 && 0.15 <= i.hi) as usize;
    }
    let rate = covered as f64 / sims as f64;
    assert!((0.90..=0.99).contains(&rate), "coverage {rate} of a nominal 95% interval");
}

// ---------------------------------------------------------------------------------------------
// Specs refused

const GOOD: &str = r#"
model = "m.gguf"
reference = "base"
[train]
steps = 1
[[eval]]
name = "java"
task = "mbjp"
ids = "11-510"
[[eval]]
name = "val"
task = "mbjp"
ids = "511-600"
role = "validation"
[[arm]]
name = "base"
kind = "base"
[[arm]]
name = "lora"
train = { flex = { mode = "off" } }
[[arm]]
name = "pub"
kind = "published"
same_as = "lora"
train = { flex = { mode = "published", lambda = 0.02 } }
"#;

fn parse(text: &str) -> Result<spec::Spec, String> {
    spec::parse(text, Path::new("spec.toml"), Path::new("out")).map_err(|e| e.to_string())
}

fn refused(text: &str, needles: &[&str]) {
    let err = parse(text).expect_err("the spec should be refused");
    for n in needles {
        assert!(err.contains(n), "error does not mention `{n}`: {err}");
    }
}

#[test]
fn good_spec_parses_into_complete_configs() {
    let s = parse(GOOD).unwrap();
    assert_eq!(s.arms.len(), 3);
    assert_eq!(s.out, PathBuf::from("out"));
    let lora = s.arm("lora").unwrap().train.as_ref().unwrap();
    assert_eq!((lora.steps, lora.model.clone()), (1, PathBuf::from("m.gguf")));
    assert_eq!(s.arm("base").unwrap().seeds, vec![0]);
    assert_eq!(s.eval("java").unwrap().config.ids.unwrap().to_string(), "11-510");
}

#[test]
fn spec_with_unknown_key_is_refused() {
    refused(&GOOD.replace("reference = \"base\"", "reference = \"base\"\nseedz = [1]"), &["seedz"]);
    refused(&GOOD.replace("kind = \"base\"", "kind = \"base\"\ncolour = 1"), &["colour"]);
    refused(&GOOD.replace("steps = 1", "steps = 1\nstepz = 2"), &["stepz"]);
    refused(&GOOD.replace("role = \"validation\"", "role = \"validation\"\nsplit = 1"), &["split"]);
    // Settings the runner owns.
    refused(&GOOD.replace("steps = 1", "steps = 1\nseed = 4"), &["train.seed"]);
}

#[test]
fn spec_with_missing_arm_is_refused() {
    refused(&GOOD.replace("reference = \"base\"", "reference = \"lora-adamw\""), &["reference", "lora-adamw", "base, lora, pub"]);
    refused(&GOOD.replace("same_as = \"lora\"", "same_as = \"plain\""), &["same_as", "plain"]);
    refused(&GOOD.replace("name = \"lora\"\n", "name = \"lora\"\nevals = [\"java\", \"python\"]\n"), &["python"]);
    // A published arm that is not identical to its twin by construction.
    refused(&GOOD.replace("lambda = 0.02 } }", "lambda = 0.02 }, lr = 1e-3 }"), &["pub", "lr"]);
    refused(&GOOD.replace("train = { flex = { mode = \"off\" } }", "train = { flex = { mode = \"train\" } }"), &["gradient"]);
}

#[test]
fn spec_with_test_set_overlapping_training_is_refused() {
    // MBJP without an id range holds the Java twins of MBPP's train split (601-974).
    refused(&GOOD.replace("ids = \"11-510\"\n", ""), &["eval `java`", "overlaps the training data", "lora", "601-974"]);
    refused(&GOOD.replace("ids = \"11-510\"", "ids = \"500-700\""), &["java", "500-700"]);
    // Training on the validation split while validating on it.
    refused(&GOOD.replace("steps = 1", "steps = 1\ndata = \"mbpp:validation\""), &["val", "511-600"]);
    // A test set that shares tasks with a validation set.
    refused(&GOOD.replace("ids = \"11-510\"", "ids = \"11-550\""), &["test set eval `java`", "validation set eval `val`"]);
    // Choosing λ on a test set.
    let select = GOOD.to_string()
        + "[[arm]]\nname = \"flex\"\ntrain = { flex = { mode = \"train\" } }\nselect = { arms = [\"lora\"], eval = \"java\" }\n";
    refused(&select, &["select.eval", "test set"]);
    assert!(parse(&select.replace("eval = \"java\" }", "eval = \"val\" }")).is_ok());
}

// ---------------------------------------------------------------------------------------------
// The runner, end to end

fn model_and_data() -> Option<(PathBuf, PathBuf)> {
    let model = std::env::var_os("FLEXLORA_MODEL_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    let data = std::env::var_os("FLEXLORA_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if model.exists() && data.join("mbjp_release_v1.2.jsonl").exists() {
        return Some((model, data));
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but the model or the datasets are missing");
    eprintln!(
        "\n*** skipped: {} or the datasets in {} not found — the experiment runner is NOT being tested ***\n",
        model.display(),
        data.display()
    );
    None
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).and_then(|m| m.modified()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn runner_runs_a_tiny_grid_and_resumes_without_redoing_finished_runs() {
    let Some((model, data)) = model_and_data() else { return };
    let dir = std::env::temp_dir().join(format!("flexlora-experiment-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        r#"
model = "{}"
data_dir = "{}"
out = "{}"
reference = "base"
bootstrap = 200
[train]
steps = 1
batch_size = 1
max_len = 48
mask_prompt = false
warmup_steps = 0
save_every = 0
val_every = 0 # the validation loss is tests/train_watch.rs's; here it would double the time
[[eval]]
name = "java"
task = "mbjp"
ids = "11-510"
limit = 2
max_new_tokens = 6
[[arm]]
name = "base"
kind = "base"
[[arm]]
name = "lora"
train = {{ flex = {{ mode = "off" }} }}
[[arm]]
name = "lora-published"
kind = "published"
same_as = "lora"
train = {{ flex = {{ mode = "published" }} }}
"#,
        model.display(),
        data.display(),
        dir.join("out").display()
    );
    let spec_path = dir.join("spec.toml");
    std::fs::write(&spec_path, &text).unwrap();
    let mut device = || Ok(flexlora::Device::cpu());

    let mut lines = Vec::new();
    // The report follows the grid: written after each finished run, not only at the end.
    let report_md = dir.join("out").join("report.md");
    let mut report_before_second = None;
    let (first, rep) = flexlora::device::block_on(
        None,
        flexlora::experiment::run(&spec_path, &mut device, &mut |l| {
            if l.starts_with("[2/3] lora seed 0: started") {
                report_before_second = Some(std::fs::read_to_string(&report_md).unwrap_or_default());
            }
            lines.push(l.to_string())
        }),
    )
    .unwrap();
    let early = report_before_second.expect("the second run started");
    assert!(early.contains("1 of 3 runs finished"), "report.md after the first run:\n{early}");
    assert_eq!(
        first.iter().map(|o| (o.arm.as_str(), o.skipped)).collect::<Vec<_>>(),
        [("base", false), ("lora", false), ("lora-published", false)]
    );
    assert!(lines.iter().any(|l| l.starts_with("[2/3] lora seed 0: done in") && l.contains("left")), "{lines:#?}");
    let spec = spec::load(&spec_path).unwrap();
    let runs = runner::finished(&spec).unwrap();
    assert_eq!(runs.len(), 3);
    // The id filter: MBJP's first two tasks of the test split, paired across arms.
    for r in &runs {
        let ids: Vec<&str> = r.evals[0].tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["MBJP/11", "MBJP/12"], "{}", r.arm);
    }
    let lora = &runs[1];
    // Each summary names the code that produced it, and the report lists it.
    assert_eq!(lora.flexlora, runner::build_id());
    assert!(lora.flexlora.starts_with("flexlora ") && lora.flexlora.ends_with(')'), "{}", lora.flexlora);
    // ... and the device's numerics: for the CPU, the SIMD tier its kernels ran.
    let numerics = flexlora::Device::cpu().numerics();
    assert!(numerics.starts_with("CPU ") && numerics.contains(&format!("{} kernels", flexlora::device::cpu::tier())), "{numerics}");
    assert!(runs.iter().all(|r| r.numerics == numerics), "{:?}", runs.iter().map(|r| &r.numerics).collect::<Vec<_>>());
    assert_eq!(lora.train.as_ref().unwrap().steps, 1);
    assert!(lora.train.as_ref().unwrap().first_loss.is_some_and(|l| l > 0.0 && l.is_finite()), "{:?}", lora.train);
    // The published arm is the LoRA run, recorded as such, not trained again.
    assert_eq!(runs[2].same_as.as_deref(), Some("lora/seed-0"));
    assert_eq!(runs[2].evals[0].tasks, lora.evals[0].tasks);
    assert!(!runner::run_dir(&spec, "lora-published", 0).join("train").exists());
    // Report: a comparison per non-reference arm, plots on disk.
    assert_eq!(rep.comparisons.len(), 2);
    assert_eq!(rep.comparisons[0].tasks, 2);
    for f in ["report.md", "pass1-java.svg", "loss.svg"] {
        assert!(spec.out.join(f).exists(), "{f} missing");
    }
    assert!(rep.markdown.contains("| java | lora | 2 x 1 |"), "{}", rep.markdown);
    let origin = format!("{} on {numerics}", runner::build_id());
    assert!(rep.markdown.contains(&format!("Code and device of the finished runs: {origin} (3 runs).")), "{}", rep.markdown);
    assert!(rep.comparisons.iter().all(|c| !c.mixed) && !rep.markdown.contains('†'), "{}", rep.markdown);
    // Evaluation reports its progress within a run.
    assert!(lines.iter().any(|l| l.contains("java: 0/2 tasks generated")), "{lines:#?}");

    // Second invocation: every run is finished and skipped; nothing is rewritten.
    let done: Vec<PathBuf> = runner::plan(&spec).iter().map(|(a, s)| runner::run_dir(&spec, &a.name, *s).join(runner::DONE)).collect();
    let adapter = runner::run_dir(&spec, "lora", 0).join("train/adapter/adapter_model.safetensors");
    let before: Vec<_> = done.iter().chain([&adapter]).map(|p| mtime(p)).collect();
    let mut lines = Vec::new();
    let (second, _) =
        flexlora::device::block_on(None, flexlora::experiment::run(&spec_path, &mut device, &mut |l| lines.push(l.to_string()))).unwrap();
    assert!(second.iter().all(|o| o.skipped), "{second:?}");
    assert_eq!(lines.iter().filter(|l| l.contains("finished earlier, skipped")).count(), 3, "{lines:#?}");
    assert_eq!(done.iter().chain([&adapter]).map(|p| mtime(p)).collect::<Vec<_>>(), before);

    // A run killed after training but before its summary: only that run is redone, training is
    // not repeated (its adapter is reused) and evaluation reuses its finished samples.
    std::fs::remove_file(&done[1]).unwrap();
    let mut lines = Vec::new();
    let (third, _) =
        flexlora::device::block_on(None, flexlora::experiment::run(&spec_path, &mut device, &mut |l| lines.push(l.to_string()))).unwrap();
    assert_eq!(third.iter().map(|o| o.skipped).collect::<Vec<_>>(), [true, false, true]);
    assert!(lines.iter().any(|l| l.contains("training finished earlier")), "{lines:#?}");
    assert_eq!(mtime(&adapter), before[3], "the adapter was rewritten");
    assert_eq!(runner::finished(&spec).unwrap()[1].evals[0].tasks, lora.evals[0].tasks);
    let rep = report::write(&spec).unwrap();
    // The validation loss: none logged here (val_every = 0), so no plot and a "-" cell; with two
    // validations in the run's metrics, the first and last with the last's perplexity, and a plot.
    assert!(rep.markdown.contains("| lora/seed-0 | 1 | ") && !spec.out.join("val.svg").exists(), "{}", rep.markdown);
    let metrics = runner::run_dir(&spec, "lora", 0).join("train/metrics.jsonl");
    let logged = std::fs::read_to_string(&metrics).unwrap();
    let vals = r#"{"step":1,"val_loss":0.5,"val_tokens":10,"val_examples":2,"seconds":1.0}
{"step":3,"val_loss":0.4,"val_tokens":10,"val_examples":2,"seconds":1.0}
"#;
    std::fs::write(&metrics, format!("{logged}{vals}")).unwrap();
    let rep = report::write(&spec).unwrap();
    assert!(rep.markdown.contains("| 0.5000 (step 1) → 0.4000 (step 3; 1.492) |"), "{}", rep.markdown);
    assert!(std::fs::read_to_string(spec.out.join("val.svg")).unwrap().contains("lora/seed-0"));
    std::fs::write(&metrics, logged).unwrap();

    // An unfinished run started by another build, or by this build on a device that rounds
    // otherwise, is refused, not continued, and nothing in it changes; finished runs are not
    // checked (report.md lists where the finished runs came from).
    let marker = runner::run_dir(&spec, "lora", 0).join(runner::BUILD);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), format!("{}\n{numerics}", runner::build_id()));
    std::fs::rename(&done[1], dir.join("lora-summary.json")).unwrap();
    let other_device = format!("{}\nCPU x86_64, portable kernels, avx2 CPU, built for avx2", runner::build_id());
    for (was, named) in [
        (format!("flexlora 0.0.1 (0123456789ab)\n{numerics}"), format!("started by flexlora 0.0.1 (0123456789ab) on {numerics}")),
        (other_device, "on CPU x86_64, portable kernels, avx2 CPU, built for avx2, and this is".into()),
    ] {
        std::fs::write(&marker, was).unwrap();
        let Err(err) = flexlora::device::block_on(None, flexlora::experiment::run(&spec_path, &mut device, &mut |_| {})) else {
            panic!("a run started by another build or device was continued")
        };
        let err = err.to_string();
        for needle in [marker.display().to_string(), named, origin.clone(), "delete".into()] {
            assert!(err.contains(&needle), "{needle:?} not in: {err}");
        }
        assert!(!done[1].exists() && mtime(&adapter) == before[3], "the refused run was touched");
    }
    std::fs::rename(dir.join("lora-summary.json"), &done[1]).unwrap();

    // `--report-only`: the report from the finished runs, nothing run.
    std::fs::remove_file(spec.out.join("report.md")).unwrap();
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_flexlora")).args(["experiment", "--report-only"]).arg(&spec_path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("| java | lora | 2 x 1 |"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(std::fs::read_to_string(spec.out.join("report.md")).unwrap().contains("3 of 3 runs finished"));
    assert_eq!(mtime(&adapter), before[3], "--report-only trained nothing");

    // With a trained reference, the report also compares every trained arm with the untrained
    // base arm, in a section of its own; `comparisons` stays the reference's.
    std::fs::write(&spec_path, text.replace(r#"reference = "base""#, r#"reference = "lora""#)).unwrap();
    let spec = spec::load(&spec_path).unwrap();
    let rep = report::write(&spec).unwrap();
    let (vs_lora, vs_base) =
        rep.markdown.split_once("## Paired comparisons with `base` (the model before training)").expect("no section for base");
    assert!(vs_lora.contains("| java | base | 2 x 1 |") && vs_lora.contains("| java | lora-published | 2 x 1 |"), "{vs_lora}");
    assert!(vs_base.contains("| java | lora | 2 x 1 |") && vs_base.contains("| java | lora-published | 2 x 1 |"), "{vs_base}");
    assert!(!vs_base.contains("| java | base |"), "{vs_base}");
    // The published arm's completions are the reference's own: every one the same text.
    let published = rep.comparisons.iter().find(|c| c.arm == "lora-published").unwrap();
    assert_eq!(published.identical, Some(2));
    assert!(vs_lora.lines().any(|l| l.starts_with("| java | lora-published | 2 x 1 |") && l.ends_with("| 2/2 |")), "{vs_lora}");
    assert_eq!(rep.comparisons.iter().map(|c| c.arm.as_str()).collect::<Vec<_>>(), ["base", "lora-published"]);
    // The reference argument is the one paired against: with `lora` made to solve one task more
    // than it did, each direction sees its own sign.
    let mut runs = runner::finished(&spec).unwrap();
    let lora = runs.iter_mut().find(|r| r.arm == "lora").unwrap();
    let task = lora.evals[0].tasks.iter_mut().find(|t| !t.first).expect("tiny runs solve little");
    (task.c, task.first) = (task.n, true);
    let there = report::compare(&spec, &runs, "lora", "base", "java").unwrap();
    let back = report::compare(&spec, &runs, "base", "lora", "java").unwrap();
    assert_eq!((there.reference_pass1, there.arm_pass1), (back.arm_pass1, back.reference_pass1));
    assert!(back.interval.diff > 0.0 && there.interval.diff == -back.interval.diff, "{there:?} {back:?}");
    assert_eq!(there.identical, back.identical);
    assert_eq!((back.mcnemar[0].b, back.mcnemar[0].c), (there.mcnemar[0].c, there.mcnemar[0].b));
    assert!(!back.mixed);
    assert_eq!((back.mcnemar[0].seed, back.mcnemar[0].reference_seed), (0, 0));
    // With a second `lora` seed, the base model's one run is paired with each `lora` run, and
    // `lora` seed 1 with the base's only run, each pair naming both seeds.
    let mut two = runner::finished(&spec).unwrap();
    let mut seed1 = two.iter().find(|r| r.arm == "lora").unwrap().clone();
    seed1.seed = 1;
    two.push(seed1);
    let base_vs_both = report::compare(&spec, &two, "lora", "base", "java").unwrap();
    assert_eq!(base_vs_both.mcnemar.iter().map(|t| (t.seed, t.reference_seed)).collect::<Vec<_>>(), [(0, 0), (0, 1)]);
    assert_eq!(base_vs_both.seeds, 2);
    let both_vs_base = report::compare(&spec, &two, "base", "lora", "java").unwrap();
    assert_eq!(both_vs_base.mcnemar.iter().map(|t| (t.seed, t.reference_seed)).collect::<Vec<_>>(), [(0, 0), (1, 0)]);
    // A pair whose runs came from two builds, or two devices, is marked in the table.
    for (build, numerics) in [("flexlora 0.0.1 (0123456789ab)", None), ("", Some("GPU Vulkan llvmpipe"))] {
        let mut runs = runner::finished(&spec).unwrap();
        let lora = runs.iter_mut().find(|r| r.arm == "lora").unwrap();
        if !build.is_empty() {
            lora.flexlora = build.into();
        }
        if let Some(n) = numerics {
            lora.numerics = n.into();
        }
        assert!(report::compare(&spec, &runs, "base", "lora", "java").unwrap().mixed);
        let path = runner::run_dir(&spec, "lora", 0).join(runner::DONE);
        let kept = std::fs::read_to_string(&path).unwrap();
        let edited = runs.iter().find(|r| r.arm == "lora").unwrap();
        std::fs::write(&path, serde_json::to_string(edited).unwrap()).unwrap();
        let md = report::write(&spec).unwrap().markdown;
        std::fs::write(&path, kept).unwrap();
        assert!(
            md.contains("| java | base † | 2 x 1 |") && md.contains("† Some pair's two runs come from different builds or devices"),
            "{md}"
        );
        assert!(md.contains(" (2 runs); ") && md.contains(" (1 run)"), "{md}");
    }

    // `--rescore`: saved completions executed again with the current stop rule. The `lora` run's
    // first completion becomes MBJP/11's solution with a blank ending every line, then the class
    // closed and prose, as a model trained on MBPP writes it: generation before the trailing-blank
    // stop rule kept all of it (javac fails on the prose); cut now, it passes.
    let tasks = flexlora::eval::tasks::load_mbjp(&data).unwrap();
    let t11 = tasks.iter().find(|t| t.id == "MBJP/11").unwrap();
    let solution = flexlora::eval::tasks::truncate_at_stop(t11.canonical_solution.as_deref().unwrap(), &t11.stop);
    let long = format!("{}\n    }} \n}}\n```\n\nThis code removes the first and last occurrence.", solution.replace('\n', " \n"));
    assert!(!long.contains("\n    }\n"), "the old stop rule must not cut it");
    let samples = runner::run_dir(&spec, "lora", 0).join("eval/java/samples.jsonl");
    let saved = std::fs::read_to_string(&samples).unwrap();
    let mut lines: Vec<serde_json::Value> = saved.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let line = lines.iter_mut().find(|v| v["task_id"] == "MBJP/11").unwrap();
    line["completion"] = long.clone().into();
    let edited: String = lines.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&samples, &edited).unwrap();
    let results = runner::run_dir(&spec, "lora", 0).join("eval/java/results.jsonl");
    let line_of = |id: &str| std::fs::read_to_string(&results).unwrap().lines().find(|l| l.contains(id)).unwrap().to_string();
    let untouched = line_of("\"MBJP/12\"");
    let mut said = Vec::new();
    let changes = flexlora::experiment::rescore::rescore(&spec, &mut |l| said.push(l.to_string())).unwrap();
    assert_eq!(line_of("\"MBJP/12\""), untouched, "an unchanged completion's result line is kept byte for byte");
    let c = changes.iter().find(|c| c.run == "lora/seed-0").unwrap();
    assert_eq!((c.recut, c.executed, c.tasks, c.passed_after), (1, 1, 2, c.passed_before + 1), "{said:#?}");
    assert!(changes.iter().all(|c| c.run != "lora-published/seed-0"), "a published run is not scored on its own");
    let runs = runner::finished(&spec).unwrap();
    let lora = runs.iter().find(|r| r.arm == "lora").unwrap();
    assert!(lora.evals[0].tasks.iter().any(|t| t.id == "MBJP/11" && t.first && t.c == 1), "{:?}", lora.evals[0]);
    assert_eq!(lora.rescored_by.as_deref(), Some(runner::build_id().as_str()));
    let published = runs.iter().find(|r| r.arm == "lora-published").unwrap();
    assert_eq!(published.evals[0].tasks, lora.evals[0].tasks, "the published run follows the run it reuses");
    // MBJP/11's completion now differs from the base model's six tokens; the published run's
    // completions are still `lora`'s.
    let base_vs_lora = report::compare(&spec, &runs, "lora", "base", "java").unwrap().identical.unwrap();
    assert!(base_vs_lora <= 1, "{base_vs_lora}");
    assert_eq!(report::compare(&spec, &runs, "lora", "lora-published", "java").unwrap().identical, Some(2));
    let eval_summary_path = runner::run_dir(&spec, "lora", 0).join("eval/java/summary.json");
    let executed = || {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&eval_summary_path).unwrap()).unwrap();
        assert_eq!(v["report"]["rescored_by"], runner::build_id().as_str(), "{v}");
        v["report"]["rescore_executed"].as_u64().unwrap()
    };
    // Only the changed completion ran again; the other task kept its verdict.
    assert_eq!(executed(), 1);
    // The samples stay as generated; a second rescoring changes nothing.
    assert_eq!(std::fs::read_to_string(&samples).unwrap(), edited);
    let again = flexlora::experiment::rescore::rescore(&spec, &mut |_| {}).unwrap();
    let c2 = again.iter().find(|c| c.run == "lora/seed-0").unwrap();
    assert_eq!((c2.recut, c2.passed_before, c2.passed_after), (1, c.passed_after, c.passed_after));
    assert_eq!(c2.executed, 0, "the second rescoring executed what it had already executed");
    assert_eq!(executed(), 1, "the second rescoring rewrote the first one's record");
    assert!(report::write(&spec).unwrap().markdown.contains("the changed ones executed (`--rescore`) by: "));

    // Sophia with and without FLeX: the report pairs them in a section of their own (the runs
    // here are `lora`'s copied under their names: the pairing, not the training, is under test).
    std::fs::write(&spec_path, format!("{}{SOPHIA_ARMS}", text.replace(r#"reference = "base""#, r#"reference = "lora""#))).unwrap();
    let spec = spec::load(&spec_path).unwrap();
    for arm in ["sophia", "sophia-flex"] {
        support::copy_dir(&runner::run_dir(&spec, "lora", 0), &runner::run_dir(&spec, arm, 0));
        let path = runner::run_dir(&spec, arm, 0).join(runner::DONE);
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["arm"] = arm.into();
        std::fs::write(&path, v.to_string()).unwrap();
    }
    let md = report::write(&spec).unwrap().markdown;
    let (_, section) = md.split_once("## FLeX against the same training without it").unwrap_or_else(|| panic!("{md}"));
    let section = section.split("\n## ").next().unwrap();
    assert!(section.contains("`sophia-flex` against `sophia`:"), "{section}");
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| java |")).collect();
    assert_eq!(rows.len(), 1, "{section}");
    assert!(rows[0].starts_with("| java | sophia-flex | 2 x 1 |") && rows[0].ends_with("| 2/2 |"), "{section}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SophiaG without and with FLeX: a pair the report compares.
const SOPHIA_ARMS: &str = r#"
[[arm]]
name = "sophia"
train = { optimizer = "sophia", flex = { mode = "off" } }
[[arm]]
name = "sophia-flex"
train = { optimizer = "sophia", flex = { mode = "train", lambda = 1e-4 } }
"#;

#[test]
fn flex_arms_are_paired_with_the_same_training_without_flex() {
    let extra = r#"
[[arm]]
name = "flex"
train = { flex = { mode = "train", lambda = 1e-3 } }
[[arm]]
name = "sophia-flex-r16"
train = { optimizer = "sophia", lora = { rank = 16 }, flex = { mode = "train" } }
"#;
    let s = parse(&format!("{GOOD}{extra}{SOPHIA_ARMS}")).unwrap();
    let pairs = report::flex_pairs(&s);
    let names: Vec<(&str, &str)> = pairs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    // Not `pub` (published mode is not off) and not the rank-16 arm (no arm without FLeX at rank 16).
    assert_eq!(names, [("flex", "lora"), ("sophia-flex", "sophia")]);
}

#[test]
fn committed_specs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for f in ["experiments/main-job.toml", "experiments/flex-qwen/spec.toml"] {
        let s = spec::load(&root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(s.model.ends_with("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"), "{f}");
    }
    let grid = spec::load(&root.join("experiments/flex-qwen/spec.toml")).unwrap();
    // At least 3 seeds for LoRA and LoRA + FLeX, the λ sweep chosen on validation data.
    assert!(grid.arm("lora").unwrap().seeds.len() >= 3 && grid.arm("flex").unwrap().seeds.len() >= 3);
    let sel = grid.arm("flex").unwrap().select.as_ref().unwrap();
    assert_eq!(grid.eval(&sel.eval).unwrap().role, spec::Role::Validation);
    // λ = 0 is the reference itself: choosing it would train `lora` again under another name.
    assert!(!sel.arms.contains(&grid.reference), "{:?}", sel.arms);
    // FLeX is compared with the same training without it for both optimizers.
    let pairs = report::flex_pairs(&grid);
    for pair in [("flex", "lora"), ("sophia-flex", "sophia")] {
        assert!(pairs.iter().any(|(a, b)| (a.as_str(), b.as_str()) == pair), "{pairs:?}");
    }
}
