// NF4 block quantization of a row-major flattened weight w [N], bit for bit as the CPU quantizer
// in src/quant/nf4.rs (bitsandbytes' CPU path); see src/ops/quant_nf4.rs for the packed layout.
//
// Entry points:
// - `quantize`: one invocation per block of BS weights: the absmax (a max, exact in any order),
//   then the codes, written as whole u32 words (BS is a multiple of 8, so blocks never share a word).
// - `dequantize`: one invocation per u32 word, i.e. 8 weights: code * absmax, an exact product.
//
// Exactness: whole blocks normalize as x * (1 / absmax), the partial last block as x / absmax, as
// the CPU path does. Multiplication is correctly rounded in WGSL, but division is only required to
// be within 2.5 ULP, and NVIDIA's Vulkan driver misrounds some quotients (an H200 gave another code
// for x = -0.427443 / 0.7, a value on a midpoint's boundary). So both divisions are done exactly, on
// the integer significands (`div_rn`), and the absmax is a max of bit patterns: the codes equal the
// CPU's on every adapter (tests/ops/quant_nf4.rs). Blocks whose weights are subnormal are outside
// the guarantee on adapters that flush subnormals, in the whole-block product x * (1 / absmax), and
// in dequantization where code * absmax is subnormal (NVIDIA's Vulkan driver flushes it to zero).

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

// A positive finite nonzero f32 as significand s in [2^23, 2^24) and exponent e: value = s * 2^(e - 23).
struct Unpacked {
    s: u32,
    e: i32,
}

fn unpack(a: u32) -> Unpacked {
    let biased = i32(a >> 23u);
    if biased != 0 {
        return Unpacked((a & 0x7fffffu) | 0x800000u, biased - 127);
    }
    var s = a; // subnormal: a * 2^-149, normalized by shifting
    var e = -126;
    while s < 0x800000u {
        s = s << 1u;
        e -= 1;
    }
    return Unpacked(s, e);
}

// x / d correctly rounded (to nearest, ties to even), from bit patterns: x finite, d positive,
// finite and nonzero. Restoring long division of the significands gives 25 quotient bits (24 of
// significand and the rounding bit) and a remainder (the sticky bit); only integer operations, so
// no adapter can round it differently from the CPU's x / d.
fn div_rn(x_bits: u32, d_bits: u32) -> f32 {
    let sign = x_bits & 0x80000000u;
    let ax = x_bits & 0x7fffffffu;
    if ax == 0u {
        return bitcast<f32>(sign);
    }
    let x = unpack(ax);
    let d = unpack(d_bits);
    var r = x.s;
    var e = x.e - d.e;
    if r < d.s {
        r = r << 1u; // the quotient's leading bit is then 1: r / d.s in [1, 2)
        e -= 1;
    }
    var q = 0u;
    for (var i = 0u; i < 25u; i++) {
        q = q << 1u;
        if r >= d.s {
            r -= d.s;
            q |= 1u;
        }
        r = r << 1u;
    }
    // x / d = (q + r / d.s) * 2^(e - 24), q in [2^24, 2^25). Bits below the result's last place:
    // the rounding bit, and more where the result is subnormal.
    var below = 1u;
    if e < -126 {
        if e < -150 {
            return bitcast<f32>(sign); // under half the smallest subnormal
        }
        below = u32(-125 - e);
    }
    let rest = q & ((1u << below) - 1u);
    let half = 1u << (below - 1u);
    var m = q >> below;
    if rest > half || (rest == half && (r != 0u || (m & 1u) == 1u)) {
        m += 1u;
    }
    if e < -126 {
        return bitcast<f32>(sign | m); // subnormal bits (m = 2^23 is the smallest normal's)
    }
    var biased = u32(e + 127);
    if m == 0x1000000u {
        m = 0x800000u;
        biased += 1u;
    }
    if biased >= 255u {
        return bitcast<f32>(sign | 0x7f800000u);
    }
    return bitcast<f32>(sign | (biased << 23u) | (m & 0x7fffffu));
}

@compute @workgroup_size(WG)
fn quantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if b >= p.blocks {
        return;
    }
    let start = b * p.bs;
    let end = min(start + p.bs, p.n);
    // The max of |w| as bit patterns (ordered as the values are), so subnormals count everywhere.
    var m = 0u;
    for (var i = start; i < end; i++) {
        m = max(m, bitcast<u32>(w[i]) & 0x7fffffffu);
    }
    let whole = end - start == p.bs;
    let all_zero = m == 0u;
    // Whole block: stored absmax is the plain max and values are scaled by the reciprocal of the
    // clamped max; the partial last block stores the clamped max and divides by it.
    let clamped = max(m, FLOOR_BITS);
    let inv = div_rn(0x3f800000u, clamped);
    if whole {
        absmax_bits[b] = m;
    } else {
        absmax_bits[b] = clamped;
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
                    c = encode(div_rn(bitcast<u32>(w[e]), clamped));
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
