// Fused NF4 products with a weight W [N, K] stored as NF4 (row-major flattened, u32 words of 8
// codes, one f32 absmax per block of BS weights; see src/ops/quant_nf4.rs). The dequantized W is
// never materialized: each invocation unpacks 8 weights from one u32 load.
//
// - `forward`: y[T, N] = x[T, K] · deq(W)ᵀ, every linear layer of a QLoRA model; `forward_few`
//   is the same product for a few tokens (decode: 3.9 ms instead of 16 ms for T=1, N=K=2048).
// - `backward_dx`: dx[T, K] = dy[T, N] · deq(W), the input gradient (W is frozen: no dW).
//
// Both are laid out for software adapters as in shaders/matmul.wgsl (see its header): no workgroup
// memory and no barriers, UT tokens per workgroup shared by every invocation (their x / dy loads
// are workgroup-uniform broadcasts), per-invocation loads of whole u32 words (and vec4 x rows).
// In the forward each invocation owns UN = 4 weight rows so one uniform x load feeds 4 rows: on
// lavapipe (T=64, N=K=2048) that took it from 252 ms to 97 ms, level with dequantize + f32 matmul.
// They need K % 8 == 0 so every weight row starts on a word (the launcher checks).

struct Params {
    t: u32, // tokens
    n: u32, // output features (rows of W)
    k: u32, // input features (columns of W), a multiple of 8
    bs: u32, // NF4 block size, a multiple of 8
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> packed: array<u32>;  // [N*K/8] codes of W
@group(0) @binding(2) var<storage, read> absmax: array<f32>;  // [ceil(N*K/BS)]
@group(0) @binding(3) var<storage, read> x4: array<vec4<f32>>; // forward: x [T, K]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // forward: y [T, N]

const CODE_BITS = array<u32, 16>(
    0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
    0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u,
);

const UT: u32 = 8u; // tokens per workgroup, shared by all its invocations
override LX: u32 = 64u; // invocations per workgroup

fn code(word: u32, shift: u32) -> f32 {
    return bitcast<f32>(CODE_BITS[(word >> shift) & 15u]);
}

// The 8 weights of one word, scaled: element 2i is the high nibble of byte i (little-endian).
fn unpack_lo(word: u32, s: f32) -> vec4<f32> {
    return vec4<f32>(code(word, 4u), code(word, 0u), code(word, 12u), code(word, 8u)) * s;
}
fn unpack_hi(word: u32, s: f32) -> vec4<f32> {
    return vec4<f32>(code(word, 20u), code(word, 16u), code(word, 28u), code(word, 24u)) * s;
}

// Workgroup x walks token blocks, y blocks of LX * UN output features; invocation owns the UN
// features n0, n0 + LX, ..., so each workgroup-uniform x load feeds UN weight rows.
const UN: u32 = 4u;

@compute @workgroup_size(LX)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t0 = wid.x * UT;
    let n0 = wid.y * LX * UN + lid.x;
    let k8 = p.k / 8u;
    let k4 = p.k / 4u;
    var rows: array<u32, UN>; // first word of each owned weight row
    for (var j = 0u; j < UN; j++) {
        rows[j] = min(n0 + j * LX, p.n - 1u) * k8;
    }
    var acc: array<f32, 32>; // [UT, UN]
    for (var kq = 0u; kq < k8; kq++) {
        var lo: array<vec4<f32>, UN>;
        var hi: array<vec4<f32>, UN>;
        for (var j = 0u; j < UN; j++) {
            let wi = rows[j] + kq;
            let word = packed[wi];
            let s = absmax[wi * 8u / p.bs];
            lo[j] = unpack_lo(word, s);
            hi[j] = unpack_hi(word, s);
        }
        for (var i = 0u; i < UT; i++) {
            let xr = min(t0 + i, p.t - 1u) * k4 + kq * 2u; // workgroup-uniform
            let xa = x4[xr];
            let xb = x4[xr + 1u];
            for (var j = 0u; j < UN; j++) {
                acc[i * UN + j] += dot(xa, lo[j]) + dot(xb, hi[j]);
            }
        }
    }
    for (var j = 0u; j < UN; j++) {
        let n = n0 + j * LX;
        for (var i = 0u; i < UT; i++) {
            if n < p.n && t0 + i < p.t {
                y[(t0 + i) * p.n + n] = acc[i * UN + j];
            }
        }
    }
}

// `forward` for a handful of tokens (decode): one token per workgroup, so no invocation computes
// the clamped duplicate tokens that fill `forward`'s UT rows when T is small.
@compute @workgroup_size(LX)
fn forward_few(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = wid.x;
    let n0 = wid.y * LX * UN + lid.x;
    let k8 = p.k / 8u;
    let xr0 = t * (p.k / 4u);
    var rows: array<u32, UN>;
    for (var j = 0u; j < UN; j++) {
        rows[j] = min(n0 + j * LX, p.n - 1u) * k8;
    }
    var acc: array<f32, UN>;
    for (var kq = 0u; kq < k8; kq++) {
        let xa = x4[xr0 + kq * 2u]; // workgroup-uniform
        let xb = x4[xr0 + kq * 2u + 1u];
        for (var j = 0u; j < UN; j++) {
            let wi = rows[j] + kq;
            let word = packed[wi];
            let s = absmax[wi * 8u / p.bs];
            acc[j] += dot(xa, unpack_lo(word, s)) + dot(xb, unpack_hi(word, s));
        }
    }
    for (var j = 0u; j < UN; j++) {
        let n = n0 + j * LX;
        if n < p.n {
            y[t * p.n + n] = acc[j];
        }
    }
}

@group(0) @binding(3) var<storage, read> dy: array<f32>;            // backward_dx: dy [T, N]
@group(0) @binding(4) var<storage, read_write> dx4: array<vec4<f32>>; // backward_dx: dx [T, K]

// dx[t, k] = Σ_n dy[t, n] W[n, k]. Workgroup x walks token blocks, y blocks of LX words of K;
// invocation owns the 8 columns of one word, so neighbouring lanes load neighbouring words.
@compute @workgroup_size(LX)
fn backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t0 = wid.x * UT;
    let kq = wid.y * LX + lid.x;
    let k8 = p.k / 8u;
    let kc = min(kq, k8 - 1u);
    var lo_acc: array<vec4<f32>, UT>;
    var hi_acc: array<vec4<f32>, UT>;
    for (var n = 0u; n < p.n; n++) {
        let wi = n * k8 + kc;
        let word = packed[wi];
        let s = absmax[wi * 8u / p.bs];
        let lo = unpack_lo(word, s);
        let hi = unpack_hi(word, s);
        for (var i = 0u; i < UT; i++) {
            let g = dy[min(t0 + i, p.t - 1u) * p.n + n]; // workgroup-uniform
            lo_acc[i] = fma(vec4<f32>(g), lo, lo_acc[i]);
            hi_acc[i] = fma(vec4<f32>(g), hi, hi_acc[i]);
        }
    }
    if kq < k8 {
        for (var i = 0u; i < UT; i++) {
            if t0 + i < p.t {
                let o = (t0 + i) * (p.k / 4u) + kq * 2u;
                dx4[o] = lo_acc[i];
                dx4[o + 1u] = hi_acc[i];
            }
        }
    }
}
