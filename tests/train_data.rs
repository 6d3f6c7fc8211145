//! The training data pipeline: the FLeX template on MBPP, the standard split sizes on the real
//! file, generic JSONL and its errors, tokenization with the loss mask and truncation, batch
//! targets, and the seeded resumable loader.
//!
//! Tokenizers: a byte-level one built here (token id = 2 + byte, so expected ids are written from
//! the bytes without the tokenizer), and the real default model's when its GGUF is present.
//! Datasets: FLEXLORA_DATA, else `../shared/data` beside the crate (skipped loudly without them,
//! a failure under CI=true).

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use flexlora::data::text::{self, Source, TextExample};
use flexlora::eval::tasks::MbppSplit;
use flexlora::model::load::{gguf_model, GgufFile};
use flexlora::model::tokenizer::{gpt2_tokenizer_json, Tokenizer};
use flexlora::ops::cross_entropy::IGNORE;
use flexlora::train::data::{make_batch, tokenize, Cursor, Example, Loader};

const BOS: u32 = 0;
const EOS: u32 = 1;

/// GPT-2's byte -> printable character map (the byte-level BPE alphabet).
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).unwrap()
}

/// Two specials, then one token per byte (no merges): token of byte b is 2 + b.
fn byte_tokenizer(add_bos: bool) -> Tokenizer {
    let mut toks = vec!["<|bos|>".to_string(), "<|eos|>".to_string()];
    toks.extend((0..=255u8).map(|b| byte_char(b).to_string()));
    let types: Vec<i32> = (0..toks.len()).map(|i| if i < 2 { 3 } else { 1 }).collect();
    let json = gpt2_tokenizer_json(&toks, &[], &types, "gpt2", add_bos.then_some(BOS)).unwrap();
    Tokenizer::from_json("test tokenizer", json.to_string(), Some(BOS), vec![EOS], None).unwrap()
}

fn bytes(s: &str) -> Vec<u32> {
    s.bytes().map(|b| 2 + b as u32).collect()
}

fn ex(prompt: &str, completion: &str) -> TextExample {
    TextExample { prompt: prompt.into(), completion: completion.into() }
}

#[test]
fn mbpp_line_becomes_the_flex_template() {
    let dir = support::tmpdir("train-data", "mbpp");
    // As in the real file: CRLF inside the code, extra fields, a task in the train split.
    let line = r#"{"text": "Write a function to add two numbers.", "code": "def add(a, b):\r\n  return a + b", "task_id": 700, "test_setup_code": "", "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "challenge_test_list": []}"#;
    let other = r#"{"text": "Other.", "code": "x = 1", "task_id": 12, "test_setup_code": "", "test_list": ["assert x == 1"], "challenge_test_list": []}"#;
    std::fs::write(dir.join("mbpp.jsonl"), format!("{line}\n{other}\n")).unwrap();
    let got = text::load(&Source::Mbpp { split: MbppSplit::Train }, &dir).unwrap();
    assert_eq!(
        got,
        vec![ex(
            "Write a function to add two numbers.\n# assert add(1, 2) == 3\n# assert add(0, 0) == 0\n",
            "def add(a, b):\n  return a + b"
        )]
    );
    assert_eq!(text::load(&Source::Mbpp { split: MbppSplit::Test }, &dir).unwrap()[0].prompt, "Other.\n# assert x == 1\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mbpp_splits_on_the_real_file() {
    let Some(dir) = support::data_dir("mbpp.jsonl") else { return };
    let n = |split| text::load(&Source::Mbpp { split }, &dir).unwrap();
    let (train, val, test) = (n(MbppSplit::Train), n(MbppSplit::Validation), n(MbppSplit::Test));
    assert_eq!((train.len(), val.len(), test.len()), (374, 90, 500));
    // The split boundaries by content: task 601 opens train, 511 opens validation, 11 opens test.
    let all = n(MbppSplit::All);
    assert_eq!(all.len(), 974);
    let by_id = |id: usize| &all[id - 1];
    assert_eq!((&train[0], &val[0], &test[0]), (by_id(601), by_id(511), by_id(11)));
    assert_eq!((train.last().unwrap(), val.last().unwrap(), test.last().unwrap()), (by_id(974), by_id(600), by_id(510)));
    for e in train.iter().chain(&val).chain(&test) {
        assert!(e.prompt.contains("\n# assert ") && e.prompt.ends_with('\n') && !e.completion.is_empty(), "{e:?}");
        assert!(!e.prompt.contains('\r') && !e.completion.contains('\r'));
    }
}

#[test]
fn generic_jsonl_both_layouts_and_errors_name_file_and_line() {
    let dir = support::tmpdir("train-data", "jsonl");
    let good = dir.join("good.jsonl");
    std::fs::write(&good, "{\"prompt\": \"p\", \"completion\": \"c\", \"id\": 3}\n\n{\"text\": \"t\"}\n").unwrap();
    assert_eq!(text::load(&Source::Jsonl(good), &dir).unwrap(), vec![ex("p", "c"), ex("", "t")]);
    for (body, line) in [
        ("{\"text\": \"a\"}\n{\"prompt\": \"only a prompt\"}\n", 2),
        ("{\"text\": \"a\"}\n\n{\"text\": \"b\", \"prompt\": \"both\", \"completion\": \"c\"}\n", 3),
        ("{\"text\": 5}\n", 1),
        ("{\"text\": \"a\"}\nnot json\n", 2),
    ] {
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, body).unwrap();
        let err = text::load(&Source::Jsonl(bad.clone()), &dir).unwrap_err().to_string();
        assert!(err.contains(&format!("{}, line {line}:", bad.display())), "{body:?} -> {err}");
    }
    let missing = dir.join("missing.jsonl");
    let err = text::load(&Source::Jsonl(missing.clone()), &dir).unwrap_err().to_string();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tokenize_puts_bos_prompt_completion_eos_and_masks_the_prompt() {
    let texts = [ex("ab\n", "cd"), ex("", "xyz")];
    for add_bos in [true, false] {
        let tok = byte_tokenizer(add_bos);
        let bos: Vec<u32> = if add_bos { vec![BOS] } else { vec![] };
        for mask in [true, false] {
            let (got, stats) = tokenize(&tok, &texts, 100, mask).unwrap();
            let first = [bos.clone(), bytes("ab\n"), bytes("cd"), vec![EOS]].concat();
            let second = [bos.clone(), bytes("xyz"), vec![EOS]].concat();
            let (from0, from1) = if mask { (bos.len() + 3, bos.len()) } else { (0, 0) };
            assert_eq!(got, vec![Example { ids: first.clone(), train_from: from0 }, Example { ids: second.clone(), train_from: from1 }]);
            // Targets: every position after max(train_from, 1).
            let want_targets = first.len() - from0.max(1) + second.len() - from1.max(1);
            assert_eq!(
                (stats.examples, stats.truncated, stats.tokens, stats.target_tokens),
                (2, 0, first.len() + second.len(), want_targets)
            );
        }
    }
}

#[test]
fn truncation_keeps_the_start_and_is_counted() {
    let tok = byte_tokenizer(true);
    let texts = [ex("abcdef", "ghij"), ex("a", "b"), ex("abcdefghij", "k")];
    let (got, stats) = tokenize(&tok, &texts, 8, true).unwrap();
    assert_eq!(got[0].ids, [vec![BOS], bytes("abcdefg")].concat());
    assert_eq!(got[0].train_from, 7);
    assert_eq!(got[1].ids, [vec![BOS], bytes("ab"), vec![EOS]].concat());
    // The prompt alone fills max_len: nothing left to train.
    assert_eq!((got[2].ids.len(), got[2].train_from), (8, 8));
    assert_eq!((stats.truncated, stats.tokens, stats.target_tokens), (2, 8 + 4 + 8, 1 + 2));
    assert!(tokenize(&tok, &texts, 1, true).is_err());
}

#[test]
fn batch_targets_shift_skip_masked_positions_and_pads() {
    let a = Example { ids: vec![10, 11, 12, 13, 14], train_from: 3 };
    let b = Example { ids: vec![20, 21, 22], train_from: 0 };
    let batch = make_batch(&[&a, &b], 7);
    assert_eq!((batch.b, batch.t), (2, 5));
    assert_eq!(batch.ids, vec![10, 11, 12, 13, 14, 20, 21, 22, 7, 7]);
    let i = IGNORE;
    // a: tokens 13 and 14 are trained, predicted at positions 2 and 3. b: tokens 21, 22.
    assert_eq!(batch.targets, vec![i, i, 13, 14, i, 21, 22, i, i, i]);
    assert_eq!(batch.n_targets, 4);
    assert_eq!(batch.n_targets, a.targets() + b.targets());
    // Batches agree with tokenize's count.
    let tok = byte_tokenizer(true);
    let (exs, stats) = tokenize(&tok, &[ex("p", "completion"), ex("", "text"), ex("long prompt", "c")], 9, true).unwrap();
    let refs: Vec<&Example> = exs.iter().collect();
    let batch = make_batch(&refs, 0);
    assert_eq!(batch.n_targets, stats.target_tokens);
    assert_eq!(batch.targets.iter().filter(|&&t| t != IGNORE).count(), batch.n_targets);
    assert_eq!(make_batch(&[], 0).ids.len(), 0);
}

#[test]
fn loader_is_deterministic_wraps_epochs_and_resumes_exactly() {
    let start = Cursor { epoch: 0, index: 0 };
    let run = |seed, steps: usize, batch| {
        let mut l = Loader::new(10, seed, start.clone());
        (0..steps).map(|_| l.next_indices(batch)).collect::<Vec<_>>()
    };
    let a = run(5, 9, 4);
    assert_eq!(a, run(5, 9, 4));
    assert_ne!(a, run(6, 9, 4));
    // Each epoch is a permutation; consecutive epochs are shuffled differently.
    let flat: Vec<usize> = a.concat();
    let epochs: Vec<Vec<usize>> = flat.chunks(10).map(|c| c.to_vec()).collect();
    for e in &epochs[..3] {
        let mut s = e.clone();
        s.sort();
        assert_eq!(s, (0..10).collect::<Vec<_>>());
    }
    assert_ne!(epochs[0], epochs[1]);
    assert_ne!(epochs[0], (0..10).collect::<Vec<_>>());
    // Batch 3 spans the end of epoch 0 and the start of epoch 1.
    let mut l = Loader::new(10, 5, start.clone());
    l.next_indices(4);
    l.next_indices(4);
    assert_eq!(l.cursor(), Cursor { epoch: 0, index: 8 });
    l.next_indices(4);
    assert_eq!(l.cursor(), Cursor { epoch: 1, index: 2 });
    // Resume: a loader rebuilt from a serialized cursor continues the uninterrupted sequence.
    for stop in 0..9 {
        let mut first = Loader::new(10, 5, start.clone());
        let mut seen: Vec<Vec<usize>> = (0..stop).map(|_| first.next_indices(4)).collect();
        let saved = serde_json::to_string(&first.cursor()).unwrap();
        let mut resumed = Loader::new(10, 5, serde_json::from_str(&saved).unwrap());
        seen.extend((stop..9).map(|_| resumed.next_indices(4)));
        assert_eq!(seen, a, "resumed after {stop} batches");
    }
    assert!(Loader::new(0, 1, start).next_indices(3).is_empty());
}

/// The real default model's tokenizer on the MBPP train split: no BOS (SmolLM2's GGUF does not
/// add one), EOS `<|im_end|>` closes every untruncated example, and the prompt/completion split
/// tokenizes to the same ids as encoding each part alone.
#[test]
fn real_tokenizer_on_mbpp_train() {
    let Some(dir) = support::data_dir("mbpp.jsonl") else { return };
    let path = std::env::var_os("FLEXLORA_MODEL_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if !path.exists() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but {} is missing", path.display());
        eprintln!("\n*** skipped: {} not found (run scripts/fetch-model.sh) ***\n", path.display());
        return;
    }
    let f = GgufFile::open(&path).unwrap();
    let tok = gguf_model::tokenizer(&f, &gguf_model::config(&f).unwrap()).unwrap();
    let texts = text::load(&Source::Mbpp { split: MbppSplit::Train }, &dir).unwrap();
    let (exs, stats) = tokenize(&tok, &texts, 512, true).unwrap();
    eprintln!("MBPP train with the real tokenizer, max_len 512: {stats:?}");
    let eos = tok.eos[0];
    for (t, e) in texts.iter().zip(&exs) {
        let p = tok.encode(&t.prompt, false).unwrap();
        assert_eq!(e.train_from, p.len());
        assert_eq!(&e.ids[..p.len()], &p[..]);
        if e.ids.len() < 512 {
            assert_eq!(*e.ids.last().unwrap(), eos);
        }
    }
    assert_eq!(stats.examples, 374);
    assert!(stats.target_tokens > 374 * 10 && stats.target_tokens < stats.tokens);
}
