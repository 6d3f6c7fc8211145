//! SentencePiece (GGUF `tokenizer.ggml.model == "llama"`) tokenizers against the oracle fixture
//! made by scripts/fixtures/make_spm_fixture.py: a tiny model GGUF carrying the fixture's
//! pieces, scores and token types must encode and decode every fixture string exactly as
//! transformers' LlamaConverter (legacy) tokenizer does, and `convert` must write that same
//! tokenizer into tokenizer.json.

use serde_json::Value as Json;

use crate::formats::{tmpdir, write_gguf_with};
use crate::forward::{random_weights, tiny_config};
use flexlora::model::load::{self, gguf::Array, gguf::Value, GgufFile};
use flexlora::model::tokenizer::{spm_merges, Tokenizer};
use flexlora::model::Arch;

struct Fixture {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    cases: Vec<Json>,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spm_tokenizer.json");
    let v: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let strings = |k: &str| v[k].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect::<Vec<_>>();
    let numbers = |k: &str| v[k].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect::<Vec<_>>();
    Fixture {
        tokens: strings("tokens"),
        scores: numbers("scores").into_iter().map(|s| s as f32).collect(),
        types: numbers("token_types").into_iter().map(|t| t as i32).collect(),
        cases: v["cases"].as_array().unwrap().clone(),
    }
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect()
}

/// A tiny Llama GGUF whose tokenizer is the fixture's vocabulary; returns its path.
fn spm_gguf(fx: &Fixture, dir: &std::path::Path, add_bos: Option<bool>) -> std::path::PathBuf {
    let mut cfg = tiny_config(Arch::Llama);
    cfg.vocab = fx.tokens.len();
    let w = random_weights(&cfg, 5);
    let mut meta = vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", Value::Array(Array::String(fx.tokens.clone()))),
        ("tokenizer.ggml.scores", Value::Array(Array::F32(fx.scores.clone()))),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(fx.types.clone()))),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
    ];
    if let Some(b) = add_bos {
        meta.push(("tokenizer.ggml.add_bos_token", Value::Bool(b)));
    }
    let path = dir.join("spm.gguf");
    write_gguf_with(&path, &cfg, &w, "llama", meta, &[]);
    path
}

fn gguf_tokenizer(path: &std::path::Path) -> Tokenizer {
    let f = GgufFile::open(path).unwrap();
    let cfg = load::gguf_model::config(&f).unwrap();
    load::gguf_model::tokenizer(&f, &cfg).unwrap()
}

#[test]
fn spm_gguf_tokenizer_matches_transformers_llama_converter() {
    let fx = fixture();
    let dir = tmpdir("spm");
    let tok = gguf_tokenizer(&spm_gguf(&fx, &dir, Some(true)));
    let mut bad = vec![];
    for c in &fx.cases {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["hf_legacy_ids"]);
        let got = tok.encode(text, true).unwrap();
        if got != want {
            bad.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
        let decoded = tok.decode(&want).unwrap();
        let want_text = c["hf_legacy_decoded"].as_str().unwrap();
        if decoded != want_text {
            bad.push(format!("decode of {text:?}: got {decoded:?}, want {want_text:?}"));
        }
    }
    assert!(bad.is_empty(), "{} of {} cases differ:\n{}", bad.len(), fx.cases.len(), bad.join("\n"));
    // Without the flag llama.cpp adds BOS; with it false, nobody does.
    let text = fx.cases[2]["text"].as_str().unwrap();
    let with = tok.encode(text, true).unwrap();
    assert_eq!(with[0], 1);
    assert_eq!(gguf_tokenizer(&spm_gguf(&fx, &dir, None)).encode(text, true).unwrap(), with);
    assert_eq!(gguf_tokenizer(&spm_gguf(&fx, &dir, Some(false))).encode(text, true).unwrap(), with[1..]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn spm_merges_rank_by_score_then_longer_left_half() {
    let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // "abc" splits two ways at one score: the longer left half ranks first; "ab" outranks "bc".
    let tokens = t(&["a", "b", "c", "ab", "bc", "abc"]);
    let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0];
    let pairs: Vec<(String, String)> =
        [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")].iter().map(|(l, r)| (l.to_string(), r.to_string())).collect();
    assert_eq!(spm_merges(&tokens, &scores), pairs);
}

#[test]
fn convert_writes_the_spm_tokenizer() {
    let fx = fixture();
    let dir = tmpdir("spm-convert");
    let gguf = spm_gguf(&fx, &dir, Some(true));
    let tok = gguf_tokenizer(&gguf);
    load::convert_to_hf(&gguf, &dir.join("hf")).unwrap();
    let (_, converted) = load::open(&crate::common::cpu(), &dir.join("hf"), flexlora::model::WeightFormat::F32).unwrap();
    for c in &fx.cases {
        let text = c["text"].as_str().unwrap();
        assert_eq!(converted.encode(text, true).unwrap(), tok.encode(text, true).unwrap(), "{text:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
