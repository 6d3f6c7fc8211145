use crate::common::*;
use flexlora::ops::attention::{self, Dims};

/// Straightforward reference: full score matrix, explicit causal mask, f64 softmax. Returns the
/// output and the log-sum-exp [B, H, T].
fn naive(q: &[f32], k: &[f32], v: &[f32], dm: Dims) -> (Vec<f32>, Vec<f32>) {
    let Dims { b: nb, t, s, h, kv, d, scale, s_cap } = dm;
    let mut o = vec![0f32; nb * t * h * d];
    let mut lse = vec![0f32; nb * h * t];
    for b in 0..nb {
        for hh in 0..h {
            let g = hh / (h / kv);
            for i in 0..t {
                let qi = &q[((b * t + i) * h + hh) * d..][..d];
                let sc: Vec<f64> = (0..s)
                    .map(|j| {
                        if j > i + s - t {
                            return f64::NEG_INFINITY;
                        }
                        let kj = &k[((b * s_cap + j) * kv + g) * d..][..d];
                        scale as f64 * qi.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                lse[(b * h + hh) * t + i] = (m + z.ln()) as f32;
                for e in 0..d {
                    o[((b * t + i) * h + hh) * d + e] =
                        (0..s).map(|j| (sc[j] - m).exp() / z * v[((b * s_cap + j) * kv + g) * d + e] as f64).sum::<f64>() as f32;
                }
            }
        }
    }
    (o, lse)
}

fn inputs(dm: Dims, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let Dims { b, t, h, kv, d, s_cap, .. } = dm;
    (rng.vec(b * t * h * d, 1.0), rng.vec(b * s_cap * kv * d, 1.0), rng.vec(b * s_cap * kv * d, 1.0), rng.vec(b * t * h * d, 1.0))
}

#[test]
fn cpu_forward_matches_naive_with_cache_and_gqa() {
    let dev = cpu();
    for dm in [
        Dims { b: 2, t: 5, s: 5, h: 4, kv: 2, d: 8, scale: 0.35, s_cap: 5 },
        Dims { b: 1, t: 3, s: 7, h: 3, kv: 1, d: 5, scale: 0.5, s_cap: 7 },
        Dims { b: 2, t: 2, s: 6, h: 2, kv: 1, d: 4, scale: 0.5, s_cap: 9 },
        // Decode-sized rows with d a multiple of 16 take the AVX-512 row kernel on that tier (d = 64: SmolLM2's heads, an odd number of keys; d = 48 and 128: 3 and 8 registers).
        Dims { b: 2, t: 1, s: 37, h: 9, kv: 3, d: 64, scale: 0.125, s_cap: 40 },
        Dims { b: 1, t: 3, s: 20, h: 4, kv: 2, d: 48, scale: 0.15, s_cap: 20 },
        Dims { b: 1, t: 2, s: 11, h: 2, kv: 1, d: 128, scale: 0.09, s_cap: 12 },
        // From 8 queries on the CPU twin takes its per-head GEMM path.
        Dims { b: 2, t: 9, s: 12, h: 4, kv: 2, d: 8, scale: 0.35, s_cap: 14 },
        Dims { b: 1, t: 33, s: 33, h: 3, kv: 1, d: 16, scale: 0.25, s_cap: 33 },
        // Several 64-row blocks, the last one partial, with a cache in front.
        Dims { b: 1, t: 150, s: 170, h: 2, kv: 1, d: 8, scale: 0.3, s_cap: 171 },
    ] {
        let (q, k, v, _) = inputs(dm, 70);
        let (want_o, want_lse) = naive(&q, &k, &v, dm);
        each_tier(|tier| {
            let (o, lse) = attention::forward(
                &dev,
                &up(&dev, &[dm.b * dm.t, dm.h * dm.d], &q),
                &up(&dev, &[dm.b * dm.s_cap, dm.kv * dm.d], &k),
                &up(&dev, &[dm.b * dm.s_cap, dm.kv * dm.d], &v),
                dm,
            )
            .unwrap();
            assert_close(&format!("attention vs naive {dm:?}, CPU tier {tier}"), &read(&dev, &o), &want_o, 1e-5, 1e-4);
            assert_close(&format!("lse vs naive {dm:?}, CPU tier {tier}"), &read(&dev, &lse), &want_lse, 1e-5, 1e-5);
        });
    }
}

#[test]
fn cpu_backward_matches_finite_differences() {
    // Row-walking path (T < 8) and per-head GEMM path, both with cached positions (S > T).
    cpu_backward_fd(Dims { b: 2, t: 4, s: 6, h: 4, kv: 2, d: 3, scale: 0.6, s_cap: 8 });
    cpu_backward_fd(Dims { b: 2, t: 9, s: 11, h: 4, kv: 2, d: 3, scale: 0.6, s_cap: 12 });
}

fn cpu_backward_fd(dm: Dims) {
    let (q, k, v, dout) = inputs(dm, 71);
    let dev = cpu();
    let (qs, ks) = ([dm.b * dm.t, dm.h * dm.d], [dm.b * dm.s_cap, dm.kv * dm.d]);
    let fwd = |q: &[f32], k: &[f32], v: &[f32]| {
        read(&dev, &attention::forward(&dev, &up(&dev, &qs, q), &up(&dev, &ks, k), &up(&dev, &ks, v), dm).unwrap().0)
    };
    let (qt, kt, vt) = (up(&dev, &qs, &q), up(&dev, &ks, &k), up(&dev, &ks, &v));
    let (o, lse) = attention::forward(&dev, &qt, &kt, &vt, dm).unwrap();
    let (dq, dk, dv) = attention::backward(&dev, &qt, &kt, &vt, &o, &lse, &up(&dev, &qs, &dout), dm).unwrap();
    check_grad("attention dq", &q, &read(&dev, &dq), 200, |x| dot(&fwd(x, &k, &v), &dout));
    check_grad("attention dk", &k, &read(&dev, &dk), 200, |x| dot(&fwd(&q, x, &v), &dout));
    check_grad("attention dv", &v, &read(&dev, &dv), 200, |x| dot(&fwd(&q, &k, x), &dout));
}

#[test]
fn gpu_matches_cpu() {
    for dm in [
        Dims { b: 2, t: 13, s: 13, h: 9, kv: 3, d: 64, scale: 0.125, s_cap: 13 },
        Dims { b: 1, t: 5, s: 21, h: 4, kv: 4, d: 24, scale: 0.2, s_cap: 21 },
        Dims { b: 2, t: 3, s: 10, h: 6, kv: 2, d: 16, scale: 0.25, s_cap: 17 },
        Dims { b: 2, t: 9, s: 12, h: 4, kv: 2, d: 8, scale: 0.35, s_cap: 14 },
        Dims { b: 1, t: 150, s: 170, h: 2, kv: 1, d: 8, scale: 0.3, s_cap: 171 },
    ] {
        let (q, k, v, dout) = inputs(dm, 72);
        let (qs, ks) = ([dm.b * dm.t, dm.h * dm.d], [dm.b * dm.s_cap, dm.kv * dm.d]);
        cpu_vs_gpu(&format!("attention {dm:?}"), 1e-5, 1e-4, |dev| {
            let (qt, kt, vt) = (up(dev, &qs, &q), up(dev, &ks, &k), up(dev, &ks, &v));
            let (o, lse) = attention::forward(dev, &qt, &kt, &vt, dm).unwrap();
            let (dq, dk, dv) = attention::backward(dev, &qt, &kt, &vt, &o, &lse, &up(dev, &qs, &dout), dm).unwrap();
            vec![read(dev, &o), read(dev, &lse), read(dev, &dq), read(dev, &dk), read(dev, &dv)]
        });
    }
}
