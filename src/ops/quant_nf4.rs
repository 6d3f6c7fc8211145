//! NF4 quantization and dequantization of a weight tensor on either device, bit for bit the CPU
//! quantizer of `quant::nf4` (bitsandbytes' CPU path). Kernels: `shaders/quant_nf4.wgsl`.
//!
//! Packed layout on both devices: the byte array of `quant::nf4` (element 2i in the high nibble of
//! byte i) zero-padded to whole words and held as little-endian u32 words [ceil(N/8)], so a kernel
//! unpacks 8 weights from one load. WebGPU buffers and the hosts we build for are little-endian,
//! so the words are the bytes reinterpreted.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::contract::{params, read, write, Entry};
use crate::ops::groups;
use crate::quant::{nf4, Nf4State};
use crate::shaders;
use crate::tensor::{check_shape, DType, Tensor};

params! {
    struct Params {
        n: u32,
        bs: u32,
        blocks: u32,
        words: u32,
    }
}

const WG: u32 = 64;
const OP: &str = "quant_nf4";

const SHARED: &[(&str, u32)] = &[("WG", WG)];

pub(crate) static QUANTIZE: Entry<Params, 3> =
    Entry::new(&shaders::QUANT_NF4, "quantize", [read(1, "w"), write(2, "packed"), write(3, "absmax_bits")], SHARED);
pub(crate) static DEQUANTIZE: Entry<Params, 3> =
    Entry::new(&shaders::QUANT_NF4, "dequantize", [read(1, "packed_in"), read(2, "absmax"), write(3, "out")], SHARED);

/// An NF4 weight on a device: codes, one absmax per block of the row-major flattened weight.
#[derive(Debug)]
pub struct Nf4Tensor {
    /// [ceil(N/8)] u32 words of packed codes (see the module docs).
    pub packed: Tensor,
    /// [ceil(N/blocksize)] f32 scale per block.
    pub absmax: Tensor,
    pub blocksize: usize,
    /// The weight's shape (N is its product).
    pub shape: Vec<usize>,
}

impl Nf4Tensor {
    /// N, the number of weights.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Uploads a CPU-quantized weight (its `len` must match `shape`).
    pub fn from_nf4(dev: &Device, label: &str, q: &nf4::Nf4, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        nf4::check_len("nf4 upload", "shape", n, q.len)?;
        let packed = Tensor::from_u32(dev, &format!("{label}.packed"), &[words(n)], &words_from_bytes(&q.packed))?;
        let absmax = Tensor::from_f32(dev, &format!("{label}.absmax"), &[q.absmax.len()], &q.absmax)?;
        Ok(Nf4Tensor { packed, absmax, blocksize: q.blocksize, shape: shape.to_vec() })
    }

    /// Uploads a loaded or CPU-quantized state; a double-quantized absmax is dequantized to f32
    /// here, once, so the kernels only ever see f32 scales.
    pub fn from_state(dev: &Device, label: &str, state: &Nf4State, shape: &[usize]) -> Result<Self> {
        let q = nf4::Nf4 { packed: state.packed.clone(), absmax: state.absmax_f32()?, blocksize: state.blocksize, len: state.len };
        Self::from_nf4(dev, label, &q, shape)
    }

    /// Checks that the packed and absmax tensors fit the shape and block size.
    pub fn check(&self, op: &'static str) -> Result<()> {
        nf4::check_blocksize(self.blocksize)?;
        self.packed.expect(op, DType::U32)?;
        self.absmax.expect(op, DType::F32)?;
        let n = self.len();
        check_shape(op, &self.packed, &[words(n)])?;
        check_shape(op, &self.absmax, &[nf4::num_blocks(n, self.blocksize)])
    }
}

/// u32 words holding `n` packed codes.
pub fn words(n: usize) -> usize {
    n.div_ceil(8)
}

/// Packed bytes ([ceil(N/2)], `quant::nf4` layout) as zero-padded little-endian words.
pub fn words_from_bytes(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(b)
        })
        .collect()
}

/// The first `packed_len(n)` bytes of little-endian words: the `quant::nf4` packed array.
pub fn bytes_from_words(words: &[u32], n: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.truncate(nf4::packed_len(n));
    bytes
}

/// Quantizes `w` (any shape, flattened row-major) with one absmax per `blocksize` weights. The
/// CPU path errors on non-finite weights; the GPU kernel does not look (check on the CPU first if
/// the weights are untrusted).
pub fn quantize(dev: &Device, w: &Tensor, blocksize: usize) -> Result<Nf4Tensor> {
    nf4::check_blocksize(blocksize)?;
    w.expect(OP, DType::F32)?;
    let n = w.numel();
    let blocks = nf4::num_blocks(n, blocksize);
    let label = w.label();
    match dev {
        Device::Cpu(_) => {
            let q = nf4::quantize(w.host_f32(OP)?, blocksize)?;
            Nf4Tensor::from_nf4(dev, label, &q, w.shape())
        }
        Device::Gpu(g) => {
            let packed = Tensor::zeros(dev, &format!("{label}.packed"), &[words(n)], DType::U32);
            let absmax = Tensor::zeros(dev, &format!("{label}.absmax"), &[blocks], DType::F32);
            let params = Params { n: u32_of(n)?, bs: blocksize as u32, blocks: blocks as u32, words: words(n) as u32 };
            let bufs = [w.bind(OP)?, packed.bind(OP)?, absmax.bind(OP)?];
            QUANTIZE.dispatch(g, &[("WG", WG)], &params, bufs, groups(g, blocks, WG))?;
            Ok(Nf4Tensor { packed, absmax, blocksize, shape: w.shape().to_vec() })
        }
    }
}

/// The f32 weight back, shaped as it was quantized.
pub fn dequantize(dev: &Device, q: &Nf4Tensor) -> Result<Tensor> {
    q.check(OP)?;
    let n = q.len();
    let mut out = Tensor::zeros(dev, "nf4.dequantized", &q.shape, DType::F32);
    match dev {
        Device::Cpu(_) => {
            let bytes = bytes_from_words(q.packed.host_u32(OP)?, n);
            nf4::dequantize_into(&bytes, q.absmax.host_f32(OP)?, q.blocksize, out.host_f32_mut(OP)?)?;
        }
        Device::Gpu(g) => {
            let params = Params { n: u32_of(n)?, bs: q.blocksize as u32, blocks: q.absmax.numel() as u32, words: words(n) as u32 };
            let bufs = [q.packed.bind(OP)?, q.absmax.bind(OP)?, out.bind(OP)?];
            DEQUANTIZE.dispatch(g, &[("WG", WG)], &params, bufs, groups(g, words(n), WG))?;
        }
    }
    Ok(out)
}

/// Element counts index the kernels with u32.
fn u32_of(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::Limit {
        op: OP,
        detail: format!("{n} weights in one tensor"),
        limit: u32::MAX as u64,
        hint: "split the tensor or quantize it on the CPU (--device cpu)",
    })
}
