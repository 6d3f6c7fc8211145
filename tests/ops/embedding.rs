use crate::common::*;
use flexlora::ops::embedding;

#[test]
fn forward_gathers_rows_and_zeroes_unknown_ids() {
    let dev = cpu();
    let table: Vec<f32> = (0..12).map(|i| i as f32).collect(); // V=4, C=3
    let y = embedding::forward(&dev, &up_u32(&dev, &[3], &[2, 0, 9]), &up(&dev, &[4, 3], &table)).unwrap();
    assert_eq!(read(&dev, &y), vec![6.0, 7.0, 8.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0]);
}

#[test]
fn cpu_backward_matches_finite_differences() {
    let (v, c, t) = (6, 5, 9);
    let mut rng = Rng::new(20);
    let ids: Vec<u32> = (0..t).map(|_| rng.below(v as u64) as u32).collect();
    let (table, dy) = (rng.vec(v * c, 1.0), rng.vec(t * c, 1.0));
    let dev = cpu();
    let idt = up_u32(&dev, &[t], &ids);
    let dtable = embedding::backward(&dev, &idt, v, &up(&dev, &[t, c], &dy)).unwrap();
    check_grad("embedding dtable", &table, &read(&dev, &dtable), 100, |tb| {
        dot(&read(&dev, &embedding::forward(&dev, &idt, &up(&dev, &[v, c], tb)).unwrap()), &dy)
    });
}

#[test]
fn gpu_matches_cpu() {
    let (v, c, t) = (1001, 67, 130);
    let mut rng = Rng::new(21);
    let mut ids: Vec<u32> = (0..t).map(|_| rng.below(v as u64) as u32).collect();
    ids[3] = ids[7]; // repeated ids must sum in backward
    ids[5] = v as u32 + 4; // out of range
    let (table, dy) = (rng.vec(v * c, 1.0), rng.vec(t * c, 1.0));
    cpu_vs_gpu("embedding", 1e-6, 1e-5, |dev| {
        let idt = up_u32(dev, &[t], &ids);
        let y = embedding::forward(dev, &idt, &up(dev, &[v, c], &table)).unwrap();
        let dtable = embedding::backward(dev, &idt, v, &up(dev, &[t, c], &dy)).unwrap();
        vec![read(dev, &y), read(dev, &dtable)]
    });
}
