// Matrix product c[M,N] = op(a)[M,K] · op(b)[K,N] (+ c when accumulating), f32.
// Operands are read through row/column strides, so one kernel serves a·b, a·bᵀ and aᵀ·b: the
// forward pass and both gradients of matmul (see src/ops/matmul.rs).
//
// Two entry points, one arithmetic:
// - `multiply_tiled`: 64x64 output tiles staged through workgroup memory in K-slices of 16, each
//   invocation accumulating a 4x4 register tile. The shape that real GPUs (discrete, integrated,
//   Apple) run well: each global load feeds 64 FMAs.
// - `multiply_registers`: the same 4x4 register tiles with no workgroup memory and no barriers.
//   Software Vulkan (lavapipe) runs a workgroup as a SIMD loop on one CPU core, where a barrier
//   splits the shader into resumable pieces and costs more than the loads it saves; the CPU cache
//   does the staging instead.

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

// Variant: rows uniform per workgroup (scalar loads of a), lanes over columns.
const UM: u32 = 8u;
@compute @workgroup_size(RX)
fn rows_uniform(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * UM;
    let col0 = wid.x * RX * TN + lid.x;
    var b_base: array<u32, TN>;
    for (var j = 0u; j < TN; j++) {
        b_base[j] = min(col0 + j * RX, p.n - 1u) * p.b_cs;
    }
    var a_base: array<u32, UM>;
    for (var i = 0u; i < UM; i++) {
        a_base[i] = min(row0 + i, p.m - 1u) * p.a_rs;
    }
    var acc: array<f32, 32>;
    for (var kk = 0u; kk < p.k; kk++) {
        var bv: array<f32, TN>;
        for (var j = 0u; j < TN; j++) {
            bv[j] = b[b_base[j] + kk * p.b_rs];
        }
        for (var i = 0u; i < UM; i++) {
            let av = a[a_base[i] + kk * p.a_cs];
            for (var j = 0u; j < TN; j++) {
                acc[i * TN + j] = fma(av, bv[j], acc[i * TN + j]);
            }
        }
    }
    for (var i = 0u; i < UM; i++) {
        for (var j = 0u; j < TN; j++) {
            store(row0 + i, col0 + j * RX, acc[i * TN + j]);
        }
    }
}
