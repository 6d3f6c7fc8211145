//! FLeX spectral penalty: values against an independent f64 DFT (direct O(N²) for small N, rustfft
//! in f64 for large N), closed forms (constant, cosine), CPU gradient against finite differences,
//! GPU against CPU, on the lengths real LoRA matrices produce and on odd and prime lengths.

use crate::common::*;
use flexlora::device::Device;
use flexlora::ops::spectral::{self, Spectral};
use rustfft::num_complex::Complex;

/// Lengths of flattened LoRA matrices (SmolLM2 r=8: 8x576, 1536x8; Code Llama 7B r=8: 8x4096,
/// 11008x8), then odd ones: 7, 97 and 4099 (primes; Bluestein on the GPU), 1001 = 7·11·13,
/// 3570 = 2·3·5·7·17 (a prime past the register radix).
const LENGTHS: [usize; 9] = [4608, 12288, 32768, 88064, 7, 97, 1001, 4099, 3570];

/// Unnormalized DFT of a real signal in f64, computed independently of the op.
fn dft(x: &[f32]) -> Vec<Complex<f64>> {
    let n = x.len();
    if n <= 5000 {
        // Direct sum; the angle uses jk mod N so it stays exact.
        return (0..n)
            .map(|k| {
                x.iter()
                    .enumerate()
                    .map(|(j, &v)| Complex::from_polar(v as f64, -2.0 * std::f64::consts::PI * ((j * k) % n) as f64 / n as f64))
                    .sum()
            })
            .collect();
    }
    let mut buf: Vec<Complex<f64>> = x.iter().map(|&v| Complex::new(v as f64, 0.0)).collect();
    rustfft::FftPlanner::<f64>::new().plan_fft_forward(n).process(&mut buf);
    buf
}

/// ρ in f64 straight from the definition.
fn rho64(sp: &Spectral, k: usize, n: usize) -> f64 {
    let ramp = (k as f64 / (n as f64 * sp.threshold as f64)).min(1.0);
    1.0 - (sp.phi_low as f64 + (sp.phi_high as f64 - sp.phi_low as f64) * ramp)
}

/// P of `x` cut into rows of length `n`, in f64.
fn ref_penalty(x: &[f32], n: usize, sp: &Spectral) -> f64 {
    x.chunks(n)
        .map(|row| dft(row).iter().take(n / 2 + 1).enumerate().map(|(k, c)| rho64(sp, k, n / 2 + 1) * c.norm_sqr()).sum::<f64>())
        .sum()
}

fn run(dev: &Device, shape: &[usize], x: &[f32], grad0: Option<&[f32]>, coef: f32, sp: &Spectral) -> (f64, Option<Vec<f32>>) {
    let w = up(dev, shape, x);
    let mut g = grad0.map(|g| up(dev, shape, g));
    let p = spectral::penalty(dev, &w, g.as_mut(), coef, sp).unwrap();
    (read(dev, &p)[0] as f64, g.map(|g| read(dev, &g)))
}

#[track_caller]
fn assert_rel(what: &str, got: f64, want: f64, rtol: f64) {
    let err = (got - want).abs() / want.abs().max(1e-30);
    assert!(err <= rtol, "{what}: got {got}, want {want} (relative error {err:.3e} > {rtol:e})");
}

#[test]
fn radices_cover_model_lengths() {
    assert_eq!(spectral::radices(4608), Some(vec![8, 8, 8, 9]));
    assert_eq!(spectral::radices(12288), Some(vec![8, 8, 8, 8, 3]));
    assert_eq!(spectral::radices(88064), Some(vec![8, 8, 8, 4, 43]));
    assert_eq!(spectral::radices(1), Some(vec![]));
    assert_eq!(spectral::radices(4099), None); // prime: Bluestein
    let sp = Spectral::default();
    assert_eq!((sp.rho(0, 101), sp.rho(51, 101), sp.rho(100, 101)), (0.0, 0.9, 0.9));
}

#[test]
fn penalty_matches_reference() {
    let sp = Spectral::default();
    let mut rng = Rng::new(70);
    every_device(|dev| {
        for n in LENGTHS {
            let x = rng.vec(n, 0.05);
            let (got, _) = run(dev, &[n], &x, None, 1.0, &sp);
            assert_rel(&format!("{} N={n}", dev.kind()), got, ref_penalty(&x, n, &sp), 1e-4);
        }
        // per_row, with a non-default ρ so the ramp edge falls between bins.
        let sp = Spectral { threshold: 0.3, phi_low: 0.8, phi_high: 0.05, per_row: true };
        for (r, c) in [(8, 576), (1536, 8), (576, 8), (5, 97), (3, 4099), (4, 1), (3, 2)] {
            let x = rng.vec(r * c, 0.05);
            let (got, _) = run(dev, &[r, c], &x, None, 1.0, &sp);
            assert_rel(&format!("{} per_row {r}x{c}", dev.kind()), got, ref_penalty(&x, c, &sp), 1e-4);
        }
    });
}

#[test]
fn constant_and_cosine_closed_forms() {
    let sp = Spectral::default();
    every_device(|dev| {
        for n in [4608usize, 97, 1001] {
            // A constant lives at DC only, where ρ = 1 - φ_low = 0.
            let c = 0.3f32;
            let (got, _) = run(dev, &[n], &vec![c; n], None, 1.0, &sp);
            let scale = (n as f64 * c as f64).powi(2);
            assert!(got.abs() <= 1e-6 * scale, "{} N={n}: constant costs {got} (scale {scale})", dev.kind());
            // cos(2π f j/N), 0 < f < N/2: X_f = N/2 and its mirror N-f lies outside the half
            // spectrum, so P = ρ_f N²/4 (no doubling).
            let nf = n / 2 + 1;
            for f in [3, n / 5, n / 2 - 1] {
                let x: Vec<f32> = (0..n).map(|j| (2.0 * std::f64::consts::PI * ((f * j) % n) as f64 / n as f64).cos() as f32).collect();
                let want = rho64(&sp, f, nf) * (n * n) as f64 / 4.0;
                let (got, _) = run(dev, &[n], &x, None, 1.0, &sp);
                assert_rel(&format!("{} cos N={n} f={f}", dev.kind()), got, want, 1e-4);
            }
        }
    });
}

/// P is quadratic, so central differences in f64 are exact up to rounding: the check can be tight.
#[test]
fn cpu_grad_matches_finite_differences_and_accumulates() {
    let dev = cpu();
    let mut rng = Rng::new(71);
    let coef = 0.37f32;
    for (shape, per_row) in
        [(vec![7], false), (vec![16], false), (vec![97], false), (vec![6, 10], false), (vec![5, 12], true), (vec![4, 9], true)]
    {
        let sp = Spectral { per_row, ..Spectral::default() };
        let n: usize = shape.iter().product();
        let row = if per_row { shape[1] } else { n };
        let x = rng.vec(n, 1.0);
        let g0 = rng.vec(n, 1.0);
        let (_, g) = run(&dev, &shape, &x, Some(&g0), coef, &sp);
        let got: Vec<f64> = g.unwrap().iter().zip(&g0).map(|(g, g0)| (g - g0) as f64 / coef as f64).collect();
        let mut xp = x.clone();
        let h = 0.25f32; // exact in f32, so x ± h has no representation error beyond x's own
        let scale = got.iter().fold(0f64, |m, v| m.max(v.abs()));
        for i in 0..n {
            xp[i] = x[i] + h;
            let lp = ref_penalty(&xp, row, &sp);
            xp[i] = x[i] - h;
            let lm = ref_penalty(&xp, row, &sp);
            xp[i] = x[i];
            let fd = (lp - lm) / (2.0 * h as f64);
            assert!((fd - got[i]).abs() <= 1e-4 * scale, "{shape:?} per_row={per_row}: dP/dx[{i}] {} vs finite difference {fd}", got[i]);
        }
    }
}

#[test]
fn gpu_grad_matches_cpu() {
    each_gpu(|g| {
        let mut rng = Rng::new(72);
        let coef = 0.02 / 180.0;
        let cases: Vec<(Vec<usize>, bool)> = LENGTHS
            .iter()
            .map(|&n| (vec![n], false))
            .chain([(vec![8, 576], true), (vec![1536, 8], true), (vec![3, 4099], true), (vec![8, 11008], true)])
            .collect();
        for (shape, per_row) in cases {
            let sp = Spectral { per_row, ..Spectral::default() };
            let n: usize = shape.iter().product();
            let x = rng.vec(n, 0.05);
            let g0 = rng.vec(n, 1e-3);
            let (pc, gc) = run(&cpu(), &shape, &x, Some(&g0), coef, &sp);
            let (pg, gg) = run(g, &shape, &x, Some(&g0), coef, &sp);
            assert_rel(&format!("{shape:?} per_row={per_row} penalty GPU vs CPU"), pg, pc, 1e-4);
            let (gc, gg) = (gc.unwrap(), gg.unwrap());
            // Compare the added part, with a tolerance scaled to its largest entry.
            let dc: Vec<f32> = gc.iter().zip(&g0).map(|(a, b)| a - b).collect();
            let dg: Vec<f32> = gg.iter().zip(&g0).map(|(a, b)| a - b).collect();
            let scale = dc.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{shape:?}: zero gradient");
            assert_close(&format!("{shape:?} per_row={per_row} grad GPU vs CPU"), &dg, &dc, 1e-4 * scale, 1e-4);
        }
    });
}

/// penalty_batch stacks same-shape matrices: it must equal per-matrix calls, values and gradients.
#[test]
fn batch_equals_per_matrix() {
    let mut rng = Rng::new(73);
    let shapes = [[8, 576], [1536, 8], [8, 576], [576, 8], [7, 13], [1536, 8], [8, 1536]];
    let xs: Vec<Vec<f32>> = shapes.iter().map(|s| rng.vec(s[0] * s[1], 0.05)).collect();
    let g0: Vec<Vec<f32>> = shapes.iter().map(|s| rng.vec(s[0] * s[1], 1e-3)).collect();
    every_device(|dev| {
        for per_row in [false, true] {
            let sp = Spectral { per_row, ..Spectral::default() };
            let ws: Vec<_> = shapes.iter().zip(&xs).map(|(s, x)| up(dev, s, x)).collect();
            let mut each = 0f64;
            let mut want = Vec::new();
            for ((s, x), g) in shapes.iter().zip(&xs).zip(&g0) {
                let (p, g) = run(dev, s, x, Some(g), 0.01, &sp);
                each += p;
                want.push(g.unwrap());
            }
            let mut gs: Vec<_> = shapes.iter().zip(&g0).map(|(s, g)| up(dev, s, g)).collect();
            let mut grefs: Vec<&mut flexlora::Tensor> = gs.iter_mut().collect();
            let wrefs: Vec<_> = ws.iter().collect();
            let p = spectral::penalty_batch(dev, &wrefs, Some(&mut grefs), 0.01, &sp).unwrap();
            assert_rel(&format!("{} per_row={per_row} batch penalty", dev.kind()), read(dev, &p)[0] as f64, each, 1e-5);
            let p_only = spectral::penalty_batch(dev, &wrefs, None, 0.01, &sp).unwrap();
            assert_rel(&format!("{} per_row={per_row} batch penalty, no grad", dev.kind()), read(dev, &p_only)[0] as f64, each, 1e-5);
            // Stacking changes which rows share a transform on the GPU, so f32 rounding differs.
            for (i, (g, w)) in gs.iter().zip(&want).enumerate() {
                let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert_close(&format!("{} per_row={per_row} matrix {i} grad", dev.kind()), &read(dev, g), w, 1e-5 * scale, 1e-4);
            }
        }
    });
}
