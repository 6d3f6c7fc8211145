//! The contract between a launcher and its WGSL entry point, declared once next to the launcher:
//! which shader and entry point, which storage bindings in which order (number, WGSL name,
//! read or read-write), the `#[repr(C)]` mirror of the uniform `Params` struct (binding 0), and
//! the sizes the Rust side also relies on (tile and workgroup sizes). Launchers dispatch through
//! the declaration ([`Entry::dispatch`]), so the binding numbers they use are the declared ones
//! and the buffer count is checked by the compiler; `tests/kernel_contracts.rs` checks every
//! declaration against the WGSL with naga (no GPU needed), and that every entry point in
//! `shaders/` has one ([`all`]).

use std::marker::PhantomData;

use crate::device::gpu::{GpuDevice, Kernel};
use crate::error::Result;
use crate::shaders::Shader;

/// How an entry point uses a storage buffer: `var<storage, read>` or `var<storage, read_write>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// One storage binding of group 0: its number, the WGSL variable's name and its access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub binding: u32,
    pub name: &'static str,
    pub access: Access,
}

/// `var<storage, read> name` at `@binding(binding)`.
pub const fn read(binding: u32, name: &'static str) -> Binding {
    Binding { binding, name, access: Access::Read }
}

/// `var<storage, read_write> name` at `@binding(binding)`.
pub const fn write(binding: u32, name: &'static str) -> Binding {
    Binding { binding, name, access: Access::ReadWrite }
}

/// One field of a `Params` mirror: name, byte offset and WGSL scalar type (`u32`, `i32`, `f32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub offset: usize,
    pub ty: &'static str,
}

/// The layout of a `#[repr(C)]` `Params` mirror, as `params!` records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamsLayout {
    pub name: &'static str,
    pub size: usize,
    pub fields: &'static [Field],
}

/// A uniform `Params` mirror; implemented by `params!`, which also records its layout.
pub trait Params: bytemuck::Pod {
    const LAYOUT: ParamsLayout;
}

/// A Rust scalar that a `Params` field may hold, with its WGSL name.
pub trait Scalar {
    const WGSL: &'static str;
}
impl Scalar for u32 {
    const WGSL: &'static str = "u32";
}
impl Scalar for i32 {
    const WGSL: &'static str = "i32";
}
impl Scalar for f32 {
    const WGSL: &'static str = "f32";
}

/// Declares a `#[repr(C)]` bytemuck `Params` struct of 4-byte scalars (crate-visible, so the
/// launcher's `Entry` statics can name it) and records its layout (size, field names, offsets
/// and WGSL types) for the contract test.
macro_rules! params {
    ($(#[$meta:meta])* struct $name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        pub(crate) struct $name { $($field: $ty),* }

        impl $crate::ops::contract::Params for $name {
            const LAYOUT: $crate::ops::contract::ParamsLayout = $crate::ops::contract::ParamsLayout {
                name: stringify!($name),
                size: ::std::mem::size_of::<$name>(),
                fields: &[$($crate::ops::contract::Field {
                    name: stringify!($field),
                    offset: ::std::mem::offset_of!($name, $field),
                    ty: <$ty as $crate::ops::contract::Scalar>::WGSL,
                }),*],
            };
        }
    };
}
pub(crate) use params;

/// A launcher's declaration of one entry point: `N` storage bindings in dispatch order, uniform
/// `Params` type `P` at binding 0, and `shared` (name, value) pairs: WGSL `const`s and `override`
/// defaults whose values the Rust side also uses (workgroup and tile sizes).
pub struct Entry<P, const N: usize> {
    pub shader: &'static Shader,
    pub entry: &'static str,
    pub bindings: [Binding; N],
    pub shared: &'static [(&'static str, u32)],
    params: PhantomData<fn(&P)>,
}

impl<P: Params, const N: usize> Entry<P, N> {
    pub const fn new(shader: &'static Shader, entry: &'static str, bindings: [Binding; N], shared: &'static [(&'static str, u32)]) -> Self {
        Entry { shader, entry, bindings, shared, params: PhantomData }
    }

    /// Records one dispatch: `buffers[i]` goes to `self.bindings[i]`, `params` to binding 0.
    pub fn dispatch(
        &self,
        g: &GpuDevice,
        constants: &[(&'static str, u32)],
        params: &P,
        buffers: [(&str, &wgpu::Buffer); N],
        groups: [u32; 3],
    ) -> Result<()> {
        let bufs: [(u32, (&str, &wgpu::Buffer)); N] = std::array::from_fn(|i| (self.bindings[i].binding, buffers[i]));
        g.dispatch(Kernel { shader: self.shader, entry: self.entry }, constants, params, &bufs, groups)
    }

    /// The declaration without its types, for the contract test.
    pub fn contract(&'static self) -> Contract {
        Contract { shader: self.shader, entry: self.entry, bindings: &self.bindings, params: P::LAYOUT, shared: self.shared }
    }
}

/// An [`Entry`] with its types erased: what `tests/kernel_contracts.rs` compares with the WGSL.
#[derive(Clone, Copy, Debug)]
pub struct Contract {
    pub shader: &'static Shader,
    pub entry: &'static str,
    pub bindings: &'static [Binding],
    pub params: ParamsLayout,
    pub shared: &'static [(&'static str, u32)],
}

/// Every launcher's declarations. A new entry point is declared in its op file and listed here;
/// the contract test fails for an entry point in `shaders/` that is missing from this list.
pub fn all() -> Vec<Contract> {
    use super::*;
    vec![
        attention::FORWARD.contract(),
        attention::BACKWARD_DELTA.contract(),
        attention::BACKWARD_DQ.contract(),
        attention::BACKWARD_DKV.contract(),
        cross_entropy::FORWARD.contract(),
        cross_entropy::BACKWARD.contract(),
        elementwise::ADD.contract(),
        elementwise::SCALE.contract(),
        elementwise::ACCUMULATE.contract(),
        elementwise::ADD_BIAS.contract(),
        elementwise::DROPOUT.contract(),
        embedding::FORWARD.contract(),
        embedding::BACKWARD.contract(),
        matmul::TILED.contract(),
        matmul::NN4.contract(),
        matmul::NT4.contract(),
        matmul::TN4.contract(),
        matmul::REGISTERS.contract(),
        matmul_gguf::gpu::FORWARD.contract(),
        matmul_gguf::gpu::FORWARD_FEW.contract(),
        matmul_gguf::gpu::BACKWARD_DX.contract(),
        matmul_gguf::gpu::GATHER.contract(),
        matmul_nf4::FORWARD.contract(),
        matmul_nf4::FORWARD_FEW.contract(),
        matmul_nf4::BACKWARD_DX.contract(),
        optim::ADAMW.contract(),
        optim::SOPHIA.contract(),
        optim::SOPHIA_HESSIAN.contract(),
        optim::REDUCE.contract(),
        optim::STEP_STATS.contract(),
        optim::SAMPLE_LABELS.contract(),
        quant_nf4::QUANTIZE.contract(),
        quant_nf4::DEQUANTIZE.contract(),
        rmsnorm::FORWARD.contract(),
        rmsnorm::BACKWARD_DX.contract(),
        rmsnorm::BACKWARD_DW.contract(),
        rope::FORWARD.contract(),
        rope::BACKWARD.contract(),
        spectral::LOAD.contract(),
        spectral::STAGE.contract(),
        spectral::STAGE_LARGE.contract(),
        spectral::CHIRP_MUL.contract(),
        spectral::CHIRP_OUT.contract(),
        spectral::WEIGH.contract(),
        spectral::SUM.contract(),
        spectral::GRAD.contract(),
        swiglu::FORWARD.contract(),
        swiglu::BACKWARD.contract(),
    ]
}
