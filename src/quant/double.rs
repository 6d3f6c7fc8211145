//! QLoRA's double quantization of the NF4 absmax, as bitsandbytes does it on the CPU with
//! `compress_statistics=True`: `offset = mean(absmax)`, then `absmax - offset` is quantized to one
//! byte per entry with bnb's signed 8-bit dynamic map, in blocks of 256 with an f32 absmax each.
//! Dequantized: `absmax[i] = map[code[i]] * nested_absmax[i / 256] + offset` (an f32 multiply, then
//! an f32 add, as torch does them).
//!
//! Three pieces of bnb 0.50.2 / torch 2.15 behaviour are replicated bit for bit:
//! - the map: `create_dynamic_map(signed=True)` with torch's CPU `linspace` (which computes
//!   `start + step * i` with a fused multiply-add below the halfway point, `end - step * (steps-1-i)`
//!   above it);
//! - the offset: torch's CPU `mean` of f32 is its cascade `sum` (8 f32 lanes, four interleaved
//!   accumulators, 16-wide levels) divided by N in f32. Exact below 32768 blocks (2M weights at
//!   block 64); from there on torch splits the sum across threads and its last bit depends on the
//!   thread count (pass bnb's offset to [`double_quantize_with_offset`] to reproduce such a state);
//! - the 8-bit quantizer of the CPU build (`quantize_cpu` in csrc/cpu_ops.cpp): not an exact
//!   nearest-code search but a 65536-entry lookup table over [-1, 1], indexed by
//!   `trunc(fma((x + 1) * 0.5, 65535, 0.5))` (the fma is what the shipped binary computes; with
//!   the dynamic map it never changes a code, as a search around every code boundary showed),
//!   built by walking the map's f32 midpoints with `>`; an all-zero block gets code 0, absmax 0.
//!   bnb's CUDA kernel searches the map instead, so its codes can differ by one near midpoints.

use crate::error::{Error, Result};
use crate::quant::nf4::{self, check_len, Nf4};

/// bnb's block size for the absmax codes.
pub const NESTED_BLOCKSIZE: usize = 256;

const LUT_SIZE: usize = 65536;

/// bitsandbytes' `create_dynamic_map(signed=True)`: 256 sorted values in [-1, 1], dense near 0
/// (for each decade 1e-6..1 the midpoints of a `linspace(0.1, 1)` grid, both signs, plus 0 and 1).
pub fn dynamic_map_signed() -> [f32; 256] {
    // Python computes 10**(-6+i) in f64; torch rounds the scalar to f32 before multiplying.
    const DECADES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let mut data = Vec::with_capacity(256);
    for (i, &decade) in DECADES.iter().enumerate() {
        let bounds = torch_linspace(0.1, 1.0, (1 << i) + 1);
        let scale = decade as f32;
        for w in bounds.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            data.push(-scale * mean);
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    let mut map = [0f32; 256];
    map.copy_from_slice(&data);
    map
}

/// torch's CPU `linspace` for f32 (RangeFactoriesKernel.cpp; the build contracts to fma).
fn torch_linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - i - 1) as f32, end) }).collect()
}

/// torch's CPU `mean` of an f32 vector: [`torch_sum`] / N in f32. NaN for an empty slice.
pub fn torch_mean(values: &[f32]) -> f32 {
    torch_sum(values) / values.len() as f32
}

/// torch's CPU `sum` of a contiguous f32 vector (SumKernel.cpp `cascade_sum`, single-threaded,
/// as dispatched on x86-64 with AVX2 or AVX-512: 8 f32 lanes, because sum is not registered for
/// AVX-512). Summing order decides the last bits, so this mirrors it step by step.
pub fn torch_sum(values: &[f32]) -> f32 {
    const W: usize = 8;
    let n = values.len();
    let total = if n < W {
        row_sum(n, |i| values[i])
    } else {
        let vecs = n / W;
        let lanes = row_sum(vecs, |k| Lanes(std::array::from_fn(|l| values[k * W + l])));
        let mut acc = 0f32;
        for &x in &values[vecs * W..] {
            acc += x;
        }
        for l in lanes.0 {
            acc += l;
        }
        acc
    };
    // The output starts at 0 and the result is added to it.
    0.0 + total
}

#[derive(Clone, Copy, Default)]
struct Lanes([f32; 8]);

impl std::ops::Add for Lanes {
    type Output = Lanes;
    fn add(self, o: Lanes) -> Lanes {
        Lanes(std::array::from_fn(|l| self.0[l] + o.0[l]))
    }
}

/// `row_sum`: four interleaved partial sums over rows of 4 items, the tail into the first.
fn row_sum<T: Copy + Default + std::ops::Add<Output = T>>(size: usize, item: impl Fn(usize) -> T) -> T {
    const ILP: usize = 4;
    let rows = size / ILP;
    let mut partial = multi_row_sum::<T, ILP>(rows, |r, k| item(r * ILP + k));
    for i in rows * ILP..size {
        partial[0] = partial[0] + item(i);
    }
    for k in 1..ILP {
        partial[0] = partial[0] + partial[k];
    }
    partial[0]
}

/// `multi_row_sum`: sums `size` rows of `R` columns through 4 levels of accumulators, each level
/// flushed into the next every `2^level_power` rows.
fn multi_row_sum<T: Copy + Default + std::ops::Add<Output = T>, const R: usize>(size: usize, item: impl Fn(usize, usize) -> T) -> [T; R] {
    const LEVELS: usize = 4;
    let ceil_log2 = if size <= 2 { 1 } else { usize::BITS - (size - 1).leading_zeros() } as usize;
    let level_power = (ceil_log2 / LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[T::default(); R]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                *a = *a + item(i, k);
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (hi, lo) in upper[0].iter_mut().zip(lower[j - 1].iter_mut()) {
                *hi = *hi + *lo;
                *lo = T::default();
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for (k, a) in acc[0].iter_mut().enumerate() {
            *a = *a + item(i, k);
        }
        i += 1;
    }
    let mut total = acc[0];
    for level in &acc[1..] {
        for (t, a) in total.iter_mut().zip(level) {
            *t = *t + *a;
        }
    }
    total
}

/// bnb's CPU lookup table from a normalized value's bin in [-1, 1] to the nearest map entry.
fn build_lut(map: &[f32; 256]) -> Vec<u8> {
    let mids: Vec<f32> = map.windows(2).map(|w| (w[0] + w[1]) * 0.5).collect();
    let mut lut = Vec::with_capacity(LUT_SIZE);
    let mut idx = 0;
    for i in 0..LUT_SIZE {
        let v = (2.0 * i as f32) / (LUT_SIZE - 1) as f32 - 1.0;
        while idx < mids.len() && v > mids[idx] {
            idx += 1;
        }
        lut.push(idx as u8);
    }
    lut
}

#[inline]
fn lut_index(normalized: f32) -> usize {
    let v = normalized.clamp(-1.0, 1.0);
    ((v + 1.0) * 0.5).mul_add((LUT_SIZE - 1) as f32, 0.5) as usize
}

/// bnb's CPU 8-bit blockwise quantizer (`quantize_blockwise`): `codes` [N] and `absmax`
/// [ceil(N/blocksize)] for `values` [N] against a sorted 256-entry `map`.
pub fn quantize_blockwise_8bit(values: &[f32], map: &[f32; 256], blocksize: usize, codes: &mut [u8], absmax: &mut [f32]) -> Result<()> {
    if blocksize == 0 {
        return Err(Error::InvalidArgument { flag: "blocksize", detail: "the 8-bit block size must be positive".into() });
    }
    check_len("quantize_blockwise_8bit", "codes", codes.len(), values.len())?;
    check_len("quantize_blockwise_8bit", "absmax", absmax.len(), values.len().div_ceil(blocksize))?;
    if let Some(index) = values.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFinite { what: "8-bit blockwise quantize", index, value: values[index] });
    }
    let lut = build_lut(map);
    for (b, (block, out)) in values.chunks(blocksize).zip(codes.chunks_mut(blocksize)).enumerate() {
        let max = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        absmax[b] = max;
        if max == 0.0 {
            out.fill(0);
            continue;
        }
        let inv = 1.0 / max;
        for (c, &x) in out.iter_mut().zip(block) {
            *c = lut[lut_index(x * inv)];
        }
    }
    Ok(())
}

/// Inverse of [`quantize_blockwise_8bit`] plus `offset`: `out[i] = map[codes[i]] * absmax[i / bs] + offset`.
pub fn dequantize_blockwise_8bit(codes: &[u8], absmax: &[f32], map: &[f32], blocksize: usize, offset: f32, out: &mut [f32]) -> Result<()> {
    if blocksize == 0 {
        return Err(Error::InvalidArgument { flag: "blocksize", detail: "the 8-bit block size must be positive".into() });
    }
    check_len("dequantize_blockwise_8bit", "map", map.len(), 256)?;
    check_len("dequantize_blockwise_8bit", "codes", codes.len(), out.len())?;
    check_len("dequantize_blockwise_8bit", "absmax", absmax.len(), out.len().div_ceil(blocksize))?;
    for (i, (o, &c)) in out.iter_mut().zip(codes).enumerate() {
        *o = map[c as usize] * absmax[i / blocksize] + offset;
    }
    Ok(())
}

/// The double-quantized absmax of one NF4 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct DoubleQuant {
    /// [ceil(N/blocksize)] one byte per NF4 block (bnb's `weight.absmax` when nested).
    pub codes: Vec<u8>,
    /// mean of the original absmax, added back on dequantization (`nested_offset`).
    pub offset: f32,
    /// [ceil(codes.len()/nested_blocksize)] (bnb's `weight.nested_absmax`).
    pub nested_absmax: Vec<f32>,
    pub nested_blocksize: usize,
    /// [256] the 8-bit map (bnb's `weight.nested_quant_map`), normally [`dynamic_map_signed`].
    pub map: Vec<f32>,
}

impl DoubleQuant {
    /// The absmax back in f32 into `out` [codes.len()].
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        dequantize_blockwise_8bit(&self.codes, &self.nested_absmax, &self.map, self.nested_blocksize, self.offset, out)
    }

    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.codes.len()];
        self.dequantize_into(&mut out)?;
        Ok(out)
    }
}

/// Double-quantizes an NF4 absmax vector as bnb does (offset = torch's mean; 0 when empty).
pub fn double_quantize(absmax: &[f32]) -> Result<DoubleQuant> {
    let offset = if absmax.is_empty() { 0.0 } else { torch_mean(absmax) };
    double_quantize_with_offset(absmax, offset)
}

/// [`double_quantize`] with a given offset (to reproduce a stored state, or bnb's offset where
/// its threaded sum differs from [`torch_mean`]).
pub fn double_quantize_with_offset(absmax: &[f32], offset: f32) -> Result<DoubleQuant> {
    if !offset.is_finite() {
        return Err(Error::NonFinite { what: "double quantization offset", index: 0, value: offset });
    }
    let map = dynamic_map_signed();
    let centered: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
    let mut codes = vec![0u8; absmax.len()];
    let mut nested_absmax = vec![0f32; absmax.len().div_ceil(NESTED_BLOCKSIZE)];
    quantize_blockwise_8bit(&centered, &map, NESTED_BLOCKSIZE, &mut codes, &mut nested_absmax)?;
    Ok(DoubleQuant { codes, offset, nested_absmax, nested_blocksize: NESTED_BLOCKSIZE, map: map.to_vec() })
}

/// The absmax of an NF4 tensor as stored: f32 per block, or double-quantized.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    F32(Vec<f32>),
    Double(DoubleQuant),
}

/// The full quantized state of one weight: what a QLoRA base linear keeps in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4State {
    /// [ceil(N/2)] NF4 codes, element 2i in the high nibble.
    pub packed: Vec<u8>,
    /// N, the number of weights (row-major flattened).
    pub len: usize,
    pub blocksize: usize,
    pub absmax: Absmax,
}

impl Nf4State {
    /// Quantizes `weights` [N]; `double` is bnb's `compress_statistics` (QLoRA: true).
    pub fn quantize(weights: &[f32], blocksize: usize, double: bool) -> Result<Nf4State> {
        let Nf4 { packed, absmax, blocksize, len } = nf4::quantize(weights, blocksize)?;
        let absmax = if double { Absmax::Double(double_quantize(&absmax)?) } else { Absmax::F32(absmax) };
        Ok(Nf4State { packed, len, blocksize, absmax })
    }

    /// The per-block absmax in f32 [ceil(N/blocksize)].
    pub fn absmax_f32(&self) -> Result<Vec<f32>> {
        match &self.absmax {
            Absmax::F32(a) => Ok(a.clone()),
            Absmax::Double(dq) => dq.dequantize(),
        }
    }

    /// The weights back in f32 into `out` [N].
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        check_len("nf4 dequantize", "out", out.len(), self.len)?;
        nf4::dequantize_into(&self.packed, &self.absmax_f32()?, self.blocksize, out)
    }

    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.len];
        self.dequantize_into(&mut out)?;
        Ok(out)
    }

    /// Bytes this state takes in a bnb-4bit checkpoint, tensors only: codes, absmax (f32 or
    /// bytes + nested f32), the 16-entry NF4 map, and when nested the 256-entry map (the JSON
    /// descriptor is not counted).
    pub fn storage_bytes(&self) -> usize {
        let absmax = match &self.absmax {
            Absmax::F32(a) => a.len() * 4,
            Absmax::Double(dq) => dq.codes.len() + dq.nested_absmax.len() * 4 + dq.map.len() * 4,
        };
        self.packed.len() + absmax + nf4::NF4_CODE.len() * 4
    }

    /// Bits per weight of this tensor, per-tensor constants included ([`Self::storage_bytes`]).
    pub fn bits_per_param(&self) -> f64 {
        self.storage_bytes() as f64 * 8.0 / self.len.max(1) as f64
    }
}
