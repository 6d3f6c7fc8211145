//! `flexlora eval --task ppl` on a tiny random model: the reported perplexity equals exp(mean
//! cross-entropy) worked out here in f64 from the model's logits, for JSONL (prompt masked or not)
//! and for .txt windows; files with nothing to score give a clear error.

use crate::common::*;
use crate::formats::{tmpdir, write_hf};
use crate::forward::{random_weights, tiny_config};
use flexlora::eval::ppl::{self, PplConfig};
use flexlora::model::tokenizer::Tokenizer;
use flexlora::model::{load, Arch, Model, WeightFormat};
use flexlora::Device;

/// Mean NLL of `ids[p]` given `ids[..p]` for p in `from.max(1)..`, from one forward pass.
fn reference(dev: &Device, model: &Model, seqs: &[(Vec<u32>, usize)]) -> (f64, usize) {
    let (mut sum, mut n) = (0f64, 0);
    for (ids, from) in seqs {
        let mut cache = model.new_cache(dev, 1, ids.len());
        let logits = read(dev, &model.forward(dev, ids, &mut cache, true).unwrap());
        let v = logits.len() / ids.len();
        for p in (*from).max(1)..ids.len() {
            let row: Vec<f64> = logits[(p - 1) * v..p * v].iter().map(|&x| x as f64).collect();
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            sum += lse - row[ids[p] as usize];
            n += 1;
        }
    }
    (sum / n as f64, n)
}

fn enc(tok: &Tokenizer, s: &str) -> Vec<u32> {
    tok.encode(s, false).unwrap()
}

#[test]
fn perplexity_is_exp_mean_cross_entropy_of_the_logits() {
    let cfg = tiny_config(Arch::Llama);
    let dir = tmpdir("ppl");
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    write_hf(&model_dir, &cfg, &random_weights(&cfg, 7));
    let dev = cpu();
    let (model, tok) = load::open(&dev, &model_dir, WeightFormat::F32).unwrap();
    let eos = tok.eos[0];
    let jsonl = dir.join("held_out.jsonl");
    std::fs::write(&jsonl, "{\"prompt\": \"abc def\", \"completion\": \" ghi\"}\n{\"text\": \"hello world\"}\n").unwrap();
    let out = dir.join("out");
    let run = |data: &std::path::Path, max_len, mask_prompt| {
        let c = PplConfig { model: "tiny".into(), data: data.display().to_string(), max_len, mask_prompt };
        flexlora::device::block_on(None, ppl::run(&dev, &model, &tok, &out, &c, &mut |_, _| {}))
    };
    let mut counted = Vec::new();
    for mask in [true, false] {
        let got = run(&jsonl, 64, mask).unwrap();
        counted.push(got.tokens);
        let first = [enc(&tok, "abc def"), enc(&tok, " ghi"), vec![eos]].concat();
        let second = [enc(&tok, "hello world"), vec![eos]].concat();
        let from = if mask { enc(&tok, "abc def").len() } else { 0 };
        let (mean, n) = reference(&dev, &model, &[(first, from), (second, 0)]);
        assert_eq!((got.sequences, got.truncated, got.tokens), (2, 0, n));
        assert!((got.mean_nll - mean).abs() <= 1e-5 * mean.abs(), "mask {mask}: {} vs {mean}", got.mean_nll);
        assert!((got.perplexity - mean.exp()).abs() <= 1e-5 * mean.exp());
        // Random weights over 61 tokens: near-uniform, so perplexity is of the order of V.
        assert!(got.perplexity > 5.0 && got.perplexity < 1000.0, "{}", got.perplexity);
    }
    // Masking leaves out the prompt tokens but keeps the completion's and EOS.
    assert_eq!(
        counted,
        [
            enc(&tok, " ghi").len() + 1 + enc(&tok, "hello world").len(),
            enc(&tok, "abc def").len() - 1 + enc(&tok, " ghi").len() + 1 + enc(&tok, "hello world").len()
        ]
    );
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["config"]["mask_prompt"], false);
    assert!(summary["report"]["perplexity"].as_f64().unwrap() > 0.0);

    // .txt: consecutive windows of max_len tokens, each scored alone.
    let txt = dir.join("held_out.txt");
    let text = "the quick brown fox jumps over the lazy dog";
    std::fs::write(&txt, text).unwrap();
    let got = run(&txt, 8, true).unwrap();
    let ids = tok.encode(text, true).unwrap();
    let windows: Vec<(Vec<u32>, usize)> = ids.chunks(8).map(|w| (w.to_vec(), 0)).collect();
    let (mean, n) = reference(&dev, &model, &windows);
    assert_eq!((got.sequences, got.tokens), (windows.len(), n));
    assert!((got.mean_nll - mean).abs() <= 1e-5 * mean.abs(), "{} vs {mean}", got.mean_nll);

    // Nothing to score: an empty file, or prompts that fill max_len.
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let err = run(&empty, 64, true).unwrap_err().to_string();
    assert!(err.contains("no tokens to score") && err.contains("empty.jsonl"), "{err}");
    let masked = dir.join("masked.jsonl");
    std::fs::write(&masked, "{\"prompt\": \"abcdefghijkl\", \"completion\": \"x\"}\n").unwrap();
    let err = run(&masked, 8, true).unwrap_err().to_string();
    assert!(err.contains("no tokens to score"), "{err}");
    assert!(run(&masked, 8, false).is_ok());
    let err = run(&jsonl, 65, true).unwrap_err().to_string();
    assert!(err.contains("--max-len"), "{err}");

    // The same on the GPU.
    if let Some(gpu) = gpu() {
        let want = run(&jsonl, 64, true).unwrap();
        let (gmodel, gtok) = load::open(gpu, &model_dir, WeightFormat::F32).unwrap();
        let c = PplConfig { model: "tiny".into(), data: jsonl.display().to_string(), max_len: 64, mask_prompt: true };
        let got = flexlora::device::block_on(None, ppl::run(gpu, &gmodel, &gtok, &dir.join("out-gpu"), &c, &mut |_, _| {})).unwrap();
        assert_eq!(got.tokens, want.tokens);
        assert!((got.mean_nll - want.mean_nll).abs() <= 1e-4 * want.mean_nll, "GPU {} vs CPU {}", got.mean_nll, want.mean_nll);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
