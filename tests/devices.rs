//! Device selection: what `--device` and `--backend` do, and the errors users see.

use flexlora::device::{block_on, select, BackendChoice, DeviceChoice};
use flexlora::Device;

#[test]
fn cpu_with_a_backend_is_refused() {
    let err = block_on(None, select(DeviceChoice::Cpu, Some(BackendChoice::Vulkan))).unwrap_err().to_string();
    assert!(err.contains("--backend"), "{err}");
}

#[test]
fn auto_prefers_the_cpu_backend_over_a_software_gpu_and_says_why() {
    let sel = block_on(None, select(DeviceChoice::Auto, None)).unwrap();
    let adapters = block_on(None, flexlora::device::list(None));
    let hardware = adapters.iter().any(|a| matches!(a.info.device_type, wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu));
    match &sel.device {
        Device::Gpu(g) => assert!(hardware && !g.is_software(), "auto chose a GPU without hardware: {}", sel.reason),
        Device::Cpu(_) => {
            assert!(!hardware, "auto chose the CPU although a hardware GPU exists");
            assert!(sel.reason.starts_with("auto:"), "{}", sel.reason);
        }
    }
}

/// A backend with no adapter on this machine gives the NoAdapter error with the fix.
#[test]
fn missing_adapter_error_says_what_to_install() {
    #[cfg(target_os = "linux")]
    {
        let err = block_on(None, select(DeviceChoice::Gpu, Some(BackendChoice::Metal))).unwrap_err().to_string();
        assert!(err.contains("no usable GPU adapter") && err.contains("Metal") && err.contains("mesa-vulkan-drivers"), "{err}");
    }
}
