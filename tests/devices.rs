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

/// An adapter with fewer storage buffers per stage than a kernel binds (OpenGL ES allows 4) refuses
/// the op with an error naming the limit, before any pipeline is built: never a panic or a wrong
/// answer. Simulated by lowering the limit the engine reads on a real adapter (the first one).
#[test]
fn too_few_storage_buffers_is_refused_by_name() {
    let Some(adapter) = block_on(None, flexlora::device::adapters(None)).into_iter().next() else {
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "CI=true but no GPU adapter");
        eprintln!("*** skipped: no adapter ***");
        return;
    };
    let mut g = block_on(None, flexlora::device::GpuDevice::open(&adapter)).unwrap();
    g.limits.max_storage_buffers_per_shader_stage = 2;
    let dev = Device::Gpu(g);
    let a = flexlora::Tensor::from_f32(&dev, "a", &[3, 5], &[1.0; 15]).unwrap();
    let b = flexlora::Tensor::from_f32(&dev, "b", &[5, 7], &[1.0; 35]).unwrap();
    let err = flexlora::ops::matmul::forward(&dev, &a, &b, false, false).unwrap_err().to_string();
    assert!(err.contains("max_storage_buffers_per_shader_stage") && err.contains("limit 2"), "{err}");
}

/// `flexlora selftest` runs every op on each adapter here and passes, naming every op; under
/// CI=true on Linux both the Vulkan and the GL adapter must be in the matrix.
#[test]
fn selftest_passes_on_every_adapter_and_names_every_op() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flexlora")).arg("selftest").output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "selftest failed:\n{stdout}\n{stderr}");
    for c in flexlora::selftest::cases() {
        assert!(stdout.contains(c.op), "{} missing from\n{stdout}", c.op);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") && cfg!(target_os = "linux") {
        assert!(stdout.contains("] Vulkan: ") && stdout.contains("] Gl: "), "CI=true needs both Vulkan and GL adapters:\n{stdout}");
    }
    eprintln!("{stdout}");
}

/// A backend the machine lacks is a failure with a non-zero exit, not an empty pass.
#[test]
fn selftest_on_a_missing_backend_fails() {
    #[cfg(target_os = "linux")]
    {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flexlora")).args(["selftest", "--backend", "metal"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && text.contains("no adapter of this backend") && text.contains("Metal"), "{text}");
    }
}
