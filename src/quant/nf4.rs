//! NF4 block quantization exactly as bitsandbytes does it on the CPU: the 16-value codebook, one
//! f32 absmax per block of the row-major flattened weight, codes chosen by the midpoint rule with
//! bnb's tie handling, two codes per byte with the first element in the high nibble.
//!
//! Everything here is slices in, slices out, so the GPU kernels can be tested against it.
//!
//! What bnb 0.50.2 does on the CPU (`backends/default/ops.py`, `quantize_4bit`), replicated here:
//! - whole blocks are normalized as `x * (1 / max(absmax, 1e-38))`, the last partial block as
//!   `x / max(absmax, 1e-38)` (a division, so a few values near a midpoint get a different code
//!   than the same value would in a whole block; `tests/quant.rs` pins this with such values);
//! - the stored absmax of a whole block is the plain maximum (0 for an all-zero block), that of a
//!   partial last block is the clamped one (1e-38, a subnormal, for an all-zero tail);
//! - the normalized value is clamped to [-1, 1] and its code is the number of midpoints strictly
//!   below it (`torch.bucketize`, right=False): a value exactly on a midpoint takes the lower code.
//!   The CUDA decision tree `dQuantizeNF4` uses the same `x > threshold` rule, but four of its
//!   thresholds are one f32 ulp off these midpoints (see [`NF4_MIDPOINTS`]);
//! - an odd element count is padded with a normalized 0.0, so the last low nibble is 7.
//!
//! Known differences of bnb's CUDA kernel (`kQuantizeBlockwise`, read from csrc/kernels.cu, not
//! run here: no GPU): it multiplies by the reciprocal in the partial last block too, and an
//! all-zero block gives `0 * (1/0) = NaN`, which its decision tree sends to code 0 (-1.0) instead
//! of 7. Both dequantize to the same values (the absmax is 0), but the bytes differ.

use crate::error::{Error, Result};

/// bitsandbytes' NF4 codebook (`get_4bit_type("nf4")`, csrc `nf4_dequantization_lut`): quantiles of
/// N(0, 1) scaled to [-1, 1], with an exact zero at code 7. Written with bnb's digits.
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// The decision thresholds between neighbouring codes, `(code[i] + code[i+1]) / 2` in f32, as
/// bnb's CPU path computes them. bnb's CUDA tree `dQuantizeNF4` writes these as 16-17 digit
/// decimal literals of the f64 midpoints; as f32 literals four of them (thresholds 0, 8, 12, 14)
/// round to the neighbouring float, because the f64 midpoint of two f32 codes is a tie at f32
/// precision. So exactly four input values (after normalization) get codes one apart on the two
/// paths; `tests/quant.rs` pins which.
pub const NF4_MIDPOINTS: [f32; 15] = midpoints();

const fn midpoints() -> [f32; 15] {
    let mut m = [0f32; 15];
    let mut i = 0;
    while i < 15 {
        m[i] = (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0;
        i += 1;
    }
    m
}

/// QLoRA's block size.
pub const DEFAULT_BLOCKSIZE: usize = 64;
/// The block sizes bitsandbytes accepts for 4-bit quantization.
pub const BLOCKSIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];
/// Code of 0.0, also what pads the last low nibble of an odd element count.
pub const ZERO_CODE: u8 = 7;
/// bnb clamps the absmax it divides by to this (`absmax.clamp(min=1e-38)`); an f32 subnormal.
pub const ABSMAX_FLOOR: f32 = 1e-38;

/// Errors unless `blocksize` is a power of two from 32 to 4096.
pub fn check_blocksize(blocksize: usize) -> Result<()> {
    if BLOCKSIZES.contains(&blocksize) {
        return Ok(());
    }
    Err(Error::InvalidArgument {
        flag: "blocksize",
        detail: format!("{blocksize} is not one of {BLOCKSIZES:?} (bitsandbytes' 4-bit block sizes; QLoRA uses 64)"),
    })
}

/// Packed bytes for `n` codes.
pub fn packed_len(n: usize) -> usize {
    n.div_ceil(2)
}

/// Absmax entries for `n` weights.
pub fn num_blocks(n: usize, blocksize: usize) -> usize {
    n.div_ceil(blocksize)
}

/// The code of a normalized value in [-1, 1]: how many midpoints lie strictly below it, as bnb's
/// CPU `torch.bucketize(x, midpoints)` (and, but for four values, its CUDA tree of `x > t` tests).
#[inline]
pub fn encode(normalized: f32) -> u8 {
    NF4_MIDPOINTS.partition_point(|&m| m < normalized) as u8
}

/// Code `i` of a packed buffer: the first element of each byte sits in the high nibble.
#[inline]
pub fn code_at(packed: &[u8], i: usize) -> u8 {
    let byte = packed[i / 2];
    if i % 2 == 0 {
        byte >> 4
    } else {
        byte & 0x0f
    }
}

/// NF4 codes and per-block absmax of a flattened weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4 {
    /// [ceil(N/2)] two codes per byte, element 2i in the high nibble.
    pub packed: Vec<u8>,
    /// [ceil(N/blocksize)] scale of each block.
    pub absmax: Vec<f32>,
    pub blocksize: usize,
    /// N, the number of weights.
    pub len: usize,
}

impl Nf4 {
    /// The weights back in f32: `NF4_CODE[code] * absmax[block]`.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.len];
        dequantize_into(&self.packed, &self.absmax, self.blocksize, &mut out)?;
        Ok(out)
    }
}

/// Quantizes a row-major flattened weight [N] to NF4 with one absmax per `blocksize` elements.
pub fn quantize(weights: &[f32], blocksize: usize) -> Result<Nf4> {
    let n = weights.len();
    let mut packed = vec![0u8; packed_len(n)];
    let mut absmax = vec![0f32; num_blocks(n, blocksize.max(1))];
    quantize_into(weights, blocksize, &mut packed, &mut absmax)?;
    Ok(Nf4 { packed, absmax, blocksize, len: n })
}

/// [`quantize`] into caller-owned buffers: `packed` [ceil(N/2)], `absmax` [ceil(N/blocksize)].
pub fn quantize_into(weights: &[f32], blocksize: usize, packed: &mut [u8], absmax: &mut [f32]) -> Result<()> {
    check_blocksize(blocksize)?;
    let n = weights.len();
    check_len("nf4 quantize", "packed", packed.len(), packed_len(n))?;
    check_len("nf4 quantize", "absmax", absmax.len(), num_blocks(n, blocksize))?;
    if let Some(index) = weights.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFinite { what: "nf4 quantize", index, value: weights[index] });
    }
    let full = n / blocksize * blocksize;
    for (b, block) in weights.chunks(blocksize).enumerate() {
        let max = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let start = b * blocksize;
        // Block size is even, so a block starts on a byte boundary; only the last can be odd.
        let bytes = &mut packed[start / 2..(start + block.len()).div_ceil(2)];
        if start < full {
            absmax[b] = max;
            let inv = 1.0 / max.max(ABSMAX_FLOOR);
            pack_block(block, bytes, |x| x * inv);
        } else {
            let clamped = max.max(ABSMAX_FLOOR);
            absmax[b] = clamped;
            pack_block(block, bytes, |x| x / clamped);
        }
    }
    Ok(())
}

fn pack_block(block: &[f32], bytes: &mut [u8], normalize: impl Fn(f32) -> f32) {
    let code = |x: f32| encode(normalize(x).clamp(-1.0, 1.0));
    for (byte, pair) in bytes.iter_mut().zip(block.chunks(2)) {
        let low = if pair.len() == 2 { code(pair[1]) } else { ZERO_CODE };
        *byte = (code(pair[0]) << 4) | low;
    }
}

/// Dequantizes `packed` [ceil(N/2)] with `absmax` [ceil(N/blocksize)] into `out` [N].
pub fn dequantize_into(packed: &[u8], absmax: &[f32], blocksize: usize, out: &mut [f32]) -> Result<()> {
    check_blocksize(blocksize)?;
    let n = out.len();
    check_len("nf4 dequantize", "packed", packed.len(), packed_len(n))?;
    check_len("nf4 dequantize", "absmax", absmax.len(), num_blocks(n, blocksize))?;
    for (b, block) in out.chunks_mut(blocksize).enumerate() {
        let scale = absmax[b];
        let start = b * blocksize;
        for (j, w) in block.iter_mut().enumerate() {
            *w = NF4_CODE[code_at(packed, start + j) as usize] * scale;
        }
    }
    Ok(())
}

pub(crate) fn check_len(op: &'static str, what: &str, found: usize, expected: usize) -> Result<()> {
    if found != expected {
        return Err(Error::shape(op, format!("`{what}` has {found} elements, expected {expected}")));
    }
    Ok(())
}

/// Storage cost of NF4 per weight, in bits, for large tensors: 4 bits of code plus the absmax
/// share, either f32 per block or (double quantization) one byte per block plus an f32 per
/// `nested_blocksize` blocks. Per-tensor constants (the offset, the 16- and 256-entry maps) are
/// left out here; [`crate::quant::Nf4State::bits_per_param`] counts them for a given tensor.
/// Block 64: 4.5 bits plain, 4.127 bits (4 + 8/64 + 32/(64*256)) double-quantized.
pub fn bits_per_param(blocksize: usize, nested_blocksize: Option<usize>) -> f64 {
    let bs = blocksize as f64;
    4.0 + match nested_blocksize {
        None => 32.0 / bs,
        Some(nbs) => 8.0 / bs + 32.0 / (bs * nbs as f64),
    }
}

/// [`bits_per_param`] in bytes.
pub fn bytes_per_param(blocksize: usize, nested_blocksize: Option<usize>) -> f64 {
    bits_per_param(blocksize, nested_blocksize) / 8.0
}

/// How far a round trip moved the weights. Sums run in f64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundTripStats {
    pub n: usize,
    /// max |x - q(x)|
    pub max_abs_err: f64,
    /// mean |x - q(x)|
    pub mean_abs_err: f64,
    /// sqrt(mean (x - q(x))^2)
    pub rmse: f64,
    /// sqrt(mean x^2), the scale the error is measured against
    pub rms: f64,
    /// rmse / rms (0 when rms is 0)
    pub rel_rmse: f64,
    /// mean (q(x) - x): a systematic shift, which NF4's asymmetric codebook can introduce
    pub bias: f64,
}

/// Error statistics between `original` and `restored` (same length).
pub fn round_trip_stats(original: &[f32], restored: &[f32]) -> Result<RoundTripStats> {
    check_len("round_trip_stats", "restored", restored.len(), original.len())?;
    let n = original.len();
    let (mut max, mut abs, mut sq, mut sq_x, mut bias) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (&x, &y) in original.iter().zip(restored) {
        let e = y as f64 - x as f64;
        max = max.max(e.abs());
        abs += e.abs();
        sq += e * e;
        sq_x += x as f64 * x as f64;
        bias += e;
    }
    let d = n.max(1) as f64;
    let rmse = (sq / d).sqrt();
    let rms = (sq_x / d).sqrt();
    let rel_rmse = if rms > 0.0 { rmse / rms } else { 0.0 };
    Ok(RoundTripStats { n, max_abs_err: max, mean_abs_err: abs / d, rmse, rms, rel_rmse, bias: bias / d })
}
