//! Paired statistics for comparing two arms of an experiment on the same tasks: the exact McNemar
//! test on the discordant pairs of one seed, and a paired bootstrap interval of the pass@1
//! difference pooled over seeds. pass@k itself is `eval::passk`.
//!
//! Owns arithmetic only: no files, no models.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Two-sided exact McNemar test. `b` = tasks the reference solves and the arm does not, `c` = the
/// reverse. Under the null hypothesis each of the n = b + c discordant tasks goes either way with
/// probability 1/2, so min(b, c) ~ Binomial(n, 1/2) and
/// p = min(1, 2 · Σ_{i ≤ min(b,c)} C(n, i) / 2^n). No discordant pair gives p = 1.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // pmf(i) = C(n, i) / 2^n by the recurrence pmf(i) = pmf(i-1)·(n-i+1)/i, exact in f64 for
    // small n (so b = 3, c = 4 gives exactly 1); in log space once 2^-n would underflow.
    let mut tail = 0.0f64;
    if n <= 1000 {
        let mut pmf = 0.5f64.powi(n as i32);
        for i in 0..=k {
            if i > 0 {
                pmf *= (n - i + 1) as f64 / i as f64;
            }
            tail += pmf;
        }
    } else {
        let mut ln_pmf = n as f64 * 0.5f64.ln();
        for i in 0..=k {
            if i > 0 {
                ln_pmf += ((n - i + 1) as f64).ln() - (i as f64).ln();
            }
            tail += ln_pmf.exp();
        }
    }
    (2.0 * tail).min(1.0)
}

/// The discordant counts of one seed's paired outcomes (`true` = solved), reference first.
/// Returns (b, c): b = reference solved and arm not, c = arm solved and reference not.
pub fn discordant(reference: &[bool], arm: &[bool]) -> (usize, usize) {
    reference.iter().zip(arm).fold((0, 0), |(b, c), (&r, &a)| (b + (r && !a) as usize, c + (a && !r) as usize))
}

/// A difference with its interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Observed: mean over seeds and tasks of (arm - reference) per-task pass@1.
    pub diff: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Paired bootstrap 95% percentile interval of the pass@1 difference (arm - reference), pooled
/// over seeds. `pairs[s]` holds seed s's per-task pass@1 values (c/n), reference and arm, aligned
/// by task (every seed the same tasks in the same order).
///
/// The task is the resampling unit: a replicate draws tasks with replacement and keeps each
/// drawn task's outcomes of every seed together, which keeps both the pairing of arm and reference
/// and the correlation between seeds on one task. Pooling is the mean over seeds, so the statistic
/// of a replicate is the mean over drawn tasks of d_t = mean_s(arm_s[t] - ref_s[t]). `reps`
/// replicates with a splitmix64 generator from `seed`: the same inputs give the same interval.
/// None when there are no tasks or the seeds disagree on the number of tasks.
pub fn paired_bootstrap(pairs: &[(Vec<f64>, Vec<f64>)], reps: usize, seed: u64) -> Option<Interval> {
    let tasks = pairs.first()?.0.len();
    if tasks == 0 || pairs.iter().any(|(r, a)| r.len() != tasks || a.len() != tasks) || reps == 0 {
        return None;
    }
    let d: Vec<f64> = (0..tasks).map(|t| pairs.iter().map(|(r, a)| a[t] - r[t]).sum::<f64>() / pairs.len() as f64).collect();
    let diff = d.iter().sum::<f64>() / tasks as f64;
    let mut rng = Rng::new(seed);
    let mut stats: Vec<f64> = (0..reps)
        .map(|_| {
            let mut s = 0.0;
            for _ in 0..tasks {
                // Multiply-shift maps a uniform u64 onto 0..tasks without modulo bias worth noting.
                s += d[((rng.next_u64() as u128 * tasks as u128) >> 64) as usize];
            }
            s / tasks as f64
        })
        .collect();
    stats.sort_by(f64::total_cmp);
    Some(Interval { diff, lo: quantile(&stats, 0.025), hi: quantile(&stats, 0.975) })
}

/// The q-quantile of sorted values, interpolating linearly between order statistics.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    match sorted.get(i + 1) {
        Some(next) => sorted[i] + frac * (next - sorted[i]),
        None => sorted[i],
    }
}
