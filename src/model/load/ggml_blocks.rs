//! ggml tensor types and their block dequantizers (bytes -> f32), as stored in GGUF files.
//!
//! Owns: the table of ggml type ids with their block sizes, and exact dequantization of the
//! types a typical llama.cpp model uses (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K,
//! Q5_K, Q6_K). It knows nothing about files; `gguf.rs` hands it validated byte slices.
//!
//! Layouts and arithmetic follow llama.cpp's `ggml-quants.c` (`dequantize_row_*`) and the `gguf`
//! Python package's `quants.py`. Every formula keeps the reference's f32 operation order (for
//! example Q6_K is `(d * scale) * q`, Q4_1 is `d * q + m`) and Rust never fuses a multiply-add on
//! its own, so the results are bit-identical to the Python reference (tests/gguf.rs checks this).
//! Scales are IEEE half floats, little-endian; conversion to f32 is exact.

use half::{bf16, f16};

use crate::error::{Error, Result};

/// Elements per K-quant super-block.
pub const QK_K: usize = 256;

macro_rules! ggml_types {
    ($($name:ident = $id:literal, $block:expr, $bytes:expr;)*) => {
        /// A ggml tensor type: how the elements of one row are packed.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum GgmlType { $($name),* }

        impl GgmlType {
            /// The type with this id in a GGUF tensor info, if ggml defines it.
            pub fn from_id(id: u32) -> Option<GgmlType> {
                match id { $($id => Some(GgmlType::$name),)* _ => None }
            }
            /// The id stored in GGUF tensor infos.
            pub fn id(self) -> u32 {
                match self { $(GgmlType::$name => $id),* }
            }
            /// The name llama.cpp uses (`Q4_K`, `F16`, ...).
            pub fn name(self) -> &'static str {
                match self { $(GgmlType::$name => stringify!($name)),* }
            }
            /// (elements per block, bytes per block).
            pub fn block(self) -> (usize, usize) {
                match self { $(GgmlType::$name => ($block, $bytes)),* }
            }
        }
    };
}

// Ids and sizes: ggml.h `enum ggml_type` and the gguf package's GGML_QUANT_SIZES. Ids 4, 5
// (removed Q4_2/Q4_3) and 31..33, 36..38 (removed or repacked variants) are unused in files.
ggml_types! {
    F32 = 0, 1, 4;
    F16 = 1, 1, 2;
    Q4_0 = 2, 32, 18;
    Q4_1 = 3, 32, 20;
    Q5_0 = 6, 32, 22;
    Q5_1 = 7, 32, 24;
    Q8_0 = 8, 32, 34;
    Q8_1 = 9, 32, 40;
    Q2_K = 10, QK_K, 84;
    Q3_K = 11, QK_K, 110;
    Q4_K = 12, QK_K, 144;
    Q5_K = 13, QK_K, 176;
    Q6_K = 14, QK_K, 210;
    Q8_K = 15, QK_K, 292;
    IQ2_XXS = 16, QK_K, 66;
    IQ2_XS = 17, QK_K, 74;
    IQ3_XXS = 18, QK_K, 98;
    IQ1_S = 19, QK_K, 50;
    IQ4_NL = 20, 32, 18;
    IQ3_S = 21, QK_K, 110;
    IQ2_S = 22, QK_K, 82;
    IQ4_XS = 23, QK_K, 136;
    I8 = 24, 1, 1;
    I16 = 25, 1, 2;
    I32 = 26, 1, 4;
    I64 = 27, 1, 8;
    F64 = 28, 1, 8;
    IQ1_M = 29, QK_K, 56;
    BF16 = 30, 1, 2;
    TQ1_0 = 34, QK_K, 54;
    TQ2_0 = 35, QK_K, 66;
    MXFP4 = 39, 32, 17;
    NVFP4 = 40, 64, 36;
    Q1_0 = 41, 128, 18;
}

/// The types `dequantize` handles, for error messages.
pub const SUPPORTED: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K";

impl GgmlType {
    /// Whether `dequantize` handles this type.
    pub fn is_supported(self) -> bool {
        use GgmlType::*;
        matches!(self, F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q4_K | Q5_K | Q6_K)
    }

    /// Bytes holding `n` elements, or None if `n` is not a whole number of blocks or overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (block, bytes) = self.block();
        if n % block as u64 != 0 {
            return None;
        }
        (n / block as u64).checked_mul(bytes as u64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Dequantizes `src` (whole blocks of type `ty`) into `dst`, which must hold exactly the elements
/// those blocks encode. `file` and `tensor` only name the data in errors.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32], file: &str, tensor: &str) -> Result<()> {
    if !ty.is_supported() {
        return Err(Error::UnsupportedGgmlType { file: file.into(), tensor: tensor.into(), ggml_type: ty.name(), supported: SUPPORTED });
    }
    let (block, bytes) = ty.block();
    if dst.len() % block != 0 || (dst.len() / block).checked_mul(bytes) != Some(src.len()) {
        let detail = format!(
            "{} bytes of {ty} cannot be dequantized into {} values ({ty} packs {block} values in {bytes} bytes)",
            src.len(),
            dst.len()
        );
        return Err(Error::GgufTensor { file: file.into(), tensor: tensor.into(), detail });
    }
    if !dequantize_blocks(ty, src, dst) {
        // Unreachable: is_supported() was checked above; kept as an error rather than a panic.
        return Err(Error::UnsupportedGgmlType { file: file.into(), tensor: tensor.into(), ggml_type: ty.name(), supported: SUPPORTED });
    }
    Ok(())
}

/// The loop of `dequantize` without its checks, for kernels that dequantize row slices of a
/// tensor validated once (`ops::matmul_gguf`): whole blocks of `src` into `dst`, as many as both
/// hold. Returns false (writing nothing) for a type `dequantize` does not handle.
#[inline(always)]
pub fn dequantize_blocks(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> bool {
    let (block, bytes) = ty.block();
    let blocks = src.chunks_exact(bytes).zip(dst.chunks_exact_mut(block));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = half(b, 0)),
        GgmlType::BF16 => blocks.for_each(|(b, y)| y[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlType::Q5_K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| q6_k(b, y)),
        _ => return false,
    }
    true
}

/// The little-endian f16 at byte `at` of a block, as f32.
#[inline(always)]
pub(crate) fn half(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The first N elements of a slice as an array. With the codes widened first into an array
/// (`from_fn`) and then scaled, the block loops vectorize; written as one loop over slices they
/// compiled to a scalar conversion per element.
#[inline(always)]
fn fixed<const N: usize>(v: &[u8]) -> &[u8; N] {
    v[..N].try_into().expect("N elements")
}

/// `fixed` for the output.
#[inline(always)]
fn fixed_mut<const N: usize>(v: &mut [f32]) -> &mut [f32; N] {
    (&mut v[..N]).try_into().expect("N elements")
}

/// Elements 0..N and N..2N of a block's output.
#[inline(always)]
fn halves<const N: usize>(y: &mut [f32]) -> (&mut [f32; N], &mut [f32; N]) {
    let (lo, hi) = y[..2 * N].split_at_mut(N);
    (lo.try_into().expect("N elements"), hi.try_into().expect("N elements"))
}

/// The low and the high nibbles of N bytes.
#[inline(always)]
fn nibbles<const N: usize>(qs: &[u8; N]) -> ([u8; N], [u8; N]) {
    (qs.map(|q| q & 0xF), qs.map(|q| q >> 4))
}

/// block_q8_0 { f16 d; i8 qs[32] }: y = q * d.
#[inline(always)]
pub(crate) fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    let qs = fixed::<32>(&b[2..34]);
    let q: [f32; 32] = std::array::from_fn(|j| qs[j] as i8 as f32);
    for (y, q) in fixed_mut::<32>(y).iter_mut().zip(q) {
        *y = q * d;
    }
}

/// block_q4_0 { f16 d; u8 qs[16] }: low nibbles are elements 0..16, high nibbles 16..32;
/// y = (q - 8) * d.
#[inline(always)]
pub(crate) fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    let (lo, hi) = nibbles(fixed::<16>(&b[2..18]));
    let (y_lo, y_hi) = halves::<16>(y);
    for j in 0..16 {
        y_lo[j] = (lo[j] as i32 - 8) as f32 * d;
    }
    for j in 0..16 {
        y_hi[j] = (hi[j] as i32 - 8) as f32 * d;
    }
}

/// block_q4_1 { f16 d; f16 m; u8 qs[16] }: y = q * d + m.
#[inline(always)]
pub(crate) fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    let (lo, hi) = nibbles(fixed::<16>(&b[4..20]));
    let (y_lo, y_hi) = halves::<16>(y);
    for j in 0..16 {
        y_lo[j] = lo[j] as f32 * d + m;
    }
    for j in 0..16 {
        y_hi[j] = hi[j] as f32 * d + m;
    }
}

/// The 5-bit values of a Q5 block: bit j of the little-endian u32 `qh` is the fifth bit of element j.
#[inline(always)]
fn q5_values(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = [0u8; 32];
    for (j, &lo) in qs.iter().enumerate() {
        q[j] = (lo & 0xF) | (((qh >> j) & 1) as u8) << 4;
        q[j + 16] = (lo >> 4) | (((qh >> (j + 16)) & 1) as u8) << 4;
    }
    q
}

/// block_q5_0 { f16 d; u8 qh[4]; u8 qs[16] }: y = (q - 16) * d.
#[inline(always)]
pub(crate) fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (y, q) in fixed_mut::<32>(y).iter_mut().zip(q5_values(&b[2..6], &b[6..22])) {
        *y = (q as i32 - 16) as f32 * d;
    }
}

/// block_q5_1 { f16 d; f16 m; u8 qh[4]; u8 qs[16] }: y = q * d + m.
#[inline(always)]
pub(crate) fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    for (y, q) in fixed_mut::<32>(y).iter_mut().zip(q5_values(&b[4..8], &b[8..24])) {
        *y = q as f32 * d + m;
    }
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed 6-bit bytes of Q4_K/Q5_K
/// (`get_scale_min_k4`): sub-blocks 0..4 use the low 6 bits of bytes j and j+4; 4..8 take their
/// low 4 bits from byte j+4 and their top 2 bits from the top bits of bytes j-4 and j.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }: 8 sub-blocks of 32; each group of
/// 32 bytes of qs holds two sub-blocks (low nibbles, then high nibbles); y = (d*sc) * q - dmin*m.
#[inline(always)]
pub(crate) fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    for (g, (qs, y)) in b[16..144].chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, min1, d2, min2) = (d * sc1 as f32, dmin * m1 as f32, d * sc2 as f32, dmin * m2 as f32);
        let (lo, hi) = nibbles(fixed::<32>(qs));
        let (y1, y2) = halves::<32>(y);
        for (y, q) in y1.iter_mut().zip(lo) {
            *y = d1 * q as f32 - min1;
        }
        for (y, q) in y2.iter_mut().zip(hi) {
            *y = d2 * q as f32 - min2;
        }
    }
}

/// block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }: like Q4_K, and bit
/// (2g, 2g+1) of qh[l] is the fifth bit of element l of sub-blocks 2g and 2g+1.
#[inline(always)]
pub(crate) fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    for (g, (qs, y)) in b[48..176].chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, min1, d2, min2) = (d * sc1 as f32, dmin * m1 as f32, d * sc2 as f32, dmin * m2 as f32);
        let (qs, qh) = (fixed::<32>(qs), fixed::<32>(qh));
        let lo: [u8; 32] = std::array::from_fn(|l| (qs[l] & 0xF) | ((qh[l] >> (2 * g)) & 1) << 4);
        let hi: [u8; 32] = std::array::from_fn(|l| (qs[l] >> 4) | ((qh[l] >> (2 * g + 1)) & 1) << 4);
        let (y1, y2) = halves::<32>(y);
        for (y, q) in y1.iter_mut().zip(lo) {
            *y = d1 * q as f32 - min1;
        }
        for (y, q) in y2.iter_mut().zip(hi) {
            *y = d2 * q as f32 - min2;
        }
    }
}

/// block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }: two halves of 128 elements, each
/// packed in 64 bytes of ql (low 4 bits), 32 bytes of qh (high 2 bits) and 8 scales (one per 16
/// elements); y = (d * scale) * (q - 32).
#[inline(always)]
pub(crate) fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = half(b, 208);
    for h in 0..2 {
        let ql = fixed::<64>(&b[64 * h..]);
        let qh = fixed::<32>(&b[128 + 32 * h..]);
        let sc = fixed::<8>(&b[192 + 8 * h..]);
        // Element 32k + l of the half takes its low nibble from ql[l] (k = 0, 2) or ql[l + 32]
        // (k = 1, 3), the low nibble for k < 2 and the high one for k ≥ 2, and bits 2k..2k+2 of
        // qh[l] on top; its scale is sc[l/16 + 2k].
        for k in 0..4 {
            let q: [i32; 32] =
                std::array::from_fn(|l| ((ql[l + 32 * (k % 2)] >> (4 * (k / 2)) & 0xF) | ((qh[l] >> (2 * k)) & 3) << 4) as i32 - 32);
            let s = [d * sc[2 * k] as i8 as f32, d * sc[2 * k + 1] as i8 as f32];
            for (l, (y, q)) in fixed_mut::<32>(&mut y[128 * h + 32 * k..]).iter_mut().zip(q).enumerate() {
                *y = s[l / 16] * q as f32;
            }
        }
    }
}
