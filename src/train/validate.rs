//! Validation during training: the held-out examples (`val_data`, by default the first
//! `val_limit` tasks of MBPP's validation split 511-600 when training on MBPP's train split) and
//! their loss under the adapter being trained.
//!
//! The loss is the training loss's, measured the way evaluation sees the model: the same
//! tokenization, template and prompt mask, no dropout, no gradient. It reads the model and
//! nothing else: no random stream, no data-loader state, no optimizer state, so a run validated
//! every step takes the same updates as one never validated, and a resumed run still repeats an
//! uninterrupted one bit for bit.

use std::path::Path;
use std::time::Instant;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::Model;
use crate::train::config::TrainConfig;
use crate::train::data::{self, Example};
use crate::train::grad::Options;
use crate::train::metrics::ValReport;

/// The held-out examples of a run, tokenized.
pub struct ValSet {
    /// The source as given (`mbpp:validation`, a JSONL path).
    pub name: String,
    pub examples: Vec<Example>,
}

/// The source `cfg.val_data` names: `auto` is MBPP's validation split when the run trains on
/// MBPP's train split, else none (the held-out split of a custom file is the user's to name);
/// `none` turns validation off, as does `val_every = 0`.
pub fn source(cfg: &TrainConfig) -> Option<String> {
    if cfg.val_every == 0 {
        return None;
    }
    match cfg.val_data.as_str() {
        "none" | "" => None,
        "auto" => matches!(cfg.data.as_str(), "mbpp" | "mbpp:train").then(|| "mbpp:validation".to_string()),
        other => Some(other.to_string()),
    }
}

/// Loads and tokenizes the validation set of `cfg` (its first `val_limit` examples with a
/// target, in file order, so every validation of a run scores the same examples).
pub fn load(tok: &Tokenizer, cfg: &TrainConfig, data_dir: &Path) -> Result<Option<ValSet>> {
    let Some(name) = source(cfg) else { return Ok(None) };
    let src = crate::data::text::Source::parse(&name).map_err(|_| Error::InvalidArgument {
        flag: "--val-data",
        detail: format!("`{name}`: name an MBPP split (mbpp:validation) or a JSONL file, or `none`"),
    })?;
    let texts = crate::data::text::load(&src, data_dir)?;
    let (examples, _) = data::tokenize(tok, &texts, cfg.max_len, cfg.mask_prompt)?;
    let mut examples: Vec<Example> = examples.into_iter().filter(|e| e.targets() > 0).collect();
    if cfg.val_limit > 0 {
        examples.truncate(cfg.val_limit);
    }
    if examples.is_empty() {
        return Err(Error::InvalidArgument {
            flag: "--val-data",
            detail: format!(
                "`{name}` has no example with a token to score at --max-len {}; name another set, or turn validation off with --val-every 0",
                cfg.max_len
            ),
        });
    }
    Ok(Some(ValSet { name, examples }))
}

/// The mean loss per target token of `set` after step `step`, in micro-batches of `batch_size`
/// (`pad` fills the shorter rows, as in training). Only each layer's input is kept (no backward
/// follows), so validation needs less memory than a training micro-batch of the same size.
/// The losses are read back once, after the last batch.
pub async fn loss(dev: &Device, model: &Model, set: &ValSet, batch_size: usize, pad: u32, step: usize) -> Result<ValReport> {
    let t0 = Instant::now();
    let (mut losses, mut tokens) = (Vec::new(), 0usize);
    for chunk in set.examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = data::make_batch(&refs, pad);
        // Dropout off: the adapter as evaluation and generation use it.
        let opts = Options { recompute: true, dropout_seed: None, all_logits: false };
        let fwd = model.forward_train(dev, &batch.ids, &batch.targets, batch.b, opts)?;
        losses.push(fwd.loss);
        tokens += batch.n_targets;
    }
    // Ignored rows hold 0, so the sum is the set's total NLL.
    let mut sum = 0f64;
    for l in &losses {
        sum += l.to_vec_f32(dev).await?.iter().map(|&l| l as f64).sum::<f64>();
    }
    let val_loss = sum / tokens.max(1) as f64;
    if !val_loss.is_finite() {
        return Err(Error::Training {
            step,
            detail: format!("the validation loss on {} is {val_loss}", set.name),
            hint: "the adapter overflows on held-out data; resume from an earlier checkpoint with a lower --lr".into(),
        });
    }
    Ok(ValReport { step, val_loss, val_tokens: tokens, val_examples: set.examples.len(), seconds: t0.elapsed().as_secs_f64() })
}
