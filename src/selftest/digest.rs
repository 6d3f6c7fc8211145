//! The native selftest's reference outputs, small enough to hand to the browser (~100 KB of JSON
//! for all 30 cases, where the values themselves are ~1M numbers): per case and output, its length,
//! its largest |value|, sampled values (the first and last four, and 40 seeded random indices) and
//! the sums of the values and of their |values| over 16 contiguous blocks. `flexlora selftest
//! --dump FILE` writes them from the portable CPU reference ([`Dump::of`]); the browser runs the
//! same cases on the CPU backend compiled to wasm and checks its outputs against them ([`judge`]).
//!
//! Every check is one that outputs within the case's tolerance (|got - want| <= atol + rtol·|want|
//! per element) always pass, so a fail is a real difference: each sample within that bound; the
//! largest |value| within atol + rtol·max|want|; each block's sum, and its sum of |values|, within
//! the block's summed bounds (n·atol + rtol·Σ|want|). What it cannot see: a wrong element that is
//! not sampled and moves its block's sums by less than that bound.
//!
//! Bitwise equality is not expected, because the two builds round differently on the same inputs:
//! the `gemm` crate picks its microkernels (and so its order of additions) by the CPU it runs on,
//! AVX2/AVX-512 natively and SIMD128 in wasm, whatever the portable tier says; and f32 `exp`, `ln`,
//! `sin`, `cos` and `tanh` are the platform's libm natively but Rust's own port of musl's libm in
//! wasm32-unknown-unknown. So the tolerance is the case's, the one the GPUs meet.

use serde::{Deserialize, Serialize};

use super::{Case, Outcome, Ran};

/// Leading and trailing elements always sampled (tails are where SIMD remainders go wrong).
const EDGE: usize = 4;
/// Seeded random elements sampled besides the edges.
const RANDOM: usize = 40;
/// Contiguous blocks whose sums are compared.
const BLOCKS: usize = 16;

/// The reference of every case: what `flexlora selftest --dump` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dump {
    /// Which build and tier computed it, for messages: "flexlora 0.1.0 x86_64 CPU portable".
    pub made_by: String,
    pub cases: Vec<CaseDigest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseDigest {
    pub op: String,
    /// The reference's error, when the case failed to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub outputs: Vec<OutputDigest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputDigest {
    pub name: String,
    pub len: usize,
    pub max_abs: Num,
    /// (index, value), indices ascending.
    pub samples: Vec<(usize, Num)>,
    /// Block b holds elements [b·len/n, (b+1)·len/n) for n = min(16, len) blocks.
    pub block_sums: Vec<Num>,
    pub block_abs_sums: Vec<Num>,
}

/// An f64 that survives JSON exactly: written as a string, Rust's shortest text that reads back
/// to the same bits ("-6.531556606292725", "1e-7", "NaN", "inf"), because JSON numbers cannot
/// hold NaN or infinities and serde_json's default number parser may land one ulp off, which the
/// exact cases (quantization, copies) would see.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Num(pub f64);

impl Serialize for Num {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:?}", self.0))
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map(Num).map_err(|_| serde::de::Error::custom(format!("`{text}` is not a number")))
    }
}

impl Dump {
    /// The digests of `reference` (the cases run on the portable CPU twin).
    pub fn of(cases: &[Case], reference: &[Ran], made_by: String) -> Dump {
        let cases = cases
            .iter()
            .zip(reference)
            .enumerate()
            .map(|(ci, (case, ran))| match &ran.got {
                Err(e) => CaseDigest { op: case.op.into(), error: Some(e.to_string()), outputs: vec![] },
                Ok(outputs) => CaseDigest {
                    op: case.op.into(),
                    error: None,
                    outputs: outputs.iter().enumerate().map(|(oi, (name, v))| digest(name, v, (ci as u64) << 16 | oi as u64)).collect(),
                },
            })
            .collect();
        Dump { made_by, cases }
    }

    /// Reads a dump from JSON, naming `origin` (a file, "the page's upload") in the error.
    pub fn from_json(origin: &str, text: &str) -> crate::Result<Dump> {
        serde_json::from_str(text).map_err(|e| crate::Error::InvalidArgument {
            flag: "native selftest dump",
            detail: format!("{origin}: {e}; write it with `flexlora selftest --dump FILE` from the same version"),
        })
    }
}

fn digest(name: &str, v: &[f64], seed: u64) -> OutputDigest {
    let n = v.len();
    let mut idx: Vec<usize> = if n <= 2 * EDGE + RANDOM {
        (0..n).collect()
    } else {
        let mut rng = crate::rng::Rng::new(seed);
        (0..EDGE).chain(n - EDGE..n).chain((0..RANDOM).map(|_| (rng.next_u64() % n as u64) as usize)).collect()
    };
    idx.sort_unstable();
    idx.dedup();
    let (sums, abs_sums) = block_sums(v);
    OutputDigest {
        name: name.into(),
        len: n,
        max_abs: Num(max_abs(v)),
        samples: idx.into_iter().map(|i| (i, Num(v[i]))).collect(),
        block_sums: sums.into_iter().map(Num).collect(),
        block_abs_sums: abs_sums.into_iter().map(Num).collect(),
    }
}

fn max_abs(v: &[f64]) -> f64 {
    // NaN propagates, so an output with a NaN has a NaN max on both sides or fails.
    v.iter().fold(0f64, |m, x| if x.is_nan() || m.is_nan() { f64::NAN } else { m.max(x.abs()) })
}

fn block_sums(v: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let n = v.len();
    let nb = BLOCKS.min(n);
    (0..nb)
        .map(|b| {
            let block = &v[b * n / nb..(b + 1) * n / nb];
            (block.iter().sum::<f64>(), block.iter().map(|x| x.abs()).sum::<f64>())
        })
        .unzip()
}

/// Judges each case's outputs in `ran` (the wasm CPU backend's) against the native `dump`; see the
/// module docs for what is compared. `max_err` is the largest difference seen in the samples and
/// the largest |value|: a lower bound of the true largest error.
pub fn judge(cases: &[Case], ran: &[Ran], dump: &Dump) -> Vec<Outcome> {
    cases
        .iter()
        .zip(ran)
        .map(|(case, ran)| {
            let (pass, max_err, detail) = match (&ran.got, dump.cases.iter().find(|d| d.op == case.op)) {
                (Err(e), _) => (false, 0.0, Some(e.to_string())),
                (_, None) => (false, 0.0, Some(format!("not in the native dump ({}): dump again with this version", dump.made_by))),
                (_, Some(CaseDigest { error: Some(e), .. })) => (false, 0.0, Some(format!("the native reference failed: {e}"))),
                (Ok(got), Some(want)) => compare(case, got, want, &dump.made_by),
            };
            Outcome { op: case.op, pass, max_err, secs: ran.secs, detail }
        })
        .collect()
}

fn compare(case: &Case, got: &super::Outputs, want: &CaseDigest, made_by: &str) -> (bool, f64, Option<String>) {
    let mismatch = |d: String| (false, 0.0, Some(format!("{d}: the dump ({made_by}) is from another version; dump again with this one")));
    if got.len() != want.outputs.len() {
        return mismatch(format!("{} outputs, the dump has {}", got.len(), want.outputs.len()));
    }
    let mut max_err = 0f64;
    let mut first_bad: Option<String> = None;
    for ((name, g), w) in got.iter().zip(&want.outputs) {
        if *name != w.name || g.len() != w.len || w.samples.iter().any(|&(i, _)| i >= g.len()) {
            return mismatch(format!("output {name} has {} values, the dump's {} has {}", g.len(), w.name, w.len));
        }
        let atol = if case.atol_of_max { case.atol * w.max_abs.0 } else { case.atol };
        let mut check = |what: String, g: f64, w: f64, bound: f64| {
            let err = (g - w).abs();
            let ok = if w.is_finite() { err <= bound } else { g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()) };
            if !ok {
                first_bad.get_or_insert_with(|| format!("{what}: wasm {g}, native {w} (allowed difference {bound:.1e})"));
            }
            err
        };
        for &(i, Num(wv)) in &w.samples {
            let err = check(format!("{name}[{i}]"), g[i], wv, atol + case.rtol * wv.abs());
            if err.is_finite() {
                max_err = max_err.max(err);
            }
        }
        let err = check(format!("{name}: largest |value|"), max_abs(g), w.max_abs.0, atol + case.rtol * w.max_abs.0);
        if err.is_finite() {
            max_err = max_err.max(err);
        }
        let (sums, abs_sums) = block_sums(g);
        let nb = sums.len();
        for b in 0..nb {
            let (lo, hi) = (b * g.len() / nb, (b + 1) * g.len() / nb);
            let abs_sum = w.block_abs_sums[b].0;
            // The sum of the elements' bounds, and the rounding of two f64 sums of `hi - lo` terms.
            let bound = (hi - lo) as f64 * atol + case.rtol * abs_sum + 4.0 * (hi - lo) as f64 * f64::EPSILON * abs_sum;
            check(format!("{name}[{lo}..{hi}]: sum"), sums[b], w.block_sums[b].0, bound);
            check(format!("{name}[{lo}..{hi}]: sum of |values|"), abs_sums[b], abs_sum, bound);
        }
    }
    (first_bad.is_none(), max_err, first_bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(atol: f64, rtol: f64) -> Case {
        Case { op: "t", atol, rtol, atol_of_max: false, run: |_| Box::pin(async { Ok(vec![]) }) }
    }

    fn ran(v: Vec<f64>) -> Ran {
        Ran { got: Ok(vec![("y", v)]), secs: 0.0 }
    }

    fn values(n: usize) -> Vec<f64> {
        let mut r = crate::rng::Rng::new(9);
        (0..n).map(|_| r.uniform() * 2.0 - 1.0).collect()
    }

    #[test]
    fn a_dump_survives_json_with_nan_and_infinities() {
        let mut v = values(1000);
        v[0] = f64::NAN;
        v[999] = f64::NEG_INFINITY;
        v[1] = f64::INFINITY;
        let dump = Dump::of(&[case(0.0, 0.0)], &[ran(v.clone())], "test".into());
        let text = serde_json::to_string(&dump).unwrap();
        let back = Dump::from_json("test", &text).unwrap();
        let o = &back.cases[0].outputs[0];
        assert_eq!(o.len, 1000);
        assert!(o.samples[0].1 .0.is_nan() && o.samples[1].1 .0 == f64::INFINITY && o.samples.last().unwrap().1 .0 == f64::NEG_INFINITY);
        assert!(o.samples.len() <= 2 * EDGE + RANDOM && o.block_sums.len() == BLOCKS);
        assert!(o.samples.windows(2).all(|w| w[0].0 < w[1].0));
        // NaN equals NaN and the same infinities pass, exactly.
        let outcome = &judge(&[case(0.0, 0.0)], &[ran(v)], &back)[0];
        assert!(outcome.pass, "{outcome:?}");
        // Values come back bit for bit (serde_json's own number parser would not promise that).
        let exact: Vec<f64> = (0..1000).map(|i| f64::from(1.9981014728546143f32) * (1.0 + i as f64 / 7.0)).collect();
        let dump = Dump::of(&[case(0.0, 0.0)], &[ran(exact.clone())], "test".into());
        let back = Dump::from_json("test", &serde_json::to_string(&dump).unwrap()).unwrap();
        for (i, v) in &back.cases[0].outputs[0].samples {
            assert_eq!(v.0.to_bits(), exact[*i].to_bits());
        }
        let err = Dump::from_json("f.json", r#"{"made_by":"x","cases":[{"op":"t","outputs":[{"name":"y","len":1,"max_abs":"big","samples":[],"block_sums":[],"block_abs_sums":[]}]}]}"#).unwrap_err();
        assert!(err.to_string().contains("f.json") && err.to_string().contains("big"), "{err}");
    }

    #[test]
    fn within_tolerance_passes_and_beyond_it_fails_by_name() {
        let c = case(1e-5, 1e-4);
        let want = values(70_001);
        let dump = Dump::of(std::slice::from_ref(&c), &[ran(want.clone())], "test".into());
        // Every element moved by just under its bound: everything passes.
        let near: Vec<f64> = want.iter().map(|w| w + 0.99 * (1e-5 + 1e-4 * w.abs())).collect();
        let o = &judge(std::slice::from_ref(&c), &[ran(near)], &dump)[0];
        assert!(o.pass && o.max_err > 0.0, "{o:?}");
        // One sampled element off: named with both values.
        let i = dump.cases[0].outputs[0].samples[7].0;
        let mut off = want.clone();
        off[i] += 1e-3;
        let o = &judge(std::slice::from_ref(&c), &[ran(off)], &dump)[0];
        assert!(!o.pass && o.detail.as_deref().unwrap().starts_with(&format!("y[{i}]: wasm")), "{o:?}");
        // An element that is not sampled, its sign flipped (the largest |value| stays): its
        // block's sum catches it.
        let sampled: Vec<usize> = dump.cases[0].outputs[0].samples.iter().map(|s| s.0).collect();
        let j = (30_000..70_001).find(|j| !sampled.contains(j) && want[*j].abs() > 0.5).unwrap();
        let mut off = want.clone();
        off[j] = -off[j];
        let o = &judge(std::slice::from_ref(&c), &[ran(off)], &dump)[0];
        assert!(!o.pass && o.detail.as_deref().unwrap().contains(": sum"), "{o:?}");
        // The tail: SIMD remainders.
        let mut off = want.clone();
        off[70_000] = -off[70_000];
        assert!(!judge(std::slice::from_ref(&c), &[ran(off)], &dump)[0].pass);
        // Another version's shapes: a clear mismatch.
        let o = &judge(std::slice::from_ref(&c), &[ran(want[..100].to_vec())], &dump)[0];
        assert!(!o.pass && o.detail.as_deref().unwrap().contains("another version"), "{o:?}");
    }

    /// The native CPU tiers against the portable reference's dump: what the browser does, here.
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn the_simd_tiers_pass_against_the_portable_dump() {
        use crate::device::cpu::{with_tier, Tier};
        use crate::device::{block_on, Device};
        let cases = super::super::cases();
        let reference = super::super::reference(&cases);
        let dump = Dump::of(&cases, &reference, "test".into());
        let text = serde_json::to_string(&dump).unwrap();
        assert!(text.len() < 300_000, "the dump is {} bytes", text.len());
        let dump = Dump::from_json("test", &text).unwrap();
        for tier in Tier::supported() {
            let ran = with_tier(tier, || block_on(None, super::super::run_each(&cases, &Device::cpu())));
            for o in judge(&cases, &ran, &dump) {
                assert!(o.pass, "{} on {tier}: {:?}", o.op, o.detail);
            }
        }
    }
}
