use crate::common::*;
use flexlora::ops::cross_entropy::{self, IGNORE};

#[test]
fn forward_matches_naive_and_ignores() {
    let dev = cpu();
    let logits = [1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5];
    let (loss, _) = cross_entropy::forward(&dev, &up(&dev, &[2, 3], &logits), &up_u32(&dev, &[2], &[0, IGNORE])).unwrap();
    let want0 = ((1f64.exp() + 2f64.exp() + 3f64.exp()).ln() - 1.0) as f32;
    assert_close("loss", &read(&dev, &loss), &[want0, 0.0], 1e-6, 1e-6);
}

#[test]
fn cpu_backward_matches_finite_differences() {
    let (n, v) = (4, 9);
    let mut rng = Rng::new(50);
    let logits = rng.vec(n * v, 3.0);
    let targets = [3, IGNORE, 0, 8];
    let dev = cpu();
    let tt = up_u32(&dev, &[n], &targets);
    let (_, lse) = cross_entropy::forward(&dev, &up(&dev, &[n, v], &logits), &tt).unwrap();
    let scale = 1.0 / 3.0; // mean over the 3 counted rows
    let d = cross_entropy::backward(&dev, &up(&dev, &[n, v], &logits), &tt, &lse, scale).unwrap();
    check_grad("cross_entropy dlogits", &logits, &read(&dev, &d), n * v, |l| {
        read(&dev, &cross_entropy::forward(&dev, &up(&dev, &[n, v], l), &tt).unwrap().0).iter().map(|&x| x as f64).sum::<f64>()
            * scale as f64
    });
}

#[test]
fn gpu_matches_cpu_large_vocab() {
    let (n, v) = (5, 49_157);
    let mut rng = Rng::new(51);
    let logits = rng.vec(n * v, 8.0);
    let targets = [0, 49_156, IGNORE, 1234, 7];
    cpu_vs_gpu("cross_entropy", 1e-5, 1e-4, |dev| {
        let (lt, tt) = (up(dev, &[n, v], &logits), up_u32(dev, &[n], &targets));
        let (loss, lse) = cross_entropy::forward(dev, &lt, &tt).unwrap();
        let d = cross_entropy::backward(dev, &lt, &tt, &lse, 0.25).unwrap();
        vec![read(dev, &loss), read(dev, &lse), read(dev, &d)]
    });
}
