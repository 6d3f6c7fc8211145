//! Optimizer steps against the published update rules worked out here in f64, on every device;
//! the gradient-norm reduction against an f64 sum; the GNB label sampler against the CPU twin
//! bit for bit and against the softmax probabilities it must sample from.

use crate::common::*;
use flexlora::device::Device;
use flexlora::ops::cross_entropy::IGNORE;
use flexlora::ops::optim::{self, AdamW, Sophia};
use flexlora::Tensor;

fn read_u32(dev: &Device, t: &Tensor) -> Vec<u32> {
    match flexlora::device::block_on(Some(dev), t.to_host(dev)).expect("read-back") {
        flexlora::tensor::HostData::U32(v) => v,
        other => panic!("expected u32 labels, got {other:?}"),
    }
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// torch.optim.AdamW / Loshchilov & Hutter, written from the rule: decoupled decay p -= lr·wd·p,
/// then the bias-corrected Adam step with eps outside the square root.
#[allow(clippy::too_many_arguments)]
fn adamw_f64(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f32], hp: &AdamW, lr: f64, t: i32, grad_scale: f64) {
    let (b1, b2, eps, wd) = (hp.beta1 as f64, hp.beta2 as f64, hp.eps as f64, hp.weight_decay as f64);
    for i in 0..p.len() {
        let gi = grad_scale * g[i] as f64;
        p[i] -= lr * wd * p[i];
        m[i] = b1 * m[i] + (1.0 - b1) * gi;
        v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
        let m_hat = m[i] / (1.0 - b1.powi(t));
        let v_hat = v[i] / (1.0 - b2.powi(t));
        p[i] -= lr * m_hat / (v_hat.sqrt() + eps);
    }
}

#[test]
fn adamw_three_steps_match_the_published_rule() {
    let n = 9;
    let mut rng = Rng::new(700);
    let p0 = rng.vec(n, 1.5);
    // Gradients from 1e-4 to 1: eps (1e-3 here, larger than torch's default so it matters) is
    // outside the square root, which only the small ones can tell apart.
    let grads: Vec<Vec<f32>> =
        (0..3).map(|s| rng.vec(n, 1.0).iter().enumerate().map(|(i, g)| g * 10f32.powi(-((i + s) as i32 % 5))).collect()).collect();
    let hp = AdamW { beta1: 0.9, beta2: 0.99, eps: 1e-3, weight_decay: 0.1 };
    let lrs = [1e-2f32, 3e-2, 5e-3];
    let grad_scale = 0.5f32;

    let (mut p, mut m, mut v) = (f64s(&p0), vec![0f64; n], vec![0f64; n]);
    let mut want = vec![];
    for t in 0..3 {
        adamw_f64(&mut p, &mut m, &mut v, &grads[t], &hp, lrs[t] as f64, t as i32 + 1, grad_scale as f64);
        want.push((f32s(&p), f32s(&m), f32s(&v)));
    }
    // The steps must move the parameters well beyond the tolerance, or the test proves nothing.
    assert!(p.iter().zip(&p0).all(|(a, &b)| (a - b as f64).abs() > 1e-4), "steps too small to test: {p:?} vs {p0:?}");

    every_device(|dev| {
        let mut pt = Tensor::from_f32(dev, "w", &[3, 3], &p0).unwrap();
        let mut mt = Tensor::zeros(dev, "w.m", &[3, 3], flexlora::DType::F32);
        let mut vt = Tensor::zeros(dev, "w.v", &[3, 3], flexlora::DType::F32);
        for t in 0..3 {
            let g = up(dev, &[3, 3], &grads[t]);
            optim::adamw(dev, &mut pt, &g, &mut mt, &mut vt, &hp, lrs[t], t as u32 + 1, &optim::control(dev, grad_scale).unwrap()).unwrap();
            let what = format!("adamw on {} step {}", dev.kind(), t + 1);
            assert_close(&format!("{what} m"), &read(dev, &mt), &want[t].1, 1e-7, 1e-5);
            assert_close(&format!("{what} v"), &read(dev, &vt), &want[t].2, 1e-10, 1e-5);
            assert_close(&format!("{what} p"), &read(dev, &pt), &want[t].0, 1e-6, 1e-5);
        }
    });
}

#[test]
fn adamw_defaults_and_errors() {
    assert_eq!(AdamW::default(), AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 });
    let json = serde_json::to_string(&Sophia::default()).unwrap();
    assert_eq!(serde_json::from_str::<Sophia>(&json).unwrap(), Sophia::default());
    let dev = cpu();
    let mut p = Tensor::from_f32(&dev, "lora_a", &[2, 3], &[0.0; 6]).unwrap();
    let g = Tensor::from_f32(&dev, "lora_a.grad", &[2, 3], &[0.0; 6]).unwrap();
    let mut m = Tensor::from_f32(&dev, "lora_a.m", &[3, 2], &[0.0; 6]).unwrap();
    let mut v = Tensor::from_f32(&dev, "lora_a.v", &[2, 3], &[0.0; 6]).unwrap();
    let err = optim::adamw(&dev, &mut p, &g, &mut m, &mut v, &AdamW::default(), 1e-3, 1, &optim::control(&dev, 1.0).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("lora_a.m") && err.contains("[3, 2]") && err.contains("[2, 3]"), "{err}");
    let mut m = Tensor::from_f32(&dev, "lora_a.m", &[2, 3], &[0.0; 6]).unwrap();
    let err = optim::adamw(&dev, &mut p, &g, &mut m, &mut v, &AdamW::default(), 1e-3, 0, &optim::control(&dev, 1.0).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("step"), "{err}");
    let bad = AdamW { beta2: 1.0, ..AdamW::default() };
    assert!(optim::adamw(&dev, &mut p, &g, &mut m, &mut v, &bad, 1e-3, 1, &optim::control(&dev, 1.0).unwrap()).is_err());
}

/// SophiaG (Liu et al. 2023, Algorithm 3) from the rule; returns how many coordinates the clip
/// saturated.
fn sophia_f64(p: &mut [f64], m: &mut [f64], h: &[f64], g: &[f32], hp: &Sophia, lr: f64, grad_scale: f64) -> usize {
    let (b1, rho, eps, wd) = (hp.beta1 as f64, hp.rho as f64, hp.eps as f64, hp.weight_decay as f64);
    let mut saturated = 0;
    for i in 0..p.len() {
        p[i] *= 1.0 - lr * wd;
        m[i] = b1 * m[i] + (1.0 - b1) * grad_scale * g[i] as f64;
        let ratio = m[i] / (rho * h[i]).max(eps);
        saturated += (ratio.abs() >= 1.0) as usize;
        p[i] -= lr * ratio.clamp(-1.0, 1.0);
    }
    saturated
}

#[test]
fn sophia_three_steps_with_hessian_updates_match_the_published_rule() {
    let n = 10;
    let mut rng = Rng::new(710);
    let p0 = rng.vec(n, 1.0);
    // A zero Hessian (sign descent), small ones that saturate, large ones that do not.
    let h0 = [0.0f32, 0.5, 1.0, 5.0, 20.0, 100.0, 2.0, 0.01, 40.0, 8.0];
    let grads: Vec<Vec<f32>> = (0..3).map(|_| rng.vec(n, 1.0)).collect();
    let ghats: Vec<Vec<f32>> = (0..2).map(|_| rng.vec(n, 1.0)).collect();
    let hp = Sophia::default();
    let (lrs, grad_scale, batch) = ([0.05f32, 0.02, 0.04], 2.0f32, 16.0f32);

    let (mut p, mut m, mut h) = (f64s(&p0), vec![0f64; n], f64s(&h0));
    let mut want = vec![];
    for t in 0..3 {
        let saturated = sophia_f64(&mut p, &mut m, &h, &grads[t], &hp, lrs[t] as f64, grad_scale as f64);
        assert!(saturated > 0 && saturated < n, "step {t}: {saturated} of {n} saturated; the data must exercise both sides of the clip");
        if t < 2 {
            let b2 = hp.beta2 as f64;
            for i in 0..n {
                h[i] = b2 * h[i] + (1.0 - b2) * batch as f64 * ghats[t][i] as f64 * ghats[t][i] as f64;
            }
        }
        want.push((f32s(&p), f32s(&m), f32s(&h)));
    }

    every_device(|dev| {
        let mut pt = Tensor::from_f32(dev, "w", &[n], &p0).unwrap();
        let mut mt = Tensor::zeros(dev, "w.m", &[n], flexlora::DType::F32);
        let mut ht = Tensor::from_f32(dev, "w.h", &[n], &h0).unwrap();
        for t in 0..3 {
            let g = up(dev, &[n], &grads[t]);
            optim::sophia(dev, &mut pt, &g, &mut mt, &ht, &hp, lrs[t], &optim::control(dev, grad_scale).unwrap()).unwrap();
            if t < 2 {
                optim::sophia_hessian(dev, &mut ht, &up(dev, &[n], &ghats[t]), hp.beta2, batch).unwrap();
            }
            let what = format!("sophia on {} step {}", dev.kind(), t + 1);
            assert_close(&format!("{what} m"), &read(dev, &mt), &want[t].1, 1e-7, 1e-5);
            assert_close(&format!("{what} h"), &read(dev, &ht), &want[t].2, 1e-7, 1e-5);
            assert_close(&format!("{what} p"), &read(dev, &pt), &want[t].0, 1e-6, 1e-5);
        }
    });
}

#[test]
fn sum_squares_matches_f64() {
    let sizes = [1usize, 1000, 0, 70_001, (1 << 20) + 3];
    let mut rng = Rng::new(720);
    let data: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n, 2.0)).collect();
    let want: f64 = data.iter().flatten().map(|&x| x as f64 * x as f64).sum();
    every_device(|dev| {
        let ts: Vec<Tensor> = data.iter().map(|d| up(dev, &[d.len()], d)).collect();
        let refs: Vec<&Tensor> = ts.iter().collect();
        let s = optim::sum_squares(dev, &refs).unwrap();
        assert_eq!(s.shape(), &[1]);
        assert_close(&format!("sum_squares on {}", dev.kind()), &read(dev, &s), &[want as f32], 0.0, 1e-5);
        // One small tensor alone, and none at all.
        let one = optim::sum_squares(dev, &refs[1..2]).unwrap();
        let want1: f64 = data[1].iter().map(|&x| x as f64 * x as f64).sum();
        assert_close(&format!("sum_squares(one) on {}", dev.kind()), &read(dev, &one), &[want1 as f32], 0.0, 1e-5);
        assert_eq!(read(dev, &optim::sum_squares(dev, &[]).unwrap()), vec![0.0]);
    });
}

#[test]
fn sample_labels_gpu_equals_cpu_and_keeps_ignored_rows() {
    for (rows, vocab) in [(37usize, 1000usize), (3, 49_157)] {
        let mut rng = Rng::new(730 + vocab as u64);
        let logits = rng.vec(rows * vocab, 4.0);
        let targets: Vec<u32> = (0..rows).map(|r| if r % 5 == 2 { IGNORE } else { (r % vocab) as u32 }).collect();
        for seed in [0u32, 12345, u32::MAX] {
            let dev = cpu();
            let want = read_u32(
                &dev,
                &optim::sample_labels(&dev, &up(&dev, &[rows, vocab], &logits), &up_u32(&dev, &[rows], &targets), seed).unwrap(),
            );
            for (r, (&l, &t)) in want.iter().zip(&targets).enumerate() {
                assert!(if t == IGNORE { l == IGNORE } else { (l as usize) < vocab }, "row {r}: target {t}, label {l}");
            }
            each_gpu(|g| {
                let got =
                    read_u32(g, &optim::sample_labels(g, &up(g, &[rows, vocab], &logits), &up_u32(g, &[rows], &targets), seed).unwrap());
                assert_eq!(got, want, "sample_labels GPU vs CPU, {rows}x{vocab}, seed {seed}");
            });
        }
    }
}

/// Over many rows and seeds, a 4-way softmax is sampled with its probabilities: Pearson's
/// chi-square with 3 degrees of freedom under 20 (p ≈ 2e-4 for a correct sampler; the seeds are
/// fixed, so it cannot flake). A sampler off by a few percent in one class fails it.
#[test]
fn sample_labels_follow_the_softmax() {
    let probs = [0.1f64, 0.2, 0.3, 0.4];
    let logits_row: Vec<f32> = probs.iter().map(|p| (p.ln() + 1.7) as f32).collect();
    let (rows, seeds) = (2500usize, 8u32);
    let logits: Vec<f32> = (0..rows).flat_map(|_| logits_row.clone()).collect();
    every_device(|dev| {
        let (lt, tt) = (up(dev, &[rows, 4], &logits), up_u32(dev, &[rows], &vec![0; rows]));
        let mut counts = [0f64; 4];
        let mut per_seed = vec![];
        for seed in 0..seeds {
            let labels = read_u32(dev, &optim::sample_labels(dev, &lt, &tt, seed * 7919 + 1).unwrap());
            labels.iter().for_each(|&l| counts[l as usize] += 1.0);
            per_seed.push(labels);
        }
        let total = (rows as u32 * seeds) as f64;
        let chi2: f64 = counts.iter().zip(&probs).map(|(c, p)| (c - p * total).powi(2) / (p * total)).sum();
        eprintln!("sample_labels on {}: counts {counts:?} of {total}, chi-square {chi2:.2}", dev.kind());
        assert!(chi2 < 20.0, "counts {counts:?} for probabilities {probs:?}: chi-square {chi2}");
        // Different seeds draw differently for the same row.
        assert!(per_seed[0] != per_seed[1], "seed does not change the labels");
    });
}

#[test]
fn sample_labels_of_a_peaked_row_is_its_argmax() {
    // Gumbel noise from a 23-bit uniform lies in [-2.9, 16.7], so a lead of 40 always wins.
    let (rows, vocab) = (6usize, 300usize);
    let mut rng = Rng::new(740);
    let mut logits = rng.vec(rows * vocab, 1.0);
    let peaks: Vec<u32> = (0..rows).map(|r| (r * 53 % vocab) as u32).collect();
    for (r, &k) in peaks.iter().enumerate() {
        logits[r * vocab + k as usize] = 40.0;
    }
    every_device(|dev| {
        let (lt, tt) = (up(dev, &[rows, vocab], &logits), up_u32(dev, &[rows], &vec![1; rows]));
        for seed in 0..40 {
            assert_eq!(read_u32(dev, &optim::sample_labels(dev, &lt, &tt, seed).unwrap()), peaks, "seed {seed} on {}", dev.kind());
        }
    });
}

#[test]
fn sum_matches_f64() {
    let mut rng = Rng::new(721);
    let data: Vec<Vec<f32>> = [3usize, 70_001, 0].iter().map(|&n| rng.vec(n, 2.0)).collect();
    let want: f64 = data.iter().flatten().map(|&x| x as f64).sum();
    every_device(|dev| {
        let ts: Vec<Tensor> = data.iter().map(|d| up(dev, &[d.len()], d)).collect();
        let s = optim::sum(dev, &ts.iter().collect::<Vec<_>>()).unwrap();
        assert_close(&format!("sum on {}", dev.kind()), &read(dev, &s), &[want as f32], 1e-4, 1e-5);
    });
}

/// `step_stats` writes the step's log row and the update's control: the clip factor when the norm
/// exceeds the clip, and go = 0 from a non-finite step on, which later finite steps do not undo;
/// an update whose control says stop changes neither the parameter nor its moments.
#[test]
fn step_stats_logs_clips_and_stops_updates_after_a_non_finite_step() {
    every_device(|dev| {
        let what = dev.kind();
        let mut control = optim::control(dev, 1.0).unwrap();
        let mut log = Tensor::zeros(dev, "log", &[3, 4], flexlora::DType::F32);
        let one = |x: f32| up(dev, &[1], &[x]);
        // Step 1: loss sum 6 over 4 targets, |g|² = 25 (norm 5 > clip 2), FLeX value 3 × 0.5.
        optim::step_stats(dev, &one(6.0), 0.25, &one(25.0), &one(3.0), 0.5, 2.0, &mut control, &mut log, 0).unwrap();
        assert_close(&format!("{what} control after step 1"), &read(dev, &control), &[0.4, 1.0], 1e-7, 1e-6);
        // Step 2: a NaN loss; step 3: finite again, under the clip.
        optim::step_stats(dev, &one(f32::NAN), 0.25, &one(1.0), &one(0.0), 0.0, 2.0, &mut control, &mut log, 1).unwrap();
        optim::step_stats(dev, &one(2.0), 1.0, &one(1.0), &one(0.0), 0.0, 2.0, &mut control, &mut log, 2).unwrap();
        let rows = read(dev, &log);
        assert_close(&format!("{what} step 1 row"), &rows[0..4], &[1.5, 5.0, 1.5, 1.0], 1e-7, 1e-6);
        assert!(rows[4].is_nan() && rows[7] == 0.0, "{what}: step 2 row {:?} must keep the NaN loss and say not finite", &rows[4..8]);
        assert_close(&format!("{what} step 3 row"), &rows[8..12], &[2.0, 1.0, 0.0, 1.0], 1e-7, 1e-6);
        assert_eq!(read(dev, &control)[1], 0.0, "{what}: go must stay 0 after a non-finite step");
        // A stopped update changes nothing, for both optimizers.
        let n = 5;
        let (mut p, mut m, mut v) = (up(dev, &[n], &[1.0; 5]), up(dev, &[n], &[0.5; 5]), up(dev, &[n], &[0.25; 5]));
        let g = up(dev, &[n], &[3.0; 5]);
        optim::adamw(dev, &mut p, &g, &mut m, &mut v, &AdamW { weight_decay: 0.1, ..AdamW::default() }, 0.1, 1, &control).unwrap();
        optim::sophia(dev, &mut p, &g, &mut m, &v, &Sophia::default(), 0.1, &control).unwrap();
        assert_eq!((read(dev, &p), read(dev, &m), read(dev, &v)), (vec![1.0; 5], vec![0.5; 5], vec![0.25; 5]), "{what}");
    });
}
