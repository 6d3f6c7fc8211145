// NF4 block quantization of a row-major flattened weight w [N], bit for bit as the CPU quantizer
// in src/quant/nf4.rs (bitsandbytes' CPU path); see src/ops/quant_nf4.rs for the packed layout.
//
// Entry points:
// - `quantize`: one invocation per block of BS weights: the absmax (a max, exact in any order),
//   then the codes, written as whole u32 words (BS is a multiple of 8, so blocks never share a word).
// - `dequantize`: one invocation per u32 word, i.e. 8 weights: code * absmax, an exact product.
//
// Exactness: whole blocks normalize as x * (1 / absmax), the partial last block as x / absmax, as
// the CPU path does. Multiplication is correctly rounded in WGSL; division is only required to be
// within 2.5 ULP, so the codes equal the CPU's exactly where the adapter divides correctly rounded
// (lavapipe does, and tests/ops/quant_nf4.rs checks it on the adapter at hand). An all-zero block
// is handled without dividing (its codes are all 7, as on the CPU), so adapters that flush the
// subnormal floor 1e-38 to zero still agree; blocks whose absmax is itself subnormal are outside
// the guarantee on such adapters.

struct Params {
    n: u32,      // weights
    bs: u32,     // block size, a multiple of 8
    blocks: u32, // ceil(n / bs)
    words: u32,  // ceil(n / 8)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;               // [N]
@group(0) @binding(2) var<storage, read_write> packed: array<u32>;    // [ceil(N/8)]
@group(0) @binding(3) var<storage, read_write> absmax_bits: array<u32>; // [ceil(N/BS)] f32 bits

// bitsandbytes' codebook and the f32 midpoints (code[i] + code[i+1]) / 2, as bit patterns so no
// decimal literal can round differently from nf4::NF4_CODE / NF4_MIDPOINTS.
// shared: nf4_codebook (a copy WGSL forces; tests/kernel_contracts.rs keeps the copies identical)
const CODE_BITS = array<u32, 16>(
    0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
    0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u,
);

// The code in bits [shift, shift + 4) of `word`, as f32.
fn code(word: u32, shift: u32) -> f32 {
    return bitcast<f32>(CODE_BITS[(word >> shift) & 15u]);
}
// end shared: nf4_codebook

const MID_BITS = array<u32, 15>(
    0xbf591cd8u, 0xbf1c5270u, 0xbeeb8480u, 0xbeadea76u, 0xbe703cecu, 0xbe0d38bcu, 0xbd3a7871u, 0x3d22faffu,
    0x3df64862u, 0x3e5067e0u, 0x3e9582d4u, 0x3ec753f9u, 0x3f006d04u, 0x3f248dafu, 0x3f5c89dau,
);
const FLOOR_BITS: u32 = 0x006ce3eeu; // 1e-38, bnb's absmax clamp (an f32 subnormal)
const ZERO_CODE: u32 = 7u;

override WG: u32 = 64u;

// How many midpoints lie strictly below v (torch.bucketize): a value on a midpoint takes the lower code.
fn encode(v: f32) -> u32 {
    let x = clamp(v, -1.0, 1.0);
    var c = 0u;
    for (var i = 0u; i < 15u; i++) {
        c += select(0u, 1u, bitcast<f32>(MID_BITS[i]) < x);
    }
    return c;
}

@compute @workgroup_size(WG)
fn quantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if b >= p.blocks {
        return;
    }
    let start = b * p.bs;
    let end = min(start + p.bs, p.n);
    var m = 0.0;
    for (var i = start; i < end; i++) {
        m = max(m, abs(w[i]));
    }
    let whole = end - start == p.bs;
    let all_zero = m == 0.0;
    // Whole block: stored absmax is the plain max and values are scaled by the reciprocal of the
    // clamped max; the partial last block stores the clamped max and divides by it.
    let clamped = max(m, bitcast<f32>(FLOOR_BITS));
    let inv = 1.0 / clamped;
    if whole {
        absmax_bits[b] = bitcast<u32>(m);
    } else if all_zero {
        absmax_bits[b] = FLOOR_BITS; // written as bits, in case the adapter flushes subnormals
    } else {
        absmax_bits[b] = bitcast<u32>(clamped);
    }
    let word_end = (end + 7u) / 8u;
    for (var wi = start / 8u; wi < word_end; wi++) {
        var word = 0u;
        for (var j = 0u; j < 8u; j++) {
            let e = wi * 8u + j;
            var c = 0u; // bytes wholly past the data are zero
            if e < end {
                if all_zero {
                    c = ZERO_CODE; // 0 * (1 / 1e-38) and 0 / 1e-38 on the CPU
                } else if whole {
                    c = encode(w[e] * inv);
                } else {
                    c = encode(w[e] / clamped);
                }
            } else if (e & ~1u) < end {
                c = ZERO_CODE; // an odd count pads the last low nibble with the code of 0.0
            }
            // Element 2i of a byte sits in its high nibble; bytes are little-endian in the word.
            let shift = (j / 2u) * 8u + select(0u, 4u, j % 2u == 0u);
            word |= c << shift;
        }
        packed[wi] = word;
    }
}

@group(0) @binding(1) var<storage, read> packed_in: array<u32>; // [ceil(N/8)]
@group(0) @binding(2) var<storage, read> absmax: array<f32>;    // [ceil(N/BS)]
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // [N]

@compute @workgroup_size(WG)
fn dequantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let wi = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if wi >= p.words {
        return;
    }
    let word = packed_in[wi];
    let scale = absmax[wi * 8u / p.bs];
    for (var j = 0u; j < 8u; j++) {
        let e = wi * 8u + j;
        if e < p.n {
            let shift = (j / 2u) * 8u + select(0u, 4u, j % 2u == 0u);
            out[e] = code(word, shift) * scale;
        }
    }
}
