//! pass@k: the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on
//! Code", section 2.1) and its aggregation over a benchmark, with a 95% interval on pass@1.
//!
//! Owns arithmetic only: it never runs programs and never reads files.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The k values reported by `summarize`, each only when every task has at least k samples.
pub const REPORTED_K: [usize; 3] = [1, 10, 100];

/// Probability that at least one of k samples drawn without replacement from n samples, c of them
/// correct, is correct: 1 - C(n-c, k) / C(n, k). None when k or c exceed n or k is 0.
///
/// The ratio of binomials overflows for n in the hundreds, so it is computed as the product
/// C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i), as in the paper's numpy reference.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> Option<f64> {
    if k == 0 || k > n || c > n {
        return None;
    }
    if n - c < k {
        // Every k-subset contains a correct sample.
        return Some(1.0);
    }
    let all_wrong: f64 = (n - c + 1..=n).map(|i| 1.0 - k as f64 / i as f64).product();
    Some(1.0 - all_wrong)
}

/// Samples drawn (n) and samples passed (c) for one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TaskCount {
    pub n: usize,
    pub c: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassAtK {
    pub k: usize,
    /// Mean over tasks of the per-task estimate.
    pub value: f64,
}

/// A benchmark score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub tasks: usize,
    /// One entry per k in `REPORTED_K` with k <= the smallest n over tasks.
    pub pass_at: Vec<PassAtK>,
    /// 95% confidence interval on pass@1, see `pass1_interval`.
    pub pass1_ci95: (f64, f64),
}

/// Aggregates per-task counts into pass@k for k in `REPORTED_K`.
pub fn summarize(counts: &[TaskCount]) -> Result<Summary> {
    let Some(min_n) = counts.iter().map(|t| t.n).min() else {
        return Err(Error::InvalidArgument { flag: "pass@k counts", detail: "no tasks to summarize".into() });
    };
    if let Some((i, bad)) = counts.iter().enumerate().find(|(_, t)| t.n == 0 || t.c > t.n) {
        return Err(Error::InvalidArgument {
            flag: "pass@k counts",
            detail: format!("task {i} has n = {} samples and c = {} passed; need 0 < n and c <= n", bad.n, bad.c),
        });
    }
    let mean_over_tasks = |k: usize| -> f64 {
        let total: f64 = counts.iter().map(|t| pass_at_k(t.n, t.c, k).unwrap_or(0.0)).sum();
        total / counts.len() as f64
    };
    let pass_at = REPORTED_K.iter().filter(|&&k| k <= min_n).map(|&k| PassAtK { k, value: mean_over_tasks(k) }).collect();
    let per_task: Vec<f64> = counts.iter().map(|t| t.c as f64 / t.n as f64).collect();
    Ok(Summary { tasks: counts.len(), pass_at, pass1_ci95: pass1_interval(&per_task) })
}

/// 95% interval on benchmark pass@1 from the per-task pass@1 values p_i = c_i / n_i.
///
/// Choice: the normal approximation of the mean over tasks, mean +- 1.96 * s / sqrt(tasks) with s
/// the sample standard deviation (divisor tasks - 1), clamped to [0, 1]. Why this and not Wilson:
/// the unit that varies between benchmark draws is the task, and a task's p_i is a fraction when
/// n > 1 samples are drawn, so the score is a mean of bounded values rather than one binomial
/// count; Wilson would treat all n * tasks samples as independent and be too narrow, because
/// samples of one task are strongly correlated. With n = 1 this is exactly the Wald interval on a
/// proportion. The normal approximation is good at benchmark sizes (164 to 500 tasks); it is
/// reported for comparing runs, not as an exact coverage guarantee. With fewer than two tasks the
/// spread is unknown and the whole range (0, 1) is returned.
pub fn pass1_interval(per_task: &[f64]) -> (f64, f64) {
    let t = per_task.len();
    if t < 2 {
        return (0.0, 1.0);
    }
    let mean = per_task.iter().sum::<f64>() / t as f64;
    let var = per_task.iter().map(|p| (p - mean) * (p - mean)).sum::<f64>() / (t - 1) as f64;
    let half = 1.96 * (var / t as f64).sqrt();
    ((mean - half).max(0.0), (mean + half).min(1.0))
}
