//! Ops: one file per op family, holding the public `forward`/`backward` functions, the CPU twin
//! and the GPU launcher side by side. Kernels live in `shaders/<op>.wgsl`; each launcher declares
//! the entry points it dispatches as `contract::Entry` statics (bindings, `Params`, shared sizes),
//! which `tests/kernel_contracts.rs` checks against the WGSL.
//!
//! Conventions: shapes follow the glossary in `model` docs (B batch, T tokens, C width, F MLP
//! width, H heads, K kv heads, D head size, V vocabulary). Gradients carry a `d` prefix. Forward
//! returns what backward needs (RMSNorm's `rstd`, attention's `lse`, cross-entropy's `lse`).

pub mod attention;
pub mod contract;
pub mod cross_entropy;
pub mod dequant_matmul;
pub mod elementwise;
pub mod embedding;
pub mod matmul;
pub mod matmul_gguf;
pub mod matmul_nf4;
pub mod matmul_q8;
pub mod optim;
pub mod quant_nf4;
pub mod rmsnorm;
pub mod rope;
pub mod spectral;
pub mod swiglu;

use crate::device::{gpu::groups_1d, GpuDevice};

/// Workgroups for `n` independent items of `per_group` each, split over x/y past the dimension limit.
pub(crate) fn groups(g: &GpuDevice, n: usize, per_group: u32) -> [u32; 3] {
    groups_1d((n as u32).div_ceil(per_group), g.limits.max_compute_workgroups_per_dimension)
}
