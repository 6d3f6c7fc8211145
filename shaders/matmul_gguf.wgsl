// Fused products with a frozen weight W [N, K] kept in its GGUF block format (see
// src/ops/matmul_gguf/): the file's bytes, rows back to back (`row_bytes` each), read as
// little-endian u32 words. deq(W) is never materialized: every invocation dequantizes the 8
// weights of one "chunk" at a time into two vec4s, exactly as src/model/load/ggml_blocks.rs does.
//
// - `forward`: y[T, N] = x[T, K] · deq(W)ᵀ; `forward_few` is the same product for a few tokens
//   (decode: one token per workgroup, so no invocation computes clamped copies of tokens).
// - `backward_dx`: dx[T, K] = dy[T, N] · deq(W), the input gradient (W is frozen: no dW).
// - `gather`: y[t] = deq(W)[ids[t]], the embedding lookup from blocks (ids >= N: a zero row).
//
// The block type is the override constant TY (the ggml type id), so each pipeline keeps only its
// type's branch. Layout as src/ops/matmul_nf4.wgsl (see its header for why, on lavapipe): no
// workgroup memory and no barriers, each invocation owns whole weight rows (forward) or chunks of
// columns (backward_dx), x / dy loads are workgroup-uniform broadcasts. Decode therefore walks a
// row per invocation rather than a row per workgroup with a reduction: on lavapipe a per-lane x
// load and a barrier cost more than the uncoalesced row reads they would save.
//
// Chunks: every type's row is K / 8 chunks of 8 weights, chosen along the bytes (one u32 of
// codes where the type allows): the 8 weights sit at two runs of 4 consecutive columns, `lo` at
// column chunk_cols(c).x and `hi` at chunk_cols(c).y, so x, dy and dx are read and written as
// aligned vec4s. The launcher checks K % 8 == 0 (quantized types have K % 32 == 0 anyway).
//
// Rows start at any byte (Q4_0 blocks are 18 bytes, Q6_K 210), so bytes are read through
// `u32_at` / `half_at`, which take any byte offset (halves always sit at even offsets).

struct Params {
    t: u32,         // tokens
    n: u32,         // rows of this part of W (output features)
    k: u32,         // columns of W (input features), a multiple of 8
    row_bytes: u32, // bytes per row of W
    ld: u32,        // rows of the whole W: the row stride of y and dy
    n0: u32,        // the first row of this part in W
    acc: u32,       // 1 after the first part: backward_dx adds into dx, gather writes its own ids only
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;        // [ceil(N * row_bytes / 4)] blocks of W
@group(0) @binding(2) var<storage, read> x4: array<vec4<f32>>; // forward: x [T, K]
@group(0) @binding(3) var<storage, read_write> y: array<f32>;  // forward: y [T, N]

// ggml type ids (ggml.h `enum ggml_type`).
const F32: u32 = 0u;
const F16: u32 = 1u;
const Q4_0: u32 = 2u;
const Q4_1: u32 = 3u;
const Q5_0: u32 = 6u;
const Q5_1: u32 = 7u;
const Q8_0: u32 = 8u;
const Q4_K: u32 = 12u;
const Q5_K: u32 = 13u;
const Q6_K: u32 = 14u;
const BF16: u32 = 30u;

override TY: u32 = 2u; // the block type of W (a ggml type id above)

// ---- Reading bytes at any offset ----

// Whether every 4-byte read of this type and row size starts on a word (Q4_1, Q5_1, Q4_K,
// Q5_K blocks, whole-float chunks, rows of a multiple of 4 bytes): then a read is one load
// (lavapipe splits every per-lane load into one scalar load per lane, so loads are the cost).
override ALIGNED: bool = false;

// The 4 bytes at byte offset `off`, little-endian. Unaligned, the second word is loaded even when
// `off` happens to be aligned (no branch); its value is then discarded, and WGSL keeps
// out-of-range reads safe.
fn u32_at(off: u32) -> u32 {
    if ALIGNED {
        return w[off / 4u];
    }
    let i = off / 4u;
    let s = (off % 4u) * 8u;
    let lo = w[i];
    let hi = w[i + 1u];
    return select(lo, (lo >> s) | (hi << (32u - s)), s != 0u);
}

// The 16 bits at even byte offset `off`.
fn u16_at(off: u32) -> u32 {
    return (w[off / 4u] >> ((off & 2u) * 8u)) & 0xffffu;
}

// The little-endian f16 at even byte offset `off`, as f32 (exact, subnormals included).
fn half_at(off: u32) -> f32 {
    return unpack2x16float(u16_at(off)).x;
}

fn byte_at(off: u32) -> u32 {
    return (w[off / 4u] >> ((off % 4u) * 8u)) & 0xffu;
}

// The 4 bytes of a word, lowest first.
fn bytes4(v: u32) -> vec4<u32> {
    return (vec4<u32>(v) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu);
}

// The 4 bytes of a word as signed bytes (i8), as f32.
fn i8x4(v: u32) -> vec4<f32> {
    return vec4<f32>(vec4<i32>(vec4<u32>(v) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// Bits b, b+1, b+2, b+3 of `v`, one per lane.
fn bits4(v: u32, b: u32) -> vec4<u32> {
    return (vec4<u32>(v) >> (vec4<u32>(b) + vec4<u32>(0u, 1u, 2u, 3u))) & vec4<u32>(1u);
}

// ---- Chunks: which columns, and their weights ----

// The columns of chunk c of a row: (first column of `lo`, first column of `hi`).
fn chunk_cols(c: u32) -> vec2<u32> {
    switch TY {
        case Q4_0, Q4_1, Q5_0, Q5_1: { // 4 chunks of 4 code bytes per block of 32;
            // low nibbles are columns 0..16, high nibbles 16..32.
            let a = (c / 4u) * 32u + (c % 4u) * 4u;
            return vec2<u32>(a, a + 16u);
        }
        case Q4_K, Q5_K: { // 4 groups of 64 columns per block of 256; byte l of a
            // group's 32 code bytes holds column l (low nibble) and column 32 + l (high).
            let cc = c % 32u;
            let a = (c / 32u) * 256u + (cc / 8u) * 64u + (cc % 8u) * 4u;
            return vec2<u32>(a, a + 32u);
        }
        case Q6_K: { // 2 halves of 128 columns; byte l of ql holds columns l (low nibble)
            // and 64 + l (high), byte 32 + l columns 32 + l and 96 + l.
            let cc = c % 32u;
            let a = (c / 32u) * 256u + (cc / 16u) * 128u + ((cc % 16u) / 8u) * 32u + (cc % 8u) * 4u;
            return vec2<u32>(a, a + 64u);
        }
        default: { // Q8_0, F16, BF16, F32: 8 consecutive columns.
            return vec2<u32>(c * 8u, c * 8u + 4u);
        }
    }
}

// The 8 weights of chunk c of the row starting at byte `row`: [lo, hi] at `chunk_cols(c)`.
// Each formula keeps ggml_blocks.rs's f32 operation order, so gather is bit-exact.
fn deq8(row: u32, c: u32) -> array<vec4<f32>, 2> {
    switch TY {
        case Q4_0: { // Q4_0 { f16 d; u8 qs[16] }: (q - 8) * d
            let b = row + (c / 4u) * 18u;
            let d = half_at(b);
            let q = bytes4(u32_at(b + 2u + (c % 4u) * 4u));
            return array(vec4<f32>(vec4<i32>(q & vec4<u32>(15u)) - 8) * d, vec4<f32>(vec4<i32>(q >> vec4<u32>(4u)) - 8) * d);
        }
        case Q4_1: { // Q4_1 { f16 d; f16 m; u8 qs[16] }: q * d + m
            let b = row + (c / 4u) * 20u;
            let d = half_at(b);
            let m = half_at(b + 2u);
            let q = bytes4(u32_at(b + 4u + (c % 4u) * 4u));
            return array(vec4<f32>(q & vec4<u32>(15u)) * d + m, vec4<f32>(q >> vec4<u32>(4u)) * d + m);
        }
        case Q5_0: { // Q5_0 { f16 d; u8 qh[4]; u8 qs[16] }: (q - 16) * d, bit j of qh the fifth bit of column j
            let b = row + (c / 4u) * 22u;
            let d = half_at(b);
            let qh = u32_at(b + 2u);
            let j = (c % 4u) * 4u;
            let q = bytes4(u32_at(b + 6u + j));
            let lo = (q & vec4<u32>(15u)) | (bits4(qh, j) << vec4<u32>(4u));
            let hi = (q >> vec4<u32>(4u)) | (bits4(qh, j + 16u) << vec4<u32>(4u));
            return array(vec4<f32>(vec4<i32>(lo) - 16) * d, vec4<f32>(vec4<i32>(hi) - 16) * d);
        }
        case Q5_1: { // Q5_1 { f16 d; f16 m; u8 qh[4]; u8 qs[16] }: q * d + m
            let b = row + (c / 4u) * 24u;
            let d = half_at(b);
            let m = half_at(b + 2u);
            let qh = u32_at(b + 4u);
            let j = (c % 4u) * 4u;
            let q = bytes4(u32_at(b + 8u + j));
            let lo = (q & vec4<u32>(15u)) | (bits4(qh, j) << vec4<u32>(4u));
            let hi = (q >> vec4<u32>(4u)) | (bits4(qh, j + 16u) << vec4<u32>(4u));
            return array(vec4<f32>(lo) * d + m, vec4<f32>(hi) * d + m);
        }
        case Q8_0: { // Q8_0 { f16 d; i8 qs[32] }: q * d
            let b = row + (c / 4u) * 34u;
            let d = half_at(b);
            let o = b + 2u + (c % 4u) * 8u;
            return array(i8x4(u32_at(o)) * d, i8x4(u32_at(o + 4u)) * d);
        }
        case Q4_K: { // Q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }: (d * sc) * q - dmin * m
            let b = row + (c / 32u) * 144u;
            let cc = c % 32u;
            let g = cc / 8u;
            let q = bytes4(u32_at(b + 16u + g * 32u + (cc % 8u) * 4u));
            let s = k_scales(b, g);
            return array(s.x * vec4<f32>(q & vec4<u32>(15u)) - s.y, s.z * vec4<f32>(q >> vec4<u32>(4u)) - s.w);
        }
        case Q5_K: { // Q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }: as Q4_K,
            // bits 2g and 2g + 1 of qh[l] are the fifth bits of columns l and 32 + l of group g
            let b = row + (c / 32u) * 176u;
            let cc = c % 32u;
            let g = cc / 8u;
            let l = (cc % 8u) * 4u;
            let q = bytes4(u32_at(b + 48u + g * 32u + l));
            let qh = bytes4(u32_at(b + 16u + l));
            let lo = (q & vec4<u32>(15u)) | (((qh >> vec4<u32>(2u * g)) & vec4<u32>(1u)) << vec4<u32>(4u));
            let hi = (q >> vec4<u32>(4u)) | (((qh >> vec4<u32>(2u * g + 1u)) & vec4<u32>(1u)) << vec4<u32>(4u));
            let s = k_scales(b, g);
            return array(s.x * vec4<f32>(lo) - s.y, s.z * vec4<f32>(hi) - s.w);
        }
        case Q6_K: { // Q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }: (d * sc) * (q - 32)
            let b = row + (c / 32u) * 210u;
            let cc = c % 32u;
            let h = cc / 16u;       // half of the block
            let pair = (cc % 16u) / 8u; // 0: ql[l] (columns l, 64 + l); 1: ql[32 + l] (32 + l, 96 + l)
            let l = (cc % 8u) * 4u;
            let ql = bytes4(u32_at(b + h * 64u + pair * 32u + l));
            let qh = bytes4(u32_at(b + 128u + h * 32u + l));
            let lo = (ql & vec4<u32>(15u)) | (((qh >> vec4<u32>(2u * pair)) & vec4<u32>(3u)) << vec4<u32>(4u));
            let hi = (ql >> vec4<u32>(4u)) | (((qh >> vec4<u32>(4u + 2u * pair)) & vec4<u32>(3u)) << vec4<u32>(4u));
            let d = half_at(b + 208u);
            let sc = b + 192u + h * 8u + l / 16u + pair * 2u; // scale of 16 columns
            let d_lo = d * f32((i32(byte_at(sc)) << 24u) >> 24u);
            let d_hi = d * f32((i32(byte_at(sc + 4u)) << 24u) >> 24u);
            return array(d_lo * vec4<f32>(vec4<i32>(lo) - 32), d_hi * vec4<f32>(vec4<i32>(hi) - 32));
        }
        case F16: {
            let o = row + c * 16u;
            let a = u32_at(o);
            let b = u32_at(o + 4u);
            let e = u32_at(o + 8u);
            let f = u32_at(o + 12u);
            return array(vec4<f32>(unpack2x16float(a), unpack2x16float(b)), vec4<f32>(unpack2x16float(e), unpack2x16float(f)));
        }
        case BF16: { // BF16: the top half of an f32
            let o = row + c * 16u;
            let a = vec4<u32>(u32_at(o), u32_at(o + 4u), u32_at(o + 8u), u32_at(o + 12u));
            let lo16 = a << vec4<u32>(16u);
            let hi16 = a & vec4<u32>(0xffff0000u);
            return array(bitcast<vec4<f32>>(vec4<u32>(lo16.x, hi16.x, lo16.y, hi16.y)), bitcast<vec4<f32>>(vec4<u32>(lo16.z, hi16.z, lo16.w, hi16.w)));
        }
        default: { // F32
            let o = row + c * 32u;
            let lo = vec4<u32>(u32_at(o), u32_at(o + 4u), u32_at(o + 8u), u32_at(o + 12u));
            let hi = vec4<u32>(u32_at(o + 16u), u32_at(o + 20u), u32_at(o + 24u), u32_at(o + 28u));
            return array(bitcast<vec4<f32>>(lo), bitcast<vec4<f32>>(hi));
        }
    }
}

// Q4_K / Q5_K: (d * sc, dmin * m) of sub-blocks 2g and 2g + 1 of the block at byte `b`, as
// (d1, min1, d2, min2). The 12 bytes at b + 4 pack 8 6-bit scales and mins (`scale_min_k4`).
fn k_scales(b: u32, g: u32) -> vec4<f32> {
    let d = half_at(b);
    let dmin = half_at(b + 2u);
    let s1 = scale_min_k4(b + 4u, 2u * g);
    let s2 = scale_min_k4(b + 4u, 2u * g + 1u);
    return vec4<f32>(d * f32(s1.x), dmin * f32(s1.y), d * f32(s2.x), dmin * f32(s2.y));
}

// (scale, min) of sub-block j of the 12 scale bytes at `s`: j < 4 take the low 6 bits of bytes
// j and j + 4; j >= 4 their low 4 bits from byte j + 4 and their top 2 bits from bytes j - 4, j.
fn scale_min_k4(s: u32, j: u32) -> vec2<u32> {
    if j < 4u {
        return vec2<u32>(byte_at(s + j) & 63u, byte_at(s + j + 4u) & 63u);
    }
    let v = byte_at(s + j + 4u);
    return vec2<u32>((v & 15u) | ((byte_at(s + j - 4u) >> 6u) << 4u), (v >> 4u) | ((byte_at(s + j) >> 6u) << 4u));
}

// ---- Products ----

override UT: u32 = 32u; // tokens per workgroup (`forward`, `backward_dx`), at most UT_MAX
const UT_MAX: u32 = 32u;
override LX: u32 = 64u; // invocations per workgroup

// Workgroup x walks token blocks, y blocks of LX * UN rows of W; invocation owns the UN rows
// n0, n0 + LX, ..., so each workgroup-uniform x load feeds UN rows and each chunk UT tokens.
const UN: u32 = 8u;

@compute @workgroup_size(LX)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t0 = wid.x * UT;
    let n0 = wid.y * LX * UN + lid.x;
    let k4 = p.k / 4u;
    var rows: array<u32, UN>; // first byte of each owned row
    for (var j = 0u; j < UN; j++) {
        rows[j] = min(n0 + j * LX, p.n - 1u) * p.row_bytes;
    }
    var acc: array<f32, 256>; // [UT_MAX, UN]
    for (var c = 0u; c < p.k / 8u; c++) {
        var lo: array<vec4<f32>, UN>;
        var hi: array<vec4<f32>, UN>;
        for (var j = 0u; j < UN; j++) {
            let v = deq8(rows[j], c);
            lo[j] = v[0];
            hi[j] = v[1];
        }
        let cols = chunk_cols(c) / 4u;
        for (var i = 0u; i < UT; i++) {
            let xr = min(t0 + i, p.t - 1u) * k4; // workgroup-uniform
            let xa = x4[xr + cols.x];
            let xb = x4[xr + cols.y];
            for (var j = 0u; j < UN; j++) {
                acc[i * UN + j] += dot(xa, lo[j]) + dot(xb, hi[j]);
            }
        }
    }
    for (var j = 0u; j < UN; j++) {
        let n = n0 + j * LX;
        for (var i = 0u; i < UT; i++) {
            if n < p.n && t0 + i < p.t {
                y[(t0 + i) * p.ld + p.n0 + n] = acc[i * UN + j];
            }
        }
    }
}

// `forward` for a handful of tokens (decode): workgroup x is the token, y a block of LX * UN_FEW
// rows.
const UN_FEW: u32 = 4u;

@compute @workgroup_size(LX)
fn forward_few(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let xr = wid.x * (p.k / 4u);
    let n0 = wid.y * LX * UN_FEW + lid.x;
    var rows: array<u32, UN_FEW>;
    for (var j = 0u; j < UN_FEW; j++) {
        rows[j] = min(n0 + j * LX, p.n - 1u) * p.row_bytes;
    }
    var acc: array<f32, UN_FEW>;
    for (var c = 0u; c < p.k / 8u; c++) {
        let cols = chunk_cols(c) / 4u;
        let xa = x4[xr + cols.x]; // workgroup-uniform
        let xb = x4[xr + cols.y];
        for (var j = 0u; j < UN_FEW; j++) {
            let v = deq8(rows[j], c);
            acc[j] += dot(xa, v[0]) + dot(xb, v[1]);
        }
    }
    for (var j = 0u; j < UN_FEW; j++) {
        let n = n0 + j * LX;
        if n < p.n {
            y[wid.x * p.ld + p.n0 + n] = acc[j];
        }
    }
}

@group(0) @binding(2) var<storage, read> dy: array<f32>;             // backward_dx: dy [T, N]
@group(0) @binding(3) var<storage, read_write> dx4: array<vec4<f32>>; // backward_dx: dx [T, K]

// dx[t, k] = Σ_n dy[t, n] W[n, k]. Workgroup x walks token blocks, y blocks of LX chunks of a
// row; invocation owns the 8 columns of one chunk and walks every row of W, feeding each
// dequantized chunk to UT tokens (workgroup-uniform dy loads).
@compute @workgroup_size(LX)
fn backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t0 = wid.x * UT;
    let c = wid.y * LX + lid.x;
    let chunks = p.k / 8u;
    let cc = min(c, chunks - 1u);
    var dy_row: array<u32, UT_MAX>;
    for (var i = 0u; i < UT; i++) {
        dy_row[i] = min(t0 + i, p.t - 1u) * p.ld + p.n0;
    }
    var lo_acc: array<vec4<f32>, UT_MAX>;
    var hi_acc: array<vec4<f32>, UT_MAX>;
    for (var n = 0u; n < p.n; n++) {
        let v = deq8(n * p.row_bytes, cc);
        for (var i = 0u; i < UT; i++) {
            let g = dy[dy_row[i] + n]; // workgroup-uniform
            lo_acc[i] = fma(vec4<f32>(g), v[0], lo_acc[i]);
            hi_acc[i] = fma(vec4<f32>(g), v[1], hi_acc[i]);
        }
    }
    if c < chunks {
        let cols = chunk_cols(c) / 4u;
        for (var i = 0u; i < UT; i++) {
            if t0 + i < p.t {
                let o = (t0 + i) * (p.k / 4u);
                if p.acc != 0u {
                    dx4[o + cols.x] += lo_acc[i];
                    dx4[o + cols.y] += hi_acc[i];
                } else {
                    dx4[o + cols.x] = lo_acc[i];
                    dx4[o + cols.y] = hi_acc[i];
                }
            }
        }
    }
}

@group(0) @binding(2) var<storage, read> ids: array<u32>;            // gather: ids [T]
@group(0) @binding(3) var<storage, read_write> rows4: array<vec4<f32>>; // gather: y [T, K]

override WG: u32 = 64u; // invocations per workgroup (`gather`)

// One invocation per chunk of one output row; workgroups are split over x and y (`ops::groups`).
@compute @workgroup_size(WG)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    let chunks = p.k / 8u;
    if i >= p.t * chunks {
        return;
    }
    let t = i / chunks;
    let c = i % chunks;
    let id = ids[t];
    var v = array(vec4<f32>(0.0), vec4<f32>(0.0));
    if id >= p.n0 && id - p.n0 < p.n {
        v = deq8((id - p.n0) * p.row_bytes, c);
    } else if p.acc != 0u {
        return; // another part's row, or past W's end (the first part wrote its zeros)
    }
    let cols = chunk_cols(c) / 4u;
    rows4[t * (p.k / 4u) + cols.x] = v[0];
    rows4[t * (p.k / 4u) + cols.y] = v[1];
}
