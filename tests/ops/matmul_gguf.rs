//! Fused products with GGUF block weights: forward (decode-sized and many-token paths) and
//! backward_dx on the CPU, on every SIMD tier, and on every GPU adapter, against
//! dequantize-then-f32-matmul (`ops::matmul`) on odd shapes; gather bit for bit on both.

use crate::common::*;
use flexlora::model::load::ggml_blocks::{self, GgmlType};
use flexlora::ops::{matmul, matmul_gguf};

/// Random bytes for `rows` rows of `k` elements of `ty`, with every f16 scale field overwritten by
/// a small finite half (random bytes there would be NaN, inf or huge): all code bit patterns
/// occur, and weights stay near the magnitudes real files have.
fn random_blocks(ty: GgmlType, rows: usize, k: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    // Whole floats: values in [-1, 1).
    match ty {
        GgmlType::F32 => return rng.vec(rows * k, 1.0).iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::BF16 => return rng.vec(rows * k, 1.0).iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        _ => {}
    }
    let (block, bytes) = ty.block();
    let mut data: Vec<u8> = (0..rows * k / block * bytes).map(|_| rng.next_u64() as u8).collect();
    let half = |rng: &mut Rng, lo: f32, hi: f32| {
        let v = lo + (hi - lo) * (rng.below(1 << 20) as f32 / (1 << 20) as f32);
        let v = if rng.below(2) == 0 { v } else { -v };
        half::f16::from_f32(v).to_le_bytes()
    };
    // (byte offsets of f16 fields in a block, their magnitude range)
    let (fields, lo, hi): (&[usize], f32, f32) = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => (&[0], 0.002, 0.03),
        GgmlType::Q4_1 | GgmlType::Q5_1 => (&[0, 2], 0.002, 0.03),
        GgmlType::Q4_K | GgmlType::Q5_K => (&[0, 2], 1e-4, 1e-3),
        GgmlType::Q6_K => (&[208], 1e-5, 2e-4),
        // Every element is a half.
        GgmlType::F16 => (&[0], 0.0, 1.0),
        _ => panic!("no random blocks for {ty}"),
    };
    for b in data.chunks_exact_mut(bytes) {
        for &at in fields {
            b[at..at + 2].copy_from_slice(&half(&mut rng, lo, hi));
        }
    }
    data
}

/// Block types with (N, K) shapes: N = 37 (odd, a partial decode task) and 131 (a tile of 128 and
/// a partial one); K a few blocks, not a multiple of the 256 columns of a few-token dx task.
const CASES: [(GgmlType, usize); 9] = [
    (GgmlType::Q4_0, 96),
    (GgmlType::Q4_1, 288),
    (GgmlType::Q5_0, 160),
    (GgmlType::Q5_1, 96),
    (GgmlType::Q8_0, 352),
    (GgmlType::Q4_K, 768),
    (GgmlType::Q5_K, 512),
    (GgmlType::Q6_K, 768),
    (GgmlType::F16, 37),
];

#[test]
fn cpu_fused_matches_dequantize_then_matmul_on_every_tier() {
    let dev = cpu();
    for (ty, k) in CASES {
        for n in [37, 131] {
            let bytes = random_blocks(ty, n, k, (n * k) as u64);
            let mut deq = vec![0f32; n * k];
            ggml_blocks::dequantize(ty, &bytes, &mut deq, "test", "w").unwrap();
            let w = matmul_gguf::GgufTensor::new(&dev, "test: w", ty, &[n, k], &bytes).unwrap();
            assert_eq!(w.dequantize().unwrap(), deq, "{ty}: GgufTensor holds the bytes it was given");
            let wt = up(&dev, &[n, k], &deq);
            // T = 1 and 3: the decode path; 37: the tiled GEMM path (from 16 tokens).
            for t in [1, 3, 37] {
                let mut rng = Rng::new((t + n) as u64);
                let (x, dy) = (rng.vec(t * k, 1.0), rng.vec(t * n, 1.0));
                let want_y = read(&dev, &matmul::forward(&dev, &up(&dev, &[t, k], &x), &wt, false, true).unwrap());
                let want_dx = read(&dev, &matmul::forward(&dev, &up(&dev, &[t, n], &dy), &wt, false, false).unwrap());
                each_tier(|tier| {
                    let what = format!("{ty} T={t} N={n} K={k}, CPU tier {tier}");
                    let y = read(&dev, &matmul_gguf::forward(&dev, &up(&dev, &[t, k], &x), &w).unwrap());
                    let dx = read(&dev, &matmul_gguf::backward_dx(&dev, &up(&dev, &[t, n], &dy), &w).unwrap());
                    assert_close(&format!("forward {what}"), &y, &want_y, 1e-4, 1e-4);
                    assert_close(&format!("dx {what}"), &dx, &want_dx, 1e-4, 1e-4);
                });
            }
        }
    }
}

/// Rows of the blocks (the embedding lookup of a table kept as blocks): each row equals the
/// dequantized table's bit for bit; ids past the last row give zeros, as `embedding::forward`.
#[test]
fn cpu_gather_returns_dequantized_rows() {
    let dev = cpu();
    for (ty, k) in CASES {
        let n = 37;
        let bytes = random_blocks(ty, n, k, 7 + k as u64);
        let w = matmul_gguf::GgufTensor::new(&dev, "test: w", ty, &[n, k], &bytes).unwrap();
        let deq = w.dequantize().unwrap();
        let ids = [5u32, 0, 36, 5, 37, u32::MAX, 12];
        let y = read(&dev, &matmul_gguf::gather(&dev, &up_u32(&dev, &[ids.len()], &ids), &w).unwrap());
        for (t, &id) in ids.iter().enumerate() {
            let want: Vec<f32> = if (id as usize) < n { deq[id as usize * k..][..k].to_vec() } else { vec![0.0; k] };
            assert_eq!(y[t * k..][..k], want[..], "{ty}: row {t} (id {id})");
        }
    }
}

#[test]
fn rejects_shapes_that_are_not_whole_blocks() {
    let dev = cpu();
    let bytes = random_blocks(GgmlType::Q4_K, 2, 256, 1);
    let err = matmul_gguf::GgufTensor::new(&dev, "f.gguf: w", GgmlType::Q4_K, &[2, 128], &bytes).unwrap_err().to_string();
    assert!(err.contains("f.gguf") && err.contains("Q4_K"), "{err}");
    let err = matmul_gguf::GgufTensor::new(&dev, "f.gguf: w", GgmlType::Q2_K, &[2, 256], &bytes).unwrap_err().to_string();
    assert!(err.contains("Q2_K") && err.contains("--weights"), "{err}");
    let w = matmul_gguf::GgufTensor::new(&dev, "f.gguf: w", GgmlType::Q4_K, &[2, 256], &bytes).unwrap();
    let err = matmul_gguf::forward(&dev, &up(&dev, &[1, 255], &[0.0; 255]), &w).unwrap_err().to_string();
    assert!(err.contains("255") && err.contains("256"), "{err}");
}

/// The GPU kernels (`shaders/matmul_gguf.wgsl`) on every adapter, for every block type of
/// `CASES` and whole-float rows of K = 40 (the GPU reads rows in chunks of 8), N = 131 (several
/// workgroups of rows, the last partial; one N only, as each (type, entry point, tile) is a
/// pipeline that llvmpipe compiles for about a second): forward for T = 1, 3 (`forward_few`) and
/// 37 (two token tiles, one partial) and backward_dx against
/// dequantize-then-f32-matmul within float tolerance, `forward_int8` equal to `forward` (the GPU
/// keeps f32 activations), and gather bit for bit against `GgufTensor::dequantize`.
#[test]
fn gpu_matches_dequantize_then_matmul_and_gathers_exact_rows() {
    let (dev, n) = (cpu(), 131);
    let cases = CASES.iter().copied().filter(|&(_, k)| k % 8 == 0).chain([(GgmlType::F16, 40), (GgmlType::BF16, 40), (GgmlType::F32, 40)]);
    for (ty, k) in cases {
        let bytes = random_blocks(ty, n, k, (n * k + 1) as u64);
        let w = matmul_gguf::GgufTensor::new(&dev, "test: w", ty, &[n, k], &bytes).unwrap();
        let deq = w.dequantize().unwrap();
        let wt = up(&dev, &[n, k], &deq);
        let ids = [5u32, 0, 36, 5, n as u32, u32::MAX, 12, n as u32 - 1];
        let inputs: Vec<_> = [1, 3, 37]
            .into_iter()
            .map(|t| {
                let mut rng = Rng::new((t * 7 + n + k) as u64);
                let (x, dy) = (rng.vec(t * k, 1.0), rng.vec(t * n, 1.0));
                let want_y = read(&dev, &matmul::forward(&dev, &up(&dev, &[t, k], &x), &wt, false, true).unwrap());
                let want_dx = read(&dev, &matmul::forward(&dev, &up(&dev, &[t, n], &dy), &wt, false, false).unwrap());
                (t, x, dy, want_y, want_dx)
            })
            .collect();
        each_gpu(|g| {
            let wg = matmul_gguf::GgufTensor::new(g, "test: w", ty, &[n, k], &bytes).unwrap();
            for (t, x, dy, want_y, want_dx) in &inputs {
                let t = *t;
                let what = format!("{ty} T={t} N={n} K={k} on {}", g.name());
                let xg = up(g, &[t, k], x);
                let y = read(g, &matmul_gguf::forward(g, &xg, &wg).unwrap());
                let dx = read(g, &matmul_gguf::backward_dx(g, &up(g, &[t, n], dy), &wg).unwrap());
                assert_close(&format!("forward {what}"), &y, want_y, 1e-4, 1e-4);
                assert_close(&format!("dx {what}"), &dx, want_dx, 1e-4, 1e-4);
                assert_eq!(read(g, &matmul_gguf::forward_int8(g, &xg, &wg).unwrap()), y, "forward_int8 {what} is forward");
            }
            let rows = read(g, &matmul_gguf::gather(g, &up_u32(g, &[ids.len()], &ids), &wg).unwrap());
            for (t, &id) in ids.iter().enumerate() {
                let want: Vec<f32> = if (id as usize) < n { deq[id as usize * k..][..k].to_vec() } else { vec![0.0; k] };
                let got = &rows[t * k..][..k];
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(got), bits(&want), "gather {ty} N={n} K={k} on {}: row {t} (id {id})", g.name());
            }
        });
    }
}

/// Whole-float rows whose K is not a multiple of 8 (only F16/BF16/F32 can have those) are refused
/// on the GPU with the limit and what to do.
#[test]
fn gpu_refuses_rows_not_a_multiple_of_8_clearly() {
    each_gpu(|g| {
        let bytes = random_blocks(GgmlType::F16, 3, 37, 2);
        let w = matmul_gguf::GgufTensor::new(g, "f.gguf: w", GgmlType::F16, &[3, 37], &bytes).unwrap();
        let err = matmul_gguf::forward(g, &up(g, &[1, 37], &[0.0; 37]), &w).unwrap_err().to_string();
        assert!(err.contains("f.gguf: w") && err.contains("K = 37") && err.contains("--device cpu"), "{err}");
    });
}

/// A weight whose blocks are larger than the adapter can bind in one buffer (lavapipe and
/// browsers: 128 MiB; Qwen2.5's [151936, 896] Q8_0 output matrix is 145 MB) is uploaded in parts
/// of whole rows, each within the limit, and the kernels dispatch part by part: forward writes each
/// part's rows at their place, backward_dx sums the parts' shares, gather takes each id from its
/// part. Parts of 8 rows here (N = 37: five parts, the last of 5 rows) against the CPU; and `new`
/// splits at the adapter's own limit (checked without running: that weight is 128 MiB).
#[test]
fn gpu_splits_weights_above_the_binding_limit_into_parts() {
    let (dev, n) = (cpu(), 37);
    for (ty, k) in [(GgmlType::Q5_0, 96), (GgmlType::Q8_0, 64), (GgmlType::Q4_K, 256), (GgmlType::F16, 40)] {
        let bytes = random_blocks(ty, n, k, (n + k) as u64);
        let w = matmul_gguf::GgufTensor::new(&dev, "test: w", ty, &[n, k], &bytes).unwrap();
        let ids = [5u32, 0, 36, 8, 7, n as u32, 16, u32::MAX, 31];
        each_gpu(|g| {
            let rb = bytes.len() / n;
            let wg = matmul_gguf::GgufTensor::in_parts(g, "test: w", ty, &[n, k], &bytes, (8 * rb + 3) as u64).unwrap();
            assert_eq!((wg.parts.len(), wg.part_rows), (5, 8), "{ty}");
            for t in [1, 3, 37] {
                let mut rng = Rng::new((t + k) as u64);
                let (x, dy) = (rng.vec(t * k, 1.0), rng.vec(t * n, 1.0));
                let what = format!("{ty} T={t} in parts of 8 rows on {}", g.name());
                let y = read(g, &matmul_gguf::forward(g, &up(g, &[t, k], &x), &wg).unwrap());
                let want = read(&dev, &matmul_gguf::forward(&dev, &up(&dev, &[t, k], &x), &w).unwrap());
                assert_close(&format!("forward {what}"), &y, &want, 1e-4, 1e-4);
                let dx = read(g, &matmul_gguf::backward_dx(g, &up(g, &[t, n], &dy), &wg).unwrap());
                let want = read(&dev, &matmul_gguf::backward_dx(&dev, &up(&dev, &[t, n], &dy), &w).unwrap());
                assert_close(&format!("dx {what}"), &dx, &want, 1e-4, 1e-4);
            }
            let rows = read(g, &matmul_gguf::gather(g, &up_u32(g, &[ids.len()], &ids), &wg).unwrap());
            let want = read(&dev, &matmul_gguf::gather(&dev, &up_u32(&dev, &[ids.len()], &ids), &w).unwrap());
            assert_eq!(rows, want, "gather {ty} in parts on {}", g.name());
        });
    }
    // The adapter's own limit: parts of whole rows, each within it.
    each_gpu(|g| {
        let limit = g.gpu().unwrap().limits.max_storage_buffer_binding_size;
        if limit > 512 << 20 {
            eprintln!("*** {} binds {limit} bytes per buffer: no weight above its limit is built here ***", g.name());
            return;
        }
        let k = 4096;
        let row_bytes = k / 32 * 34;
        let n = limit as usize / row_bytes + 1;
        let w = matmul_gguf::GgufTensor::new(g, "f.gguf: output.weight", GgmlType::Q8_0, &[n, k], &vec![0u8; n * row_bytes]).unwrap();
        assert_eq!(w.parts.len(), 2, "{}", g.name());
        assert!(w.parts.iter().all(|p| p.bytes() <= limit) && w.part_rows * row_bytes <= limit as usize);
    });
    // A row longer than a part can hold is refused with the limit and what to do.
    let err = matmul_gguf::GgufTensor::in_parts(&dev, "f.gguf: w", GgmlType::Q8_0, &[2, 64], &[0u8; 136], 40).unwrap_err().to_string();
    assert!(err.contains("f.gguf: w") && err.contains("max_storage_buffer_binding_size") && err.contains("--device cpu"), "{err}");
}

/// The block types with int8 kernels, with K (whole blocks; not a multiple of 256 where a type
/// allows it).
const INT8_CASES: [(GgmlType, usize); 6] = [
    (GgmlType::Q4_0, 96),
    (GgmlType::Q4_1, 288),
    (GgmlType::Q5_0, 160),
    (GgmlType::Q8_0, 352),
    (GgmlType::Q4_K, 768),
    (GgmlType::Q6_K, 768),
];

/// The int8-activation decode path (`forward_int8`, inference only) on every tier. It computes
/// Σ_j deq(w_j)·(q_j·d_b) exactly in integers up to f32 rounding, where q, d are `Q8Act`'s codes
/// and block scales of x: so it must match that sum (computed here in f64 from the dequantized
/// weights) within f32 rounding (1e-5 of Σ|w·x̂|), and the f32 product within the derived
/// activation-rounding bound Σ_b (d_b/2)·Σ_{j∈b} |w_j| (each code moves x_j by at most d_b/2).
/// T = 1 and 3 take the decode kernels, T = 37 the prompt GEMM (`int8_gemm`: tiles of 16 rows,
/// N = 37 ends in a partial one, tokens in groups of 4 and a tail), except where a tier has no
/// GEMM kernel for the type (Q8_0 without VNNI): there it is the f32 product, bit for bit.
#[test]
fn cpu_int8_path_matches_quantized_activations_on_every_tier() {
    use matmul_gguf::int8::{Q8Act, QK};
    let dev = cpu();
    for (ty, k) in INT8_CASES {
        let n = 37;
        let bytes = random_blocks(ty, n, k, (n * k + 5) as u64);
        let mut deq = vec![0f32; n * k];
        ggml_blocks::dequantize(ty, &bytes, &mut deq, "test", "w").unwrap();
        let w = matmul_gguf::GgufTensor::new(&dev, "test: w", ty, &[n, k], &bytes).unwrap();
        for t in [1, 3, 37] {
            let mut rng = Rng::new((t * 31 + k) as u64);
            // Blocks of very different magnitudes, as activations have.
            let x: Vec<f32> = rng.vec(t * k, 1.0).iter().enumerate().map(|(i, v)| v * [0.01, 1.0, 30.0][(i / QK) % 3]).collect();
            let xq = Q8Act::quantize(&x, k);
            let (mut want, mut slack, mut bound, mut exact) = (vec![0f32; t * n], vec![0f32; t * n], vec![0f32; t * n], vec![0f32; t * n]);
            for ti in 0..t {
                for r in 0..n {
                    let (mut yq, mut mag, mut b, mut y) = (0f64, 0f64, 0f64, 0f64);
                    for j in 0..k {
                        let (wv, xi) = (deq[r * k + j] as f64, ti * k + j);
                        let xhat = xq.q[xi] as f64 * xq.d[xi / QK] as f64;
                        yq += wv * xhat;
                        mag += (wv * xhat).abs();
                        b += wv.abs() * xq.d[xi / QK] as f64 / 2.0;
                        y += wv * x[xi] as f64;
                    }
                    let i = ti * n + r;
                    (want[i], slack[i], bound[i], exact[i]) = (yq as f32, (1e-5 * mag + 1e-6) as f32, b as f32, y as f32);
                }
            }
            for i in 0..t * n {
                assert!(
                    (want[i] - exact[i]).abs() <= bound[i] + slack[i],
                    "{ty}: the bound itself fails at {i}: {} vs {} (bound {})",
                    want[i],
                    exact[i],
                    bound[i]
                );
            }
            each_tier(|tier| {
                let y = read(&dev, &matmul_gguf::forward_int8(&dev, &up(&dev, &[t, k], &x), &w).unwrap());
                if t >= 16 && !matmul_gguf::int8_gemm::supported(ty) {
                    assert!(ty == GgmlType::Q8_0 && tier != flexlora::device::cpu::Tier::Portable, "{ty} on {tier}: no GEMM kernel");
                    let f32_path = read(&dev, &matmul_gguf::forward(&dev, &up(&dev, &[t, k], &x), &w).unwrap());
                    assert_eq!(y, f32_path, "{ty} T={t} on {tier}: without a GEMM kernel forward_int8 is forward");
                    return;
                }
                for i in 0..t * n {
                    let what = format!("{ty} T={t} N={n} K={k}, CPU tier {tier}, output {i}");
                    assert!((y[i] - want[i]).abs() <= slack[i], "{what}: int8 path {} vs Σ w·x̂ {} (tolerance {})", y[i], want[i], slack[i]);
                    assert!(
                        (y[i] - exact[i]).abs() <= bound[i] + slack[i],
                        "{what}: {} vs f32 product {} past the bound {}",
                        y[i],
                        exact[i],
                        bound[i]
                    );
                }
            });
        }
        // With 8-bit activations turned off, both paths are the f32 product, bit for bit.
        // (Inside `each_tier`: the tier is process-wide, and tests run in parallel.)
        each_tier(|tier| {
            for t in [3, 16] {
                let x = Rng::new(7).vec(t * k, 1.0);
                let a = matmul_gguf::with_f32_activations(|| matmul_gguf::forward_int8(&dev, &up(&dev, &[t, k], &x), &w).unwrap());
                let b = matmul_gguf::forward(&dev, &up(&dev, &[t, k], &x), &w).unwrap();
                assert_eq!(read(&dev, &a), read(&dev, &b), "{ty} T={t} on {tier}: forward_int8 under with_f32_activations is forward");
            }
        });
    }
}

/// The prompt GEMM at the edge of its integer ranges: every weight code at its type's largest
/// value and every activation code ±127 (a token of equal values), the case where the AVX2
/// kernel's 16-bit sums (`int8_gemm::i16_sums` products per sum) come closest to overflowing.
/// Results must still be Σ w·x̂ within f32 rounding, on every tier.
#[test]
fn cpu_int8_gemm_holds_the_largest_codes() {
    use matmul_gguf::int8::{Q8Act, QK};
    let dev = cpu();
    for (ty, k) in INT8_CASES {
        let (n, t) = (21, 37);
        let mut bytes = random_blocks(ty, n, k, k as u64);
        // The bytes holding codes, per block, and the value that makes every code its largest.
        let (codes, max) = match ty {
            GgmlType::Q4_0 => (2..18, 0xFF),
            GgmlType::Q4_1 => (4..20, 0xFF),
            GgmlType::Q5_0 => (2..22, 0xFF),
            GgmlType::Q8_0 => (2..34, 0x7F),
            GgmlType::Q4_K => (16..144, 0xFF),
            GgmlType::Q6_K => (0..192, 0xFF),
            _ => unreachable!(),
        };
        for b in bytes.chunks_exact_mut(ty.block().1) {
            b[codes.clone()].fill(max);
        }
        let mut deq = vec![0f32; n * k];
        ggml_blocks::dequantize(ty, &bytes, &mut deq, "test", "w").unwrap();
        let w = matmul_gguf::GgufTensor::new(&dev, "test: w", ty, &[n, k], &bytes).unwrap();
        let x: Vec<f32> = (0..t * k).map(|i| if (i / k) % 2 == 0 { 0.5 } else { -0.5 }).collect();
        let xq = Q8Act::quantize(&x, k);
        assert!(xq.q.iter().all(|q| q.abs() == 127));
        each_tier(|tier| {
            let y = read(&dev, &matmul_gguf::forward_int8(&dev, &up(&dev, &[t, k], &x), &w).unwrap());
            for ti in 0..t {
                for r in 0..n {
                    let (mut want, mut mag) = (0f64, 0f64);
                    for j in 0..k {
                        let v = deq[r * k + j] as f64 * xq.q[ti * k + j] as f64 * xq.d[(ti * k + j) / QK] as f64;
                        (want, mag) = (want + v, mag + v.abs());
                    }
                    let got = y[ti * n + r] as f64;
                    assert!((got - want).abs() <= 1e-5 * mag + 1e-6, "{ty} on {tier}, token {ti}, row {r}: {got} vs Σ w·x̂ {want}");
                }
            }
        });
    }
}

/// The prompt GEMM's tiles (`int8_gemm::Tile::pack`: AVX2 on the x86 tiers, `int8_pack_x86`)
/// hold the portable packer's bytes and scales exactly, for full tiles and a partial one.
#[test]
fn cpu_int8_gemm_tiles_pack_the_same_on_every_tier() {
    use matmul_gguf::int8_gemm::{Tile, ROWS};
    for (ty, k) in INT8_CASES {
        let bytes = random_blocks(ty, ROWS, k, (k + 3) as u64);
        let rb = bytes.len() / ROWS;
        for rows in [ROWS, 11] {
            let pack = || {
                let mut t = Tile::new(ty, k);
                t.pack(ty, &bytes[..rows * rb], rows, rb, k);
                (t.codes, [t.s_lo, t.s_hi, t.m, t.m_off].map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>()))
            };
            let want = flexlora::device::cpu::with_tier(flexlora::device::cpu::Tier::Portable, pack);
            each_tier(|tier| assert!(pack() == want, "{ty} tile of {rows} rows on {tier}: not the portable packer's"));
        }
    }
}

/// Batched decode (a few tokens, below the prompt GEMM's `MANY_TOKENS`) unpacks each weight block
/// once for a group of tokens; every token's sums must still be exactly what that token gets on
/// its own, bit for bit, on every tier, so a sequence's greedy output does not depend on which
/// other sequences share its decode step (`generate_many`). T = 2..15 covers groups of 1 to 4
/// tokens and every tail.
#[test]
fn cpu_int8_decode_gives_each_token_what_it_gets_alone() {
    let dev = cpu();
    for (ty, k) in INT8_CASES {
        let n = 19;
        let w = matmul_gguf::GgufTensor::new(&dev, "test: w", ty, &[n, k], &random_blocks(ty, n, k, k as u64)).unwrap();
        let x: Vec<f32> = Rng::new(k as u64 + 1).vec(15 * k, 2.0);
        each_tier(|tier| {
            let alone: Vec<Vec<f32>> = (0..15)
                .map(|ti| read(&dev, &matmul_gguf::forward_int8(&dev, &up(&dev, &[1, k], &x[ti * k..(ti + 1) * k]), &w).unwrap()))
                .collect();
            for t in 2..16 {
                let y = read(&dev, &matmul_gguf::forward_int8(&dev, &up(&dev, &[t, k], &x[..t * k]), &w).unwrap());
                for (ti, a) in alone.iter().enumerate().take(t) {
                    assert_eq!(&y[ti * n..(ti + 1) * n], &a[..], "{ty} on {tier}: token {ti} of {t} differs from the token alone");
                }
            }
        });
    }
}

/// Q8Act rounds as llama.cpp's quantize_row_q8_0 (d = amax/127, round half away from zero).
#[test]
fn int8_activation_quantization() {
    let mut x = vec![0f32; 64];
    x[0] = -2.54;
    x[1] = 0.01; // 0.5 steps: rounds away from zero
    x[2] = -0.03; // 1.5 steps -> -2
    let a = matmul_gguf::int8::Q8Act::quantize(&x, 32);
    assert_eq!(a.d, vec![0.02, 0.0]);
    assert_eq!(&a.q[..4], &[-127, 1, -2, 0]);
    assert!(a.q[32..].iter().all(|&q| q == 0));
    assert_eq!(a.dsum[0], 0.02 * -128.0);
}

/// `int8::round_half_away` is `f32::round` for every value a code can come from: all ties, their
/// neighbours one ulp away, and a sweep of ordinary values, of both signs.
#[test]
fn int8_rounding_is_f32_round() {
    use matmul_gguf::int8::round_half_away;
    let mut values = vec![0.0f32, -0.0, 0.49999997, 0.5, 0.50000006, 126.5, 127.49999, 1e-30, f32::MIN_POSITIVE];
    for i in -300..=300 {
        let tie = i as f32 + 0.5;
        values.extend([tie, f32::from_bits(tie.to_bits() + 1), f32::from_bits(tie.to_bits() - 1), i as f32]);
    }
    let mut rng = Rng::new(5);
    values.extend(rng.vec(100_000, 200.0));
    for v in values.iter().flat_map(|&v| [v, -v]) {
        assert_eq!(round_half_away(v), v.round() as i32, "{v:e}");
    }
    assert_eq!(round_half_away(f32::NAN), 0);
}
