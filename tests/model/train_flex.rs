//! FLeX in the loop: `train` mode lowers the LoRA matrices' high-frequency energy against λ = 0 at
//! the same seed; `published` mode (the paper's code: value logged, no gradient) leaves the training
//! trajectory bit-identical to λ = 0.

use crate::train_loop::{config, fixture};
use flexlora::train::config::FlexMode;
use flexlora::train::run::{self, Trainer};
use flexlora::Device;

/// Share of spectral energy at k ≥ n/2 (n = N/2 + 1 rfft bins) of each flattened LoRA matrix,
/// by a direct DFT (independent of the op's FFT), averaged over matrices.
fn high_frequency_share(tensors: &[(String, Vec<f32>)]) -> f64 {
    let mut total = 0.0;
    for (_, x) in tensors {
        let n_len = x.len();
        let n = n_len / 2 + 1;
        let (mut hi, mut all) = (0.0, 0.0);
        for k in 0..n {
            let (mut re, mut im) = (0f64, 0f64);
            for (j, &v) in x.iter().enumerate() {
                let a = -2.0 * std::f64::consts::PI * (j * k % n_len) as f64 / n_len as f64;
                re += v as f64 * a.cos();
                im += v as f64 * a.sin();
            }
            let e = re * re + im * im;
            all += e;
            if k >= n / 2 {
                hi += e;
            }
        }
        total += hi / all.max(1e-30);
    }
    total / tensors.len() as f64
}

fn train(mode: FlexMode, lambda: f32, tag: &str) -> (Vec<f64>, Vec<Option<f64>>, Vec<(String, Vec<f32>)>) {
    let (dir, data) = fixture(tag);
    let mut cfg = config(&dir, &data, &dir.join("run"));
    cfg.steps = 25;
    cfg.flex.mode = mode;
    cfg.flex.lambda = lambda;
    let dev = Device::cpu();
    let (model, tok) = run::load_model(&dev, &cfg).unwrap();
    let mut tr = Trainer::new(dev, model, &tok, cfg, None).unwrap();
    let (mut losses, mut penalties) = (Vec::new(), Vec::new());
    while !tr.done() {
        let r = flexlora::device::block_on(None, tr.step()).unwrap();
        losses.push(r.loss);
        penalties.push(r.flex_penalty);
    }
    let tensors = tr.model.lora_tensors().into_iter().map(|(n, t)| (n, t.host_f32("test").unwrap().to_vec())).collect();
    (losses, penalties, tensors)
}

#[test]
fn flex_train_mode_suppresses_high_frequencies_and_published_mode_is_inert() {
    let (base_loss, base_pen, base_w) = train(FlexMode::Off, 0.0, "flex-off");
    assert!(base_pen.iter().all(|p| p.is_none()));
    let (pub_loss, pub_pen, pub_w) = train(FlexMode::Published, 5.0, "flex-published");
    assert_eq!(pub_loss, base_loss, "published mode must not change training");
    assert_eq!(pub_w, base_w);
    assert!(pub_pen.iter().all(|p| p.is_some_and(|v| v > 0.0)), "published mode logs the penalty: {pub_pen:?}");

    let (_, train_pen, train_w) = train(FlexMode::Train, 5.0, "flex-train");
    let (hf_base, hf_train) = (high_frequency_share(&base_w), high_frequency_share(&train_w));
    assert!(hf_train < 0.5 * hf_base, "high-frequency energy share: λ=0 {hf_base:.4}, λ=5 {hf_train:.4}");
    let (first, last) = (train_pen[0].unwrap(), train_pen[train_pen.len() - 1].unwrap());
    assert!(last < 0.5 * first, "the penalty itself should fall: {first} -> {last}");
}
