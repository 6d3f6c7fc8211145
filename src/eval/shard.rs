//! Evaluation across machines. `--shard K/N` keeps the K-th of N contiguous parts of the selected
//! tasks, so a scheduler's array job (Slurm `--array=1-N`, a Kubernetes indexed Job) spreads
//! generation and execution over N machines; [`merge`] joins the N output directories into one
//! that equals a one-machine run: the same results in the same order, the same summary.
//!
//! Contiguous parts (not every N-th task) keep each shard's results in the one-machine order, so
//! the merge is a concatenation and needs neither the model nor the datasets.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::passk::{self, TaskCount};
use crate::error::{io_at, Error, Result};
use crate::model::load::write_atomic;

/// Part `index` (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `"K/N"` with 1 <= K <= N.
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = |why: &str| Error::InvalidArgument {
            flag: "--shard",
            detail: format!("`{s}`: {why}; write K/N, e.g. 3/8 for the third of 8 parts"),
        };
        let (k, n) = s.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let (index, count) = (
            k.trim().parse::<usize>().map_err(|_| bad("K is not a number"))?,
            n.trim().parse::<usize>().map_err(|_| bad("N is not a number"))?,
        );
        if count == 0 || index == 0 || index > count {
            return Err(bad("need 1 <= K <= N"));
        }
        Ok(Shard { index, count })
    }

    /// The indices of this part among `total` tasks: sizes differ by at most one.
    pub fn range(&self, total: usize) -> std::ops::Range<usize> {
        (self.index - 1) * total / self.count..self.index * total / self.count
    }

    /// Keeps this part of `items`.
    pub fn select<T>(&self, mut items: Vec<T>) -> Vec<T> {
        let r = self.range(items.len());
        items.truncate(r.end);
        items.drain(..r.start);
        items
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What [`merge`] wrote.
#[derive(Debug, Clone)]
pub struct Merged {
    pub shards: usize,
    pub tasks: usize,
    pub samples: usize,
    pub passed: usize,
    pub summary: passk::Summary,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(io_at(path, "read"))?;
    serde_json::from_str(&text).map_err(|e| Error::Config { file: path.display().to_string(), detail: format!("{e}; the file is damaged") })
}

#[derive(Deserialize)]
struct ResultLine {
    task_id: String,
    outcome: String,
}

/// Joins the output directories of the N shards of one evaluation (given in any order) into
/// `out`, which must not exist or be empty: config.json without the shard, samples.jsonl and
/// results.jsonl in task order, and summary.json with pass@k recomputed from all results and the
/// shards' times and token counts summed. Refused, naming the directory: a shard that has not
/// finished, shards of different evaluations (any setting but the shard differs), a missing or
/// repeated shard.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<Merged> {
    let bad = |detail: String| Error::InvalidArgument { flag: "eval merge", detail };
    if dirs.is_empty() {
        return Err(bad("give the output directories of the shards to merge".into()));
    }
    let mut parts: Vec<(Shard, &PathBuf, serde_json::Value)> = Vec::new();
    let mut reference: Option<(serde_json::Value, &PathBuf)> = None;
    for dir in dirs {
        for f in ["config.json", "summary.json", "results.jsonl"] {
            if !dir.join(f).is_file() {
                return Err(bad(format!(
                    "{} has no {f}: {}",
                    dir.display(),
                    if f == "config.json" { "not an evaluation output directory" } else { "this shard has not finished; run it again" }
                )));
            }
        }
        let mut config = read_json(&dir.join("config.json"))?;
        let shard = config.get("shard").cloned().and_then(|s| serde_json::from_value::<Shard>(s).ok());
        let Some(shard) = shard else {
            return Err(bad(format!("{} is not a shard (its config.json has no shard): nothing to merge", dir.display())));
        };
        if let Some(obj) = config.as_object_mut() {
            obj.remove("shard");
        }
        match &reference {
            None => reference = Some((config.clone(), dir)),
            Some((first, first_dir)) => {
                let diffs = crate::train::config::json_differences(first, &config, "");
                if !diffs.is_empty() {
                    return Err(bad(format!(
                        "{} and {} are shards of different evaluations ({}); merge only the shards of one run",
                        first_dir.display(),
                        dir.display(),
                        diffs.join("; ")
                    )));
                }
            }
        }
        let summary = read_json(&dir.join("summary.json"))?;
        parts.push((shard, dir, summary));
    }
    parts.sort_by_key(|(s, _, _)| s.index);
    let count = parts[0].0.count;
    if let Some((s, d, _)) = parts.iter().find(|(s, _, _)| s.count != count) {
        return Err(bad(format!(
            "{} is shard {s} but {} is shard {}: the shard counts differ",
            d.display(),
            parts[0].1.display(),
            parts[0].0
        )));
    }
    for w in parts.windows(2) {
        if w[0].0.index == w[1].0.index {
            return Err(bad(format!("{} and {} are both shard {}", w[0].1.display(), w[1].1.display(), w[0].0)));
        }
    }
    let missing: Vec<String> =
        (1..=count).filter(|i| !parts.iter().any(|(s, _, _)| s.index == *i)).map(|i| format!("{i}/{count}")).collect();
    if !missing.is_empty() {
        return Err(bad(format!("shard(s) {} missing: give all {count} output directories", missing.join(", "))));
    }

    if out.exists() && std::fs::read_dir(out).map_err(io_at(out, "read"))?.next().is_some() {
        return Err(Error::InvalidArgument {
            flag: "--out",
            detail: format!("{} exists and is not empty; merge into a new directory", out.display()),
        });
    }
    let concat = |name: &str| -> Result<Option<String>> {
        let mut all = String::new();
        for (_, dir, _) in &parts {
            let path = dir.join(name);
            if !path.is_file() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&path).map_err(io_at(&path, "read"))?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                all += line;
                all.push('\n');
            }
        }
        Ok(Some(all))
    };
    let results = concat("results.jsonl")?.unwrap_or_default();
    let mut counts: Vec<(String, TaskCount)> = Vec::new();
    let mut passed = 0;
    for (i, line) in results.lines().enumerate() {
        let r: ResultLine = serde_json::from_str(line).map_err(|e| Error::DataFormat {
            path: "results.jsonl (merged)".into(),
            line: i + 1,
            detail: e.to_string(),
        })?;
        let pass = r.outcome == "passed";
        passed += pass as usize;
        if counts.last().is_none_or(|(id, _)| *id != r.task_id) {
            counts.push((r.task_id, TaskCount { n: 0, c: 0 }));
        }
        let c = &mut counts.last_mut().expect("pushed").1;
        c.n += 1;
        c.c += pass as usize;
    }
    let per_task: Vec<TaskCount> = counts.iter().map(|(_, c)| *c).collect();
    let summary = passk::summarize(&per_task)?;

    // The report: recomputed scores; times and token counts summed; other fields from shard 1.
    let mut report = parts[0].2.get("report").cloned().unwrap_or_else(|| serde_json::json!({}));
    if let Some(obj) = report.as_object_mut() {
        for (key, value) in obj.iter_mut() {
            if let Some(first) = value.as_f64() {
                let others: f64 = parts[1..].iter().filter_map(|(_, _, s)| s["report"][key.as_str()].as_f64()).sum();
                *value = if value.is_u64() { serde_json::json!((first + others) as u64) } else { serde_json::json!(first + others) };
            }
        }
        obj.insert("summary".into(), serde_json::to_value(&summary).expect("summary serializes"));
        obj.insert("passed".into(), serde_json::json!(passed));
        obj.insert("samples".into(), serde_json::json!(results.lines().count()));
    }
    let config = reference.expect("at least one shard").0;
    std::fs::create_dir_all(out).map_err(io_at(out, "create"))?;
    write_atomic(&out.join("config.json"), serde_json::to_string_pretty(&config).expect("config serializes").as_bytes())?;
    if let Some(samples) = concat("samples.jsonl")? {
        write_atomic(&out.join("samples.jsonl"), samples.as_bytes())?;
    }
    write_atomic(&out.join("results.jsonl"), results.as_bytes())?;
    // The summary's copy of the config as the shards wrote it (numbers as serialized there).
    let mut summary_config = parts[0].2.get("config").cloned().unwrap_or_else(|| config.clone());
    if let Some(obj) = summary_config.as_object_mut() {
        obj.remove("shard");
    }
    let text = serde_json::to_string_pretty(&serde_json::json!({"config": summary_config, "report": report})).expect("summary serializes");
    write_atomic(&out.join("summary.json"), text.as_bytes())?;
    Ok(Merged { shards: count, tasks: counts.len(), samples: results.lines().count(), passed, summary })
}
