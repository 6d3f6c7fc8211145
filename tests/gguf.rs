//! GGUF reader and ggml dequantizers against the `gguf` Python package's reference output
//! (tests/fixtures, written by scripts/fixtures/make_gguf_fixture.py), the writer by round trips,
//! corrupt files by hand-built and randomly damaged bytes, and the default model when present.
//!
//! Dequantized values must equal the reference bit for bit: our dequantizers keep the reference's
//! f32 operation order (f16 -> f32 is exact, then the same multiplies and adds; Rust never fuses
//! them into an FMA), so there is no rounding difference to tolerate.

use std::collections::BTreeMap;

use flexlora::model::load::gguf::{Array, GgufFile, GgufWriter, Value};
use flexlora::model::load::GgmlType;

const BLOCKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf_blocks.gguf");
const ALIGN64: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf_align64.gguf");
const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smollm2_samples.gguf");
const SUPPORTED: [&str; 11] = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"];

fn open(path: &str) -> GgufFile {
    GgufFile::open(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts bit-identical f32 slices, naming the first differing index.
#[track_caller]
fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.to_bits() == w.to_bits(), "{what}: index {i}: got {g:e} ({:#010x}), want {w:e} ({:#010x})", g.to_bits(), w.to_bits());
    }
}

#[track_caller]
fn assert_err_mentions<T: std::fmt::Debug>(r: flexlora::Result<T>, needles: &[&str]) -> String {
    let msg = r.expect_err("expected an error").to_string();
    for n in needles {
        assert!(msg.contains(n), "error should mention {n:?}: {msg}");
    }
    msg
}

#[test]
fn every_supported_type_dequantizes_exactly_like_the_reference() {
    let f = open(BLOCKS);
    let mut total = 0;
    for ty in SUPPORTED {
        let t = f.tensor(ty).unwrap();
        assert_eq!(t.ggml_type().name(), ty);
        let want = f.tensor_f32(&format!("{ty}.expected")).unwrap();
        let got = t.to_f32().unwrap();
        assert_eq!(t.shape(), f.tensor(&format!("{ty}.expected")).unwrap().shape(), "{ty}: shape");
        assert_bits(ty, &got, &want);
        // A fixture of zeros would prove nothing: require many distinct non-zero values.
        let distinct: std::collections::HashSet<u32> = want.iter().map(|v| v.to_bits()).collect();
        assert!(distinct.len() > want.len() / 8 && want.iter().any(|v| *v != 0.0), "{ty}: fixture values look degenerate");
        // Streaming by rows gives the same values as the whole tensor.
        let (rows, cols) = t.rows_cols();
        let mut chunk = vec![0f32; 2 * cols];
        for r0 in (0..rows - 1).step_by(2) {
            t.dequantize_rows(r0, &mut chunk).unwrap();
            assert_bits(&format!("{ty} rows {r0}.."), &chunk, &want[r0 * cols..(r0 + 2) * cols]);
        }
        assert!(t.dequantize_rows(rows - 1, &mut chunk).is_err(), "{ty}: rows past the end must fail");
        total += got.len();
    }
    eprintln!("dequantized {total} values of {} types, all bit-identical to gguf.quants", SUPPORTED.len());
}

#[test]
fn unsupported_types_name_file_tensor_type_and_the_supported_list() {
    let f = open(BLOCKS);
    for ty in ["Q2_K", "Q3_K"] {
        let msg = assert_err_mentions(f.tensor_f32(ty), &["gguf_blocks.gguf", ty, "Q4_K", "Q8_0", "F16"]);
        assert!(msg.contains(&format!("tensor `{ty}`")), "{msg}");
    }
    assert_err_mentions(f.tensor("no.such.tensor"), &["gguf_blocks.gguf", "no.such.tensor", "not found"]);
    assert!(f.tensor_opt("no.such.tensor").is_none());
}

#[test]
fn shapes_are_row_major_outermost_first() {
    let f = open(BLOCKS);
    let t = f.tensor("F32.3d").unwrap();
    assert_eq!(t.info.dims, vec![32, 3, 2], "GGUF dims are innermost first");
    assert_eq!(t.shape(), vec![2, 3, 32]);
    assert_eq!(t.rows_cols(), (6, 32));
    let want: Vec<f32> = (0..192).map(|i| i as f32).collect();
    assert_bits("F32.3d", &t.to_f32().unwrap(), &want);
    assert_eq!(f.tensor("Q4_K").unwrap().shape(), vec![3, 512]);
}

#[test]
fn metadata_of_every_type_parses() {
    let f = open(BLOCKS);
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.architecture().unwrap(), "test");
    let expect = [
        ("test.u8", Value::U8(200)),
        ("test.i8", Value::I8(-100)),
        ("test.u16", Value::U16(60000)),
        ("test.i16", Value::I16(-30000)),
        ("test.u32", Value::U32(4_000_000_000)),
        ("test.i32", Value::I32(-2_000_000_000)),
        ("test.f32", Value::F32(1.5)),
        ("test.bool", Value::Bool(true)),
        ("test.string", Value::String("héllo ✓ gguf".into())),
        ("test.empty_string", Value::String(String::new())),
        ("test.u64", Value::U64((1 << 63) + 5)),
        ("test.i64", Value::I64(-(1 << 62))),
        ("test.f64", Value::F64(-2.25e100)),
        ("test.array.string", Value::Array(Array::String(["a", "", "<|im_start|>", "Ġthe", "日本"].map(String::from).to_vec()))),
        ("test.array.i32", Value::Array(Array::I32(vec![1, -2, 3, i32::MAX]))),
        ("test.array.f32", Value::Array(Array::F32(vec![0.5, -1.0, 3.25]))),
        ("test.array.u8", Value::Array(Array::U8(vec![0, 1, 255]))),
        ("test.array.u64", Value::Array(Array::U64(vec![u64::MAX, 0]))),
        ("test.array.bool", Value::Array(Array::Bool(vec![true, false, true]))),
        ("test.array.nested", Value::Array(Array::Array(vec![Array::I32(vec![1, 2]), Array::I32(vec![3])]))),
    ];
    for (key, want) in &expect {
        assert_eq!(f.get(key), Some(want), "{key}");
    }
    assert_eq!(f.metadata().count(), expect.len() + 1, "plus general.architecture");

    // Typed getters, with lossless integer widening.
    assert_eq!(f.get_u32("test.u8").unwrap(), 200);
    assert_eq!(f.get_i64("test.i32").unwrap(), -2_000_000_000);
    assert_eq!(f.get_u64("test.u64").unwrap(), (1 << 63) + 5);
    assert_eq!(f.get_f32("test.f32").unwrap(), 1.5);
    assert_eq!(f.get_f64("test.f32").unwrap(), 1.5);
    assert!(f.get_bool("test.bool").unwrap());
    assert_eq!(f.get_str("test.string").unwrap(), "héllo ✓ gguf");
    assert_eq!(f.get_str_array("test.array.string").unwrap()[3], "Ġthe");
    assert_eq!(f.get_i32_array("test.array.i32").unwrap(), &[1, -2, 3, i32::MAX]);
    assert_eq!(f.get_f32_array("test.array.f32").unwrap(), &[0.5, -1.0, 3.25]);
    assert_eq!(f.opt_u32("test.absent").unwrap(), None);

    // Missing keys and wrong types name the file, the key and what was found.
    assert_err_mentions(f.get_u32("test.absent"), &["gguf_blocks.gguf", "test.absent", "missing"]);
    assert_err_mentions(f.get_u32("test.i8"), &["gguf_blocks.gguf", "test.i8", "i8 -100", "u32"]);
    assert_err_mentions(f.get_u32("test.u64"), &["test.u64", "fits u32"]);
    assert_err_mentions(f.get_str("test.u8"), &["test.u8", "string"]);
    assert_err_mentions(f.opt_f32("test.string"), &["test.string", "f32"]);
    assert_err_mentions(f.get_str_array("test.array.i32"), &["test.array.i32", "array of 4 i32", "array of string"]);
}

#[test]
fn non_default_alignment_is_honoured() {
    let f = open(ALIGN64);
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_start() % 64, 0);
    assert!(f.tensors().iter().all(|t| t.offset % 64 == 0));
    assert_bits("a", &f.tensor_f32("a").unwrap(), &[1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_bits("b", &f.tensor_f32("b").unwrap(), &[-1.0, -2.0, -3.0, -4.0]);
    assert_eq!(f.tensor("b").unwrap().shape(), vec![2, 2]);
}

#[test]
fn writer_reproduces_the_python_writer_byte_for_byte() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("test".into())).unwrap();
    w.add_metadata("general.alignment", Value::U32(64)).unwrap();
    w.add_f32("a", &[5], &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    w.add_f32("b", &[2, 2], &[-1.0, -2.0, -3.0, -4.0]).unwrap();
    let ours = w.to_bytes().unwrap();
    let python = std::fs::read(ALIGN64).unwrap();
    assert_eq!(ours.len(), python.len());
    assert!(ours == python, "first difference at byte {:?}", ours.iter().zip(&python).position(|(a, b)| a != b));
}

fn every_value() -> BTreeMap<String, Value> {
    let vals = [
        Value::U8(7),
        Value::I8(-7),
        Value::U16(65535),
        Value::I16(i16::MIN),
        Value::U32(u32::MAX),
        Value::I32(-1),
        Value::F32(-0.125),
        Value::Bool(false),
        Value::String("ünïcode".into()),
        Value::String(String::new()),
        Value::U64(u64::MAX),
        Value::I64(i64::MIN),
        Value::F64(std::f64::consts::PI),
        Value::Array(Array::String(vec!["x".into(), String::new(), "y z".into()])),
        Value::Array(Array::String(vec![])),
        Value::Array(Array::F64(vec![])),
        Value::Array(Array::I8(vec![-1, 0, 1])),
        Value::Array(Array::U16(vec![1, 2])),
        Value::Array(Array::I16(vec![-3])),
        Value::Array(Array::U32(vec![9, 8])),
        Value::Array(Array::I64(vec![i64::MAX])),
        Value::Array(Array::Array(vec![Array::String(vec!["deep".into()]), Array::F32(vec![]), Array::Array(vec![Array::U8(vec![1])])])),
    ];
    vals.into_iter().enumerate().map(|(i, v)| (format!("k.{i:02}"), v)).collect()
}

#[test]
fn writer_round_trips_metadata_and_tensors() {
    let blocks = open(BLOCKS);
    let q6 = blocks.tensor("Q6_K").unwrap();
    let vals: Vec<f32> = (0..2 * 3 * 64).map(|i| (i as f32 - 100.0) * 0.37).collect();
    for alignment in [None, Some(64u32), Some(1)] {
        let mut w = GgufWriter::new();
        for (k, v) in every_value() {
            w.add_metadata(k, v).unwrap();
        }
        if let Some(a) = alignment {
            w.add_metadata("general.alignment", Value::U32(a)).unwrap();
        }
        w.add_f32("f32.3d", &[2, 3, 64], &vals).unwrap();
        w.add_f16("f16.vec", &[7], &vals[..7]).unwrap();
        w.add_f32("scalar", &[], &[42.0]).unwrap();
        w.add_tensor("q6", GgmlType::Q6_K, &q6.shape(), q6.data).unwrap();
        let bytes = w.to_bytes().unwrap();
        let f = GgufFile::from_bytes("round-trip.gguf", bytes).unwrap();
        assert_eq!(f.alignment(), alignment.map_or(32, u64::from));
        for (k, v) in every_value() {
            assert_eq!(f.get(&k), Some(&v), "{k}");
        }
        assert_eq!(f.tensor("f32.3d").unwrap().shape(), vec![2, 3, 64]);
        assert_bits("f32.3d", &f.tensor_f32("f32.3d").unwrap(), &vals);
        let f16_want: Vec<f32> = vals[..7].iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        assert_bits("f16.vec", &f.tensor_f32("f16.vec").unwrap(), &f16_want);
        assert_eq!(f.tensor("scalar").unwrap().shape(), Vec::<usize>::new());
        assert_bits("scalar", &f.tensor_f32("scalar").unwrap(), &[42.0]);
        assert_bits("q6", &f.tensor_f32("q6").unwrap(), &blocks.tensor_f32("Q6_K.expected").unwrap());
    }

    // Misuse is an error, not a bad file.
    let mut w = GgufWriter::new();
    assert!(w.add_f32("x", &[2, 3], &[0.0; 5]).is_err(), "wrong element count");
    assert!(w.add_tensor("q", GgmlType::Q8_0, &[2, 16], vec![0u8; 34]).is_err(), "row not a whole block");
    assert!(w.add_metadata("general.alignment", Value::U32(48)).is_err(), "not a power of two");
    w.add_metadata("k", Value::Bool(true)).unwrap();
    assert!(w.add_metadata("k", Value::Bool(true)).is_err(), "duplicate key");
}

#[test]
fn write_file_is_atomic_and_readable() {
    let dir = std::env::temp_dir().join(format!("flexlora-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("out.gguf");
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String("llama".into())).unwrap();
    w.add_f32("w", &[3], &[1.0, 2.0, 3.0]).unwrap();
    w.write_file(&path).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("out.gguf")], "no temporary file left behind");
    assert_bits("w", &open(path.to_str().unwrap()).tensor_f32("w").unwrap(), &[1.0, 2.0, 3.0]);
    std::fs::remove_dir_all(&dir).unwrap();
    let missing = dir.join("missing.gguf");
    assert_err_mentions(GgufFile::open(&missing), &["missing.gguf", "open"]);
}

#[path = "gguf/corrupt.rs"]
mod corrupt;
#[path = "gguf/default_model.rs"]
mod default_model;

#[test]
fn tensors_produced_while_writing_equal_tensors_given_up_front() {
    let dir = std::env::temp_dir().join(format!("flexlora-gguf-later-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vals: Vec<f32> = (0..2 * 64).map(|i| i as f32 * 0.25 - 3.0).collect();
    let f16: Vec<u8> = vals.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    let mut up_front = GgufWriter::new();
    up_front.add_metadata("general.alignment", Value::U32(64)).unwrap();
    up_front.add_f32("a", &[3], &[1.0, 2.0, 3.0]).unwrap();
    up_front.add_tensor("b", GgmlType::F16, &[2, 64], f16.clone()).unwrap();
    up_front.add_f32("c", &[2, 64], &vals).unwrap();
    let mut later = GgufWriter::new();
    later.add_metadata("general.alignment", Value::U32(64)).unwrap();
    later.add_f32("a", &[3], &[1.0, 2.0, 3.0]).unwrap();
    later.add_tensor_later("b", GgmlType::F16, &[2, 64]).unwrap();
    later.add_tensor_later("c", GgmlType::F32, &[2, 64]).unwrap();
    let path = dir.join("later.gguf");
    let mut asked = Vec::new();
    later
        .write_file_with(&path, &mut |name| {
            asked.push(name.to_string());
            Ok(if name == "b" { f16.clone() } else { vals.iter().flat_map(|v| v.to_le_bytes()).collect() })
        })
        .unwrap();
    assert_eq!(asked, ["b", "c"], "the producer is asked for the later tensors only, in file order");
    assert_eq!(std::fs::read(&path).unwrap(), up_front.to_bytes().unwrap());
    // A producer returning the wrong size is an error, and no file appears.
    let bad = dir.join("bad.gguf");
    assert_err_mentions(later.write_file_with(&bad, &mut |_| Ok(vec![0u8; 3])), &["b", "3 bytes produced"]);
    assert!(!bad.exists());
    // Without a producer, writing fails instead of producing a file with holes.
    assert!(later.to_bytes().is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
