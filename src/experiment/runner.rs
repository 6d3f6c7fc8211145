//! Runs an experiment: every (arm, seed) in spec order, each in its own directory
//! `OUT/<arm>/seed-<s>/` holding `train/` (a `flexlora train` output directory), `eval/<set>/` (a
//! `flexlora eval` output directory per evaluation set) and, last, `summary.json`: the run's done
//! marker. A run with a summary is skipped; a run without one continues where it stopped
//! (training from its last checkpoint, evaluation from its finished samples). Training and
//! evaluation are the library's (`train::run`, `eval::job`), not subprocesses.
//!
//! A `published` arm is not trained: the spec checked that its settings differ from its `same_as`
//! arm only in a penalty that never reaches the gradient, so its runs are that arm's, recorded
//! with `same_as` set.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::spec::{Arm, ArmKind, Spec};
use crate::device::Device;
use crate::error::{io_at, Error, Result};
use crate::eval::job;
use crate::model::load;
use crate::train::config::FlexMode;
use crate::train::run::{self as train_run, Event, Trainer};

/// The file that marks a finished run.
pub const DONE: &str = "summary.json";

/// The file that names the build (`build_id`) and the device numerics (`Device::numerics`) a run
/// was started by, one per line: a run continues only under both, so its training and evaluation
/// never mix two builds' or two devices' rounding.
pub const BUILD: &str = "build.txt";

/// One task's outcome in one run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskOutcome {
    pub id: String,
    /// Samples drawn and passed.
    pub n: usize,
    pub c: usize,
    /// Whether the first sample passed: the binary outcome McNemar pairs.
    pub first: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalResult {
    pub name: String,
    pub tasks: Vec<TaskOutcome>,
    pub pass1: f64,
    pub pass1_ci95: (f64, f64),
    pub generation_secs: f64,
    pub execution_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainResult {
    pub steps: usize,
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
    pub seconds: f64,
    pub flex_mode: FlexMode,
    pub flex_lambda: f32,
    /// FLeX penalty (λ·mean P) over the task loss at the first and the last step.
    pub penalty_ratio_first: Option<f64>,
    pub penalty_ratio_last: Option<f64>,
}

/// `OUT/<arm>/seed-<s>/summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub arm: String,
    pub seed: u64,
    pub kind: ArmKind,
    /// For published arms: the run (`arm/seed-s`) whose training and results these are.
    pub same_as: Option<String>,
    /// For arms that chose λ: the candidate arm it came from.
    pub selected_from: Option<String>,
    pub train: Option<TrainResult>,
    pub evals: Vec<EvalResult>,
    /// Wall time of this run (training and evaluation), summed over invocations is not tracked.
    pub seconds: f64,
    /// The code that produced it: `flexlora <version> (<git commit>)`. Runs compared in one
    /// report should share it; `report.md` lists every value it meets.
    #[serde(default)]
    pub flexlora: String,
    /// The device that computed it, as far as its rounding goes (`Device::numerics`: for the CPU,
    /// the SIMD it ran and was built for). Greedy completions differ between two builds or two
    /// such devices on a share of tasks, so a paired comparison should have one value of both;
    /// `report.md` marks those that do not. Empty for runs made before it was recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub numerics: String,
    /// Set when `flexlora experiment --rescore` executed the saved completions again with a later
    /// harness: the build that did (`rescore`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescored_by: Option<String>,
}

/// What `run` did with one (arm, seed).
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub arm: String,
    pub seed: u64,
    /// Finished before this invocation: nothing was redone.
    pub skipped: bool,
    pub seconds: f64,
}

pub fn run_dir(spec: &Spec, arm: &str, seed: u64) -> PathBuf {
    spec.out.join(arm).join(format!("seed-{seed}"))
}

/// Reads a finished run's summary; None when the run has not finished.
pub fn read_summary(spec: &Spec, arm: &str, seed: u64) -> Result<Option<RunSummary>> {
    let path = run_dir(spec, arm, seed).join(DONE);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    serde_json::from_str(&text).map(Some).map_err(|e| Error::Config {
        file: path.display().to_string(),
        detail: format!("not a run summary ({e}); delete it to redo the run"),
    })
}

/// Every (arm, seed) of the spec, in run order.
pub fn plan(spec: &Spec) -> Vec<(&Arm, u64)> {
    spec.arms.iter().flat_map(|a| a.seeds.iter().map(move |&s| (a, s))).collect()
}

/// Runs every unfinished (arm, seed). `device` makes the device a run trains and evaluates on
/// (a trainer owns its device); `say` receives one progress line per run and a few within.
pub async fn run(spec: &Spec, device: &mut dyn FnMut() -> Result<Device>, say: &mut dyn FnMut(&str)) -> Result<Vec<RunOutcome>> {
    std::fs::create_dir_all(&spec.out).map_err(io_at(&spec.out, "create"))?;
    let runs = plan(spec);
    let total = runs.len();
    let t0 = Instant::now();
    // Durations of the runs done in this invocation, per kind, for the estimate of time left.
    let mut took: Vec<(ArmKind, f64)> = Vec::new();
    let mut outcomes = Vec::new();
    let numerics = device()?.numerics();
    for (i, &(arm, seed)) in runs.iter().enumerate() {
        let tag = format!("[{}/{total}] {} seed {seed}", i + 1, arm.name);
        if read_summary(spec, &arm.name, seed)?.is_some() {
            say(&format!("{tag}: finished earlier, skipped ({})", run_dir(spec, &arm.name, seed).display()));
            outcomes.push(RunOutcome { arm: arm.name.clone(), seed, skipped: true, seconds: 0.0 });
            continue;
        }
        if arm.kind != ArmKind::Published {
            same_build(&run_dir(spec, &arm.name, seed), &numerics)?;
        }
        say(&format!("{tag}: started"));
        let t = Instant::now();
        let summary = match arm.kind {
            ArmKind::Published => published(spec, arm, seed)?,
            _ => one(spec, arm, seed, device, &numerics, &mut |line| say(&format!("{tag}: {line}"))).await?,
        };
        let dir = run_dir(spec, &arm.name, seed);
        std::fs::create_dir_all(&dir).map_err(io_at(&dir, "create"))?;
        load::write_atomic(&dir.join(DONE), serde_json::to_string_pretty(&summary).unwrap_or_default().as_bytes())?;
        // The report follows the grid run by run (a grid spans sessions and may be stopped).
        super::report::write(spec)?;
        let secs = t.elapsed().as_secs_f64();
        took.push((arm.kind, secs));
        let scores: Vec<String> = summary.evals.iter().map(|e| format!("{} {:.3}", e.name, e.pass1)).collect();
        let left = estimate_left(&runs[i + 1..], spec, &took);
        say(&format!(
            "{tag}: done in {secs:.0} s; pass@1 {}; elapsed {:.0} s, {}",
            if scores.is_empty() { "-".into() } else { scores.join(", ") },
            t0.elapsed().as_secs_f64(),
            match left {
                Some(s) => format!("about {s:.0} s left"),
                None => "time left unknown until a run of each remaining kind finishes".into(),
            }
        ));
        outcomes.push(RunOutcome { arm: arm.name.clone(), seed, skipped: false, seconds: secs });
    }
    Ok(outcomes)
}

/// Seconds left: each remaining unfinished run costs the mean of this invocation's runs of its
/// kind (published runs cost nothing). None when a remaining kind has no measurement yet.
fn estimate_left(rest: &[(&Arm, u64)], spec: &Spec, took: &[(ArmKind, f64)]) -> Option<f64> {
    let mean = |k: ArmKind| {
        let v: Vec<f64> = took.iter().filter(|(x, _)| *x == k).map(|(_, s)| *s).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let mut left = 0.0;
    for (arm, seed) in rest {
        if arm.kind == ArmKind::Published || run_dir(spec, &arm.name, *seed).join(DONE).exists() {
            continue;
        }
        left += mean(arm.kind)?;
    }
    Some(left)
}

/// A published arm's run: its `same_as` arm's run of the same seed, which must be finished.
pub fn published(spec: &Spec, arm: &Arm, seed: u64) -> Result<RunSummary> {
    let other = arm.same_as.as_deref().expect("the spec checked published arms");
    let Some(mut s) = read_summary(spec, other, seed)? else {
        return Err(Error::Config {
            file: spec.file.display().to_string(),
            detail: format!("arm `{}` seed {seed} reuses `{other}` seed {seed}, which has not run; add seed {seed} to `{other}`", arm.name),
        });
    };
    s.same_as = Some(format!("{other}/seed-{seed}"));
    s.arm = arm.name.clone();
    s.kind = ArmKind::Published;
    s.seconds = 0.0;
    if let Some(t) = &mut s.train {
        // The penalty was not computed on this run; its mode is recorded as the arm's.
        t.flex_mode = FlexMode::Published;
        t.flex_lambda = arm.train.as_ref().map_or(t.flex_lambda, |c| c.flex.lambda);
        t.penalty_ratio_first = None;
        t.penalty_ratio_last = None;
    }
    Ok(s)
}

/// Trains (unless base) and evaluates one (arm, seed).
async fn one(
    spec: &Spec,
    arm: &Arm,
    seed: u64,
    device: &mut dyn FnMut() -> Result<Device>,
    numerics: &str,
    say: &mut dyn FnMut(&str),
) -> Result<RunSummary> {
    let t0 = Instant::now();
    let dir = run_dir(spec, &arm.name, seed);
    let train_dir = dir.join("train");
    let mut selected_from = None;
    let train = match &arm.train {
        None => None,
        Some(base_cfg) => {
            let mut cfg = base_cfg.clone();
            cfg.seed = seed;
            cfg.out = train_dir.clone();
            if let Some(sel) = &arm.select {
                let (name, lambda) = select(spec, &sel.arms, &sel.eval)?;
                say(&format!("flex.lambda = {lambda:e}, from arm `{name}` (best pooled pass@1 on `{}`)", sel.eval));
                cfg.flex.lambda = lambda;
                selected_from = Some(name);
            }
            Some(train(cfg, device()?, say).await?)
        }
    };
    let dev = device()?;
    let format = spec.weights.format();
    let (mut model, tok) = load::open(&dev, &spec.model, format)?;
    let mut model_name = spec.model.display().to_string();
    let adapter = train.is_some().then(|| train_dir.join("adapter"));
    if let Some(adapter) = &adapter {
        load::peft::load(&dev, &mut model, adapter)?;
        model_name = format!("{model_name} + adapter {}", adapter.display());
    }
    let provenance = job::provenance(&spec.model, adapter.as_deref())?;
    let mut evals = Vec::new();
    for name in &arm.evals {
        let set = spec.eval(name).expect("the spec checked eval names");
        let mut cfg = set.config.clone();
        cfg.model = model_name.clone();
        cfg.provenance = provenance.clone();
        cfg.seed ^= seed;
        let out = dir.join("eval").join(name);
        // A line per tenth of the set (the test sets take tens of minutes on a CPU).
        let started = Instant::now();
        let (mut next, mut first) = (0, None);
        let mut progress = |p: job::Progress| {
            if let job::Progress::Generating { done, total } = p {
                // Tasks finished by an earlier invocation do not count towards the rate.
                let first = *first.get_or_insert(done);
                if done >= next && done < total {
                    let rate = (done > first).then(|| started.elapsed().as_secs_f64() / (done - first) as f64);
                    let left = rate.map(|r| r * (total - done) as f64);
                    say(&format!(
                        "{name}: {done}/{total} tasks generated{}",
                        left.map(|s| format!(", ~{s:.0} s left")).unwrap_or_default()
                    ));
                    next = done + total.div_ceil(10);
                }
            }
        };
        let report = job::run(&dev, &model, &tok, &spec.data_dir, &out, &cfg, spec.batch, &mut progress).await?;
        let tasks = outcomes(&out.join("results.jsonl"))?;
        say(&format!(
            "{name}: {}/{} passed, generation {:.0} s, execution {:.0} s",
            report.passed, report.samples, report.generation_secs, report.execution_secs
        ));
        evals.push(EvalResult {
            name: name.clone(),
            pass1: report.summary.pass_at.first().map_or(0.0, |p| p.value),
            pass1_ci95: report.summary.pass1_ci95,
            tasks,
            generation_secs: report.generation_secs,
            execution_secs: report.execution_secs,
        });
    }
    Ok(RunSummary {
        arm: arm.name.clone(),
        seed,
        kind: arm.kind,
        same_as: None,
        selected_from,
        train,
        evals,
        seconds: t0.elapsed().as_secs_f64(),
        flexlora: build_id(),
        numerics: numerics.to_string(),
        rescored_by: None,
    })
}

/// Records this build and device in a run's directory, or, when the run was started by another
/// build or on a device that rounds otherwise, refuses to continue it: its steps or samples so far
/// came from other numerics (a rounding change alone changes greedy completions), so the run would
/// mix two.
fn same_build(dir: &Path, numerics: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_at(dir, "create"))?;
    let path = dir.join(BUILD);
    let this = format!("{}\n{numerics}", build_id());
    match std::fs::read_to_string(&path) {
        Ok(was) if was.trim() == this => Ok(()),
        Ok(was) => Err(Error::Config {
            file: path.display().to_string(),
            detail: format!(
                "this unfinished run was started by {}, and this is {}: one run's training and evaluation come from one build \
                 on one kind of device. Finish it with that build and device, or delete {} to run it again with this one",
                was.trim().replace('\n', " on "),
                this.replace('\n', " on "),
                dir.display()
            ),
        }),
        Err(_) => load::write_atomic(&path, this.as_bytes()),
    }
}

/// `flexlora <version> (<git commit>)`, as recorded in every run summary.
pub fn build_id() -> String {
    format!("flexlora {} ({})", env!("CARGO_PKG_VERSION"), env!("FLEXLORA_COMMIT"))
}

/// Trains to the end (resuming from the last checkpoint when there is one), or reads the result
/// of a training that finished before the run was interrupted.
async fn train(cfg: crate::train::config::TrainConfig, dev: Device, say: &mut dyn FnMut(&str)) -> Result<TrainResult> {
    let out = cfg.out.clone();
    let (mode, lambda) = (cfg.flex.mode, cfg.flex.lambda);
    let done = out.join("summary.json");
    let seconds = if done.exists() && out.join("adapter").exists() {
        say("training finished earlier, reusing its adapter");
        read_seconds(&done)
    } else {
        let resume = (!crate::train::checkpoint::list(&out.join("checkpoints"))?.is_empty()).then(|| out.clone());
        let (model, tok) = train_run::load_model(&dev, &cfg)?;
        let tr = Trainer::new(dev, model, &tok, cfg, resume.as_deref())?;
        if let Some(p) = &tr.resumed_from {
            say(&format!("training resumed from {} at step {}", p.display(), tr.session.step));
        }
        let total = tr.session.total_steps;
        let every = (total / 10).max(1);
        let summary = train_run::run(tr, &mut |e| {
            if let Event::Step(r) = e {
                if r.step.is_multiple_of(every) || r.step == total {
                    let flex = r.flex_penalty.map(|p| format!(", flex {p:.4}")).unwrap_or_default();
                    say(&format!("step {}/{total}: loss {:.4}{flex}, {:.1} s/step", r.step, r.loss, r.seconds));
                }
            }
        })
        .await?;
        summary.seconds
    };
    let history = crate::train::metrics::read(&out.join("metrics.jsonl"), usize::MAX)?;
    let history = history.steps();
    let ratio = |r: &&crate::train::run::StepReport| r.flex_penalty.map(|p| p / r.loss);
    Ok(TrainResult {
        steps: history.last().map_or(0, |r| r.step),
        first_loss: history.first().map(|r| r.loss),
        final_loss: history.last().map(|r| r.loss),
        seconds,
        flex_mode: mode,
        flex_lambda: lambda,
        penalty_ratio_first: history.first().and_then(ratio),
        penalty_ratio_last: history.last().and_then(ratio),
    })
}

fn read_seconds(path: &Path) -> f64 {
    let v: Option<serde_json::Value> = std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok());
    v.and_then(|v| v["seconds"].as_f64()).unwrap_or(0.0)
}

/// One line of an eval's `results.jsonl`: its task, sample index, parsed verdict and the text.
pub struct ResultLine {
    pub id: String,
    pub sample: usize,
    pub value: serde_json::Value,
    pub line: String,
}

/// Every line of an eval's `results.jsonl`, in file order; a line that is not a verdict is an
/// error naming the file and line.
pub fn result_lines(path: &Path) -> Result<Vec<ResultLine>> {
    let text = std::fs::read_to_string(path).map_err(io_at(path, "read"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::DataFormat {
            path: path.display().to_string(),
            line: i + 1,
            detail: e.to_string(),
        })?;
        let (Some(id), Some(sample)) = (value["task_id"].as_str(), value["sample"].as_u64()) else {
            return Err(Error::DataFormat { path: path.display().to_string(), line: i + 1, detail: "no task_id or sample".into() });
        };
        out.push(ResultLine { id: id.to_string(), sample: sample as usize, value, line: line.to_string() });
    }
    Ok(out)
}

/// Per-task outcomes from an eval's `results.jsonl`, in task order.
pub fn outcomes(path: &Path) -> Result<Vec<TaskOutcome>> {
    let mut out: Vec<TaskOutcome> = Vec::new();
    for r in result_lines(path)? {
        let passed = r.value["outcome"] == "passed";
        if out.last().is_none_or(|t| t.id != r.id) {
            out.push(TaskOutcome { id: r.id.clone(), n: 0, c: 0, first: false });
        }
        let t = out.last_mut().expect("pushed above");
        t.n += 1;
        t.c += passed as usize;
        if r.sample == 0 {
            t.first = passed;
        }
    }
    Ok(out)
}

/// Pooled pass@1 of an arm on an eval set: the mean over its finished seeds of each run's pass@1.
pub fn pooled_pass1(runs: &[RunSummary], eval: &str) -> Option<f64> {
    let v: Vec<f64> = runs.iter().filter_map(|r| r.evals.iter().find(|e| e.name == eval)).map(|e| e.pass1).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The candidate with the best pass@1 on `eval` (ties: the first listed) and its λ. Scores pool
/// the seeds every candidate ran, so a candidate with more seeds is not judged on other draws.
fn select(spec: &Spec, candidates: &[String], eval: &str) -> Result<(String, f32)> {
    let arms: Vec<&Arm> = candidates.iter().map(|c| spec.arm(c).expect("the spec checked candidates")).collect();
    let common: Vec<u64> = arms[0].seeds.iter().copied().filter(|s| arms.iter().all(|a| a.seeds.contains(s))).collect();
    if common.is_empty() {
        return Err(Error::Config {
            file: spec.file.display().to_string(),
            detail: format!("select: the candidate arms {candidates:?} share no seed; give them one seed in common"),
        });
    }
    let mut best: Option<(String, f32, f64)> = None;
    for arm in arms {
        let mut runs = Vec::new();
        for &s in &common {
            match read_summary(spec, &arm.name, s)? {
                Some(r) => runs.push(r),
                None => {
                    return Err(Error::Config {
                        file: spec.file.display().to_string(),
                        detail: format!(
                            "select: candidate `{}` seed {s} has not finished; it must run before the arm that selects",
                            arm.name
                        ),
                    })
                }
            }
        }
        let score = pooled_pass1(&runs, eval).unwrap_or(f64::NEG_INFINITY);
        let lambda = arm.train.as_ref().map_or(0.0, effective_lambda);
        if best.as_ref().is_none_or(|(_, _, b)| score > *b) {
            best = Some((arm.name.clone(), lambda, score));
        }
    }
    let (name, lambda, _) = best.expect("the spec checked select.arms is non-empty");
    Ok((name, lambda))
}

/// The λ whose gradient reaches the update: 0 unless the penalty trains.
pub fn effective_lambda(cfg: &crate::train::config::TrainConfig) -> f32 {
    if cfg.flex.mode == FlexMode::Train {
        cfg.flex.lambda
    } else {
        0.0
    }
}

/// Every finished run of the spec, in plan order.
pub fn finished(spec: &Spec) -> Result<Vec<RunSummary>> {
    plan(spec).into_iter().filter_map(|(a, s)| read_summary(spec, &a.name, s).transpose()).collect()
}
