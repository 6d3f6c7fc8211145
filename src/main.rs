//! The `flexlora` command line: parses flags (clap) and calls the library. No behaviour lives here.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use flexlora::device::{self, block_on, BackendChoice, DeviceChoice};

/// 4-bit QLoRA fine-tuning and evaluation of code LLMs on any GPU (WebGPU) or the CPU.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter wgpu sees, the CPU backend, and the limits the engine depends on.
    Devices {
        /// Only adapters of this graphics API.
        #[arg(long, value_enum)]
        backend: Option<BackendChoice>,
    },
    /// Measure kernel speed.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// f32 matmul GFLOP/s at 1024^3 and the SmolLM2 training shapes, on the CPU and the GPU.
    Matmul {
        #[command(flatten)]
        gpu: GpuFlags,
        /// Repetitions per shape (the best time is reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
}

/// GPU selection for commands that always compare against the CPU backend.
#[derive(Args)]
struct GpuFlags {
    /// Graphics API of the GPU adapter.
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Skip the GPU (CPU backend only).
    #[arg(long)]
    no_gpu: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Devices { backend } => devices(backend),
        Command::Bench { what: BenchCommand::Matmul { gpu, reps } } => {
            let gpu_dev = if gpu.no_gpu { None } else { Some(block_on(None, device::select(DeviceChoice::Gpu, gpu.backend))?) };
            flexlora::bench::matmul(gpu_dev.map(|s| s.device).as_ref(), reps, &mut std::io::stdout())?;
            Ok(())
        }
    }
}

fn devices(backend: Option<BackendChoice>) -> Result<()> {
    let cpu = flexlora::Device::cpu();
    println!("cpu      {}", cpu.name());
    let list = block_on(None, device::list(backend));
    if list.is_empty() {
        println!("(no GPU adapters found; on Linux `apt-get install mesa-vulkan-drivers` provides lavapipe)");
    }
    for (i, a) in list.iter().enumerate() {
        let i_ = &a.info;
        println!("gpu {i}    {} | backend {:?} | type {:?} | driver {} {}", i_.name, i_.backend, i_.device_type, i_.driver, i_.driver_info);
        let l = &a.limits;
        println!(
            "         max_storage_buffer_binding_size {} MiB, max_buffer_size {} MiB, storage buffers/stage {}, workgroup storage {} KiB, invocations/workgroup {}, workgroups/dim {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_storage_buffers_per_shader_stage,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroups_per_dimension,
        );
        let f = a.features;
        println!(
            "         features: shader-f16 {}, subgroups {}, timestamp-query {}",
            f.contains(wgpu::Features::SHADER_F16),
            f.contains(wgpu::Features::SUBGROUP),
            f.contains(wgpu::Features::TIMESTAMP_QUERY)
        );
    }
    let sel = block_on(None, device::select(DeviceChoice::Auto, backend))?;
    println!("--device auto -> {} ({})", sel.device.name(), sel.reason);
    Ok(())
}
