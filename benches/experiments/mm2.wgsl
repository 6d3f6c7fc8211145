// Experiment: lanes over 4-column groups read b as vec4 (N % 4 == 0); rows uniform per workgroup.
struct Params { m: u32, n: u32, k: u32, a_rs: u32, a_cs: u32, b_rs: u32, b_cs: u32, accumulate: u32, }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
override RX: u32 = 64u;
override RY: u32 = 1u;
const UM: u32 = 8u;

@compute @workgroup_size(RX)
fn nn_v4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * UM;
    let n4 = p.n / 4u;
    let col4 = wid.x * RX + lid.x;
    let c4 = min(col4, n4 - 1u);
    var a_base: array<u32, UM>;
    for (var i = 0u; i < UM; i++) { a_base[i] = min(row0 + i, p.m - 1u) * p.a_rs; }
    var acc: array<vec4<f32>, UM>;
    for (var kk = 0u; kk < p.k; kk++) {
        let bv = b4[kk * n4 + c4];
        for (var i = 0u; i < UM; i++) {
            acc[i] = fma(vec4<f32>(a[a_base[i] + kk]), bv, acc[i]);
        }
    }
    if col4 < n4 {
        for (var i = 0u; i < UM; i++) {
            if row0 + i < p.m {
                let o = (row0 + i) * p.n + col4 * 4u;
                c[o] = acc[i].x; c[o + 1u] = acc[i].y; c[o + 2u] = acc[i].z; c[o + 3u] = acc[i].w;
            }
        }
    }
}

// Same, k unrolled by 4 with a read as uniform vec4 along k (K % 4 == 0).
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@compute @workgroup_size(RX)
fn nn_v4k4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * UM;
    let n4 = p.n / 4u;
    let k4 = p.k / 4u;
    let col4 = wid.x * RX + lid.x;
    let c4 = min(col4, n4 - 1u);
    var a_base: array<u32, UM>;
    for (var i = 0u; i < UM; i++) { a_base[i] = min(row0 + i, p.m - 1u) * k4; }
    var acc: array<vec4<f32>, UM>;
    for (var kq = 0u; kq < k4; kq++) {
        let kk = kq * 4u;
        let b0 = b4[kk * n4 + c4];
        let b1 = b4[(kk + 1u) * n4 + c4];
        let b2 = b4[(kk + 2u) * n4 + c4];
        let b3 = b4[(kk + 3u) * n4 + c4];
        for (var i = 0u; i < UM; i++) {
            let av = a4[a_base[i] + kq];
            acc[i] = fma(vec4<f32>(av.x), b0, acc[i]);
            acc[i] = fma(vec4<f32>(av.y), b1, acc[i]);
            acc[i] = fma(vec4<f32>(av.z), b2, acc[i]);
            acc[i] = fma(vec4<f32>(av.w), b3, acc[i]);
        }
    }
    if col4 < n4 {
        for (var i = 0u; i < UM; i++) {
            if row0 + i < p.m {
                let o = (row0 + i) * p.n + col4 * 4u;
                c[o] = acc[i].x; c[o + 1u] = acc[i].y; c[o + 2u] = acc[i].z; c[o + 3u] = acc[i].w;
            }
        }
    }
}
