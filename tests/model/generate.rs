//! Batched generation (`generate_many`): decoding several requests together gives each the
//! tokens it gets alone, sampled or greedy, whatever the batch size.

use crate::common::*;
use crate::formats::{tmpdir, write_hf};
use crate::forward::{random_weights, tiny_config};
use flexlora::device::block_on;
use flexlora::model::generate::{generate, generate_many, GenerateOptions, Generation, Request, Sampling};
use flexlora::model::{load, Arch, WeightFormat};

#[test]
fn batched_generation_equals_one_request_at_a_time() {
    let cfg = flexlora::model::Config { max_pos: 48, ..tiny_config(Arch::Llama) };
    let dir = tmpdir("generate");
    write_hf(&dir, &cfg, &random_weights(&cfg, 5));
    let dev = cpu();
    let (model, tok) = load::open(&dev, &dir, WeightFormat::F32).unwrap();
    // Prompts of different lengths; greedy and sampled; one request with 3 samples; max_new_tokens
    // that differ and one that the context length cuts short.
    let request = |prompt: &[u32], samples, temperature, max_new_tokens, seed| Request {
        prompt: prompt.to_vec(),
        samples,
        opts: GenerateOptions { max_new_tokens, sampling: Sampling { temperature, top_p: 0.9, top_k: 0, seed }, stop: vec![] },
    };
    let requests = [
        request(&[1, 17, 42, 5], 1, 0.0, 9, 0),
        request(&[1, 3], 3, 1.0, 7, 11),
        request(&[1, 60, 33, 2, 8, 9, 10], 2, 0.7, 12, 12),
        request(&[1; 40], 1, 0.0, 30, 0),
        request(&[1, 4], 1, 1.5, 5, 13),
    ];
    let run = |batch: usize| -> Vec<Vec<Generation>> {
        let mut out = vec![vec![]; requests.len()];
        let mut order = vec![];
        block_on(
            None,
            generate_many(&model, &dev, &tok, &requests, batch, &mut |_, _, _| {}, &mut |r, g| {
                order.push(r);
                out[r] = g;
                Ok(())
            }),
        )
        .unwrap();
        assert_eq!(
            {
                order.sort();
                order
            },
            (0..requests.len()).collect::<Vec<_>>(),
            "each request finishes once"
        );
        out
    };
    let alone: Vec<Vec<Generation>> = requests
        .iter()
        .map(|r| block_on(None, generate(&model, &dev, &tok, &r.prompt, r.samples, &r.opts, &mut |_, _| {})).unwrap().0)
        .collect();
    for (ri, gens) in alone.iter().enumerate() {
        assert_eq!(gens.len(), requests[ri].samples);
        for g in gens {
            assert!(!g.ids.is_empty() || g.finish == "eos", "request {ri}: nothing generated");
        }
    }
    let cut = &alone[3][0];
    assert!(cut.ids.len() == 48 - 40 && cut.finish == "length" || cut.finish == "eos", "the context length cuts request 3 short: {cut:?}");
    // Sampled samples of one request differ from each other (the RNG advances between them).
    assert_ne!(alone[1][0].ids, alone[1][1].ids);
    for batch in [1, 2, 4, 16] {
        let got = run(batch);
        for (ri, (g, want)) in got.iter().zip(&alone).enumerate() {
            let ids = |v: &[Generation]| v.iter().map(|g| (g.ids.clone(), g.finish)).collect::<Vec<_>>();
            assert_eq!(ids(g), ids(want), "batch {batch}, request {ri}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// GPT-2's byte -> printable character map (byte-level BPE's alphabet).
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&c| !printable(c)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

#[test]
fn incremental_detokenization_streams_what_full_decoding_gives() {
    use flexlora::model::generate::TextState;
    use flexlora::model::tokenizer::{gpt2_tokenizer_json, Tokenizer};
    // A byte-level vocabulary: two specials, every byte, and a few multi-byte tokens, so random
    // sequences split UTF-8 characters (é, €, 🦀) across tokens and cross stop strings.
    let mut toks: Vec<String> = vec!["<|bos|>".into(), "<|eos|>".into()];
    toks.extend((0..=255u8).map(|b| byte_char(b).to_string()));
    for word in ["def", "\n\n", " return", "é", "🦀", "ab"] {
        toks.push(word.bytes().map(byte_char).collect());
    }
    let types: Vec<i32> = (0..toks.len()).map(|i| if i < 2 { 3 } else { 1 }).collect();
    let json = gpt2_tokenizer_json(&toks, &[], &types, "gpt2", None).unwrap().to_string();
    let tok = Tokenizer::from_json("test vocabulary", json, Some(0), vec![1], None).unwrap();
    // Tokens drawn from: ASCII bytes, the first and later bytes of multi-byte characters, and the words.
    let e_acute = "é".as_bytes().to_vec();
    let crab = "🦀".as_bytes().to_vec();
    let pool: Vec<u32> = b"ab \nxyz()".iter().chain(&e_acute).chain(&crab).map(|&b| 2 + b as u32).chain(258..264).collect();
    let mut rng = Rng::new(42);
    for case in 0..200 {
        let n = 1 + rng.below(40) as usize;
        let ids: Vec<u32> = (0..n).map(|_| pool[rng.below(pool.len() as u64) as usize]).collect();
        let stop: Vec<String> = match case % 3 {
            0 => vec![],
            1 => vec!["\n\n".into()],
            _ => vec!["ab".into(), "é".into()],
        };
        let mut state = TextState::new(n);
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&state.push(id, &tok, &stop).unwrap());
            if state.finish.is_some() {
                break;
            }
        }
        let full = tok.decode(&state.ids).unwrap();
        let final_text = state.text(&tok).unwrap();
        match stop.iter().filter_map(|s| full.find(s.as_str())).min() {
            // Cut at the first stop string; nothing after it was streamed.
            Some(cut) => {
                assert_eq!(state.finish, Some("stop"), "case {case}: {ids:?}");
                assert_eq!(final_text, full[..cut], "case {case}: {ids:?}");
                assert!(
                    full[..cut].starts_with(&streamed) || streamed.starts_with(&full[..cut]),
                    "case {case}: streamed {streamed:?}, full {full:?}"
                );
            }
            None => {
                assert_eq!(final_text, full, "case {case}: {ids:?}");
                // Everything but a trailing incomplete character was streamed.
                assert_eq!(streamed, full.trim_end_matches('\u{FFFD}'), "case {case}: {ids:?}");
            }
        }
    }
}
