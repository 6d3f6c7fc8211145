//! `train::memory::estimate` against what a run really allocates: SmolLM2-135M (its GGUF blocks)
//! trained on the CPU backend on examples that all fill `max_len` (so every micro-batch is the
//! worst one the estimate is made for), with and without `--recompute`, AdamW and Sophia. This
//! test binary counts every heap allocation (a counting global allocator: the CPU backend's
//! tensors are heap buffers), so its one test measures the peak bytes live during `Trainer::new`
//! and two steps over what the loaded model holds, and compares it with the estimate's training
//! part (the measured / estimated ratio must lie in [0.75, 1]: never short, and never more than
//! a third over). The process's peak resident memory growth is printed against the whole estimate too;
//! only the first run's is comparable (later runs reuse heap pages the earlier ones freed).
//!
//! Needs the real model ($FLEXLORA_MODEL_GGUF); without it it says so loudly, and under CI=true
//! fails.

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use flexlora::train::config::{OptimizerKind, TrainConfig};
use flexlora::train::run::{self, Trainer};
use flexlora::Device;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
            grew(new);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// `VmRSS` or `VmHWM` of this process, in bytes.
fn status(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn estimate_bounds_the_measured_peak_of_real_runs() {
    let Some(model) = support::default_model("the memory estimate against a real run") else { return };
    let root = support::tmpdir("memory", "runs");
    // Every example is longer than max_len tokens and trained on throughout ({"text"} lines).
    let data = root.join("long.jsonl");
    let lines: Vec<String> = (0..12)
        .map(|i| {
            let body: String = (0..40).map(|j| format!("    total_{i}_{j} = compute(values[{j}], {i} * {j}) + offset\\n")).collect();
            format!(r#"{{"text": "def f{i}(values, offset):\\n{body}    return total\\n"}}"#)
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let mut ratios = Vec::new();
    for (i, (recompute, optimizer, batch)) in
        [(false, OptimizerKind::Adamw, 2), (true, OptimizerKind::Sophia, 2), (false, OptimizerKind::Sophia, 1)].into_iter().enumerate()
    {
        let mut cfg = TrainConfig {
            model: model.clone(),
            data: data.display().to_string(),
            out: root.join(format!("run{i}")),
            max_len: 128,
            batch_size: batch,
            steps: 2,
            recompute,
            optimizer,
            hessian_every: 1,
            save_every: 0,
            ..Default::default()
        };
        cfg.lora.rank = 16;
        cfg.lora.targets = flexlora::model::Target::ALL.to_vec();
        let dev = Device::cpu();
        // The first run also warms up what every run shares (the thread pool, lazy tables).
        let _ = std::fs::write("/proc/self/clear_refs", "5"); // resets VmHWM to the current RSS
        let rss0 = status("VmRSS:");
        let (m, tok) = run::load_model(&dev, &cfg).unwrap();
        let after_load = LIVE.load(Ordering::Relaxed);
        PEAK.store(after_load, Ordering::Relaxed);
        let mut tr = Trainer::new(dev, m, &tok, cfg.clone(), None).unwrap();
        for _ in 0..2 {
            flexlora::device::block_on(None, tr.step()).unwrap();
        }
        let measured = (PEAK.load(Ordering::Relaxed) - after_load) as u64;
        let est = tr.memory;
        let rss_growth = status("VmHWM:").saturating_sub(rss0);
        let ratio = measured as f64 / est.training() as f64;
        eprintln!(
            "recompute {recompute}, {optimizer:?}, batch {batch}: heap peak over the loaded model {:.1} MiB, estimated {:.1} MiB \
             (ratio {ratio:.3}); whole estimate {est}; peak RSS growth {:.1} MiB (ratio to the whole estimate {:.3})",
            mib(measured),
            mib(est.training()),
            mib(rss_growth),
            rss_growth as f64 / est.total() as f64
        );
        ratios.push((recompute, optimizer, batch, ratio));
        drop(tr);
    }
    // The page refuses runs by this estimate: it must not fall short of what a run allocates,
    // nor ask for much more than it needs.
    for (recompute, optimizer, batch, r) in ratios {
        assert!((0.75..=1.0).contains(&r), "recompute {recompute}, {optimizer:?}, batch {batch}: measured / estimated = {r:.3}");
    }
    let _ = std::fs::remove_dir_all(&root);
}
