//! `flexlora experiment SPEC.toml`: a grid of arms x seeds, each a training config (or the
//! untouched model) evaluated on the same task sets, compared with a reference arm task by task.
//!
//! - `spec`: the TOML spec, unknown keys refused, validated once (references, the honest
//!   protocol: no test set overlapping training or validation data).
//! - `runner`: one resumable directory per (arm, seed); finished runs are skipped.
//! - `stats`: exact McNemar, paired bootstrap interval pooled over seeds (pass@k is `eval::passk`).
//! - `report`: `report.md`, the comparison table and SVG plots.
//! - `rescore`: the finished runs' saved completions executed again after a harness change.
//!
//! `stats` is arithmetic and builds everywhere; the rest trains, evaluates in the sandbox and
//! reads files, so it is Linux-only like `eval::job`.

#[cfg(target_os = "linux")]
pub mod report;
#[cfg(target_os = "linux")]
pub mod rescore;
#[cfg(target_os = "linux")]
pub mod runner;
#[cfg(target_os = "linux")]
pub mod spec;
pub mod stats;

/// Loads the spec, runs what is unfinished and writes the report.
#[cfg(target_os = "linux")]
pub async fn run(
    spec_path: &std::path::Path,
    device: &mut dyn FnMut() -> crate::Result<crate::Device>,
    say: &mut dyn FnMut(&str),
) -> crate::Result<(Vec<runner::RunOutcome>, report::Report)> {
    let spec = spec::load(spec_path)?;
    let outcomes = runner::run(&spec, device, say).await?;
    let report = report::write(&spec)?;
    Ok((outcomes, report))
}
