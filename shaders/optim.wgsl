// Optimizer steps, in place on f32 vectors of length N: AdamW (decoupled weight decay) and SophiaG
// with its Hessian EMA; the sum of squares (global gradient norm) as a two-pass reduction; and the
// labels Sophia's Gauss-Newton-Bartlett estimator samples from the model's own softmax.
// Everything that comes from the host arrives in the uniform params (bias corrections included);
// what only the device knows (the clipping factor, whether the step was finite) reaches the
// updates through `control`, which step_stats writes, so a step never waits on a read-back.

struct AdamParams {
    n: u32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    decay: f32,      // 1 - lr * weight_decay
    step_size: f32,  // lr / (1 - beta1^t)
    bc2_sqrt: f32,   // sqrt(1 - beta2^t)
    _pad: u32,
}

struct SophiaParams {
    n: u32,
    beta1: f32,
    rho: f32,
    eps: f32,
    decay: f32, // 1 - lr * weight_decay
    lr: f32,
    _pad0: u32,
    _pad1: u32,
}

struct HessianParams {
    n: u32,
    beta2: f32,
    scale: f32, // B in the paper's B * ghat * ghat
    _pad: u32,
}

struct ReduceParams {
    n: u32,      // elements of x
    chunk: u32,  // elements per workgroup
    offset: u32, // where this pass's first partial goes in `partials`
    square: u32, // 1: sum x^2, 0: sum x
}

struct StatsParams {
    slot: u32,       // this step's row of step_log
    clip: f32,       // global gradient-norm clip (0: none)
    loss_scale: f32, // 1 / the step's targets
    flex_coef: f32,  // lambda / matrices (0 when FLeX is off)
}

struct SampleParams {
    rows: u32,
    vocab: u32,
    seed: u32,
    ignore: u32,
}

@group(0) @binding(0) var<uniform> adam_p: AdamParams;
@group(0) @binding(0) var<uniform> sophia_p: SophiaParams;
@group(0) @binding(0) var<uniform> hessian_p: HessianParams;
@group(0) @binding(0) var<uniform> reduce_p: ReduceParams;
@group(0) @binding(0) var<uniform> sample_p: SampleParams;
@group(0) @binding(0) var<uniform> stats_p: StatsParams;

// Each storage binding number has one buffer and one meaning in this file (binding 0 is the
// entry point's own params struct); an entry point binds the subset it uses.
// adamw: g, then param, m, v updated in place; sophia: g and h, then param and m in place.
@group(0) @binding(1) var<storage, read> g: array<f32>;               // [N]
@group(0) @binding(2) var<storage, read_write> param: array<f32>;     // [N]
@group(0) @binding(3) var<storage, read_write> m: array<f32>;         // [N]
@group(0) @binding(4) var<storage, read_write> v: array<f32>;         // [N] adamw
@group(0) @binding(5) var<storage, read> h: array<f32>;               // [N] sophia
// sophia_hessian: ghat, then h in place
@group(0) @binding(6) var<storage, read> ghat: array<f32>;            // [N]
@group(0) @binding(7) var<storage, read_write> h_ema: array<f32>;     // [N]
// reduce: x -> partials[offset + workgroup]
@group(0) @binding(8) var<storage, read> x: array<f32>;               // [N]
@group(0) @binding(9) var<storage, read_write> partials: array<f32>;  // [workgroups of all passes]
// sample_labels
@group(0) @binding(10) var<storage, read> logits: array<f32>;         // [N, V]
@group(0) @binding(11) var<storage, read> targets: array<u32>;        // [N]
@group(0) @binding(12) var<storage, read_write> labels: array<u32>;   // [N]
// adamw, sophia: [scale, go] (go 0: change nothing), written by step_stats
@group(0) @binding(13) var<storage, read> control: array<f32>;        // [2]
// step_stats: the step's sums in, the update's control and the step's log row out
@group(0) @binding(14) var<storage, read> loss_sum: array<f32>;       // [1]
@group(0) @binding(15) var<storage, read> norm2: array<f32>;          // [1]
@group(0) @binding(16) var<storage, read> flex_value: array<f32>;     // [1]
@group(0) @binding(17) var<storage, read_write> control_out: array<f32>; // [2]
@group(0) @binding(18) var<storage, read_write> step_log: array<f32>;    // [slots, 4]

override WG: u32 = 256u;

// shared: index_1d (a copy WGSL forces; tests/kernel_contracts.rs keeps the copies identical)
fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}
// end shared: index_1d

// PyTorch's AdamW: decay the weight first, then the bias-corrected Adam step with eps outside
// the square root.
@compute @workgroup_size(WG)
fn adamw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if i >= adam_p.n || control[1] == 0.0 { return; }
    let gi = control[0] * g[i];
    let mi = adam_p.beta1 * m[i] + (1.0 - adam_p.beta1) * gi;
    let vi = adam_p.beta2 * v[i] + (1.0 - adam_p.beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    let denom = sqrt(vi) / adam_p.bc2_sqrt + adam_p.eps;
    param[i] = param[i] * adam_p.decay - adam_p.step_size * mi / denom;
}

// SophiaG: the momentum preconditioned by the Hessian EMA, clipped per coordinate to [-1, 1], so
// no coordinate moves more than lr (sign descent where the curvature is small or negative).
@compute @workgroup_size(WG)
fn sophia(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if i >= sophia_p.n || control[1] == 0.0 { return; }
    let gi = control[0] * g[i];
    let mi = sophia_p.beta1 * m[i] + (1.0 - sophia_p.beta1) * gi;
    m[i] = mi;
    let ratio = clamp(mi / max(sophia_p.rho * h[i], sophia_p.eps), -1.0, 1.0);
    param[i] = param[i] * sophia_p.decay - sophia_p.lr * ratio;
}

@compute @workgroup_size(WG)
fn sophia_hessian(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if i >= hessian_p.n { return; }
    let gi = ghat[i];
    h_ema[i] = hessian_p.beta2 * h_ema[i] + (1.0 - hessian_p.beta2) * (hessian_p.scale * gi * gi);
}

// Not inf or NaN, from the bits: a compiler may assume floats are finite and fold `x == x`.
fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// One thread: the step's loss, gradient norm and FLeX penalty into its log row, and the update's
// control: the clipping factor, and go = 0 from the first non-finite step on.
@compute @workgroup_size(1)
fn step_stats() {
    let loss = stats_p.loss_scale * loss_sum[0];
    let norm = sqrt(norm2[0]);
    let finite = is_finite(loss) && is_finite(norm);
    var scale = 1.0;
    if stats_p.clip > 0.0 && norm > stats_p.clip {
        scale = stats_p.clip / norm;
    }
    control_out[0] = scale;
    control_out[1] = select(0.0, 1.0, finite && control_out[1] != 0.0);
    let row = stats_p.slot * 4u;
    step_log[row] = loss;
    step_log[row + 1u] = norm;
    step_log[row + 2u] = stats_p.flex_coef * flex_value[0];
    step_log[row + 3u] = select(0.0, 1.0, finite);
}

var<workgroup> sums: array<f32, WG>;

// One workgroup sums `chunk` consecutive elements (each thread a strided slice, then a tree), and
// writes one partial. The final pass runs this again on the partials with one workgroup.
@compute @workgroup_size(WG)
fn reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let wg_index = wid.y * nwg.x + wid.x;
    let start = wg_index * reduce_p.chunk;
    let end = min(start + reduce_p.chunk, reduce_p.n);
    var s = 0.0;
    for (var i = start + lid.x; i < end; i += WG) {
        let xi = x[i];
        if reduce_p.square == 1u {
            s += xi * xi;
        } else {
            s += xi;
        }
    }
    sums[lid.x] = s;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k = k >> 1u) {
        if lid.x < k {
            sums[lid.x] += sums[lid.x + k];
        }
        workgroupBarrier();
    }
    if lid.x == 0u && start < reduce_p.n {
        partials[reduce_p.offset + wg_index] = sums[0];
    }
}

// PCG hash (Jarzynski and Olano 2020); u32 arithmetic wraps, as in the Rust twin
// (`ops::elementwise::hash`; elementwise.wgsl has the same function: WGSL has no includes).
// shared: pcg_hash (a copy WGSL forces; tests/kernel_contracts.rs keeps the copies identical)
fn pcg_hash(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}
// end shared: pcg_hash

// Uniform in (0, 1) from 23 hash bits: (k + 1/2) / 2^23 is exact in f32, so both devices see the
// same u, never 0 or 1.
fn unit_interval(bits: u32) -> f32 {
    return (f32(bits >> 9u) + 0.5) * (1.0 / 8388608.0);
}

var<workgroup> best_val: array<f32, WG>;
var<workgroup> best_idx: array<u32, WG>;

// (val, idx) beats (bv, bi): larger value, ties to the smaller index; NaN never wins. A total
// order, so any reduction order gives the CPU twin's answer.
fn beats(val: f32, idx: u32, bv: f32, bi: u32) -> bool {
    return val > bv || (val == bv && idx < bi);
}

// One workgroup per row: Gumbel-max sampling, argmax_v (logit_v - ln(-ln u_v)) ~ softmax(row).
@compute @workgroup_size(WG)
fn sample_labels(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if row >= sample_p.rows { return; }
    let base = row * sample_p.vocab;
    let row_key = pcg_hash(pcg_hash(sample_p.seed) ^ row);
    var bv = -3.0e38;
    var bi = sample_p.ignore;
    for (var t = lid.x; t < sample_p.vocab; t += WG) {
        let u = unit_interval(pcg_hash(row_key ^ t));
        let val = logits[base + t] - log(-log(u));
        if beats(val, t, bv, bi) {
            bv = val;
            bi = t;
        }
    }
    best_val[lid.x] = bv;
    best_idx[lid.x] = bi;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k = k >> 1u) {
        if lid.x < k && beats(best_val[lid.x + k], best_idx[lid.x + k], best_val[lid.x], best_idx[lid.x]) {
            best_val[lid.x] = best_val[lid.x + k];
            best_idx[lid.x] = best_idx[lid.x + k];
        }
        workgroupBarrier();
    }
    if lid.x == 0u {
        if targets[row] == sample_p.ignore {
            labels[row] = sample_p.ignore;
        } else {
            labels[row] = best_idx[0];
        }
    }
}
