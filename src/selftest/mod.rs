//! `flexlora selftest`: every GPU kernel, forward and backward, on each adapter of this machine,
//! against its CPU twin on seeded odd shapes; and the CPU backend's SIMD tiers against its portable
//! code. It owns the list of cases (`cases.rs`), how a run is judged and the matrix it prints; the
//! ops themselves live in `ops`. The browser runs the same cases (`web.rs`, `selftest`): WebGPU
//! against the CPU backend compiled to wasm, and that backend against the native one through the
//! digests of `digest.rs` (`flexlora selftest --dump`).
//!
//! The reference is always the CPU backend on the portable tier. A case passes when every output
//! satisfies |got - want| <= atol + rtol·|want| (u32 outputs: exactly equal). An op that an adapter
//! refuses (a limit it lacks) is a failure here too: users send the matrix to say what runs where.
//! Cases await their GPU reads, so the library never blocks; the native `run` drives them with
//! `device::block_on`, the browser awaits them.

mod cases;
pub mod digest;

use std::future::Future;
use std::pin::Pin;

pub use cases::cases;

use crate::device::Device;
use crate::model::generate::now;
use crate::Result;

/// One op in one direction: runs on a device and returns its named outputs as f64 (f32 and u32
/// values are exact in f64).
pub struct Case {
    /// "rmsnorm.backward": the op file and the direction, as in `src/ops/<op>.rs`.
    pub op: &'static str,
    pub atol: f64,
    pub rtol: f64,
    /// `atol` is a fraction of the output's largest |value| (for outputs whose scale varies a lot).
    pub atol_of_max: bool,
    run: RunFn,
}

/// A case's outputs by name, in a fixed order.
pub type Outputs = Vec<(&'static str, Vec<f64>)>;

/// A running case: its outputs once the device has computed and returned them.
pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<Outputs>> + 'a>>;

/// Runs a case on a device.
pub type RunFn = for<'a> fn(&'a Device) -> RunFuture<'a>;

/// What one case gave on one device, and how long it took (on a GPU, until its outputs were read back).
#[derive(Debug)]
pub struct Ran {
    pub got: Result<Outputs>,
    pub secs: f64,
}

/// The result of one case on one device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub op: &'static str,
    pub pass: bool,
    /// Largest |got - want| over all compared values (0 for an error).
    pub max_err: f64,
    pub secs: f64,
    /// Why it failed: the first bad output, index and values, or the op's error.
    pub detail: Option<String>,
}

/// One column of the matrix: a GPU adapter or a CPU tier.
#[derive(Debug, serde::Serialize)]
pub struct Column {
    pub label: String,
    pub outcomes: Vec<Outcome>,
    /// The adapter did not open: every op counts as failed.
    pub open_error: Option<String>,
}

impl Column {
    pub fn passed(&self) -> bool {
        self.open_error.is_none() && self.outcomes.iter().all(|o| o.pass)
    }
}

/// Runs every case on `dev`, one after another.
pub async fn run_each(cases: &[Case], dev: &Device) -> Vec<Ran> {
    let mut out = Vec::with_capacity(cases.len());
    for case in cases {
        let t0 = now();
        let got = (case.run)(dev).await;
        out.push(Ran { got, secs: now() - t0 });
    }
    out
}

/// Judges each case's outputs in `ran` against the same case's in `reference`.
pub fn judge(cases: &[Case], ran: &[Ran], reference: &[Ran]) -> Vec<Outcome> {
    cases
        .iter()
        .zip(ran.iter().zip(reference))
        .map(|(case, (ran, want))| {
            let (pass, max_err, detail) = match (&ran.got, &want.got) {
                (Err(e), _) => (false, 0.0, Some(e.to_string())),
                (_, Err(e)) => (false, 0.0, Some(format!("the CPU reference failed: {e}"))),
                (Ok(got), Ok(want)) => compare(case, got, want),
            };
            Outcome { op: case.op, pass, max_err, secs: ran.secs, detail }
        })
        .collect()
}

/// What to test: GPU adapters of one backend (or all), and/or the CPU tiers.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    All,
    Gpu(crate::device::BackendChoice),
    Cpu,
}

/// `selftest --backend`: a graphics API, or `cpu` for the CPU backend's tiers alone (`All` is
/// the flag left out).
#[cfg(not(target_arch = "wasm32"))]
impl clap::ValueEnum for Target {
    fn value_variants<'a>() -> &'a [Self] {
        use crate::device::BackendChoice as B;
        &[Target::Gpu(B::Vulkan), Target::Gpu(B::Metal), Target::Gpu(B::Dx12), Target::Gpu(B::Gl), Target::Cpu]
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        match self {
            Target::All => None,
            Target::Gpu(b) => b.to_possible_value(),
            Target::Cpu => Some(clap::builder::PossibleValue::new("cpu")),
        }
    }
}

/// The reference: every case on the CPU backend's portable tier.
#[cfg(not(target_arch = "wasm32"))]
pub fn reference(cases: &[Case]) -> Vec<Ran> {
    use crate::device::cpu::{with_tier, Tier};
    with_tier(Tier::Portable, || crate::device::block_on(None, run_each(cases, &Device::cpu())))
}

/// Runs every case on every device `target` names and judges it against `reference` (from
/// [`reference`]); `progress` receives a line per column.
#[cfg(not(target_arch = "wasm32"))]
pub fn run(target: Target, cases: &[Case], reference: &[Ran], progress: &mut dyn FnMut(&str)) -> Vec<Column> {
    use crate::device::cpu::{with_tier, Tier};
    use crate::device::{block_on, open_each};
    let mut columns = Vec::new();
    if target != Target::Cpu {
        let backend = match target {
            Target::Gpu(b) => Some(b),
            _ => None,
        };
        for opened in block_on(None, open_each(backend)) {
            let label = opened.label();
            progress(&format!("testing {label}"));
            match opened.device {
                Ok(dev) => {
                    let ran = block_on(Some(&dev), run_each(cases, &dev));
                    columns.push(Column { outcomes: judge(cases, &ran, reference), label, open_error: None })
                }
                Err(e) => columns.push(Column { label, outcomes: vec![], open_error: Some(e.to_string()) }),
            }
        }
        if let (Target::Gpu(b), true) = (target, columns.is_empty()) {
            columns.push(Column { label: format!("{b:?}"), outcomes: vec![], open_error: Some("no adapter of this backend".into()) });
        }
    }
    if matches!(target, Target::All | Target::Cpu) {
        for tier in Tier::supported().into_iter().filter(|&t| t != Tier::Portable) {
            let label = format!("CPU {tier}");
            progress(&format!("testing {label}"));
            let ran = with_tier(tier, || block_on(None, run_each(cases, &Device::cpu())));
            columns.push(Column { outcomes: judge(cases, &ran, reference), label, open_error: None });
        }
    }
    columns
}
fn compare(case: &Case, got: &Outputs, want: &Outputs) -> (bool, f64, Option<String>) {
    let mut max_err = 0f64;
    let mut first_bad = None;
    for ((name, g), (_, w)) in got.iter().zip(want) {
        if g.len() != w.len() {
            first_bad.get_or_insert_with(|| format!("{name}: {} values, want {}", g.len(), w.len()));
            continue;
        }
        let atol = if case.atol_of_max { case.atol * w.iter().fold(0f64, |m, v| m.max(v.abs())) } else { case.atol };
        for (i, (&g, &w)) in g.iter().zip(w).enumerate() {
            let err = (g - w).abs();
            let ok =
                if w.is_finite() { err <= atol + case.rtol * w.abs() } else { g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()) };
            if err.is_finite() {
                max_err = max_err.max(err);
            }
            if !ok {
                first_bad.get_or_insert_with(|| format!("{name}[{i}]: got {g}, want {w}"));
            }
        }
    }
    (first_bad.is_none(), max_err, first_bad)
}

/// The matrix: one row per op, one column per device; "ok 3e-7 12ms" or "FAIL".
pub fn matrix(columns: &[Column]) -> String {
    let ops: Vec<&str> = cases().iter().map(|c| c.op).collect();
    let w0 = ops.iter().map(|o| o.len()).max().unwrap_or(2).max(2);
    let cw = 25;
    let mut s = String::new();
    for (i, c) in columns.iter().enumerate() {
        s += &format!("[{}] {}\n", i + 1, c.label);
        if let Some(e) = &c.open_error {
            s += &format!("    did not open: {e}\n");
        }
    }
    s += &format!("{:w0$}", "op");
    for i in 0..columns.len() {
        s += &format!(" | {:cw$}", format!("[{}] result max-error time", i + 1));
    }
    s += "\n";
    for op in &ops {
        s += &format!("{op:w0$}");
        for c in columns {
            let cell = match c.outcomes.iter().find(|o| o.op == *op) {
                Some(o) if o.pass => format!("ok {:.1e} {:.0} ms", o.max_err, o.secs * 1e3),
                Some(o) => format!("FAIL {:.1e} {:.0} ms", o.max_err, o.secs * 1e3),
                None => "FAIL (no device)".into(),
            };
            s += &format!(" | {cell:cw$}");
        }
        s += "\n";
    }
    let failures: Vec<String> = columns
        .iter()
        .flat_map(|c| {
            c.outcomes.iter().filter(|o| !o.pass).map(move |o| format!("  {} on {}: {}", o.op, c.label, o.detail.as_deref().unwrap_or("")))
        })
        .collect();
    if !failures.is_empty() {
        s += "failures:\n";
        s += &failures.join("\n");
        s += "\n";
    }
    s += "(the reference is the CPU backend's portable code; not in this check: matmul_q8 and matmul_gguf's int8 path, CPU only)\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(atol: f64, rtol: f64) -> Case {
        Case { op: "t", atol, rtol, atol_of_max: false, run: |_| Box::pin(async { Ok(vec![]) }) }
    }

    #[test]
    fn compare_finds_the_first_bad_value_and_the_worst_error() {
        let want: Outputs = vec![("y", vec![1.0, 2.0, 3.0])];
        let (pass, max_err, detail) = compare(&case(1e-3, 0.0), &vec![("y", vec![1.0, 2.0005, 3.0])], &want);
        assert!(pass && (max_err - 5e-4).abs() < 1e-9 && detail.is_none());
        let (pass, max_err, detail) = compare(&case(1e-3, 0.0), &vec![("y", vec![1.0, 2.5, 3.1])], &want);
        assert!(!pass && (max_err - 0.5).abs() < 1e-9);
        assert_eq!(detail.as_deref(), Some("y[1]: got 2.5, want 2"));
        let (pass, _, detail) = compare(&case(1.0, 1.0), &vec![("y", vec![1.0])], &want);
        assert!(!pass && detail.unwrap().contains("1 values, want 3"));
        let (pass, _, _) = compare(&case(1.0, 1.0), &vec![("y", vec![f64::NAN, 2.0, 3.0])], &want);
        assert!(!pass, "NaN must fail");
    }

    #[test]
    fn matrix_names_every_op_and_marks_failures() {
        let outcomes = cases()
            .iter()
            .map(|c| Outcome { op: c.op, pass: c.op != "rope.backward", max_err: 0.0, secs: 0.0, detail: Some("rope broke".into()) })
            .collect();
        let col = Column { label: "Gl: test".into(), outcomes, open_error: None };
        assert!(!col.passed());
        let m = matrix(&[col]);
        for c in cases() {
            assert!(m.contains(c.op), "{} missing from\n{m}", c.op);
        }
        assert!(m.contains("FAIL") && m.contains("rope.backward on Gl: test: rope broke"), "{m}");
    }
}
