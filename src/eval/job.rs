//! `flexlora eval`: generate completions for a benchmark with a model, run them in the sandbox,
//! and write samples, per-sample results and a pass@k summary into an output directory.
//!
//! Files in `out/`: `config.json` (the settings; a re-run with other settings is refused),
//! `samples.jsonl` (one line per completion, appended as they are generated: a re-run with the
//! same `--out` reuses finished tasks instead of regenerating them), `results.jsonl` (one verdict
//! per sample) and `summary.json`.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::passk::{self, Summary, TaskCount};
use super::sandbox::{Sandbox, SandboxConfig};
use super::shard::Shard;
use super::tasks::{self, IdRange, MbppPrompt, MbppSplit, Task};
use super::{counts, run_samples};
use crate::device::Device;
use crate::error::{io_at, Error, Result};
use crate::model::generate::{generate_many, GenerateOptions, Request, Sampling};
use crate::model::{tokenizer::Tokenizer, Model};

/// Which benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskSet {
    Humaneval,
    /// MBPP test split (tasks 11-510).
    Mbpp,
    Mbjp,
    HumanevalJava,
    /// A custom task file (`--task file:PATH`), described by [`EvalConfig::task_file`].
    File,
}

/// A custom task file: where it is, its detected format and a fingerprint of every byte, so that
/// samples are not reused after the file changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFileRef {
    pub path: String,
    pub format: String,
    pub fingerprint: String,
}

impl TaskFileRef {
    /// Reads and parses the file to name its format (errors name the file and line).
    pub fn open(path: &Path) -> Result<TaskFileRef> {
        let (format, _) = read_task_file(path)?;
        Ok(TaskFileRef {
            path: path.display().to_string(),
            format: format.name().into(),
            fingerprint: crate::model::load::fingerprint::adapter(path)?,
        })
    }
}

fn read_task_file(path: &Path) -> Result<(super::task_file::TaskFormat, Vec<Task>)> {
    let text = std::fs::read_to_string(path).map_err(io_at(path, "read"))?;
    super::task_file::parse_task_file(&text, &path.display().to_string())
}

/// Which tasks an evaluation runs: a set, narrowed by ids, then limit, then shard.
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    pub task: TaskSet,
    pub task_file: Option<&'a TaskFileRef>,
    pub flex_template: bool,
    pub ids: Option<IdRange>,
    pub limit: Option<usize>,
    pub shard: Option<Shard>,
}

/// The tasks of a selection, in the set's order.
pub fn select_tasks(data: &Path, sel: &Selection) -> Result<Vec<Task>> {
    let mut tasks = match sel.task {
        TaskSet::Humaneval => tasks::load_humaneval(data)?,
        TaskSet::Mbpp => tasks::load_mbpp(data, MbppSplit::Test, if sel.flex_template { MbppPrompt::Flex } else { MbppPrompt::FewShot })?,
        TaskSet::Mbjp => tasks::load_mbjp(data)?,
        TaskSet::HumanevalJava => tasks::load_humaneval_java(data)?,
        TaskSet::File => {
            let Some(f) = sel.task_file else {
                return Err(Error::InvalidArgument {
                    flag: "--task",
                    detail: "a task file set needs its path: write --task file:PATH".into(),
                });
            };
            read_task_file(Path::new(&f.path))?.1
        }
    };
    if let Some(r) = sel.ids {
        tasks.retain(|t| r.contains(&t.id));
    }
    if let Some(n) = sel.limit {
        tasks.truncate(n);
    }
    if let Some(s) = sel.shard {
        tasks = s.select(tasks);
    }
    Ok(tasks)
}

/// The settings of one evaluation; stored in `out/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    pub model: String,
    pub task: TaskSet,
    pub limit: Option<usize>,
    /// Only tasks whose number is in this range (applied before `limit`); absent in configs
    /// written before the option, which meant every task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<IdRange>,
    pub samples: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// MBPP only: the FLeX training template instead of the few-shot prompt.
    pub flex_template: bool,
    /// How prompts are built ([`PROTOCOL`]); runs written with other prompts are not reused.
    #[serde(default)]
    pub protocol: u32,
    /// What the samples come from: fingerprints of the model and adapter files ([`provenance`]).
    /// Samples generated from other files are not reused.
    #[serde(default)]
    pub provenance: Option<Provenance>,
    /// `--task file:PATH`: the file (with `task` = `TaskSet::File`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_file: Option<TaskFileRef>,
    /// `--shard K/N`: only this part of the selected tasks ([`Shard`]); `eval merge` joins them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

/// Fingerprints of the files an evaluation's samples were generated from
/// (`load::fingerprint`: the model's sizes and first/last MiB, every byte of the adapter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub model: String,
    pub adapter: Option<String>,
}

/// The fingerprints of `model` and `adapter`, for [`EvalConfig::provenance`].
pub fn provenance(model: &Path, adapter: Option<&Path>) -> Result<Option<Provenance>> {
    use crate::model::load::fingerprint;
    Ok(Some(Provenance { model: fingerprint::model(model)?, adapter: adapter.map(fingerprint::adapter).transpose()? }))
}

impl EvalConfig {
    pub fn validate(&self) -> Result<()> {
        if self.samples == 0 {
            return Err(Error::InvalidArgument { flag: "--samples", detail: "must be at least 1".into() });
        }
        if self.max_new_tokens == 0 {
            return Err(Error::InvalidArgument { flag: "--max-new-tokens", detail: "must be at least 1".into() });
        }
        Sampling { temperature: self.temperature, top_p: self.top_p, top_k: 0, seed: self.seed }.validate()
    }
}

/// The prompt protocol of this version: 2 = HumanEval and Java prompts without trailing
/// whitespace (`tasks::trim_prompt`); 0 (configs without the field) = prompts as in the files.
pub const PROTOCOL: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SampleLine {
    task_id: String,
    sample: usize,
    completion: String,
    finish: String,
}

/// Progress reported to the front end.
pub enum Progress {
    Generating { done: usize, total: usize },
    Executing { programs: usize },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub summary: Summary,
    pub passed: usize,
    pub samples: usize,
    pub reused_tasks: usize,
    pub generation_secs: f64,
    pub generated_tokens: usize,
    /// Of `generation_secs`: the prompts' prefill (`prompt_tokens` of them), the rest decoding.
    #[serde(default)]
    pub prompt_tokens: usize,
    #[serde(default)]
    pub prefill_secs: f64,
    pub execution_secs: f64,
    pub isolation: String,
}

impl EvalConfig {
    pub fn selection(&self) -> Selection<'_> {
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

pub fn load_tasks(data: &Path, cfg: &EvalConfig) -> Result<Vec<Task>> {
    select_tasks(data, &cfg.selection())
}

/// Runs the evaluation, decoding up to `batch` sequences together (`generate_many`); the batch
/// size changes speed, not settings, so a re-run may use another. `progress` is called as work
/// advances.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    dev: &Device,
    model: &Model,
    tok: &Tokenizer,
    data: &Path,
    out: &Path,
    cfg: &EvalConfig,
    batch: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<EvalReport> {
    cfg.validate()?;
    let tasks = load_tasks(data, cfg)?;
    let config_path = out.join("config.json");
    if out.join("summary.json").exists() && !config_path.exists() {
        return Err(Error::InvalidArgument {
            flag: "--out",
            detail: format!(
                "{} holds another kind of result (summary.json without config.json: a perplexity run?); use another --out",
                out.display()
            ),
        });
    }
    std::fs::create_dir_all(out).map_err(io_at(out, "create"))?;
    if config_path.exists() {
        let file = config_path.display().to_string();
        let text = std::fs::read_to_string(&config_path).map_err(io_at(&config_path, "read"))?;
        let old: EvalConfig = serde_json::from_str(&text).map_err(|e| Error::Config {
            file: file.clone(),
            detail: format!("{e}; the file is damaged: use a new --out directory (or delete this one to evaluate again)"),
        })?;
        let (a, b) = (serde_json::to_value(&old).unwrap_or_default(), serde_json::to_value(cfg).unwrap_or_default());
        let mut changed = crate::train::config::json_differences(&a, &b, "");
        if changed.iter().all(|d| d.starts_with("provenance") || d.starts_with("model:")) && old.provenance.is_none() {
            changed =
                vec!["provenance: the samples here do not record which model files they came from (an older flexlora wrote them)".into()];
        }
        if !changed.is_empty() {
            let stale = changed.iter().any(|d| d.starts_with("provenance"));
            return Err(Error::Config {
                file,
                detail: if stale {
                    format!(
                        "the samples in {} were generated from other model or adapter files than the ones given now ({}): \
                         reusing them would report results of the old files. Use a new --out directory, or delete this one to evaluate again",
                        out.display(),
                        changed.join("; ")
                    )
                } else {
                    format!(
                        "this --out holds a run with other settings ({}); use a new --out directory, or delete this one to evaluate again",
                        changed.join("; ")
                    )
                },
            });
        }
    } else {
        let text = serde_json::to_string_pretty(cfg).expect("config serializes");
        crate::model::load::write_atomic(&config_path, text.as_bytes())?;
    }

    // Reuse finished tasks from an earlier run with the same settings.
    let samples_path = out.join("samples.jsonl");
    let done = saved_samples(&samples_path);
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&samples_path).map_err(io_at(&samples_path, "open"))?;
    let opts_for = |t: &Task| GenerateOptions {
        max_new_tokens: cfg.max_new_tokens,
        sampling: Sampling { temperature: cfg.temperature, top_p: cfg.top_p, top_k: 0, seed: cfg.seed ^ fnv1a(&t.id) },
        stop: t.stop.clone(),
    };
    let t0 = Instant::now();
    let mut completions: Vec<Option<Vec<String>>> = vec![None; tasks.len()];
    let (mut requests, mut owner) = (Vec::new(), Vec::new());
    for (i, task) in tasks.iter().enumerate() {
        if let Some(c) = done.get(&task.id).filter(|c| c.len() >= cfg.samples) {
            // Cut again: samples written before a change of the stop rule may run past a stop.
            completions[i] = Some(c[..cfg.samples].iter().map(|c| tasks::truncate_at_stop(c, &task.stop).to_string()).collect());
            continue;
        }
        requests.push(Request { prompt: tok.encode(&task.prompt, true)?, samples: cfg.samples, opts: opts_for(task) });
        owner.push(i);
    }
    let reused = tasks.len() - requests.len();
    let mut finished = reused;
    progress(Progress::Generating { done: finished, total: tasks.len() });
    let timing = generate_many(model, dev, tok, &requests, batch, &mut |_, _, _| {}, &mut |r, gens| {
        let task = &tasks[owner[r]];
        let mut lines = String::new();
        let mut texts = Vec::with_capacity(gens.len());
        for (s, g) in gens.into_iter().enumerate() {
            let completion = tasks::truncate_at_stop(&g.text, &task.stop).to_string();
            let line = SampleLine { task_id: task.id.clone(), sample: s, completion: completion.clone(), finish: g.finish.into() };
            lines += &(serde_json::to_string(&line).expect("sample serializes") + "\n");
            texts.push(completion);
        }
        file.write_all(lines.as_bytes()).and_then(|_| file.flush()).map_err(io_at(&samples_path, "write"))?;
        completions[owner[r]] = Some(texts);
        finished += 1;
        progress(Progress::Generating { done: finished, total: tasks.len() });
        Ok(())
    })
    .await?;
    let (generated_tokens, prompt_tokens, prefill_secs) = (timing.generated_tokens, timing.prompt_tokens, timing.prefill_secs);
    let completions: Vec<Vec<String>> = completions.into_iter().map(|c| c.expect("every task generated or reused")).collect();
    progress(Progress::Generating { done: tasks.len(), total: tasks.len() });
    let generation_secs = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    progress(Progress::Executing { programs: tasks.len() * cfg.samples });
    let results = run_samples(&sandbox, &tasks, &completions)?;
    let execution_secs = t1.elapsed().as_secs_f64();
    let mut jsonl = String::new();
    for r in &results {
        jsonl += &(serde_json::to_string(r).expect("result serializes") + "\n");
    }
    crate::model::load::write_atomic(&out.join("results.jsonl"), jsonl.as_bytes())?;
    let per_task: Vec<TaskCount> = counts(&results).into_iter().map(|(_, c)| c).collect();
    let summary = passk::summarize(&per_task)?;
    let report = EvalReport {
        passed: results.iter().filter(|r| r.passed()).count(),
        samples: results.len(),
        summary,
        reused_tasks: reused,
        generation_secs,
        generated_tokens,
        prompt_tokens,
        prefill_secs,
        execution_secs,
        isolation: format!("{:?}", sandbox.isolation()),
    };
    let text = serde_json::to_string_pretty(&serde_json::json!({"config": cfg, "report": report})).expect("summary serializes");
    crate::model::load::write_atomic(&out.join("summary.json"), text.as_bytes())?;
    Ok(report)
}

/// The completions in an evaluation's `samples.jsonl`, per task id in sample order (none when the
/// file is absent). A line cut short by a crash is ignored: its task is generated again.
pub fn saved_samples(path: &Path) -> HashMap<String, Vec<String>> {
    let mut done: HashMap<String, Vec<String>> = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Ok(s) = serde_json::from_str::<SampleLine>(line) {
                let v = done.entry(s.task_id).or_default();
                if v.len() == s.sample {
                    v.push(s.completion);
                }
            }
        }
    }
    done
}

/// A stable per-task seed offset, so a task's samples do not depend on which tasks ran before.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

pub use crate::data::data_dir;
