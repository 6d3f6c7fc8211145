//! Training data in memory: text examples (`data::text`) tokenized with a loss mask, batches in
//! the model's input layout, and a seeded, resumable epoch order.
//!
//! Flow: `data::text::load` -> `tokenize` -> (`Loader::next_indices` -> `make_batch`) per step.
//! Owns data only: it never touches a device, the model or the file system.

use serde::{Deserialize, Serialize};

use crate::data::text::TextExample;
use crate::error::{Error, Result};
use crate::model::tokenizer::Tokenizer;
use crate::ops::cross_entropy::IGNORE;
use crate::rng::Rng;

/// One tokenized example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// Index of the first position whose token is trained (the prompt length, BOS included, when
    /// the prompt is masked; 0 if unmasked). May equal `ids.len()` when truncation left no
    /// completion token.
    pub train_from: usize,
}

impl Example {
    /// Positions that get a target: token p is predicted at position p - 1, so position 0 never is.
    pub fn targets(&self) -> usize {
        self.ids.len().saturating_sub(self.train_from.max(1))
    }
}

/// Counts from `tokenize`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TokenStats {
    pub examples: usize,
    /// Examples cut to `max_len` (their start kept).
    pub truncated: usize,
    /// Tokens after truncation.
    pub tokens: usize,
    /// Tokens that are predicted and trained (what the loss averages over).
    pub target_tokens: usize,
    /// Examples left with no target (prompt masked, completion truncated away); training skips them.
    pub without_targets: usize,
}

/// BOS when the tokenizer adds one (its own post-processing, the rule generation and eval use, so
/// training sees the prompt the way eval gives it), the prompt ids, the completion ids, then the
/// tokenizer's first EOS when it has one, so the model learns to stop. Prompt and completion are
/// encoded separately so the mask boundary falls between tokens. Longer than `max_len`: the start
/// is kept.
pub fn tokenize(tok: &Tokenizer, texts: &[TextExample], max_len: usize, mask_prompt: bool) -> Result<(Vec<Example>, TokenStats)> {
    if max_len < 2 {
        return Err(Error::InvalidArgument { flag: "--max-len", detail: format!("{max_len}: need at least 2 tokens to predict one") });
    }
    let mut stats = TokenStats { examples: texts.len(), ..TokenStats::default() };
    let mut out = Vec::with_capacity(texts.len());
    for t in texts {
        let mut ids = tok.encode(&t.prompt, true)?;
        let prompt_len = ids.len();
        ids.extend(tok.encode(&t.completion, false)?);
        ids.extend(tok.eos.first());
        if ids.len() > max_len {
            ids.truncate(max_len);
            stats.truncated += 1;
        }
        let e = Example { train_from: if mask_prompt { prompt_len.min(ids.len()) } else { 0 }, ids };
        stats.tokens += e.ids.len();
        stats.target_tokens += e.targets();
        stats.without_targets += usize::from(e.targets() == 0);
        out.push(e);
    }
    Ok((out, stats))
}

/// A batch in the model's input layout: ids [B, T] row-major (right-padded with `pad`), targets
/// [B, T] where targets[b,t] = ids[b,t+1] when position t+1 is trained, else
/// `cross_entropy::IGNORE`; the last position and pads are IGNORE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub ids: Vec<u32>,
    pub targets: Vec<u32>,
    pub b: usize,
    pub t: usize,
    /// Targets that are not IGNORE.
    pub n_targets: usize,
}

/// T = the longest example in the batch. Right padding is safe under causal attention: real
/// positions never attend to the pads after them.
pub fn make_batch(examples: &[&Example], pad: u32) -> Batch {
    let (b, t) = (examples.len(), examples.iter().map(|e| e.ids.len()).max().unwrap_or(0));
    let mut ids = vec![pad; b * t];
    let mut targets = vec![IGNORE; b * t];
    let mut n_targets = 0;
    for (i, e) in examples.iter().enumerate() {
        let row = i * t;
        ids[row..row + e.ids.len()].copy_from_slice(&e.ids);
        for p in e.train_from.max(1)..e.ids.len() {
            targets[row + p - 1] = e.ids[p];
            n_targets += 1;
        }
    }
    Batch { ids, targets, b, t, n_targets }
}

/// A position in the training order: the next example is the `index`-th of epoch `epoch`'s
/// shuffle. Stored in checkpoints so a resumed run continues exactly.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: u64,
    pub index: usize,
}

/// Deterministic epoch order: epoch e is a Fisher-Yates shuffle driven by `Rng` seeded from
/// (seed, e) alone, so any cursor rebuilds its epoch without replaying earlier ones.
#[derive(Debug, Clone)]
pub struct Loader {
    n: usize,
    seed: u64,
    epoch: u64,
    index: usize,
    order: Vec<usize>,
}

impl Loader {
    /// A cursor past the end of its epoch (e.g. saved at an epoch boundary) starts the next epoch.
    pub fn new(n_examples: usize, seed: u64, cursor: Cursor) -> Self {
        let mut l = Loader { n: n_examples, seed, epoch: cursor.epoch, index: cursor.index, order: Vec::new() };
        if l.index >= n_examples && n_examples > 0 {
            l.epoch += 1;
            l.index = 0;
        }
        l.order = l.shuffle(l.epoch);
        l
    }

    fn shuffle(&self, epoch: u64) -> Vec<usize> {
        // A distinct odd multiplier spreads consecutive epochs far apart in splitmix64's sequence.
        let mut rng = Rng::new(self.seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let mut order: Vec<usize> = (0..self.n).collect();
        for i in (1..self.n).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        order
    }

    /// The next `batch_size` example indices; at the end of an epoch it wraps to the next epoch's
    /// shuffle (a batch may hold the last examples of one epoch and the first of the next).
    /// Empty when there are no examples.
    pub fn next_indices(&mut self, batch_size: usize) -> Vec<usize> {
        if self.n == 0 {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(batch_size);
        while out.len() < batch_size {
            let take = (batch_size - out.len()).min(self.n - self.index);
            out.extend_from_slice(&self.order[self.index..self.index + take]);
            self.index += take;
            if self.index == self.n {
                self.epoch += 1;
                self.index = 0;
                self.order = self.shuffle(self.epoch);
            }
        }
        out
    }

    pub fn cursor(&self) -> Cursor {
        Cursor { epoch: self.epoch, index: self.index }
    }
}
