//! Fused NF4 products: on the CPU against dequantize-then-f32-matmul (`ops::matmul`), then GPU
//! against CPU, forward and input gradient, on odd shapes.

use crate::common::*;
use flexlora::ops::{matmul, matmul_nf4, quant_nf4::Nf4Tensor};
use flexlora::quant::nf4;
use flexlora::Device;

// T >= 16 takes the CPU's tiled path; (20, 300, 72) spans several tiles and a partial one. On the
// GPU, T < 4 takes `forward_few`, T = 7, 9, 19 the token tiles of 8, 16 and 32; (45, 596, 88) and
// (37, 131, 48) span two 32-token tiles with a partial one, and N that fills neither the forward's
// row tiles nor (596 % 8 = 4) backward_dx's 8-row steps; N % 4 != 0 reads dy through a padded copy.
const SHAPES: [(usize, usize, usize); 9] =
    [(7, 70, 192), (1, 70, 192), (3, 300, 64), (1, 33, 64), (19, 5, 200), (9, 130, 8), (20, 300, 72), (45, 596, 88), (37, 131, 48)];

fn weight(dev: &Device, n: usize, k: usize, seed: u64) -> (Nf4Tensor, Vec<f32>) {
    let w = Rng::new(seed).vec(n * k, 0.5);
    let q = nf4::quantize(&w, 64).unwrap();
    let deq = q.dequantize().unwrap();
    (Nf4Tensor::from_nf4(dev, "w", &q, &[n, k]).unwrap(), deq)
}

#[test]
fn cpu_fused_matches_dequantize_then_matmul() {
    let dev = cpu();
    // K = 37: rows that do not start on a byte, only the CPU path takes those. K = 88 at T = 1:
    // rows of partial blocks, which the one-token portable kernel leaves to dequantize-then-dot.
    for &(t, n, k) in SHAPES.iter().chain(&[(3, 11, 37), (1, 9, 88)]) {
        let (w, deq) = weight(&dev, n, k, (t * n * k) as u64);
        let mut rng = Rng::new(7);
        let (x, dy) = (rng.vec(t * k, 1.0), rng.vec(t * n, 1.0));
        let wt = up(&dev, &[n, k], &deq);
        let want_y = read(&dev, &matmul::forward(&dev, &up(&dev, &[t, k], &x), &wt, false, true).unwrap());
        let want_dx = read(&dev, &matmul::forward(&dev, &up(&dev, &[t, n], &dy), &wt, false, false).unwrap());
        each_tier(|tier| {
            let y = read(&dev, &matmul_nf4::forward(&dev, &up(&dev, &[t, k], &x), &w).unwrap());
            let dx = read(&dev, &matmul_nf4::backward_dx(&dev, &up(&dev, &[t, n], &dy), &w).unwrap());
            assert_close(&format!("forward T={t} N={n} K={k}, CPU tier {tier}"), &y, &want_y, 1e-4, 1e-4);
            assert_close(&format!("dx T={t} N={n} K={k}, CPU tier {tier}"), &dx, &want_dx, 1e-4, 1e-4);
        });
    }
}

#[test]
fn cpu_forward_backward_match_finite_differences() {
    let (t, n, k) = (3, 5, 16);
    let dev = cpu();
    let (w, _) = weight(&dev, n, k, 3);
    let mut rng = Rng::new(4);
    let (x, dy) = (rng.vec(t * k, 1.0), rng.vec(t * n, 1.0));
    let dx = read(&dev, &matmul_nf4::backward_dx(&dev, &up(&dev, &[t, n], &dy), &w).unwrap());
    let fwd = |x: &[f32]| read(&dev, &matmul_nf4::forward(&dev, &up(&dev, &[t, k], x), &w).unwrap());
    check_grad("matmul_nf4 dx", &x, &dx, 100, |x| dot(&fwd(x), &dy));
}

#[test]
fn gpu_matches_cpu_forward_and_dx() {
    for &(t, n, k) in &SHAPES {
        let mut rng = Rng::new((t + n + k) as u64);
        let (x, dy) = (rng.vec(t * k, 1.0), rng.vec(t * n, 1.0));
        cpu_vs_gpu(&format!("matmul_nf4 T={t} N={n} K={k}"), 1e-4, 1e-4, |dev| {
            let (w, _) = weight(dev, n, k, 11);
            let y = matmul_nf4::forward(dev, &up(dev, &[t, k], &x), &w).unwrap();
            let dx = matmul_nf4::backward_dx(dev, &up(dev, &[t, n], &dy), &w).unwrap();
            vec![read(dev, &y), read(dev, &dx)]
        });
    }
}

#[test]
fn gpu_rejects_k_not_multiple_of_8() {
    each_gpu(|g| {
        let (w, _) = weight(g, 4, 12, 1);
        let err = matmul_nf4::forward(g, &up(g, &[2, 12], &[0.0; 24]), &w).unwrap_err();
        assert!(err.to_string().contains("multiple of 8"), "{err}");
    });
}
