//! One training run held in memory: the tokenized examples and the seeded loader over them, the
//! optimizer, the adapter's training state, the step log and the step counters. `queue` runs one
//! optimizer step (`step::step`) without waiting on the device; `flush` reads the queued steps'
//! numbers back at once. No file system and no clock: the native trainer (`run::Trainer`) adds
//! data files, checkpoints, validation and timing around it, and the browser (`web::train`) its
//! page; both therefore take the same steps.

use serde::{Deserialize, Serialize};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::weights::Model;
use crate::tensor::Tensor;
use crate::train::adapter::AdapterStore;
use crate::train::config::TrainConfig;
use crate::train::data::{self, Cursor, Example, Loader};
use crate::train::optimizer::{self, Optimizer};
use crate::train::step::{self, StepLog, StepSettings};

/// What one optimizer step did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub step: usize,
    pub loss: f64,
    pub lr: f32,
    pub grad_norm: f64,
    /// FLeX penalty λ·mean_W penalty(W) (before the step), when the mode is not `off`.
    pub flex_penalty: Option<f64>,
    /// Tokens in the step's batches (padding excluded) and the targets among them.
    pub tokens: usize,
    pub targets: usize,
    pub seconds: f64,
}

/// A step queued but not read back yet: what the host knows of it (the device holds the rest).
struct Queued {
    lr: f32,
    tokens: usize,
    targets: usize,
}

/// What `Session::flush` read back: the reports of the queued steps up to the first that failed,
/// and that step's error (`Error::Training`): it and every step queued after it changed no
/// adapter tensor.
pub struct Flushed {
    pub reports: Vec<StepReport>,
    pub error: Option<Error>,
    /// Steps read back (the reports, the failed one and the ones after it).
    pub steps: usize,
}

impl Flushed {
    /// Gives each step an equal share of `seconds`, the wall time of the interval up to the read-back.
    pub fn share_seconds(&mut self, seconds: f64) {
        let each = seconds / self.steps.max(1) as f64;
        for r in &mut self.reports {
            r.seconds = each;
        }
    }
}

/// Where a run continues from: a checkpoint's step counters, data cursor and optimizer state.
pub struct Continue {
    pub step: usize,
    pub tokens: u64,
    pub cursor: Cursor,
    pub store: AdapterStore,
}

pub struct Session {
    examples: Vec<Example>,
    loader: Loader,
    opt: Box<dyn Optimizer>,
    /// Every adapter tensor's gradient and optimizer state.
    store: AdapterStore,
    log: StepLog,
    queued: Vec<Queued>,
    /// The padding token of batches.
    pad: u32,
    /// Optimizer steps done (queued ones included).
    pub step: usize,
    pub total_steps: usize,
    /// Tokens trained on (queued steps included).
    pub tokens: u64,
}

/// Optimizer steps of a run over `n_examples`: `cfg.steps`, or `cfg.epochs` passes.
pub fn total_steps(cfg: &TrainConfig, n_examples: usize) -> usize {
    let per_step = (cfg.batch_size * cfg.grad_accum).max(1);
    if cfg.steps > 0 {
        cfg.steps
    } else {
        (n_examples * cfg.epochs).div_ceil(per_step)
    }
}

impl Session {
    /// A run of `cfg` over `examples` (each with a target) for `model`, whose adapter is attached;
    /// from its start, or from `from`. The step log holds `readback_every` steps.
    pub fn new(
        dev: &Device,
        model: &Model,
        cfg: &TrainConfig,
        examples: Vec<Example>,
        pad: u32,
        readback_every: usize,
        from: Option<Continue>,
    ) -> Result<Session> {
        if examples.is_empty() {
            return Err(Error::InvalidArgument { flag: "--data", detail: format!("`{}` has no example to train on", cfg.data) });
        }
        if model.lora.is_none() {
            return Err(Error::InvalidArgument { flag: "--lora-rank", detail: "the model has no adapter to train".into() });
        }
        let opt = optimizer::from_config(cfg);
        let (step, tokens, cursor, store) = match from {
            Some(c) => (c.step, c.tokens, c.cursor, c.store),
            None => (0, 0, Cursor { epoch: 0, index: 0 }, AdapterStore::new(dev, model, opt.as_ref())),
        };
        let total_steps = total_steps(cfg, examples.len());
        Ok(Session {
            loader: Loader::new(examples.len(), cfg.seed, cursor),
            examples,
            opt,
            store,
            log: StepLog::new(dev, readback_every)?,
            queued: Vec::new(),
            pad,
            step,
            total_steps,
            tokens,
        })
    }

    pub fn done(&self) -> bool {
        self.step >= self.total_steps
    }

    /// The data loader's position: the next step's first example.
    pub fn cursor(&self) -> Cursor {
        self.loader.cursor()
    }

    /// The padding token of batches.
    pub fn pad(&self) -> u32 {
        self.pad
    }

    pub fn examples(&self) -> &[Example] {
        &self.examples
    }

    /// The optimizer state as (checkpoint name, tensor) (`AdapterStore::named_state`).
    pub fn named_state(&self) -> Vec<(String, &Tensor)> {
        self.store.named_state()
    }

    /// The optimizer's state names, in `named_state` order within each tensor (`m`, `v` / `m`, `h`).
    pub fn state_names(&self) -> &'static [&'static str] {
        self.opt.state_names()
    }

    /// Steps queued and not read back yet.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Steps the log holds between read-backs.
    pub fn readback_every(&self) -> usize {
        self.log.capacity()
    }

    /// Changes how many steps are queued between read-backs; only with none queued.
    pub fn set_readback_every(&mut self, dev: &Device, every: usize) -> Result<()> {
        if every.max(1) == self.log.capacity() {
            return Ok(());
        }
        if !self.queued.is_empty() {
            return Err(Error::Optimizer { op: "set_readback_every", detail: "steps are queued".into(), hint: "flush first" });
        }
        self.log = StepLog::new(dev, every)?;
        Ok(())
    }

    /// Runs the next optimizer step over `cfg.grad_accum` micro-batches of `cfg.batch_size`
    /// examples (`step::step`) without reading anything back; `flush` returns its report.
    pub fn queue(&mut self, dev: &Device, model: &mut Model, cfg: &TrainConfig) -> Result<()> {
        let mut tokens = 0;
        let micro: Vec<data::Batch> = (0..cfg.grad_accum)
            .map(|_| {
                let idx = self.loader.next_indices(cfg.batch_size);
                let refs: Vec<&Example> = idx.iter().map(|&i| &self.examples[i]).collect();
                tokens += refs.iter().map(|e| e.ids.len()).sum::<usize>();
                data::make_batch(&refs, self.pad)
            })
            .collect();
        let targets: usize = micro.iter().map(|b| b.n_targets).sum();
        let lr = cfg.lr_at(self.step, self.total_steps);
        let settings = StepSettings { step: self.step, seed: cfg.seed, lr, clip: cfg.clip, recompute: cfg.recompute, flex: &cfg.flex };
        step::step(dev, model, &mut self.store, self.opt.as_ref(), &micro, &settings, &mut self.log)?;
        self.step += 1;
        self.tokens += tokens as u64;
        self.queued.push(Queued { lr, tokens, targets });
        Ok(())
    }

    /// Reads back the queued steps' numbers (one read-back) and returns their reports; their
    /// `seconds` are 0 until the caller, whose clock this is, shares out the interval's wall time
    /// measured after this read-back (`Flushed::share_seconds`): on a GPU the steps run while it waits.
    pub async fn flush(&mut self, dev: &Device) -> Result<Flushed> {
        let logged = self.log.read(dev).await?;
        let queued = std::mem::take(&mut self.queued);
        let reports = logged
            .steps
            .iter()
            .zip(&queued)
            .map(|(o, q)| StepReport {
                step: o.step,
                loss: o.loss,
                lr: q.lr,
                grad_norm: o.grad_norm,
                flex_penalty: o.flex_penalty,
                tokens: q.tokens,
                targets: q.targets,
                seconds: 0.0,
            })
            .collect();
        Ok(Flushed { reports, error: logged.error, steps: queued.len() })
    }
}
