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

/// The stop rule written the slow way: the first position where a stop string starts, a stop
/// ending in a newline allowing spaces, tabs and carriage returns before it.
fn first_stop(text: &str, stops: &[String]) -> Option<usize> {
    (0..=text.len()).filter(|&i| text.is_char_boundary(i)).find(|&i| {
        stops.iter().any(|s| match s.strip_suffix('\n') {
            Some(head) => text[i..].strip_prefix(head).is_some_and(|rest| rest.trim_start_matches([' ', '\t', '\r']).starts_with('\n')),
            None => text[i..].starts_with(s.as_str()),
        })
    })
}

#[test]
fn stop_strings_that_end_a_line_allow_trailing_blanks() {
    use flexlora::model::generate::find_stop;
    let java = vec!["\n    }\n".to_string()];
    for (text, want) in [
        ("        return x;\n    }\n    public static void main", Some(17)),
        ("        return x; \n    } \n    public static void main", Some(18)),
        ("        return x;\n    }\t \r\n}", Some(17)),
        // Not at class indentation, or not the end of the line: no stop.
        ("        return x;\n        }\n", None),
        ("        return x;\n    } else {\n", None),
        ("        return x;\n    }", None),
    ] {
        assert_eq!(find_stop(text, &java), want, "{text:?}");
        assert_eq!(first_stop(text, &java), want, "{text:?}");
    }
    // The earliest of several; stops that do not end a line match exactly.
    let stops = vec!["\ndef ".to_string(), "\n\n".to_string()];
    assert_eq!(find_stop("a\n \ndef f", &stops), Some(1));
    assert_eq!(find_stop("a\ndef f\n\n", &stops), Some(1));
    assert_eq!(find_stop("a\n  def f", &stops), None);
    // Random texts against the slow rule.
    let mut rng = Rng::new(7);
    let alphabet = [" ", "\t", "\r", "\n", "}", "x", "é", "    "];
    let stops = vec!["\n    }\n".to_string(), "é\n".to_string(), "x}".to_string()];
    for _ in 0..5000 {
        let text: String = (0..rng.below(30)).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
        assert_eq!(find_stop(&text, &stops), first_stop(&text, &stops), "{text:?}");
    }
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
    let pool: Vec<u32> = b"ab \nxyz(){}\t".iter().chain(&e_acute).chain(&crab).map(|&b| 2 + b as u32).chain(258..264).collect();
    let blanky: Vec<u32> = b" \t\r\n}x".iter().map(|&b| 2 + b as u32).collect();
    let mut rng = Rng::new(42);
    for case in 0..400 {
        let n = 1 + rng.below(40) as usize;
        // Line-end stops get texts of blanks, braces and newlines: matches whose blanks span tokens.
        let from: &[u32] = if case % 4 == 3 { &blanky } else { &pool };
        let ids: Vec<u32> = (0..n).map(|_| from[rng.below(from.len() as u64) as usize]).collect();
        let stop: Vec<String> = match case % 4 {
            0 => vec![],
            1 => vec!["\n\n".into()],
            2 => vec!["ab".into(), "é".into()],
            // Line-end stops, which also match with blanks before the newline.
            _ => vec![" }\n".into(), "é\n".into()],
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
        match first_stop(&full, &stop) {
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

/// An adapter's inference products give each row the same bits whatever rows share the call (a
/// decode step's rows are the sequences batched together): with 1 to 9 rows, against each row
/// alone. (In training, products of more than 4 rows take the GEMM crate's blocked kernel, whose
/// sums round differently; the base weight here is zero so that only the adapter is measured.)
#[test]
fn adapter_inference_rows_do_not_depend_on_the_batch() {
    use flexlora::model::linear::Mode;
    use flexlora::model::lora::Lora;
    use flexlora::model::{Linear, Weight};
    use flexlora::Tensor;
    let dev = cpu();
    let (inp, out, r) = (96, 136, 8);
    let mut rng = Rng::new(3);
    let mut rand = |n: usize| rng.vec(n, 1.0);
    let t = |label: &str, shape: &[usize], data: &[f32]| Tensor::from_f32(&dev, label, shape, data).unwrap();
    let linear = Linear {
        weight: Weight::F32(t("w", &[out, inp], &vec![0.0; out * inp])),
        bias: None,
        lora: Some(Lora { a: t("a", &[r, inp], &rand(r * inp)), b: t("b", &[out, r], &rand(out * r)), scale: 2.0, dropout: 0.0 }),
    };
    let xs = rand(9 * inp);
    let run = |rows: &[f32], mode: Mode| -> (Vec<f32>, Vec<f32>) {
        let (y, xa) = linear.forward(&dev, &t("x", &[rows.len() / inp, inp], rows), mode).unwrap();
        (block_on(None, y.to_vec_f32(&dev)).unwrap(), block_on(None, xa.unwrap().to_vec_f32(&dev)).unwrap())
    };
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    let alone: Vec<(Vec<f32>, Vec<f32>)> = (0..9).map(|i| run(&xs[i * inp..(i + 1) * inp], Mode::Infer)).collect();
    for m in 1..=9 {
        let (ys, xas) = run(&xs[..m * inp], Mode::Infer);
        for (i, (y1, xa1)) in alone.iter().take(m).enumerate() {
            assert!(same(&ys[i * out..(i + 1) * out], y1), "{m} rows: row {i} of y");
            assert!(same(&xas[i * r..(i + 1) * r], xa1), "{m} rows: row {i} of xa");
        }
    }
    // Training mode at 9 rows is the blocked kernel: it need not agree bit for bit, only closely.
    let (ys, _) = run(&xs, Mode::Train { dropout: None });
    for (i, (y1, _)) in alone.iter().enumerate() {
        assert!(ys[i * out..(i + 1) * out].iter().zip(y1).all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs())), "row {i}");
    }
}
