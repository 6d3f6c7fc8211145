// RMSNorm over the last dimension: y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps).
// Forward saves rstd [rows] for backward.

struct Params {
    rows: u32,
    c: u32,
    eps: f32,
    accumulate: u32, // backward_dw: 1 adds into dw
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [rows, C]
@group(0) @binding(2) var<storage, read> w: array<f32>;          // [C]
// forward
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // [rows, C]
@group(0) @binding(4) var<storage, read_write> rstd_out: array<f32>; // [rows]
// backward_dx / backward_dw
@group(0) @binding(3) var<storage, read> rstd: array<f32>;       // [rows]
@group(0) @binding(4) var<storage, read> dy: array<f32>;         // [rows, C]
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;   // [rows, C]
@group(0) @binding(5) var<storage, read_write> dw: array<f32>;   // [C] (backward_dw binds it here)

override WG: u32 = 128u;
var<workgroup> partial: array<f32, WG>;

// Sum of `v` over the workgroup; every invocation gets the total.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if lid < s {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

// One workgroup per row.
@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if row >= p.rows { return; } // uniform per workgroup: safe before barriers
    let base = row * p.c;
    var ss = 0.0;
    for (var i = lid.x; i < p.c; i += WG) {
        ss += x[base + i] * x[base + i];
    }
    let r = inverseSqrt(workgroup_sum(lid.x, ss) / f32(p.c) + p.eps);
    for (var i = lid.x; i < p.c; i += WG) {
        y[base + i] = x[base + i] * r * w[i];
    }
    if lid.x == 0u {
        rstd_out[row] = r;
    }
}

// dx_j = r * (w_j dy_j - x_j r^2 s / C), with s = sum_i dy_i w_i x_i
// (from dr/dx_j = -r^3 x_j / C). One workgroup per row.
@compute @workgroup_size(WG)
fn backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if row >= p.rows { return; }
    let base = row * p.c;
    var s = 0.0;
    for (var i = lid.x; i < p.c; i += WG) {
        s += dy[base + i] * w[i] * x[base + i];
    }
    let r = rstd[row];
    let coef = r * r * workgroup_sum(lid.x, s) / f32(p.c);
    for (var i = lid.x; i < p.c; i += WG) {
        dx[base + i] = r * (w[i] * dy[base + i] - x[base + i] * coef);
    }
}

// dw_j = sum over rows of dy_j x_j r. One invocation per column, rows summed in order
// (deterministic, no atomics).
@compute @workgroup_size(WG)
fn backward_dw(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if j >= p.c { return; }
    var acc = 0.0;
    for (var row = 0u; row < p.rows; row++) {
        acc += dy[row * p.c + j] * x[row * p.c + j] * rstd[row];
    }
    if p.accumulate == 1u {
        acc += dw[j];
    }
    dw[j] = acc;
}
