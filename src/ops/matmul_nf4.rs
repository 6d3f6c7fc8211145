//! Fused products with a frozen NF4 weight W [N, K] (`quant_nf4::Nf4Tensor`): the forward
//! y[T, N] = x[T, K] · deq(W)ᵀ and the input gradient dx[T, K] = dy[T, N] · deq(W). Neither device
//! materializes deq(W): the GPU kernels (`shaders/matmul_nf4.wgsl`) unpack one u32 word of 8 codes
//! at a time, the CPU twins dequantize one row (or one slice of a row) into a small buffer.
//! W is frozen under QLoRA, so there is no weight gradient here.

use crate::device::{cpu, Device};
use crate::error::{Error, Result};
use crate::ops::contract::{params, read, write, Entry};
use crate::ops::quant_nf4::Nf4Tensor;
use crate::quant::nf4::{code_at, NF4_CODE};
use crate::shaders;
use crate::tensor::{dims2, DType, Tensor};

params! {
    struct Params {
        t: u32,
        n: u32,
        k: u32,
        block_shift: u32,
    }
}

const OP: &str = "matmul_nf4";
/// Token counts below this take the one-token-per-workgroup forward (`forward_few`).
const FEW_TOKENS: usize = 4;
/// Weight rows per invocation: `forward` (`UN` in the shader) and `forward_few` (`UN_FEW`).
const UN: usize = 8;
const UN_FEW: usize = 4;
/// Invocations per workgroup: at most LX_MAX, and (for `forward_few`) exactly that.
const LX_MAX: usize = 64;
/// Tokens per workgroup (`forward`, `backward_dx`): at most UT_MAX.
const UT_MAX: usize = 32;

pub(crate) static FORWARD: Entry<Params, 4> = Entry::new(
    &shaders::MATMUL_NF4,
    "forward",
    [read(1, "packed"), read(2, "absmax"), read(3, "x4"), write(4, "y")],
    &[("UN", UN as u32), ("UT_MAX", UT_MAX as u32)],
);
pub(crate) static FORWARD_FEW: Entry<Params, 4> = Entry::new(
    &shaders::MATMUL_NF4,
    "forward_few",
    [read(1, "packed"), read(2, "absmax"), read(3, "x4"), write(4, "y")],
    &[("UN_FEW", UN_FEW as u32), ("LX", LX_MAX as u32)],
);
pub(crate) static BACKWARD_DX: Entry<Params, 4> = Entry::new(
    &shaders::MATMUL_NF4,
    "backward_dx",
    [read(1, "packed"), read(2, "absmax"), read(3, "dy4"), write(4, "dx4")],
    &[("UT_MAX", UT_MAX as u32)],
);
/// CPU work items: weight rows per forward task, columns per dx task.
const ROWS_PER_TASK: usize = 8;
const COLS_PER_TASK: usize = 64;

/// (N, K) of the weight, checked against its packed data.
fn weight_dims(w: &Nf4Tensor) -> Result<(usize, usize)> {
    w.check(OP)?;
    match w.shape[..] {
        [n, k] => Ok((n, k)),
        _ => Err(Error::shape(OP, format!("NF4 weight `{}` has shape {:?}, expected [N, K]", w.packed.label(), w.shape))),
    }
}

fn gpu_params(t: usize, n: usize, k: usize, w: &Nf4Tensor) -> Result<Params> {
    if k % 8 != 0 {
        return Err(Error::Limit {
            op: OP,
            detail: format!("K = {k} is not a multiple of 8, so weight rows do not start on a packed word"),
            limit: 8,
            hint: "dequantize this weight and use ops::matmul, or run on --device cpu",
        });
    }
    // The kernels find a word's absmax block with a shift.
    if !w.blocksize.is_power_of_two() || w.blocksize < 8 {
        return Err(Error::Limit {
            op: OP,
            detail: format!("block size {} of `{}` is not a power of two of at least 8", w.blocksize, w.packed.label()),
            limit: 8,
            hint: "quantize with one of bitsandbytes' block sizes (64 for QLoRA), or run on --device cpu",
        });
    }
    let fits = |v: usize| u32::try_from(v).is_ok();
    if !fits(n * k) || !fits(t * n.max(k)) {
        return Err(Error::Limit {
            op: OP,
            detail: format!("T={t}, N={n}, K={k} overflow 32-bit indices"),
            limit: u32::MAX as u64,
            hint: "split the batch into fewer tokens",
        });
    }
    Ok(Params { t: t as u32, n: n as u32, k: k as u32, block_shift: (w.blocksize / 8).trailing_zeros() })
}

/// Tokens per workgroup (`UT` in the shader, at most 32) for T tokens. 32 shares each unpacked
/// weight word among the most tokens; few tokens take a smaller tile instead of computing clamped
/// copies of the last token.
pub(crate) fn token_tile(t: usize) -> usize {
    match t {
        0..=8 => 8,
        9..=16 => 16,
        _ => UT_MAX,
    }
}

/// Invocations per workgroup (`LX`) when each owns `per` of `len` items (weight rows, words of K)
/// in a workgroup of LX * per: the multiple of 8 up to LX_MAX that leaves the fewest idle
/// invocations, the largest on ties (576 rows, 8 per invocation: 24, so 3 workgroups and none idle).
pub(crate) fn lanes(len: usize, per: usize) -> usize {
    let padded = |lx: usize| len.div_ceil(lx * per) * lx * per;
    (8..=LX_MAX).step_by(8).min_by_key(|&lx| (padded(lx), std::cmp::Reverse(lx))).unwrap_or(LX_MAX)
}

/// y [.., N] = x [.., K] · deq(W)ᵀ for W [N, K].
pub fn forward(dev: &Device, x: &Tensor, w: &Nf4Tensor) -> Result<Tensor> {
    x.expect(OP, DType::F32)?;
    let (t, k) = dims2(x);
    let (n, kw) = weight_dims(w)?;
    let shape = dequant_matmul::swap_width(OP, x, k, kw, n, || format!("NF4 weight `{}` [N, K] = {:?}", w.packed.label(), w.shape))?;
    let mut y = Tensor::zeros(dev, "matmul_nf4.y", &shape, DType::F32);
    match dev {
        Device::Cpu(_) => {
            let packed = bytemuck::cast_slice(w.packed.host_u32(OP)?);
            cpu_forward(x.host_f32(OP)?, packed, w.absmax.host_f32(OP)?, w.blocksize, y.host_f32_mut(OP)?, t, n, k);
        }
        Device::Gpu(g) => {
            let params = gpu_params(t, n, k, w)?;
            if t == 0 || n == 0 {
                return Ok(y);
            }
            let bufs = [w.packed.bind(OP)?, w.absmax.bind(OP)?, x.bind(OP)?, y.bind(OP)?];
            // Below FEW_TOKENS tokens a workgroup per token beats computing clamped copies.
            if t < FEW_TOKENS {
                let groups = [t as u32, n.div_ceil(LX_MAX * UN_FEW) as u32, 1];
                FORWARD_FEW.dispatch(g, &[("LX", LX_MAX as u32)], &params, bufs, groups)?;
            } else {
                let (ut, lx) = (token_tile(t), lanes(n, UN));
                let groups = [t.div_ceil(ut) as u32, n.div_ceil(lx * UN) as u32, 1];
                let consts = [("UT", ut as u32), ("LX", lx as u32)];
                FORWARD.dispatch(g, &consts, &params, bufs, groups)?;
            }
        }
    }
    Ok(y)
}

/// dx [.., K] = dy [.., N] · deq(W) for W [N, K]: the input gradient of [`forward`].
pub fn backward_dx(dev: &Device, dy: &Tensor, w: &Nf4Tensor) -> Result<Tensor> {
    dy.expect(OP, DType::F32)?;
    let (t, n) = dims2(dy);
    let (nw, k) = weight_dims(w)?;
    let shape = dequant_matmul::swap_width(OP, dy, n, nw, k, || format!("NF4 weight `{}` [N, K] = {:?}", w.packed.label(), w.shape))?;
    let mut dx = Tensor::zeros(dev, "matmul_nf4.dx", &shape, DType::F32);
    match dev {
        Device::Cpu(_) => {
            let packed = bytemuck::cast_slice(w.packed.host_u32(OP)?);
            cpu_backward_dx(dy.host_f32(OP)?, packed, w.absmax.host_f32(OP)?, w.blocksize, dx.host_f32_mut(OP)?, t, n, k);
        }
        Device::Gpu(g) => {
            let params = gpu_params(t, n, k, w)?;
            if t == 0 || k == 0 {
                return Ok(dx);
            }
            // The kernel reads dy as vec4s. When N % 4 != 0 its rows are not vec4-aligned and
            // its buffer may end inside a vec4, so it reads a copy padded to whole vec4s.
            let aligned = n % 4 == 0;
            let padded;
            let dy = if aligned {
                dy
            } else {
                padded = Tensor::zeros(dev, "matmul_nf4.dy_padded", &[(t * n).next_multiple_of(4)], DType::F32);
                g.copy(dy.bind(OP)?.1, 0, padded.bind(OP)?.1, 0, (t * n * 4) as u64);
                &padded
            };
            let bufs = [w.packed.bind(OP)?, w.absmax.bind(OP)?, dy.bind(OP)?, dx.bind(OP)?];
            let (ut, lx) = (token_tile(t), lanes(k / 8, 1));
            let groups = [t.div_ceil(ut) as u32, (k / 8).div_ceil(lx) as u32, 1];
            let consts = [("UT", ut as u32), ("LX", lx as u32), ("DY_ALIGNED", aligned as u32)];
            BACKWARD_DX.dispatch(g, &consts, &params, bufs, groups)?;
        }
    }
    Ok(dx)
}

/// Weights `start..start + out.len()` of the flattened NF4 weight, dequantized.
fn dequantize_range(packed: &[u8], absmax: &[f32], bs: usize, start: usize, out: &mut [f32]) {
    // One absmax load and no division per block segment.
    let mut done = 0;
    while done < out.len() {
        let e0 = start + done;
        let seg = (bs - e0 % bs).min(out.len() - done);
        let scale = absmax[e0 / bs];
        let dst = &mut out[done..done + seg];
        if e0 % 2 == 0 {
            // Whole bytes, high nibble first: 32 codes at a time with SIMD, the rest by pairs.
            let bytes = &packed[e0 / 2..(e0 + seg) / 2];
            let simd = dequantize_bytes(bytes, scale, dst);
            for (pair, &b) in dst[2 * simd..].chunks_exact_mut(2).zip(&bytes[simd..]) {
                pair[0] = NF4_CODE[(b >> 4) as usize] * scale;
                pair[1] = NF4_CODE[(b & 15) as usize] * scale;
            }
            if seg % 2 == 1 {
                dst[seg - 1] = NF4_CODE[code_at(packed, e0 + seg - 1) as usize] * scale;
            }
        } else {
            for (j, v) in dst.iter_mut().enumerate() {
                *v = NF4_CODE[code_at(packed, e0 + j) as usize] * scale;
            }
        }
        done += seg;
    }
}

/// x [T, K] rearranged for `row_dot` (per token, its even-indexed then its odd-indexed elements,
/// matching the high and low nibbles of the packed bytes), or None where `row_dot` does not apply:
/// below the AVX-512 tier, or unless rows are whole blocks of at least 32 codes.
fn row_dot_input(x: &[f32], t: usize, k: usize, bs: usize) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    if k % bs == 0 && bs >= 32 && cpu::tier() == cpu::Tier::Avx512 {
        let mut xs = vec![0f32; t * k];
        for (src, dst) in x[..t * k].chunks_exact(k).zip(xs.chunks_exact_mut(k)) {
            let (even, odd) = dst.split_at_mut(k / 2);
            for (j, pair) in src.chunks_exact(2).enumerate() {
                (even[j], odd[j]) = (pair[0], pair[1]);
            }
        }
        return Some(xs);
    }
    let _ = (x, t, k, bs);
    None
}

/// y[r, ti] = Σ_j deq(row r)[j]·x[ti, j] for every row of `packed` (whole rows of K codes) and
/// every token (y is [rows, T]), with the codes decoded in registers and never stored. `xs` comes
/// from `row_dot_input` (which says when this applies).
fn row_dot(packed: &[u8], absmax: &[f32], bs: usize, xs: &[f32], k: usize, t: usize, y: &mut [f32]) {
    let rows = y.len() / t;
    assert!(packed.len() >= rows * k / 2 && absmax.len() >= rows * k / bs && xs.len() >= t * k);
    #[cfg(target_arch = "x86_64")]
    for t0 in (0..t).step_by(4) {
        let xs = &xs[t0 * k..];
        // SAFETY: `row_dot_input` checked the tier (whose features this CPU has); the assert bounds packed/absmax/xs; y is
        // written unchecked at r*t + t0 + ti with ti < min(t - t0, 4), inside y's rows*t elements.
        // Whole 32-code chunks per row and power-of-two blocks keep the absmax index (c >> shift) in
        // the row's blocks.
        debug_assert!(std::arch::is_x86_feature_detected!("avx512f") && y.len() == rows * t);
        debug_assert!(k % 32 == 0 && bs % 32 == 0 && bs.is_power_of_two() && xs.len() >= (t - t0) * k);
        unsafe {
            match (t - t0).min(4) {
                1 => simd::row_dot_avx512::<1>(packed, absmax, bs, xs, k, rows, y, t, t0),
                2 => simd::row_dot_avx512::<2>(packed, absmax, bs, xs, k, rows, y, t, t0),
                3 => simd::row_dot_avx512::<3>(packed, absmax, bs, xs, k, rows, y, t, t0),
                _ => simd::row_dot_avx512::<4>(packed, absmax, bs, xs, k, rows, y, t, t0),
            }
        }
    }
}

/// Both NF4 values of every byte, high nibble first: one load per byte instead of two.
static NF4_PAIRS: [[f32; 2]; 256] = {
    let mut t = [[0f32; 2]; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = [NF4_CODE[b >> 4], NF4_CODE[b & 15]];
        b += 1;
    }
    t
};

/// Whether `row_dot_portable` takes rows of K codes in blocks of `bs`: whole blocks of whole
/// groups of 8 codes.
fn row_dot_portable_applies(k: usize, bs: usize) -> bool {
    bs % 8 == 0 && k % bs == 0
}

/// y[r] = Σ_j deq(row r)[j]·x[j] for one token and every row of `packed` (y has one element per
/// row): the portable decode kernel (wasm32 SIMD128, aarch64, and the portable tier), with the
/// codes decoded from `NF4_PAIRS` into registers, never stored. Each block's products are summed
/// in 8 lanes unscaled, then added to the row's 8 lanes times the block's absmax, so the compiler
/// vectorizes both without a horizontal sum per block.
fn row_dot_portable(packed: &[u8], absmax: &[f32], bs: usize, x: &[f32], k: usize, y: &mut [f32]) {
    assert!(row_dot_portable_applies(k, bs) && packed.len() >= y.len() * k / 2 && absmax.len() >= y.len() * k / bs && x.len() >= k);
    for (r, out) in y.iter_mut().enumerate() {
        let row = &packed[r * k / 2..(r + 1) * k / 2];
        let mut lanes = [0f32; 8];
        for ((bytes, xb), &scale) in row.chunks_exact(bs / 2).zip(x[..k].chunks_exact(bs)).zip(&absmax[r * k / bs..]) {
            let mut block = [0f32; 8];
            for (b4, x8) in bytes.chunks_exact(4).zip(xb.chunks_exact(8)) {
                for i in 0..4 {
                    let [hi, lo] = NF4_PAIRS[b4[i] as usize];
                    block[2 * i] += hi * x8[2 * i];
                    block[2 * i + 1] += lo * x8[2 * i + 1];
                }
            }
            for i in 0..8 {
                lanes[i] += block[i] * scale;
            }
        }
        *out = lanes.iter().sum();
    }
}

/// Dequantizes the leading multiple of 16 of `bytes` (32 codes each) into `out` with the widest
/// SIMD of the CPU tier, and returns how many bytes it did (0 on the portable tier).
fn dequantize_bytes(bytes: &[u8], scale: f32, out: &mut [f32]) -> usize {
    let n = bytes.len() / 16 * 16;
    assert!(out.len() >= 2 * n);
    #[cfg(target_arch = "x86_64")]
    match cpu::tier() {
        _ if n == 0 => {}
        cpu::Tier::Avx512 => {
            // SAFETY: `tier()` only returns tiers this CPU runs; the assert bounds every access
            // (2 floats out per byte in).
            cpu::debug_assert_runs(cpu::Tier::Avx512);
            unsafe { simd::dequantize_avx512(&bytes[..n], scale, out) };
            return n;
        }
        cpu::Tier::Avx2 => {
            // SAFETY: as above.
            cpu::debug_assert_runs(cpu::Tier::Avx2);
            unsafe { simd::dequantize_avx2(&bytes[..n], scale, out) };
            return n;
        }
        cpu::Tier::Portable => {}
    }
    let _ = (scale, out);
    0
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::NF4_CODE;
    use std::arch::x86_64::*;

    /// 16 packed bytes -> their 32 codes as bytes in element order (high nibble first).
    ///
    /// # Safety
    /// `p` must be valid for 16 bytes (SSE2 is baseline on x86-64).
    #[inline(always)]
    unsafe fn codes(p: *const u8) -> (__m128i, __m128i) {
        let b = _mm_loadu_si128(p as *const __m128i);
        let mask = _mm_set1_epi8(15);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(b), mask);
        let lo = _mm_and_si128(b, mask);
        (_mm_unpacklo_epi8(hi, lo), _mm_unpackhi_epi8(hi, lo))
    }

    /// The codebook lookup is one 16-entry permute per 16 codes.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `out` must hold 2·bytes.len() floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dequantize_avx512(bytes: &[u8], scale: f32, out: &mut [f32]) {
        let lut = _mm512_loadu_ps(NF4_CODE.as_ptr());
        let s = _mm512_set1_ps(scale);
        for (i, chunk) in bytes.chunks_exact(16).enumerate() {
            let (c0, c1) = codes(chunk.as_ptr());
            let dst = out.as_mut_ptr().add(32 * i);
            _mm512_storeu_ps(dst, _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(c0), lut), s));
            _mm512_storeu_ps(dst.add(16), _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(c1), lut), s));
        }
    }

    /// `row_dot` for T tokens. 16 packed bytes widen to 16 lanes; the permute reads only an
    /// index's low 4 bits, so it looks up the low nibbles directly and the high nibbles after one
    /// shift, and these multiply the odd and even halves of x. The lookup table is scaled by each
    /// chunk's absmax first (so weights are `code * absmax`, rounded as `dequantize` rounds them),
    /// and two chunks per step feed four accumulators per token, enough independent FMAs to keep
    /// the loop on the permute port instead of on FMA latency.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; packed holds `rows` rows of K codes (K/2 bytes), absmax their
    /// K/bs scales each, xs T rows of K floats, and y index `(rows - 1)·stride + t0 + T - 1`
    /// (see `row_dot`).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn row_dot_avx512<const T: usize>(
        packed: &[u8],
        absmax: &[f32],
        bs: usize,
        xs: &[f32],
        k: usize,
        rows: usize,
        y: &mut [f32],
        stride: usize,
        t0: usize,
    ) {
        let lut = _mm512_loadu_ps(NF4_CODE.as_ptr());
        let shift = (bs / 32).trailing_zeros(); // 16-byte chunks per block = 1 << shift
        let chunks = k / 32;
        for r in 0..rows {
            let (packed, absmax) = (packed.as_ptr().add(r * k / 2), absmax.as_ptr().add(r * k / bs));
            let mut acc = [[_mm512_setzero_ps(); 4]; T];
            let step = |c: usize, l: __m512, acc: &mut [[__m512; 4]; T], slot: usize| {
                let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(packed.add(16 * c) as *const __m128i));
                let even = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(v), l);
                let odd = _mm512_permutexvar_ps(v, l);
                for (ti, a) in acc.iter_mut().enumerate() {
                    let xp = xs.as_ptr().add(ti * k + 16 * c);
                    a[slot] = _mm512_fmadd_ps(even, _mm512_loadu_ps(xp), a[slot]);
                    a[slot + 1] = _mm512_fmadd_ps(odd, _mm512_loadu_ps(xp.add(k / 2)), a[slot + 1]);
                }
            };
            let scaled = |c: usize| _mm512_mul_ps(lut, _mm512_set1_ps(*absmax.add(c >> shift)));
            let mut c = 0;
            while c + 2 <= chunks {
                step(c, scaled(c), &mut acc, 0);
                step(c + 1, scaled(c + 1), &mut acc, 2);
                c += 2;
            }
            if c < chunks {
                step(c, scaled(c), &mut acc, 0);
            }
            for (ti, a) in acc.iter().enumerate() {
                let sum = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
                *y.get_unchecked_mut(r * stride + t0 + ti) = _mm512_reduce_add_ps(sum);
            }
        }
    }

    /// Two 8-entry permutes per 8 codes, blended on the code's bit 3.
    ///
    /// # Safety
    /// The CPU must have AVX2; `out` must hold 2·bytes.len() floats.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dequantize_avx2(bytes: &[u8], scale: f32, out: &mut [f32]) {
        let lo_lut = _mm256_loadu_ps(NF4_CODE.as_ptr());
        let hi_lut = _mm256_loadu_ps(NF4_CODE.as_ptr().add(8));
        let s = _mm256_set1_ps(scale);
        for (i, chunk) in bytes.chunks_exact(16).enumerate() {
            let (c0, c1) = codes(chunk.as_ptr());
            for (j, c) in [c0, _mm_srli_si128::<8>(c0), c1, _mm_srli_si128::<8>(c1)].into_iter().enumerate() {
                let idx = _mm256_cvtepu8_epi32(c);
                let lo = _mm256_permutevar8x32_ps(lo_lut, idx);
                let hi = _mm256_permutevar8x32_ps(hi_lut, idx);
                let w = _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx)));
                _mm256_storeu_ps(out.as_mut_ptr().add(32 * i + 8 * j), _mm256_mul_ps(w, s));
            }
        }
    }
}

// From MANY_TOKENS tokens on, the CPU twins dequantize W a tile of TILE_ROWS rows at a time and
// hand the tile to the GEMM: the dequantization is then shared by all tokens.
use crate::ops::dequant_matmul::{self, MANY_TOKENS};

/// CPU twin of `forward`. Few tokens: tasks of `ROWS_PER_TASK` weight rows, each row dequantized
/// once into a [K] buffer and dotted with every token (on AVX-512 `row_dot`, and for one token
/// below AVX-512 `row_dot_portable`, decode codes in registers instead); results land in yᵀ [N, T],
/// then are transposed. Many tokens: `dequant_matmul::forward_many_tokens` over NF4 row ranges.
#[allow(clippy::too_many_arguments)]
pub fn cpu_forward(x: &[f32], packed: &[u8], absmax: &[f32], bs: usize, y: &mut [f32], t: usize, n: usize, k: usize) {
    assert!(x.len() >= t * k && y.len() >= t * n, "matmul_nf4: buffers too small");
    if t >= MANY_TOKENS {
        return dequant_matmul::forward_many_tokens(x, y, t, n, k, |n0, tile| dequantize_range(packed, absmax, bs, n0 * k, tile));
    }
    let mut yt = vec![0f32; n * t];
    let rows_per_task = n.div_ceil(4 * cpu::threads()).max(ROWS_PER_TASK);
    let xs = row_dot_input(x, t, k, bs);
    let fused = xs.is_none() && t == 1 && row_dot_portable_applies(k, bs);
    cpu::for_each_chunk(&mut yt, rows_per_task * t, |task, out| {
        let n0 = task * rows_per_task;
        if let Some(xs) = &xs {
            return row_dot(&packed[n0 * k / 2..], &absmax[n0 * k / bs..], bs, xs, k, t, out);
        }
        if fused {
            return row_dot_portable(&packed[n0 * k / 2..], &absmax[n0 * k / bs..], bs, x, k, out);
        }
        let mut row = vec![0f32; k];
        for (r, yr) in out.chunks_mut(t).enumerate() {
            let nn = n0 + r;
            dequantize_range(packed, absmax, bs, nn * k, &mut row);
            for (ti, v) in yr.iter_mut().enumerate() {
                *v = cpu::dot(&x[ti * k..(ti + 1) * k], &row);
            }
        }
    });
    cpu::transpose_into(&yt, n, t, y);
}

/// CPU twin of `backward_dx` (the shared algorithm in `dequant_matmul`), dequantizing NF4 ranges.
#[allow(clippy::too_many_arguments)]
pub fn cpu_backward_dx(dy: &[f32], packed: &[u8], absmax: &[f32], bs: usize, dx: &mut [f32], t: usize, n: usize, k: usize) {
    assert!(dy.len() >= t * n && dx.len() >= t * k, "matmul_nf4: buffers too small");
    // Ranges start on block boundaries (a multiple of the block size, or of 64 for larger blocks).
    dequant_matmul::backward_dx::<COLS_PER_TASK>(dy, dx, t, n, k, bs.min(64), |row, k0, out| {
        dequantize_range(packed, absmax, bs, row * k + k0, out)
    });
}
