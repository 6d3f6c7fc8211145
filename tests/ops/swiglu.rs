use crate::common::*;
use flexlora::ops::swiglu;

#[test]
fn cpu_backward_matches_finite_differences() {
    let n = 40;
    let mut rng = Rng::new(40);
    let (g, u, dh) = (rng.vec(n, 4.0), rng.vec(n, 2.0), rng.vec(n, 1.0));
    let dev = cpu();
    let fwd = |g: &[f32], u: &[f32]| read(&dev, &swiglu::forward(&dev, &up(&dev, &[n], g), &up(&dev, &[n], u)).unwrap());
    let (dg, du) = swiglu::backward(&dev, &up(&dev, &[n], &g), &up(&dev, &[n], &u), &up(&dev, &[n], &dh)).unwrap();
    check_grad("swiglu dg", &g, &read(&dev, &dg), n, |g| dot(&fwd(g, &u), &dh));
    check_grad("swiglu du", &u, &read(&dev, &du), n, |u| dot(&fwd(&g, u), &dh));
    // silu(0) = 0 and silu(x) -> x for large x
    let h = read(&dev, &swiglu::forward(&dev, &up(&dev, &[2], &[0.0, 30.0]), &up(&dev, &[2], &[1.0, 1.0])).unwrap());
    assert_close("silu values", &h, &[0.0, 30.0], 1e-5, 1e-5);
}

#[test]
fn gpu_matches_cpu() {
    let n = 5 * 1537;
    let mut rng = Rng::new(41);
    let (g, u, dh) = (rng.vec(n, 6.0), rng.vec(n, 2.0), rng.vec(n, 1.0));
    cpu_vs_gpu("swiglu", 1e-5, 1e-4, |dev| {
        let (gt, ut) = (up(dev, &[5, 1537], &g), up(dev, &[5, 1537], &u));
        let h = swiglu::forward(dev, &gt, &ut).unwrap();
        let (dg, du) = swiglu::backward(dev, &gt, &ut, &up(dev, &[5, 1537], &dh)).unwrap();
        vec![read(dev, &h), read(dev, &dg), read(dev, &du)]
    });
}
