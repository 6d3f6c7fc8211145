use crate::common::*;
use flexlora::ops::rope::{self, Layout, RopeTables};

fn tables(dev: &flexlora::Device, d: usize) -> RopeTables {
    RopeTables::new(dev, &RopeTables::inv_freq(d, 10000.0), 64).unwrap()
}

#[test]
fn rotation_matches_the_formula_in_both_layouts() {
    let dev = cpu();
    let d = 4;
    let tab = tables(&dev, d);
    let x = [1.0, 2.0, 3.0, 4.0];
    let pos = 5usize; // t = 1, offset = 5
    let (f0, f1) = (1.0f64, 10000f64.powf(-0.5));
    let (c0, s0, c1, s1) =
        ((pos as f64 * f0).cos() as f32, (pos as f64 * f0).sin() as f32, (pos as f64 * f1).cos() as f32, (pos as f64 * f1).sin() as f32);
    let y = rope::forward(&dev, &up(&dev, &[1, 1, d], &x), &tab, 1, pos, Layout::HalfSplit).unwrap();
    let want = [1.0 * c0 - 3.0 * s0, 2.0 * c1 - 4.0 * s1, 1.0 * s0 + 3.0 * c0, 2.0 * s1 + 4.0 * c1];
    assert_close("half-split", &read(&dev, &y), &want, 1e-6, 1e-6);
    let y = rope::forward(&dev, &up(&dev, &[1, 1, d], &x), &tab, 1, pos, Layout::Interleaved).unwrap();
    let want = [1.0 * c0 - 2.0 * s0, 1.0 * s0 + 2.0 * c0, 3.0 * c1 - 4.0 * s1, 3.0 * s1 + 4.0 * c1];
    assert_close("interleaved", &read(&dev, &y), &want, 1e-6, 1e-6);
}

#[test]
fn cpu_backward_matches_finite_differences() {
    let (b, t, h, d) = (2, 3, 2, 6);
    let dev = cpu();
    let tab = tables(&dev, d);
    let mut rng = Rng::new(30);
    let (x, dy) = (rng.vec(b * t * h * d, 1.0), rng.vec(b * t * h * d, 1.0));
    for layout in [Layout::HalfSplit, Layout::Interleaved] {
        let dx = rope::backward(&dev, &up(&dev, &[b * t, h, d], &dy), &tab, t, 2, layout).unwrap();
        check_grad("rope dx", &x, &read(&dev, &dx), 100, |x| {
            dot(&read(&dev, &rope::forward(&dev, &up(&dev, &[b * t, h, d], x), &tab, t, 2, layout).unwrap()), &dy)
        });
    }
}

#[test]
fn gpu_matches_cpu() {
    let (b, t, h, d) = (3, 17, 5, 64);
    let mut rng = Rng::new(31);
    let (x, dy) = (rng.vec(b * t * h * d, 1.0), rng.vec(b * t * h * d, 1.0));
    for layout in [Layout::HalfSplit, Layout::Interleaved] {
        cpu_vs_gpu(&format!("rope {layout:?}"), 1e-5, 1e-5, |dev| {
            let tab = tables(dev, d);
            let y = rope::forward(dev, &up(dev, &[b * t, h, d], &x), &tab, t, 7, layout).unwrap();
            let dx = rope::backward(dev, &up(dev, &[b * t, h, d], &dy), &tab, t, 7, layout).unwrap();
            vec![read(dev, &y), read(dev, &dx)]
        });
    }
}
