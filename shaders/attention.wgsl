// Causal grouped-query attention, one query row per invocation.
// q [B*T, H*D], k and v [B*S_cap, K*D] of which the first S >= T positions per batch row are
// valid (a KV cache holds S - T earlier positions and room up to S_cap); query i attends keys
// j <= i + (S - T). Head h reads kv head h / (H / K).
// Forward saves lse [B, H, T] = log sum_j exp(s_ij), s_ij = scale * q_i . k_j, so backward
// rebuilds p_ij = exp(s_ij - lse_i) without storing the T x S matrix.

struct Params {
    b: u32,
    t: u32,
    s: u32,
    h: u32,
    kv: u32,
    d: u32,
    scale: f32,
    s_cap: u32, // rows per batch entry in k and v
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;          // [B*T, H*D]
@group(0) @binding(2) var<storage, read> k: array<f32>;          // [B*S_cap, K*D]
@group(0) @binding(3) var<storage, read> v: array<f32>;          // [B*S_cap, K*D]
// forward
@group(0) @binding(4) var<storage, read_write> o: array<f32>;    // [B*T, H*D]
@group(0) @binding(5) var<storage, read_write> lse_out: array<f32>; // [B, H, T]
// backward_dq, backward_dkv
@group(0) @binding(4) var<storage, read> dout: array<f32>;       // [B*T, H*D]
@group(0) @binding(5) var<storage, read> lse: array<f32>;        // [B, H, T]
@group(0) @binding(6) var<storage, read> delta: array<f32>;      // [B, H, T]
@group(0) @binding(7) var<storage, read_write> dq: array<f32>;   // [B*T, H*D]
@group(0) @binding(7) var<storage, read_write> dk: array<f32>;   // [B*S_cap, K*D]
@group(0) @binding(8) var<storage, read_write> dv: array<f32>;   // [B*S_cap, K*D]
// backward_delta
@group(0) @binding(1) var<storage, read> o_in: array<f32>;       // [B*T, H*D]
@group(0) @binding(2) var<storage, read> dout_d: array<f32>;     // [B*T, H*D]
@group(0) @binding(3) var<storage, read_write> delta_out: array<f32>; // [B, H, T]

const D_MAX: u32 = 256u; // largest head size held in registers
override WG: u32 = 64u;

fn linear(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

// Offsets of query (b, h, i) in q and of key j of kv head g in k.
fn q_at(b: u32, h: u32, i: u32) -> u32 { return ((b * p.t + i) * p.h + h) * p.d; }
fn k_at(b: u32, g: u32, j: u32) -> u32 { return ((b * p.s_cap + j) * p.kv + g) * p.d; }

fn dot_qk(qo: u32, ko: u32) -> f32 {
    var acc = 0.0;
    for (var e = 0u; e < p.d; e++) { acc = fma(q[qo + e], k[ko + e], acc); }
    return acc * p.scale;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = linear(wid, nwg, lid); // (b, h, i) flattened as [B, H, T]
    if r >= p.b * p.h * p.t { return; }
    let i = r % p.t;
    let h = (r / p.t) % p.h;
    let b = r / (p.t * p.h);
    let g = h / (p.h / p.kv);
    let qo = q_at(b, h, i);
    var acc: array<f32, D_MAX>;
    var m = -3.0e38;
    var l = 0.0;
    let last = i + p.s - p.t;
    // Online softmax: rescale the running sum and output whenever the max grows.
    for (var j = 0u; j <= last; j++) {
        let ko = k_at(b, g, j);
        let sj = dot_qk(qo, ko);
        let m_new = max(m, sj);
        let corr = exp(m - m_new);
        let pj = exp(sj - m_new);
        l = l * corr + pj;
        for (var e = 0u; e < p.d; e++) {
            acc[e] = acc[e] * corr + pj * v[ko + e];
        }
        m = m_new;
    }
    for (var e = 0u; e < p.d; e++) {
        o[qo + e] = acc[e] / l;
    }
    lse_out[r] = m + log(l);
}

// delta_i = dout_i . o_i, the row term of the softmax gradient.
@compute @workgroup_size(WG)
fn backward_delta(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = linear(wid, nwg, lid);
    if r >= p.b * p.h * p.t { return; }
    let i = r % p.t;
    let h = (r / p.t) % p.h;
    let b = r / (p.t * p.h);
    let qo = q_at(b, h, i);
    var acc = 0.0;
    for (var e = 0u; e < p.d; e++) { acc = fma(dout_d[qo + e], o_in[qo + e], acc); }
    delta_out[r] = acc;
}

// dq_i = scale * sum_j ds_ij k_j with ds_ij = p_ij (dout_i . v_j - delta_i).
@compute @workgroup_size(WG)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = linear(wid, nwg, lid);
    if r >= p.b * p.h * p.t { return; }
    let i = r % p.t;
    let h = (r / p.t) % p.h;
    let b = r / (p.t * p.h);
    let g = h / (p.h / p.kv);
    let qo = q_at(b, h, i);
    var acc: array<f32, D_MAX>;
    for (var j = 0u; j <= i + p.s - p.t; j++) {
        let ko = k_at(b, g, j);
        let pij = exp(dot_qk(qo, ko) - lse[r]);
        var dp = 0.0;
        for (var e = 0u; e < p.d; e++) { dp = fma(dout[qo + e], v[ko + e], dp); }
        let ds = pij * (dp - delta[r]) * p.scale;
        for (var e = 0u; e < p.d; e++) { acc[e] = fma(ds, k[ko + e], acc[e]); }
    }
    for (var e = 0u; e < p.d; e++) { dq[qo + e] = acc[e]; }
}

// For key j of kv head g, summed over the H/K query heads that share it and the queries that see it:
// dv_j = sum p_ij dout_i,  dk_j = scale * sum ds_ij q_i.
@compute @workgroup_size(WG)
fn backward_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = linear(wid, nwg, lid); // (b, g, j) flattened as [B, K, S]
    if r >= p.b * p.kv * p.s { return; }
    let j = r % p.s;
    let g = (r / p.s) % p.kv;
    let b = r / (p.s * p.kv);
    let ko = k_at(b, g, j);
    let group = p.h / p.kv;
    var acc_k: array<f32, D_MAX>;
    var acc_v: array<f32, D_MAX>;
    // Query i sees key j when j <= i + S - T.
    let first = max(j + p.t, p.s) - p.s;
    for (var hh = 0u; hh < group; hh++) {
        let h = g * group + hh;
        for (var i = first; i < p.t; i++) {
            let qo = q_at(b, h, i);
            let row = (b * p.h + h) * p.t + i;
            let pij = exp(dot_qk(qo, ko) - lse[row]);
            var dp = 0.0;
            for (var e = 0u; e < p.d; e++) { dp = fma(dout[qo + e], v[ko + e], dp); }
            let ds = pij * (dp - delta[row]) * p.scale;
            for (var e = 0u; e < p.d; e++) {
                acc_v[e] = fma(pij, dout[qo + e], acc_v[e]);
                acc_k[e] = fma(ds, q[qo + e], acc_k[e]);
            }
        }
    }
    for (var e = 0u; e < p.d; e++) {
        dk[ko + e] = acc_k[e];
        dv[ko + e] = acc_v[e];
    }
}
