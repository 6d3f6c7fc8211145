//! Truncated, corrupt and hostile GGUF bytes: always an error naming the file and what is wrong,
//! never a panic or a huge allocation.

use flexlora::model::load::gguf::GgufFile;

use super::{assert_err_mentions, BLOCKS};

/// A little-endian byte builder for hand-made files.
struct B(Vec<u8>);

impl B {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> B {
        B(b"GGUF".to_vec()).u32(version).u64(n_tensors).u64(n_kv)
    }
    fn raw(mut self, b: &[u8]) -> B {
        self.0.extend_from_slice(b);
        self
    }
    fn u32(self, v: u32) -> B {
        self.raw(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> B {
        self.raw(&v.to_le_bytes())
    }
    fn str(self, s: &str) -> B {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
    /// `general.architecture = "x"`.
    fn kv_arch(self) -> B {
        self.str("general.architecture").u32(8).str("x")
    }
    /// Tensor info `t`: dims [4], F32, offset `offset`.
    fn tensor_t(self, offset: u64) -> B {
        self.str("t").u32(1).u64(4).u32(0).u64(offset)
    }
    /// Trailing bytes, so that the entry/tensor counts pass their size check and the reader gets
    /// as far as the fault under test.
    fn slack(self) -> B {
        self.raw(&[0; 32])
    }
    fn pad(mut self, a: usize) -> B {
        self.0.resize(self.0.len().div_ceil(a) * a, 0);
        self
    }
}

fn valid() -> Vec<u8> {
    B::header(3, 1, 1).kv_arch().tensor_t(0).pad(32).raw(&[0; 16]).0
}

#[test]
fn the_hand_built_base_file_is_valid() {
    let f = GgufFile::from_bytes("base.gguf", valid()).unwrap();
    assert_eq!(f.tensor_f32("t").unwrap(), vec![0.0; 4]);
    let v2 = {
        let mut b = valid();
        b[4] = 2;
        b
    };
    assert_eq!(GgufFile::from_bytes("v2.gguf", v2).unwrap().version(), 2);
    // An empty tensor (a zero dim) is valid and holds no bytes.
    let empty = GgufFile::from_bytes("empty.gguf", B::header(3, 1, 0).str("e").u32(2).u64(0).u64(5).u32(0).u64(0).pad(32).0).unwrap();
    let e = empty.tensor("e").unwrap();
    assert_eq!((e.shape(), e.rows_cols(), e.data.len()), (vec![5, 0], (5, 0), 0));
    assert!(e.to_f32().unwrap().is_empty());
}

#[test]
fn corrupt_headers_are_errors_that_say_what_is_wrong() {
    let kv = |b: B| b; // readability: cases below read as header + entries
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("empty", vec![], &["magic", "needs 4 bytes but only 0 remain"]),
        ("magic", b"GGML\x03\0\0\0".to_vec(), &["not the GGUF magic"]),
        ("v1", B::header(1, 0, 0).0, &["version 1 is not supported"]),
        ("v4", B::header(4, 0, 0).0, &["version 4 is not supported"]),
        ("big-endian", B::header(3u32.swap_bytes(), 0, 0).0, &["big-endian"]),
        ("header cut", B::header(3, 0, 0).0[..12].to_vec(), &["tensor count", "needs 8 bytes but only 4 remain"]),
        ("tensor count", B::header(3, 1 << 40, 0).0, &["claims 1099511627776 tensors"]),
        ("kv count", B::header(3, 0, u64::MAX).0, &["claims 18446744073709551615 metadata entries"]),
        ("key length", kv(B::header(3, 0, 1)).u64(1 << 40).slack().0, &["metadata entry #0", "needs 1099511627776 bytes"]),
        ("value length", B::header(3, 0, 1).str("k").u32(8).u64(1 << 40).0, &["metadata key `k`", "needs 1099511627776 bytes"]),
        ("value type", B::header(3, 0, 1).str("k").u32(99).0, &["metadata key `k`", "unknown value type id 99"]),
        ("array count", B::header(3, 0, 1).str("k").u32(9).u32(8).u64(1 << 50).0, &["claims 1125899906842624 array elements"]),
        ("array type", B::header(3, 0, 1).str("k").u32(9).u32(13).u64(1).0, &["unknown value type id 13"]),
        ("array deep", (0..9).fold(B::header(3, 0, 1).str("k").u32(9), |b, _| b.u32(9).u64(1)).0, &["nested deeper than 8"]),
        ("utf8", B::header(3, 0, 1).u64(2).raw(&[0xff, 0xfe]).slack().0, &["not valid UTF-8"]),
        ("bool", B::header(3, 0, 1).str("k").u32(7).raw(&[2]).0, &["bool byte is 2"]),
        ("dup key", B::header(3, 0, 2).kv_arch().kv_arch().0, &["`general.architecture`", "appears twice"]),
        ("align 48", B::header(3, 0, 1).str("general.alignment").u32(4).u32(48).0, &["general.alignment", "u32 48", "power of two"]),
        ("align str", B::header(3, 0, 1).str("general.alignment").u32(8).str("32").0, &["general.alignment", "power of two"]),
        ("align 0", B::header(3, 0, 1).str("general.alignment").u32(4).u32(0).0, &["general.alignment", "power of two"]),
        ("n_dims", B::header(3, 1, 0).str("t").u32(5).slack().0, &["tensor info #0 `t`", "5 dimensions"]),
        ("ggml type", B::header(3, 1, 0).str("t").u32(1).u64(4).u32(99).u64(0).0, &["unknown ggml type id 99"]),
        ("partial block", B::header(3, 1, 0).str("t").u32(1).u64(16).u32(8).u64(0).0, &["row length 16", "Q8_0 block size 32"]),
        ("dims overflow", B::header(3, 1, 0).str("t").u32(3).u64(1 << 40).u64(1 << 40).u64(1 << 40).u32(0).u64(0).0, &["more elements"]),
        (
            "zero dim overflow",
            B::header(3, 1, 0).str("t").u32(4).u64(0).u64(1 << 40).u64(1 << 40).u64(1 << 40).u32(0).u64(0).0,
            &["more elements"],
        ),
        ("info cut", B::header(3, 1, 0).str("a_long_tensor_name").u32(1).u64(4).0, &["`a_long_tensor_name`", "needs 4 bytes"]),
        ("dup tensor", B::header(3, 2, 0).tensor_t(0).tensor_t(32).pad(32).raw(&[0; 48]).0, &["appears twice"]),
        ("misaligned", B::header(3, 1, 0).tensor_t(4).pad(32).raw(&[0; 32]).0, &["tensor `t`", "not a multiple of the alignment 32"]),
        (
            "data cut",
            valid()[..valid().len() - 1].to_vec(),
            &["tensor `t`", "bytes 128..144 of the file) runs past the end of the 143-byte file"],
        ),
        ("huge offset", B::header(3, 1, 0).tensor_t(u64::MAX - 31).pad(32).raw(&[0; 16]).0, &["tensor `t`", "overflows"]),
        (
            "far offset",
            B::header(3, 1, 0).tensor_t(1 << 40).pad(32).raw(&[0; 16]).0,
            &["tensor `t`", "runs past the end of the 80-byte file"],
        ),
        ("no data", B::header(3, 1, 0).tensor_t(0).0, &["data section would start past the end"]),
    ];
    for (name, bytes, needles) in cases {
        let file = format!("case-{name}.gguf");
        let mut all = vec![file.as_str()];
        all.extend_from_slice(needles);
        let msg = assert_err_mentions(GgufFile::from_bytes(file.clone(), bytes), &all);
        eprintln!("{name}: {msg}");
    }
}

#[test]
fn every_truncation_of_the_fixture_is_an_error_until_the_data_is_complete() {
    let bytes = std::fs::read(BLOCKS).unwrap();
    let full = GgufFile::from_bytes("full", bytes.clone()).unwrap();
    // The writer pads after the last tensor: prefixes that still hold every tensor's data are valid.
    let needed = full.tensors().iter().map(|t| full.data_start() + (t.offset + t.n_bytes) as usize).max().unwrap();
    // Every cut inside the header and tensor table, then a stride through the data.
    let cuts = (0..full.data_start() + 64).chain((full.data_start()..bytes.len()).step_by(97)).chain([needed - 1, needed]);
    let mut errors = 0;
    for cut in cuts {
        match GgufFile::from_bytes("cut.gguf", bytes[..cut].to_vec()) {
            Ok(_) => assert!(cut >= needed, "a file cut at {cut} of {} bytes parsed, but data needs {needed}", bytes.len()),
            Err(e) => {
                assert!(cut < needed, "cut at {cut} failed although all data is present: {e}");
                assert!(e.to_string().contains("cut.gguf"), "{e}");
                errors += 1;
            }
        }
    }
    eprintln!("{errors} truncations rejected, file {} bytes, data complete at {needed}", bytes.len());
}

#[test]
fn random_damage_never_panics() {
    let bytes = std::fs::read(BLOCKS).unwrap();
    let header_len = GgufFile::from_bytes("full", bytes.clone()).unwrap().data_start();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..1500 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % header_len as u64) as usize;
            b[at] = match next() % 3 {
                0 => next() as u8,
                1 => 0xff,
                _ => b[at] ^ (1 << (next() % 8)),
            };
        }
        match GgufFile::from_bytes("damaged.gguf", b) {
            Ok(f) => {
                ok += 1;
                // Whatever parsed must also dequantize or fail cleanly.
                for t in f.tensors() {
                    let _ = f.tensor_f32(&t.name);
                }
            }
            Err(e) => {
                assert!(e.to_string().contains("damaged.gguf"), "{e}");
                err += 1;
            }
        }
    }
    eprintln!("random header damage: {ok} still parsed, {err} rejected, no panic");
}
