// FLeX spectral penalty and its gradient, for a batch of real signals x [B, N] (B = 1, or the rows
// of a LoRA matrix with per_row, or stacked matrices).
//   P = sum_b sum_{k < n} rho_k |X_bk|^2,  X = DFT_N(x) (unnormalized), n = N/2 + 1
//   dP/dx_bj = DFT_N(H_b)_j (real),  H_bk = (r_k + r_{(N-k) mod N}) conj(X_bk),  r_k = rho_k [k < n]
// (derivation in src/ops/spectral.rs). Real signals go two at a time through one complex transform:
// z = x_a + i x_b gives X_a,k = (Z_k + conj Z_{N-k})/2, X_b,k = (Z_k - conj Z_{N-k})/(2i), and, H
// being Hermitian, DFT(H_a + i H_b) = g_a + i g_b; so P = [P/2] complex signals of length N. Both transforms are forward complex DFTs of length N, run as
// Stockham autosort stages (`stage`, `stage_large`) of length L = N, or, when N has a prime factor too
// large for a direct stage, as Bluestein's chirp-z convolution through a power-of-two FFT of
// length L = M >= 2N - 1 (`load`/`weigh` with chirp, `chirp_mul`, `chirp_out`).
// Complex numbers are vec2(re, im). Twiddles and chirps are computed on the host in f64.

struct Params {
    n: u32,         // signal length N
    len: u32,       // FFT length L (N, or M for Bluestein)
    batch: u32,     // complex signals: ceil(B / 2)
    radix: u32,     // stage: radix R of this pass
    ns: u32,        // stage: length of the sub-transforms finished before this pass
    chirp: u32,     // load/weigh: 1 = multiply by the Bluestein chirp (table) and pad to L
    n_freq: u32,    // n = N/2 + 1
    count: u32,     // sum: number of partial sums
    coef: f32,      // grad: scale of dP/dx added into the gradient
    threshold: f32, // rho ramp end, as a fraction of n
    phi_low: f32,
    phi_high: f32,
    rows: u32,      // B real signals
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// stage: roots [L] = exp(-2 pi i e / L); load, weigh, chirp_out: chirp [N] = exp(-pi i k^2 / N);
// chirp_mul: filter [M] = DFT_M(conj chirp, wrapped) / M
@group(0) @binding(1) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> src: array<vec2<f32>>;         // [B/2, L] or [B/2, N]
@group(0) @binding(2) var<storage, read> w_real: array<f32>;            // load: [B, N]
@group(0) @binding(3) var<storage, read_write> dst: array<vec2<f32>>;   // [B/2, L] or [B/2, N]
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;    // [count]
@group(0) @binding(5) var<storage, read_write> penalty_out: array<f32>; // [1]
@group(0) @binding(5) var<storage, read_write> grad_acc: array<f32>;    // [B, N]

override WG: u32 = 256u;
// Largest radix `stage` holds in registers; larger (prime) radices go through `stage_large`.
const MAX_R: u32 = 16u;

var<workgroup> part: array<f32, WG>;

// shared: index_1d (a copy WGSL forces; tests/kernel_contracts.rs keeps the copies identical)
fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}
// end shared: index_1d

fn cmul(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

fn conj(a: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a.x, -a.y);
}

// a * (-i) = e^{-i pi/2} a.
fn neg_i(a: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a.y, -a.x);
}

// y_q = sum_r a_r (-i)^{rq}: the forward 4-point DFT.
fn dft4(a: array<vec2<f32>, 4>) -> array<vec2<f32>, 4> {
    let s02 = a[0] + a[2];
    let d02 = a[0] - a[2];
    let s13 = a[1] + a[3];
    let d13 = neg_i(a[1] - a[3]);
    return array<vec2<f32>, 4>(s02 + s13, d02 + d13, s02 - s13, d02 - d13);
}

// rho(k) = 1 - [phi_low + (phi_high - phi_low) * min(1, k / (n T))], as Spectral::rho computes it.
fn rho(k: u32) -> f32 {
    let edge = f32(p.n_freq) * p.threshold;
    var ramp = 1.0;
    if f32(k) < edge {
        ramp = f32(k) / edge;
    }
    return 1.0 - (p.phi_low + (p.phi_high - p.phi_low) * ramp);
}

// dst [B/2, L] = x_2b + i x_2b+1 from x [B, N] (times the chirp for Bluestein), zero-padded to L.
@compute @workgroup_size(WG)
fn load(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = index(wid, nwg, lid);
    if t >= p.batch * p.len { return; }
    let b = t / p.len;
    let j = t % p.len;
    var v = vec2<f32>(0.0, 0.0);
    if j < p.n {
        v.x = w_real[2u * b * p.n + j];
        if 2u * b + 1u < p.rows {
            v.y = w_real[(2u * b + 1u) * p.n + j];
        }
        if p.chirp != 0u {
            v = cmul(v, table[j]);
        }
    }
    dst[t] = v;
}

// One Stockham pass of radix R over each length-L transform (one invocation per butterfly j):
// inputs src[j + r L/R], r < R, are the k-th bins (k = j mod ns) of R sub-transforms of length ns;
// after the twiddles w_{ns R}^{r k} a length-R DFT gives bins k + q ns of their merged transform,
// stored at (j / ns) ns R + k + q ns. After the last pass the output is in natural order.
@compute @workgroup_size(WG)
fn stage(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = index(wid, nwg, lid);
    let per = p.len / p.radix;
    if t >= per * p.batch { return; }
    let base = (t / per) * p.len;
    let j = t % per;
    let k = j % p.ns;
    let span = p.ns * p.radix;
    let tw_step = p.len / span;
    let r_step = per;
    var v: array<vec2<f32>, MAX_R>;
    for (var r = 0u; r < p.radix; r++) {
        v[r] = cmul(src[base + j + r * per], table[r * k * tw_step]);
    }
    let out = base + (j / p.ns) * span + k;
    // Radices 8, 4 and 2 as butterflies (8 = two 4-point DFTs of the even and odd inputs joined by
    // w_8^q): a few additions instead of R complex products per output.
    if p.radix == 8u {
        let e = dft4(array<vec2<f32>, 4>(v[0], v[2], v[4], v[6]));
        var o = dft4(array<vec2<f32>, 4>(v[1], v[3], v[5], v[7]));
        let c = 0.70710678118654752;
        o[1] = c * vec2<f32>(o[1].x + o[1].y, o[1].y - o[1].x); // * w_8 = (c, -c)
        o[2] = neg_i(o[2]);                                        // * w_8^2 = -i
        o[3] = c * vec2<f32>(o[3].y - o[3].x, -o[3].x - o[3].y); // * w_8^3 = (-c, -c)
        for (var q = 0u; q < 4u; q++) {
            dst[out + q * p.ns] = e[q] + o[q];
            dst[out + (q + 4u) * p.ns] = e[q] - o[q];
        }
        return;
    }
    if p.radix == 4u {
        let y = dft4(array<vec2<f32>, 4>(v[0], v[1], v[2], v[3]));
        for (var q = 0u; q < 4u; q++) {
            dst[out + q * p.ns] = y[q];
        }
        return;
    }
    if p.radix == 2u {
        dst[out] = v[0] + v[1];
        dst[out + p.ns] = v[0] - v[1];
        return;
    }
    for (var q = 0u; q < p.radix; q++) {
        var acc = v[0];
        var e = 0u; // (r q) mod R, stepped without a multiply
        for (var r = 1u; r < p.radix; r++) {
            e += q;
            if e >= p.radix { e -= p.radix; }
            acc += cmul(v[r], table[e * r_step]);
        }
        dst[out + q * p.ns] = acc;
    }
}

// `stage` for a large prime radix: the same pass without holding the R inputs in registers
// (each output re-reads them), so any radix works; the cost is R complex products per element.
@compute @workgroup_size(WG)
fn stage_large(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = index(wid, nwg, lid);
    let per = p.len / p.radix;
    if t >= per * p.batch { return; }
    let base = (t / per) * p.len;
    let j = t % per;
    let k = j % p.ns;
    let span = p.ns * p.radix;
    let tw_step = p.len / span;
    let out = base + (j / p.ns) * span + k;
    for (var q = 0u; q < p.radix; q++) {
        var acc = vec2<f32>(0.0, 0.0);
        var e = 0u;
        for (var r = 0u; r < p.radix; r++) {
            let v = cmul(src[base + j + r * per], table[r * k * tw_step]);
            acc += cmul(v, table[e * per]);
            e += q;
            if e >= p.radix { e -= p.radix; }
        }
        dst[out + q * p.ns] = acc;
    }
}

// Bluestein's middle step: dst = conj(src * filter), so that the next forward FFT followed by
// another conjugation (in chirp_out) is the inverse transform of the product.
@compute @workgroup_size(WG)
fn chirp_mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = index(wid, nwg, lid);
    if t >= p.batch * p.len { return; }
    dst[t] = conj(cmul(src[t], table[t % p.len]));
}

// Bluestein's last step: X_k = chirp_k conj(src_k) for k < N, from [B, L] into [B, N].
@compute @workgroup_size(WG)
fn chirp_out(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = index(wid, nwg, lid);
    if t >= p.batch * p.n { return; }
    let b = t / p.n;
    let k = t % p.n;
    dst[t] = cmul(table[k], conj(src[b * p.len + k]));
}

// From the paired spectrum Z = src [B/2, N]: partials[workgroup] = sum of rho_k (|X_a,k|^2 +
// |X_b,k|^2) over this workgroup's bins k < n, and dst [B/2, L] = H_a + i H_b (times the chirp for
// Bluestein), zero-padded to L.
@compute @workgroup_size(WG)
fn weigh(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = index(wid, nwg, lid);
    var c = 0.0;
    if t < p.batch * p.len {
        let b = t / p.len;
        let k = t % p.len;
        var y = vec2<f32>(0.0, 0.0);
        if k < p.n {
            let zk = src[b * p.n + k];
            let km = (p.n - k) % p.n;
            let zm = conj(src[b * p.n + km]);
            let xa = 0.5 * (zk + zm);
            let xb = 0.5 * neg_i(zk - zm);
            var r = 0.0;
            if k < p.n_freq {
                r = rho(k);
            }
            var rm = 0.0;
            if km < p.n_freq {
                rm = rho(km);
            }
            c = r * (dot(xa, xa) + dot(xb, xb));
            // conj(xa) + i conj(xb)
            y = (r + rm) * vec2<f32>(xa.x + xb.y, xb.x - xa.y);
            if p.chirp != 0u {
                y = cmul(y, table[k]);
            }
        }
        dst[t] = y;
    }
    part[lid.x] = c;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if lid.x < s {
            part[lid.x] += part[lid.x + s];
        }
        workgroupBarrier();
    }
    if lid.x == 0u {
        partials[wid.y * nwg.x + wid.x] = part[0];
    }
}

// One workgroup: penalty_out[0] = sum of the `count` partials.
@compute @workgroup_size(WG)
fn sum(@builtin(local_invocation_id) lid: vec3<u32>) {
    var s = 0.0;
    for (var i = lid.x; i < p.count; i += WG) {
        s += partials[i];
    }
    part[lid.x] = s;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h = h >> 1u) {
        if lid.x < h {
            part[lid.x] += part[lid.x + h];
        }
        workgroupBarrier();
    }
    if lid.x == 0u {
        penalty_out[0] = part[0];
    }
}

// grad [B, N] += coef * g, where src [B/2, N] = DFT_N(H_a + i H_b) = g_a + i g_b.
@compute @workgroup_size(WG)
fn grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = index(wid, nwg, lid);
    if t >= p.rows * p.n { return; }
    let b = t / p.n;
    let z = src[(b / 2u) * p.n + t % p.n];
    grad_acc[t] += p.coef * select(z.x, z.y, b % 2u == 1u);
}
