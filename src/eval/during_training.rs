//! pass@1 of the adapter while it trains (`flexlora train --eval-every N --eval-task T
//! --eval-limit K`): greedy completions of the first K tasks of T by `job::run`, judged in the
//! sandbox, the result a `train::metrics::EvalRecord` that `train::run::run_with` writes into
//! `metrics.jsonl` through its `Probe` hook (training never imports evaluation).
//!
//! Each check writes its samples and verdicts into `<run>/eval/step-N/`. Generation reads the
//! model only (no dropout, no random stream of the run), so checking changes no update.

use std::path::PathBuf;
use std::time::Instant;

use super::job::{self, EvalConfig, TaskFileRef, TaskSet};
use crate::device::Device;
use crate::error::{io_at, Result};
use crate::model::{tokenizer::Tokenizer, Model};
use crate::train::metrics::EvalRecord;

/// What to check and where the data and the results go.
#[derive(Debug, Clone)]
pub struct TrainingEval {
    pub task: TaskSet,
    /// `--eval-task file:PATH`.
    pub task_file: Option<TaskFileRef>,
    /// The task set as the user named it, for the record.
    pub name: String,
    pub limit: usize,
    pub max_new_tokens: usize,
    /// The data directory (benchmarks).
    pub data: PathBuf,
    /// The run's directory; checks go into `eval/step-N/` below it.
    pub out: PathBuf,
}

impl TrainingEval {
    /// pass@1 of `model` (the adapter after `step` steps).
    pub async fn check(&self, dev: &Device, model: &Model, tok: &Tokenizer, step: usize) -> Result<EvalRecord> {
        let t0 = Instant::now();
        let cfg = EvalConfig {
            model: format!("{} after training step {step}", self.out.display()),
            task: self.task,
            limit: Some(self.limit),
            ids: None,
            samples: 1,
            temperature: 0.0,
            top_p: 1.0,
            max_new_tokens: self.max_new_tokens,
            seed: 0,
            flex_template: false,
            protocol: job::PROTOCOL,
            provenance: None,
            task_file: self.task_file.clone(),
            shard: None,
        };
        // A check left by a killed run is redone, not reused: its config names the same step, but
        // its samples may be partial, and a fresh check is cheap next to what it guards.
        let dir = self.out.join("eval").join(format!("step-{step:07}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_at(&dir, "remove"))?;
        }
        let batch = self.limit.clamp(1, 8);
        let report = job::run(dev, model, tok, &self.data, &dir, &cfg, batch, &mut |_| {}).await?;
        let pass1 = report.summary.pass_at.iter().find(|p| p.k == 1).map_or(0.0, |p| p.value);
        Ok(EvalRecord {
            step,
            eval_task: self.name.clone(),
            pass1,
            tasks: report.summary.tasks,
            passed: report.passed,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}
