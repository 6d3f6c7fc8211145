//! Shared test helpers: seeded inputs, the device list, tolerant comparison, finite differences.

use std::sync::OnceLock;

use flexlora::device::cpu::{self as cpu_dev, Tier};
use flexlora::device::{self, block_on, BackendChoice, Device};
use flexlora::Tensor;

/// Seeded inputs (the library's splitmix64), the same on every device and run.
pub struct Rng(flexlora::rng::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(flexlora::rng::Rng::new(seed))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale).collect()
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Every GPU adapter of this machine (here lavapipe's Vulkan and llvmpipe's OpenGL through EGL),
/// opened once. `FLEXLORA_TEST_BACKEND=vulkan|gl|metal|dx12` keeps one backend (to rerun a failure
/// alone or time a backend). None at all means tests say so loudly; under CI=true a missing adapter
/// is a failure, never a skip: on Linux both Vulkan and GL must be there (scripts/install-system-deps.sh).
pub fn gpus<'a>() -> impl Iterator<Item = &'a Device> {
    static GPUS: OnceLock<Vec<Device>> = OnceLock::new();
    GPUS.get_or_init(open_gpus).iter()
}

fn open_gpus() -> Vec<Device> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let only = std::env::var("FLEXLORA_TEST_BACKEND").ok().filter(|v| !v.is_empty());
    let backend = only.as_deref().map(|b| match b.to_lowercase().as_str() {
        "vulkan" => BackendChoice::Vulkan,
        "gl" => BackendChoice::Gl,
        "metal" => BackendChoice::Metal,
        "dx12" => BackendChoice::Dx12,
        _ => panic!("FLEXLORA_TEST_BACKEND={b}: use vulkan, gl, metal or dx12"),
    });
    let mut out = Vec::new();
    for o in block_on(None, device::open_each(backend)) {
        let label = o.label();
        match o.device {
            Ok(d) => {
                eprintln!("GPU tests run on {}", d.name());
                out.push(d);
            }
            Err(e) if ci => panic!("CI=true but the adapter {} does not open: {e}", label),
            Err(e) => eprintln!("*** skipped adapter {}: {e} ***", label),
        }
    }
    if ci {
        let mut want = vec![];
        if cfg!(target_os = "linux") {
            want = match backend {
                Some(b) => vec![b],
                None => vec![BackendChoice::Vulkan, BackendChoice::Gl],
            };
        } else if let Some(b) = backend {
            want = vec![b];
        }
        for b in want {
            let present = out.iter().any(|d| d.gpu().is_some_and(|g| BackendChoice::of(g.info.backend) == Some(b)));
            assert!(
                present,
                "CI=true but no {b:?} adapter: run scripts/install-system-deps.sh (Vulkan: mesa-vulkan-drivers; GL: libegl1, libegl-mesa0, libgl1-mesa-dri)"
            );
        }
        assert!(!out.is_empty(), "CI=true but no GPU adapter");
    }
    if out.is_empty() {
        eprintln!("\n*** skipped: no adapter — GPU kernels are NOT being tested ***\n");
    }
    out
}

/// Runs `f` on every GPU adapter; a failure says which backend failed and how to rerun it alone.
/// Tests run in parallel threads, and wgpu's GL backend panics when a thread waits more than 6 s for
/// its context ("Could not lock adapter context"), which one slow llvmpipe compile or dispatch
/// causes: so GL work from tests is serialized here (the engine itself drives a device from one thread).
pub fn each_gpu(mut f: impl FnMut(&Device)) {
    static GL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    for g in gpus() {
        let gl = g.gpu().is_some_and(|g| g.info.backend == wgpu::Backend::Gl);
        let _serial = gl.then(|| GL.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(g)));
        if let Err(panic) = run {
            let b = g.gpu().map(|g| format!("{:?}", g.info.backend).to_lowercase()).unwrap_or_default();
            eprintln!("*** failed on {} (rerun with FLEXLORA_TEST_BACKEND={b}) ***", g.name());
            std::panic::resume_unwind(panic);
        }
    }
}

/// One GPU adapter, not GL when another exists (Vulkan here), for the whole-model tests
/// (tests/model, tests/real_model): a model forward on GL too would add minutes (and GL work must
/// be serialized, see `each_gpu`); the op tests run every kernel on every adapter.
#[allow(dead_code)]
pub fn gpu() -> Option<&'static Device> {
    let gl = |d: &&Device| d.gpu().is_some_and(|g| g.info.backend == wgpu::Backend::Gl);
    gpus().find(|d| !gl(d)).or_else(|| gpus().next())
}

/// Runs `f` on the CPU backend, then on every GPU adapter (see `each_gpu`).
pub fn every_device(mut f: impl FnMut(&Device)) {
    f(&cpu());
    each_gpu(f);
}

pub fn cpu() -> Device {
    Device::cpu()
}

pub fn read(dev: &Device, t: &Tensor) -> Vec<f32> {
    block_on(Some(dev), t.to_vec_f32(dev)).expect("read-back")
}

pub fn up(dev: &Device, shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_f32(dev, "input", shape, data).unwrap()
}

pub fn up_u32(dev: &Device, shape: &[usize], data: &[u32]) -> Tensor {
    Tensor::from_u32(dev, "ids", shape, data).unwrap()
}

/// Asserts |got - want| <= atol + rtol·|want| everywhere, naming the first bad index and values.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = 0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= atol + rtol * w.abs() && g.is_finite() == w.is_finite(),
            "{what}: index {i}: got {g}, want {w} (|diff| {err} > {atol} + {rtol}*|want|)"
        );
        worst = worst.max(err);
    }
    assert!(!got.is_empty(), "{what}: empty output");
    let _ = worst;
}

/// Runs `f` on the CPU backend and on every GPU adapter, and compares every output tensor.
#[track_caller]
pub fn cpu_vs_gpu(what: &str, atol: f32, rtol: f32, f: impl Fn(&Device) -> Vec<Vec<f32>>) {
    let want = f(&cpu());
    each_gpu(|dev| {
        let got = f(dev);
        let backend = dev.gpu().map(|g| g.info.backend);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_close(&format!("{what} output {i} ({backend:?} GPU vs CPU)"), g, w, atol, rtol);
        }
    });
}

/// Checks an analytic gradient against central differences of `loss` at up to `probes` coordinates.
#[track_caller]
pub fn check_grad(what: &str, x: &[f32], grad: &[f32], probes: usize, loss: impl Fn(&[f32]) -> f64) {
    let mut rng = Rng::new(99);
    let mut xp = x.to_vec();
    let n = x.len();
    for p in 0..probes.min(n) {
        let i = if probes >= n { p } else { rng.below(n as u64) as usize };
        let h = 1e-2f32 * x[i].abs().max(1.0);
        xp[i] = x[i] + h;
        let lp = loss(&xp);
        xp[i] = x[i] - h;
        let lm = loss(&xp);
        xp[i] = x[i];
        let fd = ((lp - lm) / (2.0 * h as f64)) as f32;
        let err = (fd - grad[i]).abs();
        assert!(err <= 2e-2 + 2e-2 * fd.abs(), "{what}: d/dx[{i}]: analytic {} vs finite difference {fd}", grad[i]);
    }
}

/// sum(out · dout) in f64: the scalar whose gradient with respect to the output is dout.
pub fn dot(out: &[f32], dout: &[f32]) -> f64 {
    out.iter().zip(dout).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Runs `f` once on every CPU SIMD tier this machine executes (`cpu::with_tier`), portable first,
/// passing the tier so messages can name it; a failure also says which tier failed and how to
/// rerun it alone.
pub fn each_tier(mut f: impl FnMut(Tier)) {
    for tier in Tier::supported() {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cpu_dev::with_tier(tier, || f(tier))));
        if let Err(panic) = run {
            eprintln!("*** failed on CPU tier {tier} (rerun with FLEXLORA_CPU={tier}; this CPU runs {:?}) ***", Tier::supported());
            std::panic::resume_unwind(panic);
        }
    }
}
