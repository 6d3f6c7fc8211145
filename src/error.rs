//! The library's error type. Every variant carries the numbers that explain it and a hint of what
//! to do; `anyhow` is used only in `main.rs`.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no usable GPU adapter{backend}: {why}. {hint}")]
    NoAdapter { backend: BackendNote, why: String, hint: &'static str },

    #[error("could not open the GPU device `{adapter}`: {source}")]
    RequestDevice { adapter: String, source: wgpu::RequestDeviceError },

    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },

    #[error("{op}: tensor `{tensor}` has dtype {found:?}, expected {expected:?}")]
    DType { op: &'static str, tensor: String, found: crate::tensor::DType, expected: crate::tensor::DType },

    #[error("{op}: tensor `{tensor}` lives on the {found} but the op runs on the {expected}; move it with Tensor::to_device")]
    WrongDevice { op: &'static str, tensor: String, found: &'static str, expected: &'static str },

    #[error(
        "tensor `{tensor}` is {bytes} bytes, above this adapter's {limit_name} of {limit} bytes; \
         use a smaller shape, or a GPU with a larger limit, or --device cpu"
    )]
    BufferTooLarge { tensor: String, bytes: u64, limit_name: &'static str, limit: u64 },

    #[error("{op}: {detail} (limit {limit}); {hint}")]
    Limit { op: &'static str, detail: String, limit: u64, hint: &'static str },

    #[error("{op}: {detail}; {hint}")]
    Optimizer { op: &'static str, detail: String, hint: &'static str },

    #[error("reading tensor `{tensor}` back from the GPU failed: {detail}")]
    Readback { tensor: String, detail: String },

    #[error("GPU error in {context}: {detail}")]
    Gpu { context: String, detail: String },

    #[error("{file}: {detail}")]
    Config { file: String, detail: String },

    #[error("{file}: tensor `{tensor}`: {detail}")]
    Weights { file: String, tensor: String, detail: String },

    #[error("invalid value for {flag}: {detail}")]
    InvalidArgument { flag: &'static str, detail: String },

    #[error("could not {action} `{path}`: {source}")]
    Io { action: &'static str, path: String, source: std::io::Error },

    #[error("`{file}` is not a readable GGUF file: {detail} (at byte {offset}); {hint}")]
    GgufFormat { file: String, offset: u64, detail: String, hint: &'static str },

    #[error("`{file}`: metadata key `{key}` {detail}")]
    GgufKey { file: String, key: String, detail: String },

    #[error("`{file}`: tensor `{tensor}`: {detail}")]
    GgufTensor { file: String, tensor: String, detail: String },

    #[error(
        "`{file}`: tensor `{tensor}` has ggml type {ggml_type}, which flexlora cannot dequantize \
         (supported: {supported}); use a GGUF quantized as Q4_K_M, Q5_K_M, Q8_0, Q4_0/Q4_1 or F16"
    )]
    UnsupportedGgmlType { file: String, tensor: String, ggml_type: &'static str, supported: &'static str },

    #[error("cannot write GGUF: {detail}")]
    GgufWrite { detail: String },

    #[error("{what}: element {index} is {value}; 4-bit quantization needs finite values (look for NaN/inf in the source weights)")]
    NonFinite { what: &'static str, index: usize, value: f32 },

    #[error("`{file}`: 4-bit state `{tensor}` is invalid: {detail}. {hint}")]
    QuantState { file: String, tensor: String, detail: String, hint: &'static str },

    #[error("`{file}`: tensor `{tensor}` is missing but `{needed_by}` needs it. {hint}")]
    MissingTensor { file: String, tensor: String, needed_by: String, hint: &'static str },

    #[error("`{file}` is not a readable safetensors file: {detail}")]
    Safetensors { file: String, detail: String },

    #[error(
        "cannot read the {dataset} file `{path}`: {detail}. Put the file there (see shared/data/README.md) \
         or point FLEXLORA_DATA / the data-directory setting at the folder that holds it"
    )]
    DataFile { dataset: &'static str, path: String, detail: String },

    #[error("{path}, line {line}: {detail}")]
    DataFormat { path: String, line: usize, detail: String },

    #[error("checkpoint `{path}`: {detail}")]
    Checkpoint { path: String, detail: String },

    #[error("training stopped at step {step}: {detail}. {hint}")]
    Training { step: usize, detail: String, hint: String },

    #[error("sandbox: {detail}; {hint}")]
    Sandbox { detail: String, hint: &'static str },
}

/// Renders an optional backend restriction in `NoAdapter` messages.
#[derive(Debug, Default)]
pub struct BackendNote(pub Option<String>);

impl fmt::Display for BackendNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(b) => write!(f, " for backend {b}"),
            None => Ok(()),
        }
    }
}

impl Error {
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape { op, detail: detail.into() }
    }
}

/// `map_err` adapter: an I/O error while doing `action` on `path`.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn io_at<'a>(path: &'a std::path::Path, action: &'static str) -> impl Fn(std::io::Error) -> Error + 'a {
    move |source| Error::Io { action, path: path.display().to_string(), source }
}
