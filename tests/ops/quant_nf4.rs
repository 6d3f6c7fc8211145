//! NF4 kernels: packed codes and absmax equal the CPU quantizer (`quant::nf4`) bit for bit on
//! every device, then dequantization agrees.

use crate::common::*;
use flexlora::device::block_on;
use flexlora::ops::quant_nf4::{self, bytes_from_words, Nf4Tensor};
use flexlora::quant::nf4::{self, NF4_MIDPOINTS};
use flexlora::tensor::HostData;
use flexlora::Device;

fn read_u32(dev: &Device, t: &flexlora::Tensor) -> Vec<u32> {
    match block_on(Some(dev), t.to_host(dev)).expect("read-back") {
        HostData::U32(v) => v,
        other => panic!("expected u32 data, got {other:?}"),
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Weights that probe every rule: random values, exact midpoints and their f32 neighbours (in
/// blocks whose absmax is exactly 1, so normalization is the identity), an all-zero block, a
/// tiny-valued block and a partial last block.
fn probe_weights(n: usize, bs: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut w = rng.vec(n, 0.3);
    let mut i = 0;
    // Block 0: midpoints and neighbours, scaled by absmax 1 (the 1.0 sets it).
    let mut probes = vec![1.0f32, -1.0, 0.0, -0.0];
    for m in NF4_MIDPOINTS {
        probes.extend([m, -m, f32::from_bits(m.to_bits() + 1), f32::from_bits(m.to_bits() - 1)]);
    }
    for v in probes {
        if i < n.min(bs) {
            w[i] = v;
            i += 1;
        }
    }
    // Block 1 all zero, block 2 tiny but normal.
    if n > 2 * bs {
        w[bs..2 * bs].fill(0.0);
    }
    if n > 3 * bs {
        for x in &mut w[2 * bs..3 * bs] {
            *x *= 1e-30;
        }
    }
    w
}

fn check_bit_exact(n: usize, bs: usize, w: &[f32]) {
    check(n, bs, w, true);
}

/// The packed codes and absmax bit for bit, and with `dequantized` the dequantized weights too.
fn check(n: usize, bs: usize, w: &[f32], dequantized: bool) {
    let want = nf4::quantize(w, bs).unwrap();
    every_device(|dev| {
        let q = quant_nf4::quantize(dev, &up(dev, &[n], w), bs).unwrap();
        let packed = bytes_from_words(&read_u32(dev, &q.packed), n);
        let what = format!("{} n={n} bs={bs}", dev.name());
        if let Some(i) = packed.iter().zip(&want.packed).position(|(a, b)| a != b) {
            panic!("{what}: byte {i}: got {:#04x}, want {:#04x} (weights {:?})", packed[i], want.packed[i], &w[2 * i..(2 * i + 2).min(n)]);
        }
        assert_eq!(packed.len(), want.packed.len(), "{what}: packed length");
        // Padding bytes of the last word are zero.
        let words = read_u32(dev, &q.packed);
        let all: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert!(all[want.packed.len()..].iter().all(|&b| b == 0), "{what}: padding bytes not zero");
        assert_eq!(bits(&read(dev, &q.absmax)), bits(&want.absmax), "{what}: absmax bits");
        if !dequantized {
            return;
        }
        let deq = quant_nf4::dequantize(dev, &q).unwrap();
        assert_eq!(bits(&read(dev, &deq)), bits(&want.dequantize().unwrap()), "{what}: dequantized");
    });
}

#[test]
fn quantize_is_bit_exact_on_every_device() {
    // Odd sizes, sizes not a multiple of the block, a single partial block, exact multiples.
    for &bs in &[64, 256] {
        for &n in &[1, 7, 63, 64, 65, 129, 1000, 4 * 256 + 37, 4 * 256, 5 * 256 - 1] {
            check_bit_exact(n, bs, &probe_weights(n, bs, (n * bs) as u64));
        }
    }
}

/// The partial last block divides where whole blocks multiply by the reciprocal. Values near
/// `midpoint * absmax` for which the two operations give different codes are searched for on the
/// host, then quantized in a partial block (and, for contrast, in a whole block) on every device.
#[test]
fn partial_block_divides_like_the_cpu() {
    let bs = 64;
    let code = |v: f32| nf4::encode(v.clamp(-1.0, 1.0));
    let mut found = 0;
    for scale in [0.7f32, 0.3, 0.9, 0.55, 0.123, 0.77, 0.41, 0.0625 * 3.0] {
        let inv = 1.0 / scale;
        let mut tail = vec![scale];
        for m in NF4_MIDPOINTS {
            for d in -16i32..=16 {
                let x = f32::from_bits((m * scale).to_bits().wrapping_add_signed(d));
                if x.abs() <= scale && code(x / scale) != code(x * inv) {
                    tail.push(x);
                }
            }
        }
        tail.truncate(bs - 1);
        found += tail.len() - 1;
        let mut w = vec![0.1f32; bs];
        w.extend(&tail);
        check_bit_exact(w.len(), bs, &w);
        let mut whole = tail.clone();
        whole.resize(bs, 0.0);
        check_bit_exact(whole.len(), bs, &whole);
    }
    assert!(found > 0, "no value distinguishes x / absmax from x * (1 / absmax): the test probes nothing");
    eprintln!("{found} values whose code depends on division vs reciprocal");
}

/// The shader divides on the integer significands, so the partial last block's codes are exact
/// for subnormal weights under a subnormal absmax too (here below the floor 1e-38, which it is
/// clamped to), also on adapters that flush subnormals in float arithmetic: weights on and beside
/// `midpoint * 1e-38`, and the smallest subnormals. Their dequantization, code * 1e-38, is itself
/// subnormal, which such adapters flush to zero (NVIDIA's Vulkan driver does), so it is not checked.
#[test]
fn partial_block_of_subnormals_gets_the_cpus_codes() {
    let bs = 64;
    let floor = nf4::ABSMAX_FLOOR;
    let mut tail = vec![f32::from_bits(1), -f32::from_bits(3), f32::from_bits(0x0000_ffff)];
    for m in NF4_MIDPOINTS {
        let x = m * floor;
        assert!(x != 0.0 && !x.is_normal(), "midpoint * floor is subnormal");
        for d in -1i32..=1 {
            tail.push(f32::from_bits(x.to_bits().wrapping_add_signed(d)));
        }
    }
    let mut w = vec![0.25f32; bs];
    w.extend(&tail);
    check(w.len(), bs, &w, false);
    let q = nf4::quantize(&w, bs).unwrap();
    assert_eq!(q.absmax[1], floor, "the partial block's absmax is the floor");
    let codes: std::collections::BTreeSet<u8> = q.packed[bs / 2..].iter().flat_map(|b| [b >> 4, b & 15]).collect();
    assert!(codes.len() >= 14, "the tail spans the codebook, got codes {codes:?}");
}

#[test]
fn all_zero_partial_block_stores_the_floor() {
    let w = vec![0.0f32; 70];
    check_bit_exact(70, 64, &w);
    let q = nf4::quantize(&w, 64).unwrap();
    assert_eq!(q.absmax, vec![0.0, nf4::ABSMAX_FLOOR], "CPU reference changed");
}

#[test]
fn upload_of_cpu_quantized_weight_dequantizes_on_every_device() {
    let (n, bs) = (3 * 64 + 5, 64);
    let w = Rng::new(5).vec(n, 2.0);
    let q = nf4::quantize(&w, bs).unwrap();
    let want = q.dequantize().unwrap();
    every_device(|dev| {
        let t = Nf4Tensor::from_nf4(dev, "w", &q, &[n]).unwrap();
        assert_eq!(bits(&read(dev, &quant_nf4::dequantize(dev, &t).unwrap())), bits(&want), "{}", dev.name());
    });
}

#[test]
fn double_quantized_state_uploads_and_dequantizes_on_every_device() {
    let (n, bs) = (300 * 64 + 3, 64);
    let w = Rng::new(8).vec(n, 1.0);
    let state = flexlora::quant::Nf4State::quantize(&w, bs, true).unwrap();
    let want = state.dequantize().unwrap();
    every_device(|dev| {
        let t = Nf4Tensor::from_state(dev, "w", &state, &[n]).unwrap();
        assert_eq!(bits(&read(dev, &quant_nf4::dequantize(dev, &t).unwrap())), bits(&want), "{}", dev.name());
    });
}
