// Softmax cross-entropy over a large vocabulary, one workgroup per row.
// loss_r = lse_r - logits[r, target_r], lse_r = log sum_v exp(logits[r, v]); rows whose target is
// `ignore` cost 0 and get no gradient. Forward saves lse [N] for backward:
// dlogits[r, v] = scale * (exp(logits[r, v] - lse_r) - [v == target_r]).

struct Params {
    rows: u32,
    vocab: u32,
    ignore: u32,
    scale: f32, // backward: d(total loss)/d(row loss), e.g. 1 / (number of counted rows)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;      // [N, V]
@group(0) @binding(2) var<storage, read> targets: array<u32>;     // [N]
// forward
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;  // [N]
@group(0) @binding(4) var<storage, read_write> lse_out: array<f32>; // [N]
// backward
@group(0) @binding(3) var<storage, read> lse: array<f32>;         // [N]
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>; // [N, V]

override WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

fn reduce(lid: u32, v: f32, is_max: bool) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if lid < s {
            if is_max {
                partial[lid] = max(partial[lid], partial[lid + s]);
            } else {
                partial[lid] += partial[lid + s];
            }
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if row >= p.rows { return; }
    let base = row * p.vocab;
    var m = -3.0e38;
    for (var v = lid.x; v < p.vocab; v += WG) {
        m = max(m, logits[base + v]);
    }
    m = reduce(lid.x, m, true);
    var s = 0.0;
    for (var v = lid.x; v < p.vocab; v += WG) {
        s += exp(logits[base + v] - m);
    }
    let lse_r = m + log(reduce(lid.x, s, false));
    if lid.x == 0u {
        lse_out[row] = lse_r;
        let t = targets[row];
        if t == p.ignore || t >= p.vocab {
            loss[row] = 0.0;
        } else {
            loss[row] = lse_r - logits[base + t];
        }
    }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if row >= p.rows { return; }
    let base = row * p.vocab;
    let t = targets[row];
    let skip = t == p.ignore || t >= p.vocab;
    for (var v = lid.x; v < p.vocab; v += WG) {
        var gv = 0.0;
        if !skip {
            gv = exp(logits[base + v] - lse[row]);
            if v == t {
                gv -= 1.0;
            }
        }
        dlogits[base + v] = gv * p.scale;
    }
}
