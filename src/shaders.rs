//! The one registry of WGSL sources. Each file in `shaders/` is valid WGSL on its own (sizes are
//! `const`/`override` values, never text macros), so naga validates it alone and the pipeline cache
//! in `device::gpu` keys compiled pipelines by (shader, entry point, override constants).

/// A WGSL source file from `shaders/`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

macro_rules! shaders {
    ($($ident:ident => $file:literal),* $(,)?) => {
        $(pub static $ident: Shader = Shader { name: $file, source: include_str!(concat!("../shaders/", $file)) };)*
        /// Every shader, for the portability tests and `flexlora devices --check`.
        pub static ALL: &[&Shader] = &[$(&$ident),*];
    };
}

shaders! {
    MATMUL => "matmul.wgsl",
    QUANT_NF4 => "quant_nf4.wgsl",
    MATMUL_NF4 => "matmul_nf4.wgsl",
    MATMUL_GGUF => "matmul_gguf.wgsl",
    EMBEDDING => "embedding.wgsl",
    RMSNORM => "rmsnorm.wgsl",
    ROPE => "rope.wgsl",
    ATTENTION => "attention.wgsl",
    SWIGLU => "swiglu.wgsl",
    CROSS_ENTROPY => "cross_entropy.wgsl",
    ELEMENTWISE => "elementwise.wgsl",
    OPTIM => "optim.wgsl",
    SPECTRAL => "spectral.wgsl",
}
