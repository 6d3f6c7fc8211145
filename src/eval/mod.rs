//! Evaluation of code models on HumanEval, MBPP, MBJP and HumanEval-Java: the back end that turns
//! completions into pass@k. Generation lives elsewhere; this module starts from completion text.
//!
//! Flow: `tasks` loads a benchmark and gives each task its prompt and stop sequences; the
//! generator writes completions, cut with `tasks::truncate_at_stop`; `Task::program` assembles
//! prompt + completion + tests; `sandbox` runs the programs in isolation and judges them;
//! `run_samples` does that for many samples with a worker pool and returns one serializable
//! `SampleResult` per sample (a JSONL line each); `passk` turns pass counts into pass@k.
//!
//! `tasks` and `passk` are plain text and arithmetic and build everywhere; the sandbox spawns
//! processes with Linux namespaces and exists only on Linux. `ppl` (native) is the other kind of
//! evaluation: perplexity of held-out text, no generation. `during_training` is pass@1 of an
//! adapter while it trains, the hook `flexlora train --eval-every` hands the training loop.

#[cfg(target_os = "linux")]
pub mod during_training;
#[cfg(target_os = "linux")]
pub mod job;
pub mod passk;
#[cfg(not(target_arch = "wasm32"))]
pub mod ppl;
#[cfg(target_os = "linux")]
pub mod sandbox;
#[cfg(target_os = "linux")]
pub mod score;
#[cfg(not(target_arch = "wasm32"))]
pub mod shard;
/// The benchmark readers live in `data` (training reads MBPP too).
pub use crate::data::{task_file, tasks};

#[cfg(target_os = "linux")]
pub use run::{run_samples, SampleResult};

#[cfg(target_os = "linux")]
mod run {
    use serde::Serialize;

    use super::passk::TaskCount;
    use super::sandbox::{Outcome, Sandbox};
    use super::tasks::Task;
    use crate::error::{Error, Result};

    /// One sample's verdict, as written to a results file.
    #[derive(Debug, Clone, Serialize)]
    pub struct SampleResult {
        pub task_id: String,
        /// Index of the sample within its task.
        pub sample: usize,
        pub completion: String,
        pub outcome: Outcome,
        pub reason: String,
        pub duration_ms: u64,
    }

    impl SampleResult {
        pub fn passed(&self) -> bool {
            self.outcome == Outcome::Passed
        }
    }

    /// Runs every completion of every task through the sandbox (its worker pool, all samples of
    /// all tasks in one queue). `completions[i]` holds the samples of `tasks[i]`, already cut at
    /// the task's stop sequences. Results come back task by task, samples in order.
    pub fn run_samples(sandbox: &Sandbox, tasks: &[Task], completions: &[Vec<String>]) -> Result<Vec<SampleResult>> {
        if tasks.len() != completions.len() {
            return Err(Error::InvalidArgument {
                flag: "completions",
                detail: format!("{} tasks but completions for {}; give one list of samples per task", tasks.len(), completions.len()),
            });
        }
        let mut languages = Vec::new();
        for t in tasks.iter().filter(|t| !languages.contains(&t.language)).collect::<Vec<_>>() {
            languages.push(t.language);
        }
        for language in languages {
            sandbox.check_language(language)?;
        }
        let jobs: Vec<(&Task, usize, &String)> =
            tasks.iter().zip(completions).flat_map(|(t, cs)| cs.iter().enumerate().map(move |(i, c)| (t, i, c))).collect();
        let programs: Vec<_> = jobs.iter().map(|(t, _, c)| t.program(c)).collect();
        let results = sandbox.run_all(&programs);
        Ok(jobs
            .into_iter()
            .zip(results)
            .map(|((t, sample, c), r)| SampleResult {
                task_id: t.id.clone(),
                sample,
                completion: c.clone(),
                outcome: r.outcome,
                reason: r.reason,
                duration_ms: r.duration.as_millis() as u64,
            })
            .collect())
    }

    /// Samples (n) and passes (c) per task, in the order tasks first appear in `results`.
    pub fn counts(results: &[SampleResult]) -> Vec<(String, TaskCount)> {
        let mut out: Vec<(String, TaskCount)> = Vec::new();
        for r in results {
            if out.last().is_none_or(|(id, _)| *id != r.task_id) {
                out.push((r.task_id.clone(), TaskCount { n: 0, c: 0 }));
            }
            if let Some((_, count)) = out.last_mut() {
                count.n += 1;
                count.c += r.passed() as usize;
            }
        }
        out
    }
}

#[cfg(target_os = "linux")]
pub use run::counts;
