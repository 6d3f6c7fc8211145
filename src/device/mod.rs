//! Devices: the CPU backend or a wgpu GPU (Vulkan, Metal, DX12, GL, or the browser's WebGPU).
//! Plain enum dispatch; ops match on `Device` and call their CPU twin or launch their kernel.

pub mod cpu;
pub mod gpu;

pub use cpu::CpuDevice;
pub use gpu::{GpuDevice, Kernel};

use crate::error::{BackendNote, Error, Result};

#[derive(Debug)]
pub enum Device {
    Cpu(CpuDevice),
    Gpu(GpuDevice),
}

impl Device {
    pub fn cpu() -> Self {
        Device::Cpu(CpuDevice::new())
    }

    pub fn name(&self) -> String {
        match self {
            Device::Cpu(c) => format!("CPU backend ({} threads)", c.threads),
            Device::Gpu(g) => {
                format!("{} ({:?}, {:?}, driver {} {})", g.info.name, g.info.backend, g.info.device_type, g.info.driver, g.info.driver_info)
            }
        }
    }

    /// What decides this device's rounding besides the code (see `cpu::numerics`; a GPU is its
    /// `name`: adapter, backend, type and driver). Two runs of one build agree bit for bit only
    /// when this agrees.
    pub fn numerics(&self) -> String {
        match self {
            Device::Cpu(_) => cpu::numerics(),
            Device::Gpu(_) => format!("GPU {}", self.name()),
        }
    }

    /// "CPU" or "GPU", for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Device::Cpu(_) => "CPU",
            Device::Gpu(_) => "GPU",
        }
    }

    pub fn gpu(&self) -> Option<&GpuDevice> {
        match self {
            Device::Gpu(g) => Some(g),
            Device::Cpu(_) => None,
        }
    }

    /// Runs `f` (a whole forward pass) on the CPU backend's thread pool (see `cpu::on_pool`), or
    /// here on a GPU device, whose work the GPU queue orders.
    pub fn on_pool<R>(&self, f: impl FnOnce() -> R) -> R {
        /// A value moved to a pool thread although its type is not `Send`.
        struct Sent<T>(T);
        // SAFETY: only for the CPU device (checked below). The types that are not `Send` are the
        // browser's WebGPU handles inside `Device::Gpu` and GPU tensors, which a CPU-device forward
        // pass never reaches (its tensors are host vectors), and the caller waits for the pool
        // thread to finish before it touches anything `f` borrowed.
        unsafe impl<T> Send for Sent<T> {}
        impl<T> Sent<T> {
            /// A method, so closures capture the whole `Send` wrapper, not its field.
            fn into_inner(self) -> T {
                self.0
            }
        }
        match self {
            Device::Cpu(_) => {
                let f = Sent(f);
                let dev = Sent(self);
                cpu::on_pool(move || {
                    debug_assert!(matches!(dev.into_inner(), Device::Cpu(_)), "on_pool moves only CPU work");
                    Sent(f.into_inner()())
                })
                .into_inner()
            }
            Device::Gpu(_) => f(),
        }
    }

    /// Submits pending GPU work (no-op on the CPU).
    pub fn flush(&self) {
        if let Device::Gpu(g) = self {
            g.flush();
        }
    }
}

/// `--device`: which kind of device to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
pub enum DeviceChoice {
    /// A hardware GPU when there is one, else the CPU backend.
    #[default]
    Auto,
    Cpu,
    /// The best GPU adapter, software ones (lavapipe, SwiftShader) included.
    Gpu,
}

/// `--backend`: restricts GPU adapters to one graphics API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
pub enum BackendChoice {
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl BackendChoice {
    pub fn backends(self) -> wgpu::Backends {
        match self {
            BackendChoice::Vulkan => wgpu::Backends::VULKAN,
            BackendChoice::Metal => wgpu::Backends::METAL,
            BackendChoice::Dx12 => wgpu::Backends::DX12,
            BackendChoice::Gl => wgpu::Backends::GL,
        }
    }
}

impl BackendChoice {
    /// The choice that selects adapters of `backend`; `None` for the browser's WebGPU and no-op.
    pub fn of(backend: wgpu::Backend) -> Option<Self> {
        match backend {
            wgpu::Backend::Vulkan => Some(BackendChoice::Vulkan),
            wgpu::Backend::Metal => Some(BackendChoice::Metal),
            wgpu::Backend::Dx12 => Some(BackendChoice::Dx12),
            wgpu::Backend::Gl => Some(BackendChoice::Gl),
            _ => None,
        }
    }
}

fn backends_for(backend: Option<BackendChoice>) -> wgpu::Backends {
    match backend {
        Some(b) => b.backends(),
        None => wgpu::Backends::all(),
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// What `flexlora devices` prints about one adapter.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
}

/// Every adapter wgpu sees for `backend` (all backends when `None`).
pub async fn adapters(backend: Option<BackendChoice>) -> Vec<wgpu::Adapter> {
    let inst = instance(backends_for(backend));
    #[cfg(not(target_arch = "wasm32"))]
    {
        inst.enumerate_adapters(backends_for(backend)).await
    }
    #[cfg(target_arch = "wasm32")]
    {
        inst.request_adapter(&wgpu::RequestAdapterOptions::default()).await.into_iter().collect()
    }
}

pub async fn list(backend: Option<BackendChoice>) -> Vec<AdapterSummary> {
    adapters(backend).await.iter().map(|a| AdapterSummary { info: a.get_info(), limits: a.limits(), features: a.features() }).collect()
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 1,
        wgpu::DeviceType::Cpu => 0,
    }
}

/// A chosen device and the reason it was chosen, for the user.
#[derive(Debug)]
pub struct Selection {
    pub device: Device,
    pub reason: String,
}

const NO_ADAPTER_HINT: &str = "On Linux install a Vulkan driver (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers` \
     gives lavapipe, a CPU Vulkan driver), or run with --device cpu";

/// Picks a device per `--device`/`--backend`. `Auto` takes a discrete/integrated GPU when there is
/// one and otherwise the CPU backend: a software GPU (lavapipe, SwiftShader) is far slower than it.
pub async fn select(choice: DeviceChoice, backend: Option<BackendChoice>) -> Result<Selection> {
    if choice == DeviceChoice::Cpu {
        if backend.is_some() {
            return Err(Error::InvalidArgument {
                flag: "--backend",
                detail: "applies to GPU devices only; drop it or use --device gpu".into(),
            });
        }
        let device = Device::cpu();
        let reason = "--device cpu".to_string();
        return Ok(Selection { device, reason });
    }
    let mut found = adapters(backend).await;
    found.sort_by_key(|a| std::cmp::Reverse(rank(a.get_info().device_type)));
    let best = found.first();
    let describe = |a: &wgpu::Adapter| {
        let i = a.get_info();
        format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
    };
    match (choice, best) {
        (DeviceChoice::Auto, Some(a)) if rank(a.get_info().device_type) >= 2 => {
            let reason = format!("auto: hardware GPU {}", describe(a));
            Ok(Selection { device: Device::Gpu(GpuDevice::open(a).await?), reason })
        }
        (DeviceChoice::Auto, best) => {
            let reason = match best {
                Some(a) => format!(
                    "auto: only software GPU adapters found (best: {}); the CPU backend is faster than a GPU emulated on the CPU (use --device gpu to force it)",
                    describe(a)
                ),
                None => "auto: no GPU adapter found".to_string(),
            };
            Ok(Selection { device: Device::cpu(), reason })
        }
        (_, Some(a)) => {
            let reason = format!("--device gpu: {}", describe(a));
            Ok(Selection { device: Device::Gpu(GpuDevice::open(a).await?), reason })
        }
        (_, None) => Err(Error::NoAdapter {
            backend: BackendNote(backend.map(|b| format!("{b:?}"))),
            why: "wgpu found no adapter".into(),
            hint: NO_ADAPTER_HINT,
        }),
    }
}

/// One GPU adapter opened (or the reason it could not be), for code that runs on every adapter:
/// `flexlora selftest` and the op tests.
#[derive(Debug)]
pub struct Opened {
    pub info: wgpu::AdapterInfo,
    pub device: Result<Device>,
}

impl Opened {
    /// "Vulkan: llvmpipe (LLVM 15.0.6, 256 bits)", the column heading users see.
    pub fn label(&self) -> String {
        format!("{:?}: {}", self.info.backend, self.info.name)
    }
}

/// Opens every GPU adapter wgpu sees for `backend` (all backends when `None`), in enumeration
/// order. Software adapters are included: on a machine without a GPU they are what there is to test.
pub async fn open_each(backend: Option<BackendChoice>) -> Vec<Opened> {
    let mut out = Vec::new();
    for a in adapters(backend).await {
        let info = a.get_info();
        let device = GpuDevice::open(&a).await.map(Device::Gpu);
        out.push(Opened { info, device });
    }
    out
}

/// Drives a future to completion on native targets, polling the GPU while it is pending; the
/// browser awaits instead, so nothing the browser build runs may call it. The front ends call it:
/// `main.rs`, tests and benches, and the native-only drivers that run a whole command for them
/// (`bench`, `selftest`, `eval::job`, `eval::ppl`). Library code below the front ends is async (it
/// awaits read-backs) or synchronous CPU code. A read-back future waits for its GPU by itself
/// natively, so `device` only lets other futures (a GPU's `open`) make progress.
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<T>(device: Option<&Device>, fut: impl std::future::Future<Output = T>) -> T {
    use std::task::{Context, Poll, Waker};
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        match device {
            Some(Device::Gpu(g)) => {
                g.flush();
                let _ = g.device.poll(wgpu::PollType::wait_indefinitely());
            }
            _ => std::thread::yield_now(),
        }
    }
}
