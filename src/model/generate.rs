//! Text generation: sampling (greedy, temperature, top-k, top-p) and the decode loop with a KV
//! cache, streaming text as tokens arrive and stopping at EOS or a stop string.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::forward::KvCache;
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

impl Sampling {
    /// Refuses settings that would sample nonsense: a negative or non-finite temperature (NaN
    /// compares false everywhere and quietly meant greedy), top-p outside (0, 1].
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::InvalidArgument {
                flag: "--temperature",
                detail: format!("{} must be a finite number >= 0 (0 is greedy)", self.temperature),
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidArgument {
                flag: "--top-p",
                detail: format!("{} is outside (0, 1] (1 keeps every token)", self.top_p),
            });
        }
        Ok(())
    }
}

impl GenerateOptions {
    /// `Sampling::validate`, and no empty stop string (it would match before the first token).
    pub fn validate(&self) -> Result<()> {
        self.sampling.validate()?;
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err(Error::InvalidArgument {
                flag: "--stop",
                detail: "an empty stop string would end every sample before its first token".into(),
            });
        }
        Ok(())
    }
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
    /// Generation of a sample ends where one of these appears (it is cut off; see `find_stop`).
    pub stop: Vec<String>,
}

/// Where the earliest stop string in `text` begins. A stop string that ends a line (its last
/// character is `\n`) also matches with blanks (spaces, tabs, carriage returns) before that line
/// end: trailing blanks are invisible in code, and a model that learned them (MBPP's solutions
/// end many lines with a space) would otherwise run past the stop, e.g. Java's `"\n    }\n"`
/// against `"\n    } \n"`.
pub fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter(|s| !s.is_empty()).filter_map(|s| find_one(text, s)).min()
}

fn find_one(text: &str, stop: &str) -> Option<usize> {
    let Some(head) = stop.strip_suffix('\n') else { return text.find(stop) };
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find(head).map(|p| from + p) {
        let mut end = at + head.len();
        while end < bytes.len() && matches!(bytes[end], b' ' | b'\t' | b'\r') {
            end += 1;
        }
        if bytes.get(end) == Some(&b'\n') {
            return Some(at);
        }
        // The next candidate starts after this one's first character.
        from = at + text[at..].chars().next().map_or(1, char::len_utf8);
    }
    None
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

/// Clock that works natively and in the browser (seconds; also the selftest's).
pub(crate) fn now() -> f64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
    }
    #[cfg(target_arch = "wasm32")]
    {
        #[wasm_bindgen::prelude::wasm_bindgen]
        extern "C" {
            // `performance` exists in pages and in workers alike.
            #[wasm_bindgen(js_namespace = performance, js_name = now)]
            fn performance_now() -> f64;
        }
        performance_now() / 1000.0
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
    let req = Request { prompt: prompt.to_vec(), samples: n, opts: opts.clone() };
    let mut out = Vec::new();
    let timing = generate_many(model, dev, tok, std::slice::from_ref(&req), n, &mut |_, s, delta| on_text(s, delta), &mut |_, gens| {
        out = gens;
        Ok(())
    })
    .await?;
    Ok((out, timing))
}

/// One prompt to continue `samples` times.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub samples: usize,
    pub opts: GenerateOptions,
}

/// One sequence's sampled ids and the text streamed from them: where it stops (EOS, a stop
/// string, the token limit) and what has been shown. Shared by [`generate_many`] and [`Stream`],
/// so batched, one-at-a-time and browser generation end and stream text the same way.
#[derive(Debug, Clone)]
pub struct TextState {
    pub ids: Vec<u32>,
    /// The text of `ids[..read]`, decoded incrementally: each token decodes only itself and the
    /// tokens since the previous cut (`prefix..`), so a step costs O(1) in the text's length.
    text: String,
    /// Token offsets: `ids[prefix..read]` decode to the end of `text`; the tokens after `read`
    /// are not yet in `text` (they end in an incomplete UTF-8 character).
    prefix: usize,
    read: usize,
    /// Bytes of text already handed out.
    shown: usize,
    max_new_tokens: usize,
    /// "eos", "stop" or "length" once the sequence has ended.
    pub finish: Option<&'static str>,
}

impl TextState {
    pub fn new(max_new_tokens: usize) -> Self {
        let finish = (max_new_tokens == 0).then_some("length");
        TextState { ids: vec![], text: String::new(), prefix: 0, read: 0, shown: 0, max_new_tokens, finish }
    }

    /// Takes the next sampled token; returns the text it adds (empty while a UTF-8 character is
    /// incomplete, cut at a stop string).
    ///
    /// Incremental detokenization (as Hugging Face's text-generation-inference does it): the new
    /// text is decode(ids[prefix..]) minus decode(ids[prefix..read]). Decoding from `prefix`, one
    /// step back, rather than from `read` keeps tokenizers whose decoding depends on the token
    /// before (SentencePiece's leading space) right; a result ending in U+FFFD is an incomplete
    /// character, held back until the next token completes it.
    pub fn push(&mut self, id: u32, tok: &Tokenizer, stop: &[String]) -> Result<String> {
        if tok.eos.contains(&id) {
            self.finish = Some("eos");
            return Ok(String::new());
        }
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let now = tok.decode(&self.ids[self.prefix..])?;
        let old_len = self.text.len();
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.starts_with(&before) {
            self.text.push_str(&now[before.len()..]);
            self.prefix = self.read;
            self.read = self.ids.len();
        }
        // Only a match that ends in the new text is new: search from one stop string's length
        // before it, and before the blanks it ends with (a line-end stop allows them, `find_stop`).
        let longest = stop.iter().map(|s| s.len()).max().unwrap_or(0);
        let blanks = self.text.as_bytes()[..old_len].iter().rev().take_while(|b| matches!(b, b' ' | b'\t' | b'\r')).count();
        let mut from = (old_len - blanks).saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let mut delta = String::new();
        if let Some(cut) = find_stop(&self.text[from..], stop) {
            // A stop string that began in text already shown still cuts the final text there.
            let cut = from + cut;
            if cut > self.shown {
                delta = self.text[self.shown..cut].to_string();
            }
            self.shown = cut;
            self.finish = Some("stop");
        } else if self.text.len() > self.shown {
            delta = self.text[self.shown..].to_string();
            self.shown = self.text.len();
        }
        if self.finish.is_none() && self.ids.len() == self.max_new_tokens {
            self.finish = Some("length");
        }
        Ok(delta)
    }

    /// The finished sequence's text (cut at the stop string when it stopped on one).
    pub fn text(&self, tok: &Tokenizer) -> Result<String> {
        if self.finish == Some("stop") {
            return Ok(self.text[..self.shown].to_string());
        }
        // Whole, so a trailing incomplete character shows as U+FFFD as a full decode has it.
        tok.decode(&self.ids)
    }
}

/// A sequence being decoded: sample `sample` of request `req`.
struct Active {
    req: usize,
    sample: usize,
    cache: KvCache,
    logits: Vec<f32>,
    state: TextState,
}

/// Checks that a prompt fits the model's context and returns how many tokens may follow it.
fn room_after(prompt: &[u32], max_new_tokens: usize, max_pos: usize) -> Result<usize> {
    if prompt.is_empty() || prompt.len() >= max_pos {
        return Err(crate::error::Error::Limit {
            op: "generate",
            detail: format!("a prompt of {} tokens", prompt.len()),
            limit: max_pos as u64 - 1,
            hint: "the prompt must be non-empty and shorter than the model's context",
        });
    }
    // Generation stops at the model's context length rather than running past it.
    Ok(max_new_tokens.min(max_pos - prompt.len()))
}

/// Generates for every request, decoding up to `batch` sequences together (a request's samples
/// are admitted together, so a request with more samples than `batch` runs alone). Each sequence
/// has its own cache; one `decode_step` advances all of them, so the weights are read once per
/// step for the whole batch. A request's samples draw from one RNG seeded by its options, in
/// sample order, so its output does not depend on what else is in the batch.
/// `on_text(request, sample, delta)` streams text; `on_done(request, generations)` receives each
/// request's samples as soon as all of them have finished.
pub async fn generate_many(
    model: &Model,
    dev: &Device,
    tok: &Tokenizer,
    requests: &[Request],
    batch: usize,
    on_text: &mut dyn FnMut(usize, usize, &str),
    on_done: &mut dyn FnMut(usize, Vec<Generation>) -> Result<()>,
) -> Result<Timing> {
    for r in requests {
        r.opts.validate()?;
    }
    let max_pos = model.rope.max_pos;
    let v = model.cfg.vocab;
    let mut timing = Timing::default();
    let mut rngs: Vec<Rng> = requests.iter().map(|r| Rng::new(r.opts.sampling.seed)).collect();
    let mut done: Vec<Vec<Option<Generation>>> = requests.iter().map(|r| vec![None; r.samples]).collect();
    let mut active: Vec<Active> = Vec::new();
    let mut next = 0;
    let t_start = now();
    loop {
        // Admit whole requests while they fit.
        while next < requests.len() && (active.is_empty() || active.len() + requests[next].samples <= batch.max(1)) {
            let r = &requests[next];
            let max_new_tokens = room_after(&r.prompt, r.opts.max_new_tokens, max_pos)?;
            let cap = r.prompt.len() + max_new_tokens;
            let t0 = now();
            let mut one = model.new_cache(dev, 1, cap);
            let logits = model.forward(dev, &r.prompt, &mut one, false)?.to_vec_f32(dev).await?;
            timing.prefill_secs += now() - t0;
            timing.prompt_tokens += r.prompt.len();
            let mut one = Some(one);
            for sample in 0..r.samples {
                let cache = match sample + 1 == r.samples {
                    true => one.take().expect("the last sample takes the prompt's cache"),
                    false => copy_cache(model, dev, one.as_ref().expect("taken only by the last sample"))?,
                };
                active.push(Active { req: next, sample, cache, logits: logits.clone(), state: TextState::new(max_new_tokens) });
            }
            if r.samples == 0 {
                on_done(next, vec![])?;
            }
            next += 1;
        }
        if active.is_empty() {
            break;
        }
        for a in active.iter_mut().filter(|a| a.state.finish.is_none()) {
            let r = &requests[a.req];
            let id = sample(&a.logits, &r.opts.sampling, &mut rngs[a.req]);
            let before = a.state.ids.len();
            let delta = a.state.push(id, tok, &r.opts.stop)?;
            timing.generated_tokens += a.state.ids.len() - before;
            if !delta.is_empty() {
                on_text(a.req, a.sample, &delta);
            }
        }
        // Retire finished sequences, keeping the others in order.
        let mut still = Vec::with_capacity(active.len());
        for mut a in active.drain(..) {
            let Some(finish) = a.state.finish else {
                still.push(a);
                continue;
            };
            let text = a.state.text(tok)?;
            done[a.req][a.sample] = Some(Generation { ids: std::mem::take(&mut a.state.ids), text, finish });
            if done[a.req].iter().all(Option::is_some) {
                on_done(a.req, done[a.req].iter_mut().map(|g| g.take().expect("all finished")).collect())?;
            }
        }
        active = still;
        if active.is_empty() {
            continue;
        }
        let tokens: Vec<u32> = active.iter().map(|a| *a.state.ids.last().expect("unfinished sequences have a token")).collect();
        let mut caches: Vec<&mut KvCache> = active.iter_mut().map(|a| &mut a.cache).collect();
        let logits = model.decode_step(dev, &tokens, &mut caches)?.to_vec_f32(dev).await?;
        for (a, row) in active.iter_mut().zip(logits.chunks_exact(v)) {
            a.logits.copy_from_slice(row);
        }
    }
    timing.decode_secs = now() - t_start - timing.prefill_secs;
    Ok(timing)
}

/// One sequence generated a token at a time by its caller: the browser's worker drives it and
/// yields to its event loop between tokens, so a stop request is seen at once. It makes exactly
/// the calls `generate` makes for one sample (prefill with `forward`, then one `decode_step` per
/// token, the same sampler and RNG), so both produce the same tokens.
pub struct Stream {
    cache: KvCache,
    logits: Vec<f32>,
    rng: Rng,
    opts: GenerateOptions,
    pub state: TextState,
    pub timing: Timing,
}

impl Stream {
    /// Runs the prompt and returns the stream, ready for its first token.
    pub async fn start(model: &Model, dev: &Device, prompt: &[u32], opts: &GenerateOptions) -> Result<Stream> {
        opts.validate()?;
        let max_new_tokens = room_after(prompt, opts.max_new_tokens, model.rope.max_pos)?;
        let t0 = now();
        let mut cache = model.new_cache(dev, 1, prompt.len() + max_new_tokens);
        let logits = model.forward(dev, prompt, &mut cache, false)?.to_vec_f32(dev).await?;
        let timing = Timing { prompt_tokens: prompt.len(), prefill_secs: now() - t0, ..Timing::default() };
        Ok(Stream { cache, logits, rng: Rng::new(opts.sampling.seed), opts: opts.clone(), state: TextState::new(max_new_tokens), timing })
    }

    /// Samples the next token and returns the text it adds, or `None` once the sequence has
    /// ended (`state.finish` says why).
    pub async fn next(&mut self, model: &Model, dev: &Device, tok: &Tokenizer) -> Result<Option<String>> {
        if self.state.finish.is_some() {
            return Ok(None);
        }
        let t0 = now();
        let id = sample(&self.logits, &self.opts.sampling, &mut self.rng);
        let before = self.state.ids.len();
        let delta = self.state.push(id, tok, &self.opts.stop)?;
        self.timing.generated_tokens += self.state.ids.len() - before;
        if self.state.finish.is_none() {
            let logits = model.decode_step(dev, &[id], &mut [&mut self.cache])?.to_vec_f32(dev).await?;
            self.logits.copy_from_slice(&logits);
        }
        self.timing.decode_secs += now() - t0;
        Ok(Some(delta))
    }
}

/// A copy of a one-sequence cache (for the other samples of a prompt).
fn copy_cache(model: &Model, dev: &Device, src: &KvCache) -> Result<KvCache> {
    let mut dst = model.new_cache(dev, 1, src.cap);
    let n = src.len * model.cfg.kv * model.cfg.d;
    for (d, s) in dst.k.iter_mut().zip(&src.k).chain(dst.v.iter_mut().zip(&src.v)) {
        d.copy_from(dev, s, 0, 0, n)?;
    }
    dst.len = src.len;
    Ok(dst)
}
