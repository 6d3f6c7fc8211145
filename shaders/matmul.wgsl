// Matrix product c[M,N] = op(a)[M,K] · op(b)[K,N] (+ c when accumulating), f32.
// Operands are read through row/column strides, so one kernel serves a·b, a·bᵀ and aᵀ·b: the
// forward pass and both gradients of matmul (see src/ops/matmul.rs).
//
// Entry points, one arithmetic:
// - `multiply_tiled`: 64x64 output tiles staged through workgroup memory in K-slices of 16, each
//   invocation accumulating a 4x4 register tile. The shape that real GPUs (discrete, integrated,
//   Apple) run well: each global load feeds 64 FMAs.
// - `multiply_nn4`, `multiply_nt4`, `multiply_tn4`: for software adapters (lavapipe, SwiftShader),
//   which run a workgroup as a SIMD loop over invocations on one CPU core. There a barrier splits
//   the shader into resumable pieces, and a load whose address differs per invocation becomes one
//   scalar load per lane, while a load whose address is the same for the whole workgroup is one
//   load and a broadcast. So these kernels use no workgroup memory, give each workgroup UM = 8
//   output rows that every invocation shares (their `a` loads are workgroup-uniform), read 4
//   elements per per-lane load (vec4 bindings), and keep 8x4 accumulators in registers. They need
//   the vec4 dimensions to be multiples of 4; `multiply_registers` covers any other shape.
// - `multiply_registers`: 4x4 register tiles, scalar loads, no barriers: any shape and strides.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_rs: u32, // a[i, p] = a[i * a_rs + p * a_cs]
    a_cs: u32,
    b_rs: u32, // b[p, j] = b[p * b_rs + j * b_cs]
    b_cs: u32,
    accumulate: u32, // 1: c += a·b, 0: c = a·b
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;       // [M, K] through strides
@group(0) @binding(2) var<storage, read> b: array<f32>;       // [K, N] through strides
@group(0) @binding(3) var<storage, read_write> c: array<f32>; // [M, N] row-major

const TM: u32 = 4u; // rows per invocation
const TN: u32 = 4u; // columns per invocation

fn store(row: u32, col: u32, v: f32) {
    if row < p.m && col < p.n {
        let i = row * p.n + col;
        if p.accumulate == 1u {
            c[i] = c[i] + v;
        } else {
            c[i] = v;
        }
    }
}

// ---- register-tiled, barrier-free -------------------------------------------------------------
// Workgroup (RX, RY) covers (RX*TN) columns x (RY*TM) rows. Invocation (x, y) owns columns
// x, x+RX, x+2RX, x+3RX and rows y, y+RY, ...: neighbouring invocations read neighbouring b
// elements (one vector load across SIMD lanes) and share the a elements (a broadcast).
override RX: u32 = 16u;
override RY: u32 = 8u;

@compute @workgroup_size(RX, RY)
fn multiply_registers(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * RY * TM + lid.y;
    let col0 = wid.x * RX * TN + lid.x;
    // Clamped indices keep loads in bounds; results outside [M, N] are never stored.
    var a_base: array<u32, TM>;
    var b_base: array<u32, TN>;
    for (var i = 0u; i < TM; i++) {
        a_base[i] = min(row0 + i * RY, p.m - 1u) * p.a_rs;
    }
    for (var j = 0u; j < TN; j++) {
        b_base[j] = min(col0 + j * RX, p.n - 1u) * p.b_cs;
    }
    var acc: array<f32, 16>; // TM * TN
    for (var kk = 0u; kk < p.k; kk++) {
        let ak = kk * p.a_cs;
        let bk = kk * p.b_rs;
        var av: array<f32, TM>;
        var bv: array<f32, TN>;
        for (var i = 0u; i < TM; i++) {
            av[i] = a[a_base[i] + ak];
        }
        for (var j = 0u; j < TN; j++) {
            bv[j] = b[b_base[j] + bk];
        }
        for (var i = 0u; i < TM; i++) {
            for (var j = 0u; j < TN; j++) {
                acc[i * TN + j] = fma(av[i], bv[j], acc[i * TN + j]);
            }
        }
    }
    for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) {
            store(row0 + i * RY, col0 + j * RX, acc[i * TN + j]);
        }
    }
}

// ---- workgroup-tiled -----------------------------------------------------------------------------
const TILE: u32 = 64u; // output tile edge
const BK: u32 = 16u;   // K-slice staged per step
const WG: u32 = 16u;   // workgroup is WG x WG; WG * TM == TILE

var<workgroup> a_tile: array<f32, 1024>; // [BK, TILE]: a_tile[kk * TILE + row]
var<workgroup> b_tile: array<f32, 1024>; // [BK, TILE]: b_tile[kk * TILE + col]

@compute @workgroup_size(WG, WG)
fn multiply_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tile_row = wid.y * TILE;
    let tile_col = wid.x * TILE;
    let flat = lid.y * WG + lid.x; // 0..256
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Each invocation stages 4 elements of each tile; out-of-range elements stage as 0.
        for (var s = 0u; s < 4u; s++) {
            let e = flat + s * WG * WG; // 0..1024
            let kk = e / TILE;
            let rc = e % TILE;
            let gk = k0 + kk;
            let ga = tile_row + rc;
            let gb = tile_col + rc;
            var va = 0.0;
            var vb = 0.0;
            if gk < p.k && ga < p.m {
                va = a[ga * p.a_rs + gk * p.a_cs];
            }
            if gk < p.k && gb < p.n {
                vb = b[gk * p.b_rs + gb * p.b_cs];
            }
            a_tile[kk * TILE + rc] = va;
            b_tile[kk * TILE + rc] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<f32, TM>;
            var bv: array<f32, TN>;
            for (var i = 0u; i < TM; i++) {
                av[i] = a_tile[kk * TILE + lid.y + i * WG];
            }
            for (var j = 0u; j < TN; j++) {
                bv[j] = b_tile[kk * TILE + lid.x + j * WG];
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * TN + j] = fma(av[i], bv[j], acc[i * TN + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) {
            store(tile_row + lid.y + i * WG, tile_col + lid.x + j * WG, acc[i * TN + j]);
        }
    }
}

// ---- vec4 kernels for software adapters ------------------------------------------------------
// Alternative views of bindings 1 and 2 for these entry points (vec4 elements).
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;

// Workgroup x walks row blocks and y column blocks, so consecutive workgroups reuse the same
// columns of b while they are in the CPU's cache (the logits weight is 113 MB).
const UM: u32 = 8u; // output rows per workgroup, shared by all its invocations
override LX: u32 = 64u; // invocations per workgroup, each owning 4 adjacent output columns

fn store4(row: u32, col: u32, v: vec4<f32>) {
    store(row, col, v.x);
    store(row, col + 1u, v.y);
    store(row, col + 2u, v.z);
    store(row, col + 3u, v.w);
}

// c = a·b with a [M, K] row-major (K % 4 == 0) and b [K, N] row-major (N % 4 == 0).
@compute @workgroup_size(LX)
fn multiply_nn4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.x * UM;
    let n4 = p.n / 4u;
    let k4 = p.k / 4u;
    let col4 = wid.y * LX + lid.x;
    let c4 = min(col4, n4 - 1u);
    var acc: array<vec4<f32>, UM>;
    for (var kq = 0u; kq < k4; kq++) {
        let kk = kq * 4u;
        let b0 = b4[kk * n4 + c4];
        let b1 = b4[(kk + 1u) * n4 + c4];
        let b2 = b4[(kk + 2u) * n4 + c4];
        let b3 = b4[(kk + 3u) * n4 + c4];
        for (var i = 0u; i < UM; i++) {
            let av = a4[min(row0 + i, p.m - 1u) * k4 + kq]; // workgroup-uniform
            acc[i] = fma(vec4<f32>(av.x), b0, acc[i]);
            acc[i] = fma(vec4<f32>(av.y), b1, acc[i]);
            acc[i] = fma(vec4<f32>(av.z), b2, acc[i]);
            acc[i] = fma(vec4<f32>(av.w), b3, acc[i]);
        }
    }
    for (var i = 0u; i < UM; i++) {
        store4(row0 + i, col4 * 4u, acc[i]);
    }
}

// c = a·bᵀ with a [M, K] and b stored [N, K], both row-major (K % 4 == 0): x · Wᵀ, every linear layer.
@compute @workgroup_size(LX)
fn multiply_nt4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.x * UM;
    let k4 = p.k / 4u;
    let col = (wid.y * LX + lid.x) * 4u;
    var b_base: array<u32, 4>;
    for (var j = 0u; j < 4u; j++) {
        b_base[j] = min(col + j, p.n - 1u) * k4;
    }
    var acc: array<vec4<f32>, UM>;
    for (var kq = 0u; kq < k4; kq++) {
        let b0 = b4[b_base[0] + kq];
        let b1 = b4[b_base[1] + kq];
        let b2 = b4[b_base[2] + kq];
        let b3 = b4[b_base[3] + kq];
        for (var i = 0u; i < UM; i++) {
            let av = a4[min(row0 + i, p.m - 1u) * k4 + kq]; // workgroup-uniform
            acc[i] += vec4<f32>(dot(av, b0), dot(av, b1), dot(av, b2), dot(av, b3));
        }
    }
    for (var i = 0u; i < UM; i++) {
        store4(row0 + i, col, acc[i]);
    }
}

// c = aᵀ·b with a stored [K, M] (M % 4 == 0) and b [K, N] (N % 4 == 0), both row-major: the
// weight gradient xᵀ · dy.
@compute @workgroup_size(LX)
fn multiply_tn4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.x * UM; // a multiple of 8, so rows row0..row0+7 are two whole vec4s
    let m4 = p.m / 4u;
    let n4 = p.n / 4u;
    let col4 = wid.y * LX + lid.x;
    let c4 = min(col4, n4 - 1u);
    let r4 = min(row0 / 4u, m4 - 1u);
    let r4b = min(row0 / 4u + 1u, m4 - 1u);
    var acc: array<vec4<f32>, UM>;
    for (var kk = 0u; kk < p.k; kk++) {
        let bv = b4[kk * n4 + c4];
        let lo = a4[kk * m4 + r4]; // workgroup-uniform
        let hi = a4[kk * m4 + r4b];
        acc[0] = fma(vec4<f32>(lo.x), bv, acc[0]);
        acc[1] = fma(vec4<f32>(lo.y), bv, acc[1]);
        acc[2] = fma(vec4<f32>(lo.z), bv, acc[2]);
        acc[3] = fma(vec4<f32>(lo.w), bv, acc[3]);
        acc[4] = fma(vec4<f32>(hi.x), bv, acc[4]);
        acc[5] = fma(vec4<f32>(hi.y), bv, acc[5]);
        acc[6] = fma(vec4<f32>(hi.z), bv, acc[6]);
        acc[7] = fma(vec4<f32>(hi.w), bv, acc[7]);
    }
    for (var i = 0u; i < UM; i++) {
        store4(row0 + i, col4 * 4u, acc[i]);
    }
}
