//! NF4 and double quantization against bitsandbytes' own output (fixtures made once by
//! `scripts/fixtures/make_nf4_fixture.py`), round-trip error, and the bnb 4-bit safetensors format.

use std::collections::HashMap;

use flexlora::quant::bnb::{self, BnbReader, BnbWeight, RawTensor, WeightDtype};
use flexlora::quant::double::{self, dequantize_blockwise_8bit, quantize_blockwise_8bit, torch_mean};
use flexlora::quant::nf4::{self, NF4_MIDPOINTS};
use flexlora::quant::{Absmax, Nf4State, NF4_CODE};
use flexlora::Error;
use safetensors::{Dtype, SafeTensors};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nf4_bnb.safetensors");
const TINY_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bnb4bit_tiny_llama/model.safetensors");

struct Fixture {
    bytes: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    blocksize: usize,
    n: usize,
    dequant: bool,
}

impl Fixture {
    fn load() -> Fixture {
        Fixture { bytes: std::fs::read(FIXTURE).expect("tests/fixtures/nf4_bnb.safetensors (run the fixture script)") }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("fixture parses")
    }
    fn cases(&self) -> Vec<Case> {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).expect("fixture header");
        let meta = meta.metadata().clone().expect("fixture metadata");
        serde_json::from_str(&meta["cases"]).expect("cases JSON")
    }
    /// F32 or BF16 (widened exactly) tensor as f32.
    fn f32(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture has no `{name}`"));
        match t.dtype() {
            Dtype::F32 => t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::BF16 => t.data().chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)).collect(),
            d => panic!("`{name}` has dtype {d:?}"),
        }
    }
    fn u8(&self, name: &str) -> Vec<u8> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture has no `{name}`"));
        assert_eq!(t.dtype(), Dtype::U8, "`{name}`");
        t.data().to_vec()
    }
}

/// Bit-for-bit comparison of f32 slices, reporting the first difference.
fn assert_bits_eq(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths differ");
    if let Some(i) = (0..ours.len()).find(|&i| ours[i].to_bits() != theirs[i].to_bits()) {
        panic!(
            "{what}: element {i} differs: ours {:e} ({:#010x}), bnb {:e} ({:#010x})",
            ours[i],
            ours[i].to_bits(),
            theirs[i],
            theirs[i].to_bits()
        );
    }
}

fn assert_bytes_eq(what: &str, ours: &[u8], theirs: &[u8]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths differ");
    if let Some(i) = (0..ours.len()).find(|&i| ours[i] != theirs[i]) {
        panic!("{what}: byte {i} differs: ours {:#04x}, bnb {:#04x}", ours[i], theirs[i]);
    }
}

#[test]
fn codebook_and_midpoints_match_bnb() {
    let fx = Fixture::load();
    assert_bits_eq("nf4 code", &NF4_CODE, &fx.f32("nf4_code"));
    let mids: Vec<f32> = NF4_CODE.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    assert_bits_eq("midpoints", &NF4_MIDPOINTS, &mids);
    // bnb's CUDA decision tree dQuantizeNF4 (csrc/kernels.cu) writes its thresholds as float
    // literals. Parsed as f32 (correctly rounded, as a C++ compiler does), four of them are one
    // ulp off the CPU path's f32 midpoints: the documented CPU/CUDA difference.
    #[allow(clippy::excessive_precision)]
    let cuda: [f32; 15] = [
        -0.8480964004993439,
        -0.6106329262256622,
        -0.4599952697753906,
        -0.33967943489551544,
        -0.23460740596055984,
        -0.13791173323988914,
        -0.045525018125772476,
        0.03979014977812767,
        0.1202552504837513,
        0.2035212516784668,
        0.2920137718319893,
        0.3893125355243683,
        0.5016634166240692,
        0.6427869200706482,
        0.8614784181118011,
    ];
    let differ: Vec<usize> = (0..15).filter(|&i| cuda[i] != NF4_MIDPOINTS[i]).collect();
    assert_eq!(differ, [0, 8, 12, 14], "thresholds where CUDA and CPU differ");
    for i in differ {
        assert_eq!(cuda[i].to_bits().abs_diff(NF4_MIDPOINTS[i].to_bits()), 1, "threshold {i}");
    }
    // The tie rule: a value exactly on a midpoint takes the lower code, the next float up the upper.
    for (i, &m) in NF4_MIDPOINTS.iter().enumerate() {
        assert_eq!(nf4::encode(m), i as u8, "midpoint {i}");
        assert_eq!(nf4::encode(f32::from_bits(if m > 0.0 { m.to_bits() + 1 } else { m.to_bits() - 1 })), i as u8 + 1);
    }
}

#[test]
fn dynamic_map_matches_bnb() {
    let fx = Fixture::load();
    assert_bits_eq("create_dynamic_map(signed=True)", &double::dynamic_map_signed(), &fx.f32("dynamic_map"));
}

#[test]
fn packed_bytes_and_absmax_match_bnb() {
    let fx = Fixture::load();
    let cases = fx.cases();
    assert!(cases.len() >= 8, "fixture lists {} cases", cases.len());
    for c in &cases {
        let input = fx.f32(&format!("{}.input", c.name));
        assert_eq!(input.len(), c.n);
        let q = nf4::quantize(&input, c.blocksize).unwrap();
        assert_bytes_eq(&format!("{} packed", c.name), &q.packed, &fx.u8(&format!("{}.packed", c.name)));
        assert_bits_eq(&format!("{} absmax", c.name), &q.absmax, &fx.f32(&format!("{}.absmax", c.name)));
    }
}

#[test]
fn double_quant_fields_match_bnb() {
    let fx = Fixture::load();
    for c in fx.cases() {
        let absmax = fx.f32(&format!("{}.absmax", c.name));
        let dq = double::double_quantize(&absmax).unwrap();
        assert_bits_eq(&format!("{} offset", c.name), &[dq.offset], &fx.f32(&format!("{}.dq_offset", c.name)));
        assert_bytes_eq(&format!("{} absmax codes", c.name), &dq.codes, &fx.u8(&format!("{}.dq_codes", c.name)));
        assert_bits_eq(&format!("{} nested absmax", c.name), &dq.nested_absmax, &fx.f32(&format!("{}.dq_nested_absmax", c.name)));
        assert_bits_eq(&format!("{} map", c.name), &dq.map, &fx.f32("dynamic_map"));
        assert_bits_eq(&format!("{} rebuilt absmax", c.name), &dq.dequantize().unwrap(), &fx.f32(&format!("{}.dq_absmax", c.name)));
        // The whole state from the raw weights agrees too.
        let state = Nf4State::quantize(&fx.f32(&format!("{}.input", c.name)), c.blocksize, true).unwrap();
        assert_eq!(state.absmax, Absmax::Double(dq), "{}", c.name);
    }
}

#[test]
fn dequantized_values_match_bnb() {
    let fx = Fixture::load();
    let mut checked = 0;
    for c in fx.cases().into_iter().filter(|c| c.dequant) {
        let input = fx.f32(&format!("{}.input", c.name));
        let plain = nf4::quantize(&input, c.blocksize).unwrap().dequantize().unwrap();
        assert_bits_eq(&format!("{} dequant", c.name), &plain, &fx.f32(&format!("{}.dequant", c.name)));
        let dq = Nf4State::quantize(&input, c.blocksize, true).unwrap().dequantize().unwrap();
        assert_bits_eq(&format!("{} dequant (double quant)", c.name), &dq, &fx.f32(&format!("{}.dequant_dq", c.name)));
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} cases carry dequantized values");
}

#[test]
fn partial_last_block_divides_like_bnb() {
    // ties_b64: block 2 (whole) and the last block (partial) hold the same values with the same
    // absmax; bnb multiplies by the reciprocal in the first and divides in the second, and the
    // fixture's values were picked so that this changes their codes.
    let fx = Fixture::load();
    let input = fx.f32("ties_b64.input");
    let q = nf4::quantize(&input, 64).unwrap();
    let (whole, last) = (128, 192);
    assert_eq!(input[whole], input[last], "both blocks start with their absmax");
    let mut differ = 0;
    for j in 1..input.len() - last {
        assert_eq!(input[whole + j], input[last + j]);
        if nf4::code_at(&q.packed, whole + j) != nf4::code_at(&q.packed, last + j) {
            differ += 1;
        }
    }
    assert!(differ >= 4, "only {differ} of the straddling values got different codes");
}

#[test]
fn eight_bit_blockwise_matches_bnb_cpu() {
    let fx = Fixture::load();
    let input = fx.f32("q8.input");
    let map = double::dynamic_map_signed();
    let mut codes = vec![0u8; input.len()];
    let mut absmax = vec![0f32; input.len().div_ceil(256)];
    quantize_blockwise_8bit(&input, &map, 256, &mut codes, &mut absmax).unwrap();
    assert_bytes_eq("8-bit codes", &codes, &fx.u8("q8.codes"));
    assert_bits_eq("8-bit absmax", &absmax, &fx.f32("q8.absmax"));
    let mut out = vec![0f32; input.len()];
    dequantize_blockwise_8bit(&codes, &absmax, &map, 256, 0.0, &mut out).unwrap();
    assert_bits_eq("8-bit dequant", &out, &fx.f32("q8.dequant"));
}

#[test]
fn torch_mean_matches_torch() {
    let fx = Fixture::load();
    let (_, meta) = SafeTensors::read_metadata(&fx.bytes).unwrap();
    let lengths: Vec<usize> = serde_json::from_str(&meta.metadata().clone().unwrap()["mean_lengths"]).unwrap();
    assert!(lengths.len() > 20);
    for n in lengths {
        let v = fx.f32(&format!("mean.{n}.input"));
        assert_bits_eq(&format!("mean of {n}"), &[torch_mean(&v)], &fx.f32(&format!("mean.{n}.mean")));
    }
}

/// Seeded N(0, 1) samples (splitmix64 + Box-Muller).
fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n).map(|_| ((-2.0 * (1.0 - next()).ln()).sqrt() * (std::f64::consts::TAU * next()).cos()) as f32).collect()
}

#[test]
fn round_trip_error_is_nf4_sized() {
    // bnb measured on 2^20 N(0,1) weights, block 64 (three seeds): RMSE/std 0.0919-0.0920, double
    // quantization +0.0003. The error of each weight is at most half the widest code gap
    // (code 1 - code 0 = 0.3038) times its block's absmax.
    let x = gaussian(1 << 20, 7);
    let plain = Nf4State::quantize(&x, 64, false).unwrap();
    let y = plain.dequantize().unwrap();
    let stats = nf4::round_trip_stats(&x, &y).unwrap();
    let dq = Nf4State::quantize(&x, 64, true).unwrap();
    let dq_stats = nf4::round_trip_stats(&x, &dq.dequantize().unwrap()).unwrap();
    eprintln!("N(0,1), 2^20 weights, block 64: plain {stats:?}");
    eprintln!("N(0,1), 2^20 weights, block 64, double quant: {dq_stats:?}");
    assert!((0.090..0.094).contains(&stats.rel_rmse), "plain rel RMSE {}", stats.rel_rmse);
    assert!((0.0..0.001).contains(&(dq_stats.rel_rmse - stats.rel_rmse)), "double quant adds {}", dq_stats.rel_rmse - stats.rel_rmse);
    assert!(stats.bias.abs() < 0.002, "bias {}", stats.bias);
    let half_gap = NF4_CODE.windows(2).map(|w| (w[1] - w[0]) as f64).fold(0.0, f64::max) / 2.0;
    let absmax = plain.absmax_f32().unwrap();
    for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
        let bound = half_gap * absmax[i / 64] as f64 * (1.0 + 1e-6);
        assert!(((a - b) as f64).abs() <= bound, "weight {i}: {a} -> {b}, bound {bound}");
    }
}

#[test]
fn bits_per_parameter() {
    assert_eq!(nf4::bits_per_param(64, Some(256)), 4.0 + 8.0 / 64.0 + 32.0 / (64.0 * 256.0));
    assert!((nf4::bits_per_param(64, Some(256)) - 4.127).abs() < 1e-3);
    assert_eq!(nf4::bits_per_param(64, None), 4.5);
    assert_eq!(nf4::bytes_per_param(64, Some(256)), nf4::bits_per_param(64, Some(256)) / 8.0);
    // A 4096 x 4096 linear as stored, maps and offset included.
    let state = Nf4State::quantize(&gaussian(4096 * 4096, 3), 64, true).unwrap();
    let bits = state.bits_per_param();
    eprintln!("4096x4096, block 64, double quant: {} bytes, {bits:.5} bits per weight", state.storage_bytes());
    assert!(bits > 4.1269 && bits < 4.1275, "{bits}");
}

#[test]
fn invalid_inputs_are_errors() {
    for bs in [0, 16, 48, 100, 8192] {
        match nf4::quantize(&[1.0; 256], bs) {
            Err(Error::InvalidArgument { flag: "blocksize", .. }) => {}
            other => panic!("blocksize {bs}: {other:?}"),
        }
    }
    let mut w = vec![0.5f32; 100];
    w[37] = f32::NAN;
    assert!(matches!(nf4::quantize(&w, 64), Err(Error::NonFinite { index: 37, .. })));
    let mut out = vec![0f32; 100];
    assert!(matches!(nf4::dequantize_into(&[0u8; 49], &[1.0; 2], 64, &mut out), Err(Error::Shape { .. })));
}

#[test]
fn python_float_repr_matches_python() {
    for (v, s) in [
        (0.05133247375488281, "0.05133247375488281"),
        (1e-05, "1e-05"),
        (0.0001, "0.0001"),
        (123.0, "123.0"),
        (1e16, "1e+16"),
        (1e15, "1000000000000000.0"),
        (-2.5e-7, "-2.5e-07"),
        (0.0, "0.0"),
        (0.1f32 as f64, "0.10000000149011612"),
    ] {
        assert_eq!(bnb::python_float_repr(v), s);
    }
}

#[test]
fn reads_real_bnb_checkpoint() {
    let bytes = std::fs::read(TINY_MODEL).unwrap();
    let reader = BnbReader::new(&bytes, TINY_MODEL).unwrap();
    let names = reader.quantized_names();
    assert_eq!(names.len(), 14, "{names:?}");
    assert_eq!(reader.plain_names().len(), 6, "{:?}", reader.plain_names());
    let (weights, _) = reader.read_all().unwrap();
    for w in &weights {
        let expected: &[usize] = match w.name.rsplit('.').nth(1) {
            Some("q_proj" | "o_proj") => &[64, 64],
            Some("k_proj" | "v_proj") => &[32, 64],
            Some("gate_proj" | "up_proj") => &[128, 64],
            Some("down_proj") => &[64, 128],
            other => panic!("unexpected weight {other:?}"),
        };
        assert_eq!(w.shape, expected, "{}", w.name);
        assert_eq!(w.dtype, WeightDtype::BF16);
        assert_eq!(w.state.blocksize, 64);
        let Absmax::Double(dq) = &w.state.absmax else { panic!("{} is not double-quantized", w.name) };
        assert_eq!(dq.nested_blocksize, 256);
        assert_bits_eq("nested map", &dq.map, &double::dynamic_map_signed());
    }
    let k = reader.weight("model.layers.1.self_attn.k_proj.weight").unwrap();
    assert_bits_eq("k_proj dequantized", &k.state.dequantize().unwrap(), &Fixture::load().f32("model.layers.1.self_attn.k_proj.dequant"));
}

#[test]
fn rewriting_the_real_checkpoint_is_byte_identical() {
    let bytes = std::fs::read(TINY_MODEL).unwrap();
    let reader = BnbReader::new(&bytes, TINY_MODEL).unwrap();
    let (weights, plain) = reader.read_all().unwrap();
    let written = bnb::to_bytes(&weights, &plain, reader.metadata().cloned()).unwrap();
    assert_bytes_eq("rewritten model.safetensors", &written, &bytes);
}

#[test]
fn own_quantization_round_trips_through_the_format() {
    let x = gaussian(96 * 40 + 3, 11);
    let shape = [x.len()];
    let mut weights = Vec::new();
    for (i, (bs, double)) in [(64, true), (128, false), (32, true)].into_iter().enumerate() {
        weights.push(BnbWeight::quantize(&format!("layer.{i}.weight"), &x, &shape, WeightDtype::F32, bs, double).unwrap());
    }
    let norm = RawTensor {
        name: "norm.weight".into(),
        dtype: Dtype::F32,
        shape: vec![2],
        data: [1f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = bnb::to_bytes(&weights, std::slice::from_ref(&norm), Some(meta)).unwrap();
    let reader = BnbReader::new(&bytes, "memory").unwrap();
    let (back, plain) = reader.read_all().unwrap();
    assert_eq!(back, weights);
    assert_eq!(plain, vec![norm]);
    let dir = std::env::temp_dir().join(format!("flexlora-bnb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    bnb::fs::write(&path, &weights, &[], None).unwrap();
    let from_file = bnb::fs::read(&path).unwrap();
    assert_eq!(from_file.weights, weights);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The tiny checkpoint's tensors, to break one at a time.
fn tiny_tensors() -> Vec<RawTensor> {
    let bytes = std::fs::read(TINY_MODEL).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let reader = BnbReader::new(&bytes, "tiny").unwrap();
    st.names().into_iter().map(|n| reader.raw(n).unwrap()).collect()
}

/// Serializes `tensors` after `edit` and reads every weight; returns the first error.
fn read_broken(edit: impl FnOnce(&mut Vec<RawTensor>)) -> Error {
    let mut t = tiny_tensors();
    edit(&mut t);
    let bytes = safetensors::serialize(t.iter().map(|r| (r.name.clone(), r)), None).unwrap();
    let result = BnbReader::new(&bytes, "broken.safetensors").and_then(|r| r.read_all().map(|_| ()));
    result.expect_err("a broken 4-bit state must not load")
}

const W: &str = "model.layers.0.mlp.down_proj.weight";

fn set_json(t: &mut [RawTensor], f: impl Fn(&str) -> String) {
    let qs = t.iter_mut().find(|r| r.name == format!("{W}.quant_state.bitsandbytes__nf4")).unwrap();
    let json = f(std::str::from_utf8(&qs.data).unwrap());
    qs.shape = vec![json.len()];
    qs.data = json.into_bytes();
}

fn assert_names(e: &Error, tensor: &str) {
    let named = match e {
        Error::QuantState { tensor: t, .. } | Error::MissingTensor { tensor: t, .. } => t.as_str(),
        other => panic!("unexpected error kind: {other}"),
    };
    assert_eq!(named, tensor, "error: {e}");
    assert!(e.to_string().contains("broken.safetensors"), "{e}");
}

#[test]
fn corrupt_states_are_errors_naming_the_tensor() {
    let qs_key = format!("{W}.quant_state.bitsandbytes__nf4");
    let absmax = format!("{W}.absmax");

    let e = read_broken(|t| t.retain(|r| r.name != absmax));
    assert!(matches!(e, Error::MissingTensor { .. }));
    assert_names(&e, &absmax);

    let e = read_broken(|t| t.retain(|r| r.name != format!("{W}.nested_absmax")));
    assert_names(&e, &format!("{W}.nested_absmax"));

    let e = read_broken(|t| t.retain(|r| r.name != qs_key));
    assert!(matches!(e, Error::MissingTensor { .. }), "{e}");
    assert_names(&e, &qs_key);

    let e = read_broken(|t| {
        let a = t.iter_mut().find(|r| r.name == absmax).unwrap();
        a.data.pop();
        a.shape = vec![a.data.len()];
    });
    assert_names(&e, &absmax);

    let e = read_broken(|t| {
        let w = t.iter_mut().find(|r| r.name == W).unwrap();
        w.data.truncate(100);
        w.shape = vec![100, 1];
    });
    assert_names(&e, W);

    let e = read_broken(|t| set_json(t, |j| j.replace("\"nf4\"", "\"fp4\"")));
    assert_names(&e, &qs_key);

    let e = read_broken(|t| {
        let qs = t.iter_mut().find(|r| r.name == qs_key).unwrap();
        qs.name = format!("{W}.quant_state.bitsandbytes__fp4");
    });
    assert!(e.to_string().contains("not supported"), "{e}");
    assert_names(&e, &format!("{W}.quant_state.bitsandbytes__fp4"));

    // Block size 128 in the JSON while 128 absmax codes (block 64) are stored.
    let e = read_broken(|t| set_json(t, |j| j.replace("\"blocksize\": 64", "\"blocksize\": 128")));
    assert_names(&e, &absmax);

    let e = read_broken(|t| set_json(t, |j| j.replace("\"blocksize\": 64", "\"blocksize\": 48")));
    assert_names(&e, &qs_key);

    let e = read_broken(|t| set_json(t, |j| j[..j.len() - 3].to_string()));
    assert_names(&e, &qs_key);

    let e = read_broken(|t| set_json(t, |j| j.replace(", \"nested_offset\"", ", \"x\"")));
    assert_names(&e, &qs_key);

    let e = read_broken(|t| {
        let m = t.iter_mut().find(|r| r.name == format!("{W}.quant_map")).unwrap();
        m.data[0] ^= 1;
    });
    assert_names(&e, &format!("{W}.quant_map"));

    let e = read_broken(|t| {
        let n = t.iter_mut().find(|r| r.name == format!("{W}.nested_absmax")).unwrap();
        n.data = f32::NAN.to_le_bytes().to_vec();
    });
    assert_names(&e, &format!("{W}.nested_absmax"));
}
