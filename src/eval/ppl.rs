//! `flexlora eval --task ppl`: perplexity of a model on held-out text, exp(mean NLL) over the
//! tokens the training loss would count.
//!
//! Input: JSONL in the training formats (`train::data`: prompt/completion lines with the prompt
//! masked unless asked otherwise, `{"text": ...}` lines scored whole; examples longer than
//! `max_len` are truncated and counted), or a `.txt` file read as one text and split into
//! consecutive windows of `max_len` tokens, each scored on its own (its first token has no context
//! and is not scored). Every sequence runs alone (B = 1) through `Model::forward` with a fresh KV
//! cache: the logits of one 512-token SmolLM2 sequence already take 100 MB, close to common GPU
//! binding limits.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::data::text::{self, Source};
use crate::device::Device;
use crate::error::{io_at, Error, Result};
use crate::model::{tokenizer::Tokenizer, Model};
use crate::ops::cross_entropy;
use crate::tensor::Tensor;
use crate::train::data::{self, make_batch, Example, TokenStats};

/// The settings of one perplexity run; stored in the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PplConfig {
    pub model: String,
    pub data: String,
    pub max_len: usize,
    /// JSONL prompt/completion lines: score only the completion (and EOS).
    pub mask_prompt: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PplReport {
    /// Sequences scored (JSONL lines, or .txt windows).
    pub sequences: usize,
    /// JSONL lines cut to max_len.
    pub truncated: usize,
    /// Tokens scored: the count the mean is over.
    pub tokens: usize,
    pub mean_nll: f64,
    pub perplexity: f64,
    pub secs: f64,
}

/// The sequences to score in `path`: windows of a .txt file, else JSONL examples.
pub fn sequences(tok: &Tokenizer, path: &Path, max_len: usize, mask_prompt: bool) -> Result<(Vec<Example>, TokenStats)> {
    if path.extension().is_some_and(|e| e == "txt") {
        if max_len < 2 {
            return Err(Error::InvalidArgument { flag: "--max-len", detail: format!("{max_len}: need at least 2 tokens to predict one") });
        }
        let text = std::fs::read_to_string(path).map_err(io_at(path, "read"))?;
        let ids = tok.encode(&text, true)?;
        let windows: Vec<Example> = ids.chunks(max_len).map(|w| Example { ids: w.to_vec(), train_from: 0 }).collect();
        let stats = TokenStats {
            examples: windows.len(),
            truncated: 0,
            tokens: ids.len(),
            target_tokens: windows.iter().map(Example::targets).sum(),
            without_targets: windows.iter().filter(|w| w.targets() == 0).count(),
        };
        return Ok((windows, stats));
    }
    let texts = text::load(&Source::Jsonl(path.to_path_buf()), Path::new("."))?;
    data::tokenize(tok, &texts, max_len, mask_prompt)
}

/// Sum of the per-token NLL (f64) and the number of tokens scored. `progress(done, total)`.
pub async fn nll_sum(dev: &Device, model: &Model, seqs: &[Example], progress: &mut dyn FnMut(usize, usize)) -> Result<(f64, usize)> {
    let (mut sum, mut n) = (0f64, 0usize);
    for (i, e) in seqs.iter().enumerate() {
        progress(i, seqs.len());
        if e.targets() == 0 {
            continue;
        }
        let batch = make_batch(&[e], 0);
        let mut cache = model.new_cache(dev, 1, batch.t);
        let logits = model.forward(dev, &batch.ids, &mut cache, true)?; // [T, V]
        let targets = Tensor::from_u32(dev, "ppl.targets", &[batch.t], &batch.targets)?;
        let (loss, _) = cross_entropy::forward(dev, &logits, &targets)?;
        // Ignored rows hold 0, so the row sum is the sequence's total NLL.
        sum += loss.to_vec_f32(dev).await?.iter().map(|&l| l as f64).sum::<f64>();
        n += batch.n_targets;
    }
    progress(seqs.len(), seqs.len());
    Ok((sum, n))
}

/// Scores `cfg.data`, prints nothing, writes `out/summary.json` (config and report).
pub async fn run(
    dev: &Device,
    model: &Model,
    tok: &Tokenizer,
    out: &Path,
    cfg: &PplConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PplReport> {
    if cfg.max_len > model.cfg.max_pos {
        return Err(Error::InvalidArgument {
            flag: "--max-len",
            detail: format!("{} is above the model's {} positions; use at most {}", cfg.max_len, model.cfg.max_pos, model.cfg.max_pos),
        });
    }
    if out.join("config.json").exists() {
        return Err(Error::InvalidArgument {
            flag: "--out",
            detail: format!("{} holds a pass@k evaluation; use another directory for perplexity", out.display()),
        });
    }
    let path = Path::new(&cfg.data);
    let t0 = Instant::now();
    let (seqs, stats) = sequences(tok, path, cfg.max_len, cfg.mask_prompt)?;
    if stats.target_tokens == 0 {
        return Err(Error::InvalidArgument {
            flag: "--data",
            detail: format!(
                "{} has no tokens to score ({} sequences, {} tokens): it is empty, or every completion is masked or truncated away; \
                 check the file, raise --max-len, or score prompts too",
                path.display(),
                stats.examples,
                stats.tokens
            ),
        });
    }
    let (sum, n) = nll_sum(dev, model, &seqs, progress).await?;
    let mean_nll = sum / n as f64;
    if !mean_nll.is_finite() {
        // serde_json writes NaN and inf as `null`: a summary must never carry that silently.
        return Err(Error::Config {
            file: cfg.model.clone(),
            detail: format!(
                "the mean NLL over {n} tokens of {} is {mean_nll}: the model produces non-finite logits, so there is no perplexity to report; \
                 check its weights (and the adapter's) for values that overflow",
                path.display()
            ),
        });
    }
    let report = PplReport {
        sequences: stats.examples,
        truncated: stats.truncated,
        tokens: n,
        mean_nll,
        perplexity: mean_nll.exp(),
        secs: t0.elapsed().as_secs_f64(),
    };
    std::fs::create_dir_all(out).map_err(io_at(out, "create"))?;
    let text = serde_json::to_string_pretty(&serde_json::json!({"config": cfg, "report": report})).expect("summary serializes");
    crate::model::load::write_atomic(&out.join("summary.json"), text.as_bytes())?;
    Ok(report)
}
