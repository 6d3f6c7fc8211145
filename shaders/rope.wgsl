// Rotary position embedding on x [rows = B*T, H, D]. Token `row` sits at position
// pos = row % T + offset and each pair (x1, x2) turns by angle pos * inv_freq[i]:
//   y1 = x1 cos - x2 sin,  y2 = x1 sin + x2 cos.
// Pairs are (i, i + D/2) in the Hugging Face half-split layout and (2i, 2i+1) in the interleaved
// layout (GGUF / Meta). cos/sin come from tables [max_pos, D/2] built on the host in f64: GPU
// cos/sin lose precision for large arguments. Backward turns by the negative angle.

struct Params {
    rows: u32,
    heads: u32,
    d: u32,
    t: u32,
    offset: u32,
    interleaved: u32,
    max_pos: u32,
    sign: f32, // +1 forward, -1 backward (inverse rotation)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;        // [rows, H, D] (dy in backward)
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;    // [max_pos, D/2]
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;    // [max_pos, D/2]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // [rows, H, D] (dx in backward)

override WG: u32 = 256u;

fn rotate(i: u32) {
    let half = p.d / 2u;
    if i >= p.rows * p.heads * half { return; }
    let pair = i % half;
    let vec = i / half; // (row, head)
    let row = vec / p.heads;
    let pos = min(row % p.t + p.offset, p.max_pos - 1u);
    let c = cos_t[pos * half + pair];
    let s = p.sign * sin_t[pos * half + pair];
    var i1 = vec * p.d + pair;
    var i2 = i1 + half;
    if p.interleaved == 1u {
        i1 = vec * p.d + 2u * pair;
        i2 = i1 + 1u;
    }
    let x1 = x[i1];
    let x2 = x[i2];
    y[i1] = x1 * c - x2 * s;
    y[i2] = x1 * s + x2 * c;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    rotate((wid.y * nwg.x + wid.x) * WG + lid.x);
}

// The rotation is orthogonal, so dx = R(-angle) dy: the same code with sign = -1.
@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    rotate((wid.y * nwg.x + wid.x) * WG + lid.x);
}
