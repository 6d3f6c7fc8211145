use crate::common::*;
use flexlora::ops::elementwise;

#[test]
fn cpu_values_and_backward() {
    let dev = cpu();
    let (a, b) = (up(&dev, &[3], &[1.0, 2.0, 3.0]), up(&dev, &[3], &[0.5, -1.0, 2.0]));
    assert_eq!(read(&dev, &elementwise::add(&dev, &a, &b).unwrap()), vec![1.5, 1.0, 5.0]);
    assert_eq!(read(&dev, &elementwise::scale(&dev, &a, -2.0).unwrap()), vec![-2.0, -4.0, -6.0]);
    let mut x = up(&dev, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    elementwise::add_bias(&dev, &mut x, &b).unwrap();
    assert_eq!(read(&dev, &x), vec![1.5, 1.0, 5.0, 4.5, 4.0, 8.0]);
    let (da, db) = elementwise::add_backward(&dev, &b).unwrap();
    assert_eq!((read(&dev, &da), read(&dev, &db)), (vec![0.5, -1.0, 2.0], vec![0.5, -1.0, 2.0]));
    // scale's backward is scale: check against finite differences of sum(α·a · dout).
    let dout = [0.3f32, -0.7, 1.1];
    let g = read(&dev, &elementwise::scale(&dev, &up(&dev, &[3], &dout), 1.7).unwrap());
    check_grad("scale", &[1.0, 2.0, 3.0], &g, 3, |x| dot(&read(&dev, &elementwise::scale(&dev, &up(&dev, &[3], x), 1.7).unwrap()), &dout));
}

#[test]
fn gpu_matches_cpu() {
    // Long enough to need a 2-D dispatch on adapters with 65535 workgroups per dimension.
    let n = 65_535 * 256 + 1001;
    let mut rng = Rng::new(60);
    let (a, b) = (rng.vec(n, 1.0), rng.vec(n, 1.0));
    cpu_vs_gpu("elementwise", 1e-6, 1e-6, |dev| {
        let (at, bt) = (up(dev, &[n], &a), up(dev, &[n], &b));
        let c = elementwise::add(dev, &at, &bt).unwrap();
        let s = elementwise::scale(dev, &at, 0.5).unwrap();
        let mut acc = up(dev, &[n], &b);
        elementwise::accumulate(dev, &mut acc, &at, -3.0).unwrap();
        let mut biased = up(dev, &[n / 7, 7], &a[..n / 7 * 7]);
        elementwise::add_bias(dev, &mut biased, &up(dev, &[7], &b[..7])).unwrap();
        vec![read(dev, &c), read(dev, &s), read(dev, &acc), read(dev, &biased)]
    });
}

/// A buffer above the adapter's storage-binding limit is a clear error naming the tensor and the
/// limit, never a device loss or a silent wrong answer.
#[test]
fn oversized_binding_is_a_clear_error() {
    each_gpu(|g| {
        let limit = g.gpu().unwrap().limits.max_storage_buffer_binding_size as usize;
        let n = limit / 4 + 1024;
        let big = flexlora::Tensor::zeros(g, "huge.weight", &[n], flexlora::DType::F32);
        let err = elementwise::scale(g, &big, 2.0).unwrap_err().to_string();
        assert!(err.contains("huge.weight") && err.contains(&limit.to_string()), "{err}");
    });
}

/// Dropout keeps about 1-p of the elements, scales them by 1/(1-p), is a pure function of the
/// seed (so it is its own backward), and the GPU draws exactly the CPU's mask.
#[test]
fn dropout_mask_is_seeded_and_identical_on_every_device() {
    let n = 100_003;
    let x: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32).collect();
    let p = 0.25;
    let dev = cpu();
    let y = read(&dev, &elementwise::dropout(&dev, &up(&dev, &[n], &x), p, 7).unwrap());
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
    assert!((kept - 0.75).abs() < 0.01, "kept share {kept}");
    for (i, (&yi, &xi)) in y.iter().zip(&x).enumerate() {
        assert!(yi == 0.0 || (yi - xi / 0.75).abs() < 1e-6, "element {i}: {yi} from {xi}");
    }
    let again = read(&dev, &elementwise::dropout(&dev, &up(&dev, &[n], &x), p, 7).unwrap());
    assert_eq!(y, again, "same seed, same mask");
    let other = read(&dev, &elementwise::dropout(&dev, &up(&dev, &[n], &x), p, 8).unwrap());
    assert_ne!(y, other, "another seed, another mask");
    assert!(elementwise::dropout(&dev, &up(&dev, &[n], &x), 1.0, 7).is_err());
    cpu_vs_gpu("dropout", 0.0, 1e-6, |dev| vec![read(dev, &elementwise::dropout(dev, &up(dev, &[n], &x), p, 7).unwrap())]);
}
