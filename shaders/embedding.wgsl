// Embedding lookup: y[t, :] = table[ids[t], :]. Ids at or above V give a zero row (the tokenizer
// and model loader validate ids; the kernel must never read out of bounds).

struct Params {
    tokens: u32, // T (all batch rows flattened)
    c: u32,
    vocab: u32,
    accumulate: u32, // backward: 1 adds into dtable
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;          // [T]
@group(0) @binding(2) var<storage, read> table: array<f32>;        // [V, C]
@group(0) @binding(3) var<storage, read_write> y: array<f32>;      // [T, C]
// backward
@group(0) @binding(2) var<storage, read> dy: array<f32>;           // [T, C]
@group(0) @binding(3) var<storage, read_write> dtable: array<f32>; // [V, C]

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid.x;
    if i >= p.tokens * p.c { return; }
    let t = i / p.c;
    let j = i % p.c;
    let id = ids[t];
    var v = 0.0;
    if id < p.vocab {
        v = table[id * p.c + j];
    }
    y[i] = v;
}

// dtable[v, j] = sum over t with ids[t] == v of dy[t, j]. One invocation per column j walks the
// tokens in order, so no two invocations write the same element and the sum is deterministic.
@compute @workgroup_size(WG)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if j >= p.c { return; }
    if p.accumulate == 0u {
        for (var v = 0u; v < p.vocab; v++) {
            dtable[v * p.c + j] = 0.0;
        }
    }
    for (var t = 0u; t < p.tokens; t++) {
        let id = ids[t];
        if id < p.vocab {
            dtable[id * p.c + j] += dy[t * p.c + j];
        }
    }
}
