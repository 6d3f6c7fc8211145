//! On demand (`#[ignore]`): a 7B bf16 checkpoint streams into NF4 without holding the file in
//! memory. Needs the random-weight Code Llama 7B directory written by scripts/make_random_7b.py:
//!
//!     python3 scripts/make_random_7b.py /tmp/random-7b      # ~13.5 GB
//!     FLEXLORA_RANDOM_7B=/tmp/random-7b cargo test --release -j1 --test model load_7b -- --ignored
//!
//! Peak resident memory must stay under 6 GB (the NF4 model is ~4.4 GiB): mapped file pages
//! count as resident, so a loader that kept the 13.5 GB of tensors mapped would fail here.

use flexlora::bench::peak_rss;
use flexlora::model::{load, WeightFormat};

#[test]
#[ignore = "needs FLEXLORA_RANDOM_7B (scripts/make_random_7b.py) and a few minutes"]
fn random_7b_bf16_loads_into_nf4_under_6_gb() {
    let Some(dir) = std::env::var_os("FLEXLORA_RANDOM_7B") else {
        panic!("set FLEXLORA_RANDOM_7B to the directory written by scripts/make_random_7b.py");
    };
    let t0 = std::time::Instant::now();
    let (model, _) = load::open(&crate::common::cpu(), std::path::Path::new(&dir), WeightFormat::Nf4 { blocksize: 64 }).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!((model.cfg.layers, model.cfg.c, model.cfg.vocab), (32, 4096, 32016), "not the Code Llama 7B shapes");
    let peak = peak_rss().expect("VmHWM from /proc/self/status (Linux only)");
    eprintln!("loaded in {secs:.1} s, peak resident memory {:.2} GB", peak as f64 / 1e9);
    assert!(peak < 6_000_000_000, "peak resident memory {:.2} GB >= 6 GB", peak as f64 / 1e9);
}
