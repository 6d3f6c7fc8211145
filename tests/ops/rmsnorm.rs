use crate::common::*;
use flexlora::ops::rmsnorm;
use flexlora::Device;

const EPS: f32 = 1e-5;

#[test]
fn cpu_backward_matches_finite_differences() {
    let (rows, c) = (3, 11);
    let mut rng = Rng::new(10);
    let (x, w, dy) = (rng.vec(rows * c, 2.0), rng.vec(c, 1.0), rng.vec(rows * c, 1.0));
    let dev = cpu();
    let fwd = |x: &[f32], w: &[f32]| read(&dev, &rmsnorm::forward(&dev, &up(&dev, &[rows, c], x), &up(&dev, &[c], w), EPS).unwrap().0);
    let (_, rstd) = rmsnorm::forward(&dev, &up(&dev, &[rows, c], &x), &up(&dev, &[c], &w), EPS).unwrap();
    let (dx, dw) = rmsnorm::backward(&dev, &up(&dev, &[rows, c], &x), &up(&dev, &[c], &w), &rstd, &up(&dev, &[rows, c], &dy)).unwrap();
    check_grad("rmsnorm dx", &x, &read(&dev, &dx), 100, |x| dot(&fwd(x, &w), &dy));
    check_grad("rmsnorm dw", &w, &read(&dev, &dw), 100, |w| dot(&fwd(&x, w), &dy));
}

#[test]
fn forward_normalizes_rows() {
    let dev = cpu();
    let (y, rstd) = rmsnorm::forward(&dev, &up(&dev, &[1, 4], &[1.0, -2.0, 3.0, -4.0]), &up(&dev, &[4], &[1.0; 4]), 0.0).unwrap();
    let r = 1.0 / (30f32 / 4.0).sqrt();
    assert_close("rstd", &read(&dev, &rstd), &[r], 1e-6, 1e-6);
    assert_close("y", &read(&dev, &y), &[r, -2.0 * r, 3.0 * r, -4.0 * r], 1e-6, 1e-6);
}

#[test]
fn gpu_matches_cpu() {
    for &(rows, c) in &[(7, 576), (5, 131), (300, 33)] {
        let mut rng = Rng::new(c as u64);
        let (x, w, dy) = (rng.vec(rows * c, 2.0), rng.vec(c, 1.0), rng.vec(rows * c, 1.0));
        cpu_vs_gpu(&format!("rmsnorm {rows}x{c}"), 1e-5, 1e-4, |dev| {
            let (xt, wt) = (up(dev, &[rows, c], &x), up(dev, &[c], &w));
            let (y, rstd) = rmsnorm::forward(dev, &xt, &wt, EPS).unwrap();
            let (dx, dw) = rmsnorm::backward(dev, &xt, &wt, &rstd, &up(dev, &[rows, c], &dy)).unwrap();
            vec![read(dev, &y), read(dev, &rstd), read(dev, &dx), read(dev, &dw)]
        });
    }
}

/// `backward_dx` (the frozen-weight path the model uses) is `backward`'s dx bit for bit, on every
/// device, and the GPU's agrees with the CPU's.
#[test]
fn backward_dx_is_backwards_dx() {
    let (rows, c) = (9, 131);
    let mut rng = Rng::new(11);
    let (x, w, dy) = (rng.vec(rows * c, 2.0), rng.vec(c, 1.0), rng.vec(rows * c, 1.0));
    let run = |dev: &Device| {
        let (xt, wt, dyt) = (up(dev, &[rows, c], &x), up(dev, &[c], &w), up(dev, &[rows, c], &dy));
        let (_, rstd) = rmsnorm::forward(dev, &xt, &wt, EPS).unwrap();
        let (dx, _) = rmsnorm::backward(dev, &xt, &wt, &rstd, &dyt).unwrap();
        let dx_only = rmsnorm::backward_dx(dev, &xt, &wt, &rstd, &dyt).unwrap();
        (read(dev, &dx), read(dev, &dx_only))
    };
    every_device(|dev| {
        let (dx, dx_only) = run(dev);
        let first = dx.iter().zip(&dx_only).position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(first.is_none(), "element {first:?}: backward {:?} vs backward_dx {:?}", first.map(|i| dx[i]), first.map(|i| dx_only[i]));
    });
    cpu_vs_gpu("rmsnorm backward_dx", 1e-5, 1e-4, |dev| vec![run(dev).1]);
}
