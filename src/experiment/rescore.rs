//! `flexlora experiment --rescore SPEC`: cuts every finished run's saved completions with this
//! build's stop rule, executes those that changed and rewrites the runs' results; no model is
//! loaded and nothing is generated.
//!
//! For a change of the stop rule found after runs finished. A completion whose cut text is what
//! its result line executed keeps that verdict (program assembly and the sandbox are deterministic
//! in the completion); the others are executed in the sandbox. Only a rule that cuts earlier can be
//! applied this way: cut earlier, a saved completion is what the same decode wrote up to the new
//! stop (a later cut would need text never generated; the cut here never lengthens a completion).
//! Each rescored eval's
//! `summary.json` and the run's summary record the build that scored them (`rescored_by`); the
//! saved `samples.jsonl` stays as generated.

use std::path::Path;

use super::runner::{self, RunSummary, DONE};
use super::spec::{ArmKind, Spec};
use crate::error::{io_at, Error, Result};
use crate::eval::passk::{self, TaskCount};
use crate::eval::sandbox::{Sandbox, SandboxConfig};
use crate::eval::{job, run_samples, tasks};
use crate::model::load::write_atomic;

/// What rescoring changed in one evaluation of one run.
#[derive(Debug, Clone)]
pub struct Rescored {
    pub run: String,
    pub eval: String,
    /// Completions the current stop rule cuts shorter than the saved ones.
    pub recut: usize,
    /// Completions executed now: those whose cut text differs from what `results.jsonl` ran.
    pub executed: usize,
    /// Tasks whose first sample passed, before and after.
    pub passed_before: usize,
    pub passed_after: usize,
    pub tasks: usize,
}

/// Rescores every finished run of the spec that generated its own completions, then refreshes the
/// published runs from the runs they reuse. Unfinished runs are not touched (a grid may be running
/// them in another process). An evaluation none of whose completions changed is left as it was,
/// files and all, so rescoring again changes nothing and keeps the first rescoring's record.
pub fn rescore(spec: &Spec, say: &mut dyn FnMut(&str)) -> Result<Vec<Rescored>> {
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let mut changes = Vec::new();
    for (arm, seed) in runner::plan(spec) {
        if arm.kind == ArmKind::Published {
            continue;
        }
        let Some(mut summary) = runner::read_summary(spec, &arm.name, seed)? else { continue };
        let dir = runner::run_dir(spec, &arm.name, seed);
        let mut changed = false;
        for e in &mut summary.evals {
            let set = spec.eval(&e.name).ok_or_else(|| Error::Config {
                file: dir.join(DONE).display().to_string(),
                detail: format!("evaluation `{}` is not in the spec any more; rescoring needs its task selection", e.name),
            })?;
            let out = dir.join("eval").join(&e.name);
            let before = e.tasks.iter().filter(|t| t.first).count();
            let (report, recut, executed) = rescore_eval(spec, &sandbox, &out, &set.config)?;
            if let Some(report) = report {
                e.tasks = runner::outcomes(&out.join("results.jsonl"))?;
                e.pass1 = report.pass_at.first().map_or(0.0, |p| p.value);
                e.pass1_ci95 = report.pass1_ci95;
                changed = true;
            }
            let change = Rescored {
                run: format!("{}/seed-{seed}", arm.name),
                eval: e.name.clone(),
                recut,
                executed,
                passed_before: before,
                passed_after: e.tasks.iter().filter(|t| t.first).count(),
                tasks: e.tasks.len(),
            };
            say(&format!(
                "{} {}: {} completion(s) cut shorter than saved, {} executed; first samples passed {} -> {} of {}",
                change.run, change.eval, change.recut, change.executed, change.passed_before, change.passed_after, change.tasks
            ));
            changes.push(change);
        }
        if changed {
            summary.rescored_by = Some(runner::build_id());
            write_summary(&dir, &summary)?;
        }
    }
    for (arm, seed) in runner::plan(spec) {
        if arm.kind == ArmKind::Published && runner::read_summary(spec, &arm.name, seed)?.is_some() {
            let summary = runner::published(spec, arm, seed)?;
            write_summary(&runner::run_dir(spec, &arm.name, seed), &summary)?;
        }
    }
    Ok(changes)
}

fn write_summary(dir: &Path, summary: &RunSummary) -> Result<()> {
    write_atomic(&dir.join(DONE), serde_json::to_string_pretty(summary).expect("summary serializes").as_bytes())
}

/// Cuts the saved completions of one evaluation directory with the current stop rule, executes
/// those whose text differs from what `results.jsonl` executed (a verdict is kept only for the
/// identical completion: program assembly and the sandbox are deterministic in it), and rewrites
/// `results.jsonl` and the scores in its `summary.json`. Returns the new pass@k summary (None when
/// nothing was executed: then no file is written), how many completions were cut shorter than
/// saved, and how many were executed.
fn rescore_eval(spec: &Spec, sandbox: &Sandbox, out: &Path, cfg: &job::EvalConfig) -> Result<(Option<passk::Summary>, usize, usize)> {
    let tasks = job::select_tasks(&spec.data_dir, &cfg.selection())?;
    let samples_path = out.join("samples.jsonl");
    let saved = job::saved_samples(&samples_path);
    let results_path = out.join("results.jsonl");
    let old = read_results(&results_path)?;
    let mut recut = 0;
    // Per task: its cut completions, and the old result lines when every one of them is unchanged.
    let mut kept: Vec<Option<Vec<String>>> = Vec::with_capacity(tasks.len());
    let (mut run_tasks, mut run_completions, mut run_index) = (Vec::new(), Vec::new(), Vec::new());
    for (i, t) in tasks.iter().enumerate() {
        let Some(c) = saved.get(&t.id).filter(|c| c.len() >= cfg.samples) else {
            return Err(Error::Config {
                file: samples_path.display().to_string(),
                detail: format!("no {} sample(s) for task {}; was this evaluation finished?", cfg.samples, t.id),
            });
        };
        let cut: Vec<String> = c[..cfg.samples].iter().map(|c| tasks::truncate_at_stop(c, &t.stop).to_string()).collect();
        recut += cut.iter().zip(c).filter(|(a, b)| a.len() < b.len()).count();
        let same: Option<Vec<String>> = cut
            .iter()
            .enumerate()
            .map(|(k, text)| old.get(&(t.id.clone(), k)).filter(|(c, _)| c == text).map(|(_, line)| line.clone()))
            .collect();
        if same.is_none() {
            run_tasks.push(t.clone());
            run_completions.push(cut);
            run_index.push(i);
        }
        kept.push(same);
    }
    if run_tasks.is_empty() {
        return Ok((None, recut, 0));
    }
    let t0 = std::time::Instant::now();
    let fresh = run_samples(sandbox, &run_tasks, &run_completions)?;
    let execution_secs = t0.elapsed().as_secs_f64();
    // Results come back task by task, samples in order: `cfg.samples` lines per executed task.
    for (r, i) in fresh.chunks(cfg.samples).zip(&run_index) {
        kept[*i] = Some(r.iter().map(|r| serde_json::to_string(r).expect("result serializes")).collect());
    }
    // Kept lines are written back byte for byte.
    let mut jsonl = String::new();
    for line in kept.into_iter().flat_map(|lines| lines.expect("each task kept or executed")) {
        jsonl += &(line + "\n");
    }
    write_atomic(&results_path, jsonl.as_bytes())?;
    let per_task: Vec<TaskCount> = runner::outcomes(&results_path)?.iter().map(|t| TaskCount { n: t.n, c: t.c }).collect();
    let summary = passk::summarize(&per_task)?;
    // The generation figures stay; the scores are this scoring's.
    let path = out.join("summary.json");
    let text = std::fs::read_to_string(&path).map_err(io_at(&path, "read"))?;
    let mut v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config { file: path.display().to_string(), detail: format!("not an evaluation summary ({e})") })?;
    let report = &mut v["report"];
    report["summary"] = serde_json::to_value(&summary).expect("summary serializes");
    report["passed"] = per_task.iter().map(|t| t.c).sum::<usize>().into();
    report["samples"] = per_task.iter().map(|t| t.n).sum::<usize>().into();
    report["rescored_by"] = runner::build_id().into();
    report["rescore_executed"] = fresh.len().into();
    report["rescore_execution_secs"] = execution_secs.into();
    write_atomic(&path, serde_json::to_string_pretty(&v).expect("summary serializes").as_bytes())?;
    Ok((Some(summary), recut, fresh.len()))
}

/// An evaluation's `results.jsonl`, by (task id, sample): the completion executed and the line.
fn read_results(path: &Path) -> Result<std::collections::HashMap<(String, usize), (String, String)>> {
    Ok(runner::result_lines(path)?
        .into_iter()
        .map(|r| {
            let completion = r.value["completion"].as_str().unwrap_or_default().to_string();
            ((r.id, r.sample), (completion, r.line))
        })
        .collect())
}
