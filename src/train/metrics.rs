//! Training metrics: `metrics.jsonl` (one record per line: a `StepReport` per optimizer step, a
//! `ValReport` per validation, an `EvalRecord` per pass@1 check) and the loss curve `loss.svg`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plot::{self, Frame};
use crate::train::run::StepReport;

/// The loss on the held-out examples after optimizer step `step` (`train::validate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValReport {
    pub step: usize,
    /// Mean cross-entropy per target token, the training loss's definition (no FLeX term).
    pub val_loss: f64,
    /// Target tokens and examples it averages over.
    pub val_tokens: usize,
    pub val_examples: usize,
    pub seconds: f64,
}

/// pass@1 (greedy, one sample per task) of the adapter after step `step` on `limit` tasks of a
/// benchmark: `flexlora train --eval-every` (`eval::during_training`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    pub eval_task: String,
    pub pass1: f64,
    pub tasks: usize,
    pub passed: usize,
    pub seconds: f64,
}

/// One line of `metrics.jsonl`. Told apart by their fields: a step has `loss`, a validation
/// `val_loss`, an evaluation `pass1`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    Step(StepReport),
    Val(ValReport),
    Eval(EvalRecord),
}

impl Record {
    pub fn step(&self) -> usize {
        match self {
            Record::Step(r) => r.step,
            Record::Val(r) => r.step,
            Record::Eval(r) => r.step,
        }
    }
}

/// A run's records in file order.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub records: Vec<Record>,
}

impl History {
    pub fn steps(&self) -> Vec<&StepReport> {
        self.records.iter().filter_map(|r| if let Record::Step(s) = r { Some(s) } else { None }).collect()
    }

    pub fn validations(&self) -> Vec<&ValReport> {
        self.records.iter().filter_map(|r| if let Record::Val(v) = r { Some(v) } else { None }).collect()
    }

    pub fn evals(&self) -> Vec<&EvalRecord> {
        self.records.iter().filter_map(|r| if let Record::Eval(e) = r { Some(e) } else { None }).collect()
    }

    /// The validation with the lowest loss (the earliest of equal ones).
    pub fn best_validation(&self) -> Option<&ValReport> {
        self.validations().into_iter().reduce(|best, v| if v.val_loss < best.val_loss { v } else { best })
    }
}

/// The records of steps 1..=`upto` already in `path` (a resumed run continues its own history;
/// what a killed run wrote after its checkpoint is left out, so it is not recorded twice).
pub fn read(path: &Path, upto: usize) -> Result<History> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(History::default()) };
    let mut out = History::default();
    let last = text.lines().count();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        // A line cut short by a kill is dropped, not fatal.
        let Ok(r) = serde_json::from_str::<Record>(line) else {
            if i + 1 == last {
                break;
            }
            return Err(Error::DataFormat { path: path.display().to_string(), line: i + 1, detail: "not a metrics record".into() });
        };
        if r.step() <= upto {
            out.records.push(r);
        }
    }
    Ok(out)
}

/// One record as its `metrics.jsonl` line (with the newline).
pub fn line(r: &Record) -> String {
    serde_json::to_string(r).unwrap_or_default() + "\n"
}

/// Rewrites `path` with exactly `history`, atomically.
pub fn rewrite(path: &Path, history: &History) -> Result<()> {
    let text: String = history.records.iter().map(line).collect();
    crate::model::load::write_atomic(path, text.as_bytes())
}

/// A run's curves against the step: the training loss (each step, and its moving average), the
/// validation loss (a dot per validation), and the FLeX penalty on a second axis on the right
/// (its scale is far below the loss's).
pub fn loss_svg(history: &History) -> String {
    let steps = history.steps();
    let train: Vec<(f64, f64)> = steps.iter().filter(|r| r.loss.is_finite()).map(|r| (r.step as f64, r.loss)).collect();
    let val: Vec<(f64, f64)> =
        history.validations().iter().filter(|v| v.val_loss.is_finite()).map(|v| (v.step as f64, v.val_loss)).collect();
    let flex: Vec<(f64, f64)> = steps.iter().filter_map(|r| r.flex_penalty.filter(|p| p.is_finite()).map(|p| (r.step as f64, p))).collect();
    let Some(f) = Frame::fit(train.iter().chain(&val)) else { return plot::empty("no steps") };
    let mut s = plot::open();
    f.axes(&mut s, "optimizer step", "loss (mean cross-entropy per target token)");
    let mut legend = vec![("training loss", "lightsteelblue"), ("moving average", "darkorange")];
    plot::polyline(&mut s, &f, &train, "lightsteelblue", 1.0, "");
    plot::polyline(&mut s, &f, &plot::ema(&train), "darkorange", 2.0, "");
    if !val.is_empty() {
        plot::polyline(&mut s, &f, &val, "seagreen", 2.0, "");
        plot::dots(&mut s, &f, &val, "seagreen", 3.5);
        legend.push(("validation loss", "seagreen"));
    }
    if let Some(g) = Frame::fit_tight(&flex) {
        // The penalty's own y range over the same steps.
        let g = Frame { x0: f.x0, x1: f.x1, ..g };
        g.right_axis(&mut s, "FLeX penalty", "purple");
        plot::polyline(&mut s, &g, &flex, "purple", 1.5, "4 3");
        legend.push(("FLeX penalty", "purple"));
    }
    for (i, (name, color)) in legend.iter().enumerate() {
        plot::legend(&mut s, i, name, color);
    }
    plot::close(s)
}

/// Peak resident memory of this process in bytes (Linux), for benchmark reports.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}
