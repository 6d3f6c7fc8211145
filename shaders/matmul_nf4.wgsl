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
// are workgroup-uniform broadcasts), per-invocation loads of whole u32 words, vec4 x / dy loads.
// On lavapipe every load from a storage buffer is costly (per-lane loads are split into one
// scalar load per lane, and the code lookup is such a load too) while register and stack work is
// cheap, so the tiles are as large as lavapipe compiles well: 32 tokens x 8 weight rows per
// forward invocation (256 accumulators), 32 tokens x 8 columns per backward invocation, walking
// 8 weight rows per step. Each unpacked word then feeds 32 tokens and each uniform vec4 x / dy
// load 32 FMAs (UT=8, UN=4 before: 8 tokens, 16 FMAs per x load, 8 per scalar dy load).
// Measured at SmolLM2's training shape (T=512, lavapipe, Mesa 25.0.7, 2 cores):
//   forward, nf4 vs f32 (`multiply_nt4`), two runs of `flexlora bench nf4 --reps 2`:
//     576->1536  147 / 153 ms vs 127 / 159 ms (0.86x / 1.03x; UT=8, UN=4 before: 233 ms, 0.65x)
//     1536->576  155 / 149 ms vs 204 / 201 ms (1.31x / 1.34x; before: 303 ms, 0.65x)
//   backward_dx vs the f32 dx = dy · W (`multiply_nn4`), timed the same way:
//     N=1536, K=576  158 / 154 ms vs 197 / 199 ms (1.25x / 1.29x; before: ~330 ms, 0.62x)
//     N=576, K=1536  160 / 158 ms vs 155 / 153 ms (0.97x / 0.97x; before: ~187 ms, 0.83x)
//   (the f32 kernels' workgroups of 64 x 4 columns leave lanes idle at width 576; these kernels
//   pick LX per shape, see `lanes` in src/ops/matmul_nf4.rs). T=1 (`forward_few`) stays ~2.3x.
// They need K % 8 == 0 so every weight row starts on a word (the launcher checks).

struct Params {
    t: u32, // tokens
    n: u32, // output features (rows of W)
    k: u32, // input features (columns of W), a multiple of 8
    block_shift: u32, // log2(BS / 8): a word's index >> block_shift is its absmax block
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> packed: array<u32>;  // [N*K/8] codes of W
@group(0) @binding(2) var<storage, read> absmax: array<f32>;  // [ceil(N*K/BS)]
@group(0) @binding(3) var<storage, read> x4: array<vec4<f32>>; // forward: x [T, K]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // forward: y [T, N]

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

override UT: u32 = 32u; // tokens per workgroup (`forward`, `backward_dx`), at most UT_MAX
const UT_MAX: u32 = 32u;
override LX: u32 = 64u; // invocations per workgroup

// The 8 weights of one word, scaled: element 2i is the high nibble of byte i (little-endian).
fn unpack_lo(word: u32, s: f32) -> vec4<f32> {
    return vec4<f32>(code(word, 4u), code(word, 0u), code(word, 12u), code(word, 8u)) * s;
}
fn unpack_hi(word: u32, s: f32) -> vec4<f32> {
    return vec4<f32>(code(word, 20u), code(word, 16u), code(word, 28u), code(word, 24u)) * s;
}

// Workgroup x walks token blocks, y blocks of LX * UN output features; invocation owns the UN
// features n0, n0 + LX, ..., so each workgroup-uniform x load feeds UN weight rows, and each
// unpacked word feeds UT tokens.
const UN: u32 = 8u;

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
    var acc: array<f32, 256>; // [UT_MAX, UN]
    for (var kq = 0u; kq < k8; kq++) {
        var lo: array<vec4<f32>, UN>;
        var hi: array<vec4<f32>, UN>;
        for (var j = 0u; j < UN; j++) {
            let wi = rows[j] + kq;
            let word = packed[wi];
            let s = absmax[wi >> p.block_shift];
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
const UN_FEW: u32 = 4u;

@compute @workgroup_size(LX)
fn forward_few(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = wid.x;
    let n0 = wid.y * LX * UN_FEW + lid.x;
    let k8 = p.k / 8u;
    let xr0 = t * (p.k / 4u);
    var rows: array<u32, UN_FEW>;
    for (var j = 0u; j < UN_FEW; j++) {
        rows[j] = min(n0 + j * LX, p.n - 1u) * k8;
    }
    var acc: array<f32, UN_FEW>;
    for (var kq = 0u; kq < k8; kq++) {
        let xa = x4[xr0 + kq * 2u]; // workgroup-uniform
        let xb = x4[xr0 + kq * 2u + 1u];
        for (var j = 0u; j < UN_FEW; j++) {
            let wi = rows[j] + kq;
            let word = packed[wi];
            let s = absmax[wi >> p.block_shift];
            acc[j] += dot(xa, unpack_lo(word, s)) + dot(xb, unpack_hi(word, s));
        }
    }
    for (var j = 0u; j < UN_FEW; j++) {
        let n = n0 + j * LX;
        if n < p.n {
            y[t * p.n + n] = acc[j];
        }
    }
}

@group(0) @binding(3) var<storage, read> dy4: array<vec4<f32>>;     // backward_dx: dy [T, N]
@group(0) @binding(4) var<storage, read_write> dx4: array<vec4<f32>>; // backward_dx: dx [T, K]

// Rows of W per `backward_dx` step, and whether N % 4 == 0 (then the RN dy values of a step are
// two aligned vec4 loads, else RN single-element loads).
const RN: u32 = 8u;
override DY_ALIGNED: bool = true;

fn dy_at(e: u32) -> f32 {
    return dy4[e / 4u][e % 4u];
}

// dy[e], ..., dy[e + 7].
fn dy8(e: u32) -> array<f32, RN> {
    if DY_ALIGNED {
        let a = dy4[e / 4u];
        let b = dy4[e / 4u + 1u];
        return array<f32, RN>(a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w);
    }
    var g: array<f32, RN>;
    for (var r = 0u; r < RN; r++) {
        g[r] = dy_at(e + r);
    }
    return g;
}

// dx[t, k] = Σ_n dy[t, n] W[n, k]. Workgroup x walks token blocks, y blocks of LX words of K;
// invocation owns the 8 columns of one word, so neighbouring lanes load neighbouring words. Each
// step unpacks the invocation's word in RN rows of W and feeds every one to UT tokens.
@compute @workgroup_size(LX)
fn backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t0 = wid.x * UT;
    let kq = wid.y * LX + lid.x;
    let k8 = p.k / 8u;
    let kc = min(kq, k8 - 1u);
    var dy_row: array<u32, UT_MAX>;
    for (var i = 0u; i < UT; i++) {
        dy_row[i] = min(t0 + i, p.t - 1u) * p.n;
    }
    var lo_acc: array<vec4<f32>, UT_MAX>;
    var hi_acc: array<vec4<f32>, UT_MAX>;
    let n_steps = p.n / RN * RN;
    for (var n = 0u; n < n_steps; n += RN) {
        var lo: array<vec4<f32>, RN>;
        var hi: array<vec4<f32>, RN>;
        for (var r = 0u; r < RN; r++) {
            let wi = (n + r) * k8 + kc;
            let word = packed[wi];
            let s = absmax[wi >> p.block_shift];
            lo[r] = unpack_lo(word, s);
            hi[r] = unpack_hi(word, s);
        }
        for (var i = 0u; i < UT; i++) {
            let g = dy8(dy_row[i] + n); // workgroup-uniform
            var a = lo_acc[i];
            var b = hi_acc[i];
            for (var r = 0u; r < RN; r++) {
                a = fma(vec4<f32>(g[r]), lo[r], a);
                b = fma(vec4<f32>(g[r]), hi[r], b);
            }
            lo_acc[i] = a;
            hi_acc[i] = b;
        }
    }
    for (var n = n_steps; n < p.n; n++) {
        let wi = n * k8 + kc;
        let word = packed[wi];
        let s = absmax[wi >> p.block_shift];
        let lo = unpack_lo(word, s);
        let hi = unpack_hi(word, s);
        for (var i = 0u; i < UT; i++) {
            let g = vec4<f32>(dy_at(dy_row[i] + n));
            lo_acc[i] = fma(g, lo, lo_acc[i]);
            hi_acc[i] = fma(g, hi, hi_acc[i]);
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
