// Elementwise ops on f32 vectors of length N: c = a + b, c = alpha * a, in-place a += alpha * b
// (gradient accumulation), in-place x[r, j] += bias[j] (bias of a linear layer), and inverted
// dropout c = a * keep / (1 - p) with keep a pure function of (seed, index).
// add's backward passes dc through to both inputs; scale's backward is scale by the same alpha;
// add_bias's backward sums dx over rows (dbias).

struct Params {
    n: u32,
    alpha: f32,
    cols: u32, // add_bias: row length; dropout: seed (alpha is then the drop probability)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;         // [N]
@group(0) @binding(2) var<storage, read> b: array<f32>;         // [N]
@group(0) @binding(3) var<storage, read_write> c: array<f32>;   // [N]
// scale writes c from a alone
@group(0) @binding(2) var<storage, read_write> c_scaled: array<f32>; // [N]
// accumulate updates its target in place
@group(0) @binding(1) var<storage, read_write> target_acc: array<f32>; // [N]

override WG: u32 = 256u;

// shared: index_1d (a copy WGSL forces; tests/kernel_contracts.rs keeps the copies identical)
fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}
// end shared: index_1d

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if i < p.n { c[i] = a[i] + b[i]; }
}

@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if i < p.n { c_scaled[i] = p.alpha * a[i]; }
}

@compute @workgroup_size(WG)
fn accumulate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if i < p.n { target_acc[i] += p.alpha * b[i]; }
}

// target_acc [N = rows * cols] += bias [cols], broadcast over rows.
@compute @workgroup_size(WG)
fn add_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if i < p.n { target_acc[i] += b[i % p.cols]; }
}

// PCG output permutation of one LCG step; src/ops/elementwise.rs `hash` is the same function.
// shared: pcg_hash (a copy WGSL forces; tests/kernel_contracts.rs keeps the copies identical)
fn pcg_hash(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}
// end shared: pcg_hash

@compute @workgroup_size(WG)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if i < p.n {
        let u = f32(pcg_hash(i ^ pcg_hash(p.cols)) >> 8u) * (1.0 / 16777216.0);
        c[i] = select(0.0, a[i] / (1.0 - p.alpha), u >= p.alpha);
    }
}
