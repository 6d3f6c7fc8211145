//! The experiment's report from its finished runs: `OUT/report.md` (results per evaluation set,
//! paired comparisons against the reference arm, against the untrained base arm and of each FLeX
//! arm against the same training without FLeX, training and FLeX penalty figures) and SVG plots:
//! `pass1-<set>.svg` (pass@1 per arm with its 95% interval and each seed's value), `loss.svg`
//! (training loss per run), `val.svg` (the validation loss of each run at each validation, when
//! logged) and `flex.svg` (the FLeX penalty per run, when logged).
//!
//! Reads run summaries and training metrics only; never trains or evaluates.

use std::fmt::Write;

use super::runner::{self, EvalResult, RunSummary};
use super::spec::{ArmKind, Role, Spec};
use super::stats::{self, Interval};
use crate::error::Result;
use crate::eval::passk;
use crate::model::load::write_atomic;

/// One arm compared with the reference on one evaluation set.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub eval: String,
    pub arm: String,
    /// pass@1 of the reference and the arm over the paired tasks, pooled over seeds.
    pub reference_pass1: f64,
    pub arm_pass1: f64,
    /// Paired tasks (per seed) and seeds paired.
    pub tasks: usize,
    pub seeds: usize,
    /// Paired bootstrap 95% interval of the difference, pooled over seeds.
    pub interval: Interval,
    /// One exact McNemar test per pair of runs.
    pub mcnemar: Vec<SeedTest>,
    /// Paired tasks whose first completion is byte-identical in both runs, summed over seeds
    /// (of tasks x seeds): how much the arm changed what the model writes, whatever it scores.
    /// None when a run's `results.jsonl` is not on disk.
    pub identical: Option<usize>,
    /// Whether some pair's two runs come from different builds or devices (`origin`): rounding
    /// alone then changes greedy completions on a share of tasks, and Δ carries that too.
    pub mixed: bool,
}

/// The exact McNemar test of one pair of runs on their first samples.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedTest {
    /// The arm's seed and the seed of the reference run it is paired with (another when the
    /// reference ran once, as an untrained arm does).
    pub seed: u64,
    pub reference_seed: u64,
    /// Tasks only the reference solved, tasks only the arm solved, and the two-sided p.
    pub b: usize,
    pub c: usize,
    pub p: f64,
}

/// The code and the device numerics a run came from: "flexlora 0.1.0 (abc) on CPU x86_64, ...".
pub fn origin(r: &RunSummary) -> String {
    let or = |s: &str, none: &str| if s.is_empty() { none.to_string() } else { s.to_string() };
    format!("{} on {}", or(&r.flexlora, "a build not recorded"), or(&r.numerics, "a device not recorded"))
}

pub struct Report {
    pub markdown: String,
    pub comparisons: Vec<Comparison>,
    /// The comparison table alone (markdown), for the terminal.
    pub table: String,
}

/// Pairs an arm's runs with `reference`'s on one set: seed s with the reference's seed s (the same
/// adapter initialization and example order), or with its only run when it has one (an untrained
/// reference runs once); an untrained arm's only run is paired with every reference run. Tasks
/// are matched by id.
pub fn compare(spec: &Spec, runs: &[RunSummary], reference: &str, arm: &str, eval: &str) -> Option<Comparison> {
    let of = |name: &str| -> Vec<(&RunSummary, &EvalResult)> {
        runs.iter().filter(|r| r.arm == name).filter_map(|r| r.evals.iter().find(|e| e.name == eval).map(|e| (r, e))).collect()
    };
    let reference = of(reference);
    let mine = of(arm);
    let mut pairs: Vec<(u64, u64, &EvalResult, &EvalResult)> = Vec::new();
    let mut runs_paired: Vec<(&RunSummary, &RunSummary)> = Vec::new();
    let untrained = spec.arm(arm).is_some_and(|a| a.kind == ArmKind::Base);
    for (r, e) in &mine {
        let partners: Vec<&(&RunSummary, &EvalResult)> = if untrained && mine.len() == 1 {
            reference.iter().collect()
        } else {
            reference
                .iter()
                .find(|(x, _)| x.seed == r.seed)
                .or(if reference.len() == 1 { reference.first() } else { None })
                .into_iter()
                .collect()
        };
        for (pr, pe) in partners {
            pairs.push((r.seed, pr.seed, pe, e));
            runs_paired.push((pr, r));
        }
    }
    if pairs.is_empty() {
        return None;
    }
    // Tasks every paired run has, in the reference's order.
    let ids: Vec<&str> = pairs[0]
        .2
        .tasks
        .iter()
        .map(|t| t.id.as_str())
        .filter(|id| pairs.iter().all(|(_, _, a, b)| a.tasks.iter().any(|t| t.id == *id) && b.tasks.iter().any(|t| t.id == *id)))
        .collect();
    if ids.is_empty() {
        return None;
    }
    let per_task = |e: &EvalResult| -> (Vec<f64>, Vec<bool>) {
        ids.iter()
            .map(|id| {
                let t = e.tasks.iter().find(|t| t.id == *id).expect("filtered above");
                (t.c as f64 / t.n.max(1) as f64, t.first)
            })
            .unzip()
    };
    let mut values = Vec::new();
    let mut mcnemar = Vec::new();
    for &(seed, reference_seed, re, ae) in &pairs {
        let (rv, rb) = per_task(re);
        let (av, ab) = per_task(ae);
        let (b, c) = stats::discordant(&rb, &ab);
        mcnemar.push(SeedTest { seed, reference_seed, b, c, p: stats::mcnemar_exact(b, c) });
        values.push((rv, av));
    }
    let interval = stats::paired_bootstrap(&values, spec.bootstrap, spec.bootstrap_seed)?;
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let reference_pass1 = avg(&values.iter().map(|(r, _)| avg(r)).collect::<Vec<_>>());
    let arm_pass1 = avg(&values.iter().map(|(_, a)| avg(a)).collect::<Vec<_>>());
    Some(Comparison {
        eval: eval.to_string(),
        arm: arm.to_string(),
        reference_pass1,
        arm_pass1,
        tasks: ids.len(),
        seeds: pairs.len(),
        interval,
        mcnemar,
        identical: identical_first(spec, &runs_paired, eval, &ids),
        mixed: runs_paired.iter().any(|(a, b)| origin(a) != origin(b)),
    })
}

/// Tasks among `ids` whose first completion is the same text in both runs of each pair, summed.
fn identical_first(spec: &Spec, pairs: &[(&RunSummary, &RunSummary)], eval: &str, ids: &[&str]) -> Option<usize> {
    let mut n = 0;
    for (a, b) in pairs {
        let (a, b) = (first_completions(spec, a, eval)?, first_completions(spec, b, eval)?);
        n += ids.iter().filter(|id| a.get(**id).is_some_and(|x| b.get(**id) == Some(x))).count();
    }
    Some(n)
}

/// A run's first completion per task on one set, from its `results.jsonl` (a published run's are
/// its `same_as` run's).
fn first_completions(spec: &Spec, run: &RunSummary, eval: &str) -> Option<std::collections::HashMap<String, String>> {
    let dir = match &run.same_as {
        Some(other) => spec.out.join(other),
        None => runner::run_dir(spec, &run.arm, run.seed),
    };
    let lines = runner::result_lines(&dir.join("eval").join(eval).join("results.jsonl")).ok()?;
    Some(
        lines
            .into_iter()
            .filter(|r| r.sample == 0)
            .map(|r| (r.id, r.value["completion"].as_str().unwrap_or_default().to_string()))
            .collect(),
    )
}

/// (pooled pass@1, its 95% interval, pass@1 per seed, tasks).
type Pooled = (f64, (f64, f64), Vec<f64>, usize);

/// An arm's pooled score on a set: mean over seeds of pass@1 (passk over each run's counts), and a
/// 95% interval over tasks of the seed-averaged per-task pass@1 (`passk::pass1_interval`).
fn pooled(runs: &[&RunSummary], eval: &str) -> Option<Pooled> {
    let es: Vec<&EvalResult> = runs.iter().filter_map(|r| r.evals.iter().find(|e| e.name == eval)).collect();
    let first = es.first()?;
    let per_seed: Vec<f64> = es
        .iter()
        .map(|e| {
            let counts: Vec<passk::TaskCount> = e.tasks.iter().map(|t| passk::TaskCount { n: t.n, c: t.c }).collect();
            passk::summarize(&counts).ok().and_then(|s| s.pass_at.first().map(|p| p.value)).unwrap_or(e.pass1)
        })
        .collect();
    let per_task: Vec<f64> = first
        .tasks
        .iter()
        .map(|t| {
            let v: Vec<f64> =
                es.iter().filter_map(|e| e.tasks.iter().find(|x| x.id == t.id)).map(|x| x.c as f64 / x.n.max(1) as f64).collect();
            v.iter().sum::<f64>() / v.len() as f64
        })
        .collect();
    let mean = per_seed.iter().sum::<f64>() / per_seed.len() as f64;
    Some((mean, passk::pass1_interval(&per_task), per_seed, first.tasks.len()))
}

/// Builds the report from the finished runs and writes `report.md` and the plots into `spec.out`.
pub fn write(spec: &Spec) -> Result<Report> {
    let runs = runner::finished(spec)?;
    let planned = runner::plan(spec).len();
    let mut md = String::new();
    let _ = writeln!(md, "# Experiment `{}`\n", spec.file.display());
    let _ = writeln!(
        md,
        "Model `{}` ({} base weights); {} of {planned} runs finished; reference arm `{}`. Regenerated by \
         `flexlora experiment {}` from the runs' `summary.json` files.\n",
        spec.model.display(),
        spec.weights.name(),
        runs.len(),
        spec.reference,
        spec.file.display()
    );
    let mut origins: Vec<(String, usize)> = Vec::new();
    for o in runs.iter().map(origin) {
        match origins.iter_mut().find(|(x, _)| *x == o) {
            Some((_, n)) => *n += 1,
            None => origins.push((o, 1)),
        }
    }
    if !origins.is_empty() {
        let list: Vec<String> = origins.iter().map(|(o, n)| format!("{o} ({n} run{})", if *n == 1 { "" } else { "s" })).collect();
        let _ = writeln!(md, "Code and device of the finished runs: {}.\n", list.join("; "));
    }
    let mut rescored: Vec<&str> = runs.iter().filter_map(|r| r.rescored_by.as_deref()).collect();
    rescored.sort();
    rescored.dedup();
    if !rescored.is_empty() {
        let _ = writeln!(
            md,
            "Saved completions cut again with a later stop rule and the changed ones executed (`--rescore`) by: {}; {} of {} finished runs.\n",
            rescored.join("; "),
            runs.iter().filter(|r| r.rescored_by.is_some()).count(),
            runs.len()
        );
    }

    // Results per evaluation set.
    let _ = writeln!(md, "## pass@1\n");
    for set in &spec.evals {
        let c = &set.config;
        let ids = c.ids.map(|r| format!(", tasks numbered {r}")).unwrap_or_default();
        let limit = c.limit.map(|n| format!(", first {n}")).unwrap_or_default();
        let _ = writeln!(
            md,
            "### `{}`: {}{ids}{limit} ({} set; {} sample(s) per task, temperature {}, {} new tokens)\n",
            set.name,
            super::spec::task_name(c.task),
            if set.role == Role::Test { "test" } else { "validation" },
            c.samples,
            c.temperature,
            c.max_new_tokens
        );
        let _ = writeln!(md, "| arm | kind | λ | runs | tasks | pass@1 | 95% interval | per seed |\n|---|---|---|---|---|---|---|---|");
        let mut points = Vec::new();
        for arm in spec.arms.iter().filter(|a| a.evals.contains(&set.name)) {
            let mine: Vec<&RunSummary> = runs.iter().filter(|r| r.arm == arm.name).collect();
            let lambda = mine.iter().find_map(|r| r.train.as_ref().map(lambda_cell)).unwrap_or_else(|| "-".into());
            match pooled(&mine, &set.name) {
                Some((mean, (lo, hi), per_seed, tasks)) => {
                    let seeds: Vec<String> = mine.iter().zip(&per_seed).map(|(r, v)| format!("{}: {v:.3}", r.seed)).collect();
                    let _ = writeln!(
                        md,
                        "| {} | {} | {lambda} | {}/{} | {tasks} | {mean:.3} | [{lo:.3}, {hi:.3}] | {} |",
                        arm.name,
                        kind(arm.kind),
                        mine.len(),
                        arm.seeds.len(),
                        seeds.join(", ")
                    );
                    points.push((arm.name.clone(), mean, lo, hi, per_seed));
                }
                None => {
                    let _ = writeln!(md, "| {} | {} | {lambda} | 0/{} | | not run yet | | |", arm.name, kind(arm.kind), arm.seeds.len());
                }
            }
        }
        let file = format!("pass1-{}.svg", set.name);
        write_atomic(&spec.out.join(&file), pass1_svg(&set.name, &points).as_bytes())?;
        let _ = writeln!(md, "\n![pass@1 on {}]({file})\n", set.name);
    }

    // Paired comparisons: with the reference arm, then (when the spec has an untrained arm that is
    // not the reference) every trained arm with the base model, i.e. whether training helped at all.
    let _ = writeln!(md, "## Paired comparisons with `{}`\n", spec.reference);
    let _ = writeln!(
        md,
        "Δ = pass@1(arm) − pass@1(`{}`) over the tasks both ran, pooled over pairs of runs (seed s with the reference's seed s, \
         or with its only run; the untrained arm's one run with each of the reference's); 95% interval: paired bootstrap over tasks ({} replicates, seed {}); McNemar: exact two-sided \
         test per pair (\"seed s vs r\" when the reference run has another seed) on the first sample of each task, b = tasks only the reference solved, c = tasks only the arm solved; \
         same first completion: paired tasks whose first completion is the same text in both runs.\n",
        spec.reference, spec.bootstrap, spec.bootstrap_seed
    );
    let (table, comparisons) = comparison_table(spec, &runs, &spec.reference, None);
    md.push_str(&table);
    if let Some(base) = spec.arms.iter().find(|a| a.kind == ArmKind::Base && a.name != spec.reference) {
        let _ = writeln!(md, "\n## Paired comparisons with `{}` (the model before training)\n", base.name);
        let _ = writeln!(md, "As above, with `{}` as the reference: does training change pass@1 at all?\n", base.name);
        md.push_str(&comparison_table(spec, &runs, &base.name, None).0);
    }
    // FLeX against the same training without it, where that is not the reference (whose pairs
    // are in the first table): e.g. Sophia with FLeX against Sophia alone.
    let pairs: Vec<(String, String)> = flex_pairs(spec).into_iter().filter(|(_, off)| *off != spec.reference).collect();
    if !pairs.is_empty() {
        let _ = writeln!(md, "\n## FLeX against the same training without it\n");
        let _ = writeln!(
            md,
            "As above, each arm that trains through the FLeX penalty against the arm whose training settings are the same but for FLeX \
             (its pairs with `{}` are in the first table).",
            spec.reference
        );
        for (on, off) in &pairs {
            let (table, found) = comparison_table(spec, &runs, off, Some(on));
            if found.is_empty() {
                let _ = writeln!(md, "\n`{on}` against `{off}`: not run yet.");
            } else {
                let _ = write!(md, "\n`{on}` against `{off}`:\n\n{table}");
            }
        }
    }

    // Training.
    let _ = writeln!(md, "\n## Training\n");
    let _ = writeln!(
        md,
        "| run | steps | loss first → last | validation loss first → last (perplexity) | FLeX mode | λ | penalty/loss first → last | seconds | note |\n|---|---|---|---|---|---|---|---|---|"
    );
    let (mut losses, mut penalties, mut vals) = (Vec::new(), Vec::new(), Vec::new());
    for r in runs.iter().filter(|r| r.train.is_some()) {
        let t = r.train.as_ref().expect("filtered");
        let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
        // Curves from the run's own metrics (a `same_as` run was not trained: it has none).
        let mut val_cell = "-".to_string();
        if r.same_as.is_none() {
            let history = crate::train::metrics::read(&runner::run_dir(spec, &r.arm, r.seed).join("train/metrics.jsonl"), usize::MAX)?;
            let name = format!("{}/seed-{}", r.arm, r.seed);
            let v: Vec<(f64, f64)> =
                history.validations().iter().filter(|v| v.val_loss.is_finite()).map(|v| (v.step as f64, v.val_loss)).collect();
            if let (Some(first), Some(last)) = (v.first(), v.last()) {
                val_cell = format!("{:.4} (step {}) → {:.4} (step {}; {:.3})", first.1, first.0, last.1, last.0, last.1.exp());
                vals.push((name.clone(), v));
            }
            let steps = history.steps();
            losses.push((name.clone(), steps.iter().map(|h| (h.step as f64, h.loss)).collect::<Vec<_>>()));
            let p: Vec<(f64, f64)> = steps.iter().filter_map(|h| h.flex_penalty.map(|v| (h.step as f64, v))).collect();
            if !p.is_empty() {
                penalties.push((name, p));
            }
        }
        let note = match (&r.same_as, &r.selected_from) {
            (Some(s), _) => format!("identical to `{s}` by construction, not re-trained"),
            (None, Some(s)) => format!("λ chosen from `{s}` on validation"),
            _ => String::new(),
        };
        let _ = writeln!(
            md,
            "| {}/seed-{} | {} | {} → {} | {val_cell} | {} | {} | {} → {} | {:.0} | {note} |",
            r.arm,
            r.seed,
            t.steps,
            f(t.first_loss),
            f(t.final_loss),
            format!("{:?}", t.flex_mode).to_lowercase(),
            lambda_cell(t),
            f(t.penalty_ratio_first),
            f(t.penalty_ratio_last),
            t.seconds
        );
    }
    write_atomic(&spec.out.join("loss.svg"), crate::plot::series_svg("training loss", &losses).as_bytes())?;
    let _ = writeln!(md, "\n![training loss](loss.svg)\n");
    if !vals.is_empty() {
        write_atomic(&spec.out.join("val.svg"), crate::plot::points_svg("validation loss", &vals).as_bytes())?;
        let _ = writeln!(md, "![validation loss](val.svg)\n");
    }
    if !penalties.is_empty() {
        write_atomic(&spec.out.join("flex.svg"), crate::plot::series_svg("FLeX penalty λ·mean P", &penalties).as_bytes())?;
        let _ = writeln!(md, "![FLeX penalty](flex.svg)\n");
    }
    write_atomic(&spec.out.join("report.md"), md.as_bytes())?;
    Ok(Report { markdown: md, comparisons, table })
}

/// Each arm that trains through the FLeX penalty (`flex.mode = "train"`) with the arm whose
/// training settings are equal to its own but for `flex`, which is off there: (with FLeX, without),
/// in the spec's order. The comparison that isolates the penalty for each optimizer.
pub fn flex_pairs(spec: &Spec) -> Vec<(String, String)> {
    use crate::train::config::FlexMode;
    let mut pairs = Vec::new();
    for on in &spec.arms {
        let Some(with) = on.train.as_ref().filter(|t| t.flex.mode == FlexMode::Train) else { continue };
        for off in &spec.arms {
            let Some(without) = off.train.as_ref().filter(|t| t.flex.mode == FlexMode::Off) else { continue };
            let mut same = with.clone();
            same.flex = without.flex.clone();
            if same == *without {
                pairs.push((on.name.clone(), off.name.clone()));
            }
        }
    }
    pairs
}

/// The markdown table of every arm other than `reference` (or only the arm `only`) compared with
/// it on every set both ran.
fn comparison_table(spec: &Spec, runs: &[RunSummary], reference: &str, only: Option<&str>) -> (String, Vec<Comparison>) {
    let mut table = String::from(
        "| set | arm | tasks x seeds | pass@1 reference | pass@1 arm | Δ | 95% interval | McNemar per seed (b, c, p) | same first completion |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut comparisons = Vec::new();
    for set in &spec.evals {
        for arm in spec.arms.iter().filter(|a| a.name != reference && only.is_none_or(|o| a.name == o) && a.evals.contains(&set.name)) {
            if let Some(c) = compare(spec, runs, reference, &arm.name, &set.name) {
                let mc: Vec<String> = c
                    .mcnemar
                    .iter()
                    .map(|t| {
                        let seeds = if t.seed == t.reference_seed {
                            format!("seed {}", t.seed)
                        } else {
                            format!("seed {} vs {}", t.seed, t.reference_seed)
                        };
                        format!("{seeds}: {}, {}, p={:.3}", t.b, t.c, t.p)
                    })
                    .collect();
                let _ = writeln!(
                    table,
                    "| {} | {}{} | {} x {} | {:.3} | {:.3} | {:+.3} | [{:+.3}, {:+.3}] | {} | {} |",
                    c.eval,
                    c.arm,
                    if c.mixed { " †" } else { "" },
                    c.tasks,
                    c.seeds,
                    c.reference_pass1,
                    c.arm_pass1,
                    c.interval.diff,
                    c.interval.lo,
                    c.interval.hi,
                    mc.join("; "),
                    c.identical.map_or("-".to_string(), |n| format!("{n}/{}", c.tasks * c.seeds))
                );
                comparisons.push(c);
            }
        }
    }
    if comparisons.iter().any(|c| c.mixed) {
        table.push_str(
            "\n† Some pair's two runs come from different builds or devices (see the list above): rounding alone changes \
             greedy completions on a share of tasks, so this Δ includes that as well as the arms' difference.\n",
        );
    }
    (table, comparisons)
}

/// λ as trained: a number in `train` mode; otherwise the penalty never reaches the update.
fn lambda_cell(t: &runner::TrainResult) -> String {
    match t.flex_mode {
        crate::train::config::FlexMode::Train => format!("{:e}", t.flex_lambda),
        crate::train::config::FlexMode::Published => format!("{:e} (logged only)", t.flex_lambda),
        crate::train::config::FlexMode::Off => "off".into(),
    }
}

fn kind(k: ArmKind) -> &'static str {
    match k {
        ArmKind::Base => "base",
        ArmKind::Train => "train",
        ArmKind::Published => "published",
    }
}

/// pass@1 per arm: a point at the pooled value, a whisker for the 95% interval, small dots for
/// each seed.
fn pass1_svg(set: &str, points: &[(String, f64, f64, f64, Vec<f64>)]) -> String {
    use crate::plot::{Frame, H, M, W};
    let mut s = crate::plot::open();
    let hi = points.iter().map(|p| p.3).fold(0.0f64, f64::max).clamp(0.05, 1.0);
    let f = Frame { x0: 0.0, x1: 1.0, lo: 0.0, hi };
    f.y_axis(&mut s, &format!("pass@1 on {set} (95% interval; dots: seeds)"));
    let sy = |y: f64| f.sy(y);
    let n = points.len().max(1) as f64;
    for (i, (name, mean, lo, up, seeds)) in points.iter().enumerate() {
        let x = M + (i as f64 + 0.5) / n * (W - 2.0 * M);
        let _ = write!(s, r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="steelblue" stroke-width="2"/>"#, sy(*lo), sy(*up));
        for y in [lo, up] {
            let _ = write!(
                s,
                r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="steelblue" stroke-width="2"/>"#,
                x - 6.0,
                sy(*y),
                x + 6.0,
                sy(*y)
            );
        }
        for v in seeds {
            let _ = write!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="gray"/>"#, x + 12.0, sy(*v));
        }
        let _ = write!(s, r#"<circle cx="{x:.1}" cy="{:.1}" r="5" fill="darkorange"/>"#, sy(*mean));
        let _ = write!(s, r#"<text x="{x:.1}" y="{}" text-anchor="middle">{name}</text>"#, H - M + 18.0);
        let _ = write!(s, r#"<text x="{x:.1}" y="{}" text-anchor="middle">{mean:.3}</text>"#, H - M + 34.0);
    }
    crate::plot::close(s)
}
