// SwiGLU: h = silu(g) * u, silu(g) = g * sigmoid(g).
// Backward: du = dh * silu(g), dg = dh * u * silu'(g) with silu'(g) = s (1 + g (1 - s)), s = sigmoid(g).

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;         // [N] (B*T*F)
@group(0) @binding(2) var<storage, read> u: array<f32>;         // [N]
// forward
@group(0) @binding(3) var<storage, read_write> h: array<f32>;   // [N]
// backward
@group(0) @binding(3) var<storage, read> dh: array<f32>;        // [N]
@group(0) @binding(4) var<storage, read_write> dg: array<f32>;  // [N]
@group(0) @binding(5) var<storage, read_write> du: array<f32>;  // [N]

override WG: u32 = 256u;

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if i >= p.n { return; }
    h[i] = g[i] * sigmoid(g[i]) * u[i];
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if i >= p.n { return; }
    let s = sigmoid(g[i]);
    du[i] = dh[i] * g[i] * s;
    dg[i] = dh[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
}
