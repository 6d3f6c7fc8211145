//! Text generation: sampling (greedy, temperature, top-k, top-p) and the decode loop with a KV
//! cache, streaming text as tokens arrive and stopping at EOS or a stop string.

use crate::device::Device;
use crate::error::Result;
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::Model;
use crate::rng::Rng;

#[derive(Debug, Clone)]
pub struct Sampling {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1.0 keeps all).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (0 keeps all).
    pub top_k: usize,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0 }
    }
}

/// Picks the next token from one row of logits.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
    let argmax = || logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0 as u32;
    if s.temperature <= 0.0 {
        return argmax();
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if s.top_k > 0 {
        idx.truncate(s.top_k);
    }
    let m = logits[idx[0]];
    let mut probs: Vec<f64> = idx.iter().map(|&i| (((logits[i] - m) / s.temperature) as f64).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= s.top_p as f64
        });
        let keep = keep.map_or(probs.len(), |k| k + 1);
        probs.truncate(keep);
        idx.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut r = rng.uniform() * total;
    for (p, &i) in probs.iter().zip(&idx) {
        if r < *p {
            return i as u32;
        }
        r -= p;
    }
    idx[probs.len() - 1] as u32
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Generation of a sample ends where one of these appears (it is cut off).
    pub stop: Vec<String>,
}

/// One finished sample.
#[derive(Debug, Clone)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub text: String,
    /// "eos", "stop", or "length".
    pub finish: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct Timing {
    pub prompt_tokens: usize,
    pub prefill_secs: f64,
    pub generated_tokens: usize,
    pub decode_secs: f64,
}

/// Clock that works natively and in the browser.
fn now() -> f64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
    }
    #[cfg(target_arch = "wasm32")]
    {
        0.0
    }
}

/// Generates `n` samples continuing `prompt` (token ids). The prompt is run once and its cache
/// copied to every sample. `on_text(sample, delta)` receives text as it is produced.
pub async fn generate(
    model: &Model,
    dev: &Device,
    tok: &Tokenizer,
    prompt: &[u32],
    n: usize,
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(usize, &str),
) -> Result<(Vec<Generation>, Timing)> {
    // Generation stops at the model's context length rather than failing.
    let max_pos = model.rope.max_pos;
    if prompt.is_empty() || prompt.len() >= max_pos {
        return Err(crate::error::Error::Limit {
            op: "generate",
            detail: format!("a prompt of {} tokens", prompt.len()),
            limit: max_pos as u64 - 1,
            hint: "the prompt must be non-empty and shorter than the model's context",
        });
    }
    let max_new_tokens = opts.max_new_tokens.min(max_pos - prompt.len());
    let cap = prompt.len() + max_new_tokens;
    let mut timing = Timing { prompt_tokens: prompt.len(), ..Default::default() };
    let t0 = now();
    let mut one = model.new_cache(dev, 1, cap);
    let first = model.forward(dev, prompt, &mut one, false)?.to_vec_f32(dev).await?;
    timing.prefill_secs = now() - t0;
    let mut cache = model.new_cache(dev, n, cap);
    let kd = model.cfg.kv * model.cfg.d;
    for (dst, src) in cache.k.iter_mut().zip(&one.k).chain(cache.v.iter_mut().zip(&one.v)) {
        for b in 0..n {
            dst.copy_from(dev, src, 0, b * cap * kd, prompt.len() * kd)?;
        }
    }
    cache.len = prompt.len();
    drop(one);

    let mut rng = Rng::new(opts.sampling.seed);
    let v = model.cfg.vocab;
    let mut logits: Vec<f32> = first.repeat(n);
    let mut ids: Vec<Vec<u32>> = vec![vec![]; n];
    let mut shown: Vec<usize> = vec![0; n];
    let mut finish: Vec<Option<&'static str>> = vec![None; n];
    let t1 = now();
    for step in 0..max_new_tokens {
        let mut next = vec![0u32; n];
        for b in 0..n {
            if finish[b].is_some() {
                next[b] = tok.eos.first().copied().unwrap_or(0);
                continue;
            }
            let id = sample(&logits[b * v..(b + 1) * v], &opts.sampling, &mut rng);
            next[b] = id;
            if tok.eos.contains(&id) {
                finish[b] = Some("eos");
                continue;
            }
            ids[b].push(id);
            timing.generated_tokens += 1;
            let text = tok.decode(&ids[b])?;
            if let Some(cut) = opts.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                if cut > shown[b] {
                    on_text(b, &text[shown[b]..cut]);
                }
                shown[b] = cut;
                finish[b] = Some("stop");
            } else if !text.ends_with('\u{FFFD}') && text.len() > shown[b] && text.is_char_boundary(shown[b]) {
                // Hold back text that ends in a partial UTF-8 character.
                on_text(b, &text[shown[b]..]);
                shown[b] = text.len();
            }
        }
        if finish.iter().all(Option::is_some) || step + 1 == max_new_tokens {
            break;
        }
        logits = model.forward(dev, &next, &mut cache, false)?.to_vec_f32(dev).await?;
    }
    timing.decode_secs = now() - t1;
    let mut out = Vec::with_capacity(n);
    for b in 0..n {
        let full = tok.decode(&ids[b])?;
        let text = match finish[b] {
            Some("stop") => full[..shown[b].min(full.len())].to_string(),
            _ => full,
        };
        out.push(Generation { ids: std::mem::take(&mut ids[b]), text, finish: finish[b].unwrap_or("length") });
    }
    Ok((out, timing))
}
