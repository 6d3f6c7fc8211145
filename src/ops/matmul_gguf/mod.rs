//! Fused products with a frozen weight W [N, K] kept in its GGUF block format (`GgufTensor`: Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, and F16/BF16/F32 rows): the forward
//! y[T, N] = x[T, K] · deq(W)ᵀ and the input gradient dx[T, K] = dy[T, N] · deq(W), so a model
//! loaded from GGUF computes with the file's own weights instead of an NF4 re-quantization.
//! W is frozen under QLoRA, so there is no weight gradient here.
//!
//! On a GPU the kernels of `shaders/matmul_gguf.wgsl` (launched from `gpu`) dequantize 8 weights
//! at a time in registers, with the same formulas. The CPU twins never materialize deq(W): they
//! dequantize a row (decode), a tile of rows (many tokens) or a column slice of rows (dx) at a
//! time with the exact dequantizers of `ggml_blocks`, so every weight equals `to_f32`'s bit for bit
//! and results differ from an f32 matmul of the dequantized weight only in summation order.
//!
//! Inference takes `forward_int8` instead: the same, except that x is quantized to 8-bit blocks
//! and dotted with the weights' codes in integers, as llama.cpp does (`int8`, with its error
//! bound; x86 kernels in `int8_x86`; prompts of `MANY_TOKENS` tokens or more as a GEMM over tiles
//! of unpacked rows, `int8_gemm`, x86 kernels in `int8_gemm_x86`). Training keeps `forward` and
//! f32 activations.

use crate::device::{cpu, Device};
use crate::error::{Error, Result};
use crate::model::load::ggml_blocks::{self, GgmlType};
use crate::ops::quant_nf4::words_from_bytes;
use crate::tensor::{dims2, DType, Tensor};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod gather;
pub(crate) mod gpu;
pub mod int8;
pub mod int8_gemm;
#[cfg(target_arch = "x86_64")]
mod int8_gemm_x86;
#[cfg(target_arch = "x86_64")]
mod int8_pack_x86;
#[cfg(target_arch = "x86_64")]
mod int8_x86;

pub use gather::{cpu_gather, gather};

const OP: &str = "matmul_gguf";

/// The block types the fused kernels take.
pub const TYPES: [GgmlType; 11] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::F32,
];

// From MANY_TOKENS tokens on, the CPU twins dequantize W a tile of TILE_ROWS rows at a time and
// hand the tile to the GEMM, sharing each dequantization among all tokens (as `matmul_nf4`).
use crate::ops::dequant_matmul::{self, MANY_TOKENS};
/// Weight rows per forward task at least; columns per few-token dx task (a multiple of every
/// block size, 32 and 256, so slices start on block boundaries).
const ROWS_PER_TASK: usize = 8;
const COLS_PER_TASK: usize = 256;

/// A frozen weight [N, K] in a GGUF block format on a device.
#[derive(Debug)]
pub struct GgufTensor {
    pub ty: GgmlType,
    /// [N, K]: N rows of K elements, each row whole blocks of `ty`.
    pub shape: Vec<usize>,
    /// The file's bytes, rows back to back (`row_bytes` each), in parts of `part_rows` rows (the
    /// last may hold fewer), each as zero-padded little-endian u32 words so a kernel can load
    /// words. One part on the CPU, and on a GPU unless the whole is above the adapter's
    /// `max_storage_buffer_binding_size` (Qwen2.5's 145 MB output matrix on lavapipe's or a
    /// browser's 128 MiB): then each part is a buffer the kernels bind alone (`gpu`).
    pub parts: Vec<Tensor>,
    pub part_rows: usize,
}

impl GgufTensor {
    /// Uploads the bytes of a GGUF tensor of type `ty` and shape [N, K]. `label` names it in errors
    /// (the file and tensor, e.g. `model.gguf: blk.0.attn_q.weight`).
    pub fn new(dev: &Device, label: &str, ty: GgmlType, shape: &[usize], bytes: &[u8]) -> Result<GgufTensor> {
        let max_part = match dev {
            Device::Cpu(_) => u64::MAX,
            Device::Gpu(g) => g.limits.max_storage_buffer_binding_size,
        };
        Self::in_parts(dev, label, ty, shape, bytes, max_part)
    }

    /// `new` with parts of at most `max_part_bytes` bytes each (`new` passes the GPU's binding
    /// size; tests pass small ones).
    pub fn in_parts(dev: &Device, label: &str, ty: GgmlType, shape: &[usize], bytes: &[u8], max_part_bytes: u64) -> Result<GgufTensor> {
        let bad = |detail: String| Error::Weights { file: label.into(), tensor: "(GGUF blocks)".into(), detail };
        if !TYPES.contains(&ty) {
            let names: Vec<&str> = TYPES.iter().map(|t| t.name()).collect();
            return Err(bad(format!(
                "ggml type {ty} has no fused kernel (these do: {}); load with --weights nf4 or f32",
                names.join(", ")
            )));
        }
        let [n, k] = shape[..] else {
            return Err(bad(format!("shape {shape:?} is not a matrix [N, K]")));
        };
        let (block, block_bytes) = ty.block();
        if k % block != 0 || bytes.len() != n * (k / block) * block_bytes {
            return Err(bad(format!(
                "{} bytes of {ty} do not hold [{n}, {k}] ({ty} packs {block} values in {block_bytes} bytes per block, rows are whole blocks)",
                bytes.len()
            )));
        }
        let rb = (k / block * block_bytes).max(1);
        // Whole rows per part, its words padded to 4 bytes.
        let part_rows = if bytes.len().div_ceil(4) as u64 * 4 <= max_part_bytes {
            n.max(1)
        } else {
            (max_part_bytes.saturating_sub(3) / rb as u64) as usize
        };
        if part_rows == 0 {
            return Err(Error::Limit {
                op: OP,
                detail: format!("one row of the {ty} weight `{label}` [N, K] = {shape:?} is {rb} bytes, above this adapter's max_storage_buffer_binding_size"),
                limit: max_part_bytes,
                hint: "run on --device cpu (or another adapter), or load the model with --weights nf4",
            });
        }
        let parts = bytes
            .chunks(part_rows * rb)
            .map(|b| Tensor::from_u32_vec(dev, label, &[b.len().div_ceil(4)], words_from_bytes(b)))
            .collect::<Result<Vec<_>>>()?;
        let parts = if parts.is_empty() { vec![Tensor::from_u32_vec(dev, label, &[0], vec![])?] } else { parts };
        Ok(GgufTensor { ty, shape: shape.to_vec(), parts, part_rows })
    }

    /// The name given at upload (file and tensor).
    pub fn label(&self) -> &str {
        self.parts[0].label()
    }

    /// (N, K).
    pub fn dims(&self) -> (usize, usize) {
        (self.shape[0], self.shape[1])
    }

    /// Bytes of one row of K elements.
    pub fn row_bytes(&self) -> usize {
        let (block, bytes) = self.ty.block();
        self.shape[1] / block * bytes
    }

    /// Bytes held on the device.
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes()).sum()
    }

    /// The packed rows on the host ([N · row_bytes]); an error on the GPU (and CPU tensors are
    /// one part).
    pub fn host_bytes(&self, op: &'static str) -> Result<&[u8]> {
        let words = self.parts[0].host_u32(op)?;
        Ok(&bytemuck::cast_slice(words)[..self.shape[0] * self.row_bytes()])
    }

    /// deq(W) [N, K] as f32 on the host (CPU tensors only): for tests and conversions.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let (n, k) = self.dims();
        let mut out = vec![0f32; n * k];
        ggml_blocks::dequantize(self.ty, self.host_bytes(OP)?, &mut out, self.label(), "(GGUF blocks)")?;
        Ok(out)
    }
}

/// y [.., N] = x [.., K] · deq(W)ᵀ for W [N, K].
pub fn forward(dev: &Device, x: &Tensor, w: &GgufTensor) -> Result<Tensor> {
    product(dev, x, w, cpu_forward)
}

/// y [.., N] ≈ x [.., K] · deq(W)ᵀ for inference: as [`forward`], except that products with a
/// type `int8::supported` quantize x to int8 blocks once and take the integer kernels of `int8`
/// (decode) or `int8_gemm` (`MANY_TOKENS` tokens or more); see `int8` for the error bound.
/// Training keeps [`forward`].
pub fn forward_int8(dev: &Device, x: &Tensor, w: &GgufTensor) -> Result<Tensor> {
    product(dev, x, w, cpu_forward_int8)
}

/// A CPU product (x, W's bytes, W's type, y, t, n, k): `cpu_forward` or `cpu_forward_int8`.
type CpuProduct = fn(&[f32], &[u8], GgmlType, &mut [f32], usize, usize, usize);

/// The checks and the output of both products; `cpu` computes it on the CPU.
fn product(dev: &Device, x: &Tensor, w: &GgufTensor, cpu: CpuProduct) -> Result<Tensor> {
    x.expect(OP, DType::F32)?;
    let (t, k) = dims2(x);
    let (n, kw) = w.dims();
    let shape = dequant_matmul::swap_width(OP, x, k, kw, n, || format!("{} weight `{}` [N, K] = {:?}", w.ty, w.label(), w.shape))?;
    let mut y = Tensor::zeros(dev, "matmul_gguf.y", &shape, DType::F32);
    match dev {
        Device::Cpu(_) => cpu(x.host_f32(OP)?, w.host_bytes(OP)?, w.ty, y.host_f32_mut(OP)?, t, n, k),
        // `forward_int8` too: the GPU computes with f32 activations (see `gpu::forward`).
        Device::Gpu(g) => gpu::forward(g, x, w, &y)?,
    }
    Ok(y)
}

/// The environment variable that turns the int8 path off (`FLEXLORA_INT8=0`: `forward_int8` is
/// `forward`, the exact f32 product of the file's weights, for every product).
pub const INT8_VAR: &str = "FLEXLORA_INT8";

/// Set while `with_f32_activations` runs.
static F32_FORCED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `forward_int8` may quantize activations now: not under `with_f32_activations`, and
/// FLEXLORA_INT8 (read once) is not `0`. Never in the browser build: there the file's blocks are
/// computed with f32 activations, so its greedy tokens equal native `--weights auto` with
/// FLEXLORA_INT8=0 token for token (tested). With 8-bit activations a last-bit difference in an
/// activation can move its rounding by a whole step, so two builds that add in different orders
/// would no longer agree token for token.
pub fn int8_enabled() -> bool {
    if cfg!(target_arch = "wasm32") {
        return false;
    }
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !F32_FORCED.load(std::sync::atomic::Ordering::Relaxed) && *ENV.get_or_init(|| std::env::var(INT8_VAR).map_or(true, |v| v.trim() != "0"))
}

/// Runs `f` with `forward_int8` computing in f32 (tests: the exact model). Process-wide, as
/// `cpu::with_tier`: calls take a lock and run one at a time, and other threads' products
/// meanwhile take the f32 path too (the reference, so only their rounding changes).
pub fn with_f32_activations<R>(f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::Ordering;
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            F32_FORCED.store(false, Ordering::Relaxed);
        }
    }
    let _reset = Reset;
    F32_FORCED.store(true, Ordering::Relaxed);
    f()
}

/// CPU twin of `forward_int8`: `cpu_forward` unless the type has an int8 kernel (for many
/// tokens: a GEMM kernel on this tier, `int8_gemm::supported`) and `int8_enabled()`; then x is
/// quantized once and `int8_gemm::gemm` (many tokens) or tasks of rows of `int8_rows_dot` run.
pub fn cpu_forward_int8(x: &[f32], w: &[u8], ty: GgmlType, y: &mut [f32], t: usize, n: usize, k: usize) {
    if t == 0 || n == 0 || k == 0 || !k.is_multiple_of(int8::QK) || !int8::supported(ty) || !int8_enabled() {
        return cpu_forward(x, w, ty, y, t, n, k);
    }
    if t >= MANY_TOKENS && !int8_gemm::supported(ty) {
        return cpu_forward(x, w, ty, y, t, n, k);
    }
    let (block, block_bytes) = ty.block();
    let rb = k / block * block_bytes;
    assert!(k.is_multiple_of(block) && x.len() >= t * k && y.len() >= t * n && w.len() >= n * rb, "matmul_gguf: buffers too small");
    let xq = int8::Q8Act::quantize(&x[..t * k], k);
    if t >= MANY_TOKENS {
        return int8_gemm::gemm(ty, w, &xq, y, n, rb);
    }
    let mut yt = vec![0f32; n * t];
    let rows_per_task = n.div_ceil(4 * cpu::threads()).max(ROWS_PER_TASK);
    cpu::for_each_chunk(&mut yt, rows_per_task * t, |task, out| {
        let n0 = task * rows_per_task;
        let rows = out.len() / t;
        int8_rows_dot(ty, &w[n0 * rb..(n0 + rows) * rb], &xq, out);
    });
    cpu::transpose_into(&yt, n, t, y);
}

/// `int8::rows_dot` on the tier's kernels: AVX-512 VNNI where the AVX-512 tier has it, else
/// AVX2's (also the AVX-512 tier's on CPUs without VNNI), else the portable reference.
fn int8_rows_dot(ty: GgmlType, w: &[u8], x: &int8::Q8Act, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let tier = cpu::tier();
        cpu::debug_assert_runs(tier);
        // SAFETY: `tier()` only returns tiers this CPU runs (AVX2 and FMA for both), VNNI is
        // checked at run time, and `int8_x86::rows` asserts the buffer sizes its pointers rely on.
        if tier == cpu::Tier::Avx512 && int8_x86::has_vnni() && unsafe { int8_x86::rows_dot_vnni(ty, w, x, out) } {
            return;
        }
        // SAFETY: as above.
        if tier != cpu::Tier::Portable && unsafe { int8_x86::rows_dot_avx2(ty, w, x, out) } {
            return;
        }
    }
    int8::rows_dot(ty, w, x, out)
}

/// dx [.., K] = dy [.., N] · deq(W) for W [N, K]: the input gradient of [`forward`].
pub fn backward_dx(dev: &Device, dy: &Tensor, w: &GgufTensor) -> Result<Tensor> {
    dy.expect(OP, DType::F32)?;
    let (t, n) = dims2(dy);
    let (nw, k) = w.dims();
    let shape = dequant_matmul::swap_width(OP, dy, n, nw, k, || format!("{} weight `{}` [N, K] = {:?}", w.ty, w.label(), w.shape))?;
    let mut dx = Tensor::zeros(dev, "matmul_gguf.dx", &shape, DType::F32);
    match dev {
        Device::Cpu(_) => cpu_backward_dx(dy.host_f32(OP)?, w.host_bytes(OP)?, w.ty, dx.host_f32_mut(OP)?, t, n, k),
        Device::Gpu(g) => gpu::backward_dx(g, dy, w, &dx)?,
    }
    Ok(dx)
}

/// Dequantizes whole blocks (`ggml_blocks::dequantize_blocks`); the type was checked by
/// `GgufTensor::new`.
#[inline(always)]
fn deq(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let done = ggml_blocks::dequantize_blocks(ty, src, dst);
    debug_assert!(done, "matmul_gguf: {ty} passed GgufTensor::new but has no dequantizer");
}

/// CPU twin of `forward` on the packed rows `w` ([N · row_bytes]). Few tokens: tasks of rows,
/// each row dequantized once into a [K] buffer and dotted with every token (yᵀ [N, T], then
/// transposed). Many tokens: `dequant_matmul::forward_many_tokens` over whole rows of blocks.
pub fn cpu_forward(x: &[f32], w: &[u8], ty: GgmlType, y: &mut [f32], t: usize, n: usize, k: usize) {
    let (block, block_bytes) = ty.block();
    let rb = k / block * block_bytes;
    assert!(k % block == 0 && x.len() >= t * k && y.len() >= t * n && w.len() >= n * rb, "matmul_gguf: buffers too small");
    if t == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y[..t * n].fill(0.0);
        return;
    }
    if t >= MANY_TOKENS {
        return dequant_matmul::forward_many_tokens(x, y, t, n, k, |n0, tile| deq(ty, &w[n0 * rb..n0 * rb + tile.len() / k * rb], tile));
    }
    let mut yt = vec![0f32; n * t];
    let rows_per_task = n.div_ceil(4 * cpu::threads()).max(ROWS_PER_TASK);
    cpu::for_each_chunk(&mut yt, rows_per_task * t, |task, out| {
        let n0 = task * rows_per_task;
        let rows = out.len() / t;
        rows_dot(ty, &w[n0 * rb..(n0 + rows) * rb], &x[..t * k], k, out);
    });
    cpu::transpose_into(&yt, n, t, y);
}

/// out[r·T + ti] = deq(row r of `w`) · x[ti] for the `out.len() / T` rows in `w` and the
/// T = x.len() / K tokens (out is [rows, T]). On the AVX2 and AVX-512 tiers the common block
/// types run the intrinsics of `avx2`; otherwise one block (or, for F16/BF16/F32, one row) is
/// dequantized at a time by plain Rust compiled for the tier's SIMD.
fn rows_dot(ty: GgmlType, w: &[u8], x: &[f32], k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let tier = cpu::tier();
        // The intrinsics kernels' contract: whole rows of K elements in w, T·K floats in x, T·rows
        // in out (`rows` in avx2.rs and avx512.rs also asserts the first two).
        let (block, block_bytes) = ty.block();
        let (t, rows) = (x.len() / k, out.len() / (x.len() / k).max(1));
        debug_assert!(k % block == 0 && t >= 1 && x.len() == t * k && out.len() == t * rows && w.len() >= rows * (k / block) * block_bytes);
        // SAFETY: `tier()` only returns tiers this CPU runs; both have AVX2 and FMA, AVX-512
        // AVX-512F; the buffers are as the kernels need (asserted above).
        cpu::debug_assert_runs(tier);
        if tier == cpu::Tier::Avx512 && unsafe { avx512::rows_dot(ty, w, x, k, out) } {
            return;
        }
        // SAFETY: as above.
        if tier != cpu::Tier::Portable && unsafe { avx2::rows_dot(ty, w, x, k, out) } {
            return;
        }
        match tier {
            // SAFETY: `tier()` only returns tiers this CPU runs (asserted above); the body only
            // indexes slices.
            cpu::Tier::Avx512 => return unsafe { simd::rows_dot_avx512(ty, w, x, k, out) },
            // SAFETY: as above.
            cpu::Tier::Avx2 => return unsafe { simd::rows_dot_avx2(ty, w, x, k, out) },
            cpu::Tier::Portable => {}
        }
    }
    rows_dot_body(ty, w, x, k, out)
}

#[inline(always)]
fn rows_dot_body(ty: GgmlType, w: &[u8], x: &[f32], k: usize, out: &mut [f32]) {
    match ty {
        GgmlType::Q4_0 => rows_dot_blocks::<32, Q4_0>(w, x, k, out),
        GgmlType::Q4_1 => rows_dot_blocks::<32, Q4_1>(w, x, k, out),
        GgmlType::Q5_0 => rows_dot_blocks::<32, Q5_0>(w, x, k, out),
        GgmlType::Q5_1 => rows_dot_blocks::<32, Q5_1>(w, x, k, out),
        GgmlType::Q8_0 => rows_dot_blocks::<32, Q8_0>(w, x, k, out),
        GgmlType::Q4_K => rows_dot_blocks::<256, Q4_K>(w, x, k, out),
        GgmlType::Q5_K => rows_dot_blocks::<256, Q5_K>(w, x, k, out),
        GgmlType::Q6_K => rows_dot_blocks::<256, Q6_K>(w, x, k, out),
        _ => rows_dot_rows(ty, w, x, k, out),
    }
}

/// One block type's dequantizer as a trait, not a closure or fn pointer: a fn item passed as
/// `impl Fn` went through an out-of-line `Fn::call` shim per block (seen in perf), which kept the
/// dot from vectorizing and cost 4x in decode.
trait DeqBlock {
    fn deq(b: &[u8], y: &mut [f32]);
}

macro_rules! deq_blocks {
    ($($name:ident => $f:path;)*) => {$(
        #[allow(non_camel_case_types)]
        struct $name;
        impl DeqBlock for $name {
            #[inline(always)]
            fn deq(b: &[u8], y: &mut [f32]) {
                $f(b, y)
            }
        }
    )*};
}

deq_blocks! {
    Q4_0 => ggml_blocks::q4_0;
    Q4_1 => ggml_blocks::q4_1;
    Q5_0 => ggml_blocks::q5_0;
    Q5_1 => ggml_blocks::q5_1;
    Q8_0 => ggml_blocks::q8_0;
    Q4_K => ggml_blocks::q4_k;
    Q5_K => ggml_blocks::q5_k;
    Q6_K => ggml_blocks::q6_k;
}

/// `rows_dot` for a block type of B elements: each block is dequantized by `block` (inlined,
/// into a [B] array that stays in L1) and multiplied into 32 running sums per token, so no row
/// buffer is written and the type's match is outside the loops.
#[inline(always)]
fn rows_dot_blocks<const B: usize, D: DeqBlock>(w: &[u8], x: &[f32], k: usize, out: &mut [f32]) {
    let t = x.len() / k;
    let rows = out.len() / t;
    let (nb, rb) = (k / B, w.len() / rows);
    let bb = rb / nb;
    let mut wb = [0f32; B];
    if t == 1 {
        // Decode: the 32 running sums stay in registers for the whole row, one horizontal sum
        // per row (a [T] buffer of sums round-trips memory at every block).
        for (r, y) in out.iter_mut().enumerate() {
            let mut a = [0f32; 32];
            for (bi, bytes) in w[r * rb..(r + 1) * rb].chunks_exact(bb).enumerate() {
                D::deq(bytes, &mut wb);
                let xb: &[f32; B] = x[bi * B..][..B].try_into().expect("B floats");
                for (wc, xc) in wb.chunks_exact(32).zip(xb.chunks_exact(32)) {
                    for j in 0..32 {
                        a[j] += wc[j] * xc[j];
                    }
                }
            }
            *y = sum32(a);
        }
        return;
    }
    let mut acc = vec![[0f32; 32]; t];
    for (r, yr) in out.chunks_exact_mut(t).enumerate() {
        acc.iter_mut().for_each(|a| *a = [0f32; 32]);
        let row = &w[r * rb..(r + 1) * rb];
        for (bi, bytes) in row.chunks_exact(bb).enumerate() {
            D::deq(bytes, &mut wb);
            for (ti, a) in acc.iter_mut().enumerate() {
                let xb: &[f32; B] = x[ti * k + bi * B..][..B].try_into().expect("B floats");
                for (wc, xc) in wb.chunks_exact(32).zip(xb.chunks_exact(32)) {
                    for j in 0..32 {
                        a[j] += wc[j] * xc[j];
                    }
                }
            }
        }
        for (v, a) in yr.iter_mut().zip(&acc) {
            *v = sum32(*a);
        }
    }
}

/// The sum of 32 lanes as a tree (vector adds, not a chain of 32 scalar ones).
#[inline(always)]
fn sum32(a: [f32; 32]) -> f32 {
    let mut h = [0f32; 8];
    for i in 0..8 {
        h[i] = (a[i] + a[i + 8]) + (a[i + 16] + a[i + 24]);
    }
    ((h[0] + h[4]) + (h[2] + h[6])) + ((h[1] + h[5]) + (h[3] + h[7]))
}

/// `rows_dot` for types of one element per block (F16, BF16, F32): whole rows dequantized into
/// a [K] buffer, then dotted.
#[inline(always)]
fn rows_dot_rows(ty: GgmlType, w: &[u8], x: &[f32], k: usize, out: &mut [f32]) {
    let t = x.len() / k;
    let rows = out.len() / t;
    let rb = w.len() / rows;
    let mut row = vec![0f32; k];
    for (r, yr) in out.chunks_exact_mut(t).enumerate() {
        deq(ty, &w[r * rb..(r + 1) * rb], &mut row);
        for (ti, v) in yr.iter_mut().enumerate() {
            *v = dot16(&x[ti * k..(ti + 1) * k], &row);
        }
    }
}

/// Dot product in 16 running sums, inlined so it vectorizes to the width of the caller's tier.
#[inline(always)]
fn dot16(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{rows_dot_body, GgmlType};

    /// `rows_dot_body` compiled for AVX2 + FMA.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows_dot_avx2(ty: GgmlType, w: &[u8], x: &[f32], k: usize, out: &mut [f32]) {
        rows_dot_body(ty, w, x, k, out)
    }

    /// `rows_dot_body` compiled for AVX-512F.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, AVX2 and FMA (the AVX-512 tier).
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn rows_dot_avx512(ty: GgmlType, w: &[u8], x: &[f32], k: usize, out: &mut [f32]) {
        rows_dot_body(ty, w, x, k, out)
    }
}

/// CPU twin of `backward_dx` (the shared algorithm in `dequant_matmul`), dequantizing whole blocks.
pub fn cpu_backward_dx(dy: &[f32], w: &[u8], ty: GgmlType, dx: &mut [f32], t: usize, n: usize, k: usize) {
    let (block, block_bytes) = ty.block();
    let rb = k / block * block_bytes;
    assert!(k % block == 0 && dy.len() >= t * n && dx.len() >= t * k && w.len() >= n * rb, "matmul_gguf: buffers too small");
    // Bytes of row `nn`'s elements k0..k0+kw (both multiples of the block).
    let slice = |nn: usize, k0: usize, kw: usize| &w[nn * rb + k0 / block * block_bytes..][..kw / block * block_bytes];
    dequant_matmul::backward_dx::<COLS_PER_TASK>(dy, dx, t, n, k, block.max(64), |row, k0, out| deq(ty, slice(row, k0, out.len()), out));
}
