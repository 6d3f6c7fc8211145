//! The training loop: batches from the data loader, forward and backward per micro-batch with
//! gradients accumulated on the device, the FLeX penalty, global-norm clipping, one optimizer step,
//! metrics, checkpoints. `Trainer` is one run; `run` drives it to the end with metrics, the loss
//! curve and a summary in the output directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::data::text::{self, Source};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::load;
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::Model;
use crate::train::adapter::AdapterStore;
use crate::train::checkpoint::{self, State};
use crate::train::config::TrainConfig;
use crate::train::data::{self, Example, TokenStats};
use crate::train::memory::{self, Estimate};
use crate::train::metrics::{EvalRecord, History, Record, ValReport};
use crate::train::optimizer;
use crate::train::session::{self, Continue, Session};
use crate::train::state::{Checkpoint, ModelId};
use crate::train::validate::{self, ValSet};

pub use crate::train::session::{Flushed, StepReport};

pub struct Trainer {
    pub dev: Device,
    pub model: Model,
    pub cfg: TrainConfig,
    pub stats: TokenStats,
    /// The run in memory: examples, loader, optimizer, adapter state, step log and counters.
    pub session: Session,
    pub elapsed_s: f64,
    /// The checkpoint this run resumed from.
    pub resumed_from: Option<PathBuf>,
    /// The model's fingerprint, saved with every checkpoint.
    model_fingerprint: Option<String>,
    /// The held-out examples validated every `cfg.val_every` steps (`validate`), if any.
    pub val: Option<ValSet>,
    /// When the first step queued since the last read-back started.
    interval_start: Option<Instant>,
    /// The memory the run was estimated to need (`memory::estimate`) before it started.
    pub memory: Estimate,
}

impl Trainer {
    /// Sets up a run: a fresh adapter in an `out` that holds no run yet, or the state of the
    /// checkpoint `resume` points at. A resumed run writes into the run directory that holds that
    /// checkpoint (never the `out` saved in it), keeps its saved settings except
    /// `TrainConfig::RESUMABLE` ones (any other difference in `cfg` is refused, listed), and must
    /// be given the model it was trained on (shape and fingerprint checked).
    pub fn new(dev: Device, model: Model, tok: &Tokenizer, mut cfg: TrainConfig, resume: Option<&Path>) -> Result<Trainer> {
        let mut model = model;
        // One order for targets (PEFT's config lists them as a set): resume compares configs.
        cfg.lora.targets.sort_by_key(|t| t.index());
        cfg.lora.targets.dedup();
        let mut resumed = None;
        let mut state = None;
        let mut model_fingerprint = None;
        let mut saved_optimizer = None;
        if let Some(path) = resume {
            let r = resume_settings(path)?;
            let (ckpt, st, mut saved) = (r.checkpoint, r.state, r.saved);
            let origin = checkpoint::origin(&ckpt);
            let fail = |detail: String| Error::Checkpoint { path: origin.clone(), detail };
            let changed = r.config.differences(&cfg, &TrainConfig::RESUMABLE);
            let changed: Vec<String> = changed.into_iter().filter(|d| !d.starts_with("out:")).collect();
            if !changed.is_empty() {
                return Err(fail(format!(
                    "a resumed run keeps its settings, but these differ from the checkpoint's: {}. Only {} may change on resume; \
                     drop the other flags (or undo the config edit), or start a new run with another --out",
                    changed.join("; "),
                    TrainConfig::RESUMABLE.join(", ")
                )));
            }
            let out = match r.out {
                Some(out) => out,
                None => lone_checkpoint_out(&ckpt, &cfg.out)?,
            };
            let fp = crate::model::load::fingerprint::model(&cfg.model)?;
            saved.check_model(&origin, &ModelId::of(&model.cfg, Some(fp.clone()), Some(cfg.model.display().to_string())))?;
            model_fingerprint = Some(fp);
            let resumable = cfg;
            cfg = st.config.clone();
            cfg.take_resumable(&resumable);
            cfg.out = out;
            cfg.validate()?;
            saved.check_tensors(&origin, &model.cfg, optimizer::from_config(&cfg).state_names())?;
            if saved.lora != cfg.lora {
                return Err(fail(format!("its adapter ({:?}) differs from its saved config ({:?})", saved.lora, cfg.lora)));
            }
            let mut adapter = saved.take_adapter();
            model.attach_lora_from(&dev, &saved.lora, &origin, &mut |name| Ok(adapter.remove(name)))?;
            saved_optimizer = Some((origin, saved.take_optimizer()));
            resumed = Some(ckpt);
            state = Some(st);
        } else {
            cfg.validate()?;
            check_new_out(&cfg.out)?;
            check_adapter_size(&model, &cfg)?;
            model.attach_lora(&dev, &cfg.lora, cfg.seed)?;
        }
        checkpoint::remove_leftovers(&cfg.out.join("checkpoints"))?;
        let data_dir = crate::data::data_dir(cfg.data_dir.clone());
        let texts = text::load(&Source::parse(&cfg.data)?, &data_dir)?;
        let (examples, stats) = data::tokenize(tok, &texts, cfg.max_len, cfg.mask_prompt)?;
        if examples.is_empty() {
            return Err(Error::InvalidArgument { flag: "--data", detail: format!("`{}` has no examples", cfg.data) });
        }
        // An example with no target adds nothing to the loss or the gradient: leave it out, so no
        // step averages over zero targets and logs a loss of 0 that trained nothing.
        let examples: Vec<Example> = examples.into_iter().filter(|e| e.targets() > 0).collect();
        if examples.is_empty() {
            return Err(Error::InvalidArgument {
                flag: "--max-len",
                detail: format!(
                    "no example of `{}` has a token to train on: at --max-len {} every completion is {}; raise --max-len{}",
                    cfg.data,
                    cfg.max_len,
                    if cfg.mask_prompt { "masked (prompt) or truncated away" } else { "truncated away" },
                    if cfg.mask_prompt { ", or train on prompts too with --no-mask-prompt" } else { "" }
                ),
            });
        }
        let val = validate::load(tok, &cfg, &data_dir)?;
        let memory = check_step_memory(&dev, &model, &cfg, &examples)?;
        let total_steps = session::total_steps(&cfg, examples.len());
        if let Some(st) = &state {
            if total_steps < st.step {
                return Err(Error::InvalidArgument {
                    flag: "--steps",
                    detail: format!(
                        "the run has done {} steps already, more than the {total_steps} asked for; ask for at least {}",
                        st.step, st.step
                    ),
                });
            }
        }
        let opt = optimizer::from_config(&cfg);
        let from = match (saved_optimizer, &state) {
            (Some((origin, saved)), Some(st)) => Some(Continue {
                step: st.step,
                tokens: st.tokens,
                cursor: st.cursor.clone(),
                store: AdapterStore::load(&dev, &model, opt.as_ref(), &origin, saved)?,
            }),
            _ => None,
        };
        let pad = tok.eos.first().copied().unwrap_or(0);
        let model_fingerprint = match model_fingerprint {
            Some(f) => Some(f),
            None => crate::model::load::fingerprint::model(&cfg.model).ok(),
        };
        // Reading back costs nothing on the CPU; on a GPU each read-back drains the queue.
        let readback_every = if matches!(dev, Device::Cpu(_)) { 1 } else { 10 };
        let session = Session::new(&dev, &model, &cfg, examples, pad, readback_every, from)?;
        Ok(Trainer {
            session,
            interval_start: None,
            dev,
            model,
            stats,
            elapsed_s: state.as_ref().map_or(0.0, |s| s.elapsed_s),
            resumed_from: resumed,
            model_fingerprint,
            memory,
            val,
            cfg,
        })
    }

    pub fn done(&self) -> bool {
        self.session.done()
    }

    /// Optimizer steps done (queued ones included) and in all.
    pub fn steps(&self) -> (usize, usize) {
        (self.session.step, self.session.total_steps)
    }

    /// One optimizer step over `grad_accum` micro-batches (`step::step`), read back at once.
    pub async fn step(&mut self) -> Result<StepReport> {
        self.queue()?;
        let Flushed { mut reports, error, .. } = self.flush().await?;
        match (error, reports.pop()) {
            (Some(e), _) => Err(e),
            (None, Some(r)) => Ok(r),
            (None, None) => Err(Error::Optimizer { op: "step", detail: "the step left no report".into(), hint: "a bug: please report it" }),
        }
    }

    /// Runs one optimizer step without reading anything back (`Session::queue`); `flush`
    /// returns its report.
    pub fn queue(&mut self) -> Result<()> {
        self.interval_start.get_or_insert_with(Instant::now);
        self.session.queue(&self.dev, &mut self.model, &self.cfg)
    }

    /// Reads back the queued steps' numbers (one read-back) and returns their reports; each
    /// step's seconds are the interval's wall time shared equally. A step whose loss or gradient
    /// norm was not finite ends the list with its error (`Error::Training`, naming the last good
    /// checkpoint): it and every step queued after it changed no adapter tensor.
    pub async fn flush(&mut self) -> Result<Flushed> {
        let mut flushed = self.session.flush(&self.dev).await?;
        let seconds = self.interval_start.take().map_or(0.0, |t| t.elapsed().as_secs_f64());
        flushed.share_seconds(seconds);
        self.elapsed_s += seconds;
        if let Some(Error::Training { step, detail, .. }) = flushed.error.take() {
            let last = checkpoint::list(&self.cfg.out.join("checkpoints"))?.pop();
            let hint = match last {
                Some((s, p)) => format!("The last good checkpoint (step {s}) is {}; resume from it with a lower --lr", p.display()),
                None => "No checkpoint was written yet; lower --lr or check the data".into(),
            };
            flushed.error = Some(Error::Training { step, detail, hint });
        }
        Ok(flushed)
    }

    /// The loss on the validation set now (`validate::loss`); `None` when the run has none.
    pub async fn validate(&self) -> Result<Option<ValReport>> {
        let Some(set) = &self.val else { return Ok(None) };
        let pad = self.session.pad();
        validate::loss(&self.dev, &self.model, set, self.cfg.batch_size, pad, self.session.step).await.map(Some)
    }

    /// Writes a checkpoint of the current step.
    pub async fn save(&self) -> Result<PathBuf> {
        let state = State {
            step: self.session.step,
            total_steps: self.session.total_steps,
            cursor: self.session.cursor(),
            tokens: self.session.tokens,
            elapsed_s: self.elapsed_s,
            model_shape: format!("{:?}", self.model.cfg),
            model_fingerprint: self.model_fingerprint.clone(),
            model_path: std::path::absolute(&self.cfg.model).ok(),
            config: self.cfg.clone(),
        };
        checkpoint::save(
            &self.dev,
            &self.cfg.out.join("checkpoints"),
            &self.model,
            &self.session.named_state(),
            self.session.state_names(),
            &state,
            self.cfg.keep_checkpoints,
        )
        .await
    }
}

/// What `--resume PATH` continues: the checkpoint (a step directory or a `checkpoint.safetensors`
/// file), its state, the run directory that holds it (where the resumed run writes), and the
/// run's settings: the checkpoint's, with the `TrainConfig::RESUMABLE` ones taken from the run's
/// `config.toml` when it was edited there. An edit of any other setting in `config.toml` is
/// refused, listed.
pub struct Resume {
    pub checkpoint: PathBuf,
    pub state: State,
    /// The whole saved state, tensors included.
    pub saved: Checkpoint,
    /// The run directory holding the checkpoint; `None` for a checkpoint outside any run's
    /// `checkpoints/` folder (a copied step directory, a file downloaded from the browser page):
    /// that run continues in `--out`, a directory that holds no run (`config.out` is left empty
    /// for the flag to fill).
    pub out: Option<PathBuf>,
    pub config: TrainConfig,
}

pub fn resume_settings(path: &Path) -> Result<Resume> {
    let checkpoint = checkpoint::resolve(path)?;
    let (state, saved) = checkpoint::read(&checkpoint)?;
    let out = checkpoint::run_dir(&checkpoint);
    let mut config = state.config.clone();
    let toml_path = out.as_ref().map(|o| o.join("config.toml")).filter(|p| p.exists());
    if let Some(toml_path) = toml_path {
        let edited = TrainConfig::from_toml(&toml_path)?;
        let mut except: Vec<&str> = TrainConfig::RESUMABLE.to_vec();
        except.push("out");
        let changed = config.differences(&edited, &except);
        if !changed.is_empty() {
            return Err(Error::Config {
                file: toml_path.display().to_string(),
                detail: format!(
                    "edited since checkpoint {} was written ({}); a resumed run keeps its settings, only {} may change. \
                     Undo the edit, or start a new run with another --out",
                    checkpoint.display(),
                    changed.join("; "),
                    TrainConfig::RESUMABLE.join(", ")
                ),
            });
        }
        config.take_resumable(&edited);
    }
    config.out = out.clone().unwrap_or_default();
    Ok(Resume { checkpoint, state, saved, out, config })
}

/// Where a run resumed from a checkpoint outside any run directory writes: `out` (`--out`), which
/// must be given and must hold no run (its checkpoints would mix with the resumed run's).
fn lone_checkpoint_out(ckpt: &Path, out: &Path) -> Result<PathBuf> {
    let fail = |detail: String| Error::Checkpoint { path: ckpt.display().to_string(), detail };
    let why = "it is not inside a run's checkpoints/ folder, so the resumed run needs a directory of its own";
    if out.as_os_str().is_empty() {
        return Err(fail(format!("{why}: pass --out DIR, a directory that holds no run")));
    }
    check_new_out(out).map_err(|e| fail(format!("{why} (--out), but {e}")))?;
    Ok(out.to_path_buf())
}

/// A new run needs an `out` that holds no run: a second run there would mix its checkpoints
/// and metrics with the first one's (and `--resume` would then continue the wrong one).
fn check_new_out(out: &Path) -> Result<()> {
    let mut found: Vec<&str> =
        ["metrics.jsonl", "summary.json", "config.toml", "adapter"].into_iter().filter(|f| out.join(f).exists()).collect();
    if std::fs::read_dir(out.join("checkpoints")).is_ok_and(|mut d| d.next().is_some()) {
        found.push("checkpoints/");
    }
    if found.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidArgument {
        flag: "--out",
        detail: format!(
            "{} already holds a training run ({}); continue it with --resume {}, or choose another --out for a new run",
            out.display(),
            found.join(", "),
            out.display()
        ),
    })
}

/// Bytes of memory available for a run on `dev`: the host's available memory for the CPU
/// backend (Linux), unknown elsewhere.
fn available_bytes(dev: &Device) -> Option<u64> {
    if !matches!(dev, Device::Cpu(_)) {
        return None;
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Refuses an adapter rank above the width of a layer it adapts (a rank past min(in, out) adds
/// parameters but no capacity) or one whose training state would not fit in memory, before any of
/// it is allocated.
fn check_adapter_size(model: &Model, cfg: &TrainConfig) -> Result<()> {
    if model.layers.is_empty() {
        return Ok(());
    }
    for &t in &cfg.lora.targets {
        let s = model.linear(0, t).weight.shape();
        let most = s[0].min(s[1]);
        if cfg.lora.rank > most {
            return Err(Error::InvalidArgument {
                flag: "--lora-rank",
                detail: format!(
                    "{} is above {most}, the smaller side of {} [{}, {}]; use a rank of at most {most}",
                    cfg.lora.rank,
                    t.name(),
                    s[0],
                    s[1]
                ),
            });
        }
    }
    Ok(())
}

/// Estimates the run's memory (`memory::estimate`, with the worst micro-batch of `examples`: the
/// longest sequence, and the most targets any `batch_size` examples have) and refuses a run whose
/// training part (the model is loaded already) cannot fit in the memory available, before
/// allocating any of it: a failed allocation would abort the process without a word.
fn check_step_memory(dev: &Device, model: &Model, cfg: &TrainConfig, examples: &[Example]) -> Result<Estimate> {
    let longest = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let threads = if matches!(dev, Device::Cpu(_)) { rayon::current_num_threads() } else { 1 };
    let est = memory::of_run(model, cfg, examples, threads);
    let Some(have) = available_bytes(dev) else { return Ok(est) };
    if est.training() <= have {
        return Ok(est);
    }
    let gib = |x: u64| x as f64 / (1u64 << 30) as f64;
    let (b, t) = (cfg.batch_size, longest);
    let (flag, what) = if est.adapter > have {
        ("--lora-rank", format!("the adapter's training state alone takes {:.1} GiB", gib(est.adapter)))
    } else {
        (
            "--batch-size",
            format!("a micro-batch of {b} sequences of up to {t} tokens needs about {:.1} GiB", gib(est.training() - est.adapter)),
        )
    };
    Err(Error::InvalidArgument {
        flag,
        detail: format!(
            "{what}, {:.1} GiB in all, but only {:.1} GiB of memory is available; lower --batch-size (and raise --grad-accum to keep the \
             effective batch), --max-len or --lora-rank, or pass --recompute",
            gib(est.training()),
            gib(have)
        ),
    })
}

/// Where `run` reports progress.
pub enum Event<'a> {
    Started { trainer: &'a Trainer },
    Step(&'a StepReport),
    Validated(&'a ValReport),
    Evaluated(&'a EvalRecord),
    Saved(&'a Path),
}

/// A check of the adapter being trained that `run_with` makes every `every` steps and at the
/// run's last step, its record written into `metrics.jsonl`: pass@1 during training
/// (`flexlora train --eval-every`, `eval::during_training`). A hook, so that `train` does not
/// depend on `eval`.
pub struct Probe<'a> {
    pub every: usize,
    pub check: &'a mut dyn FnMut(&Trainer) -> Result<EvalRecord>,
}

/// The run's end: what `run` writes to `<out>/summary.json`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub steps: usize,
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
    pub tokens: u64,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub peak_rss_mib: Option<f64>,
    pub trainable_params: usize,
    pub total_params: usize,
    pub adapter: PathBuf,
    /// The validation with the lowest loss over the whole run (resumed parts included).
    pub best_val: Option<ValReport>,
}

/// Loads the model named by `cfg` on `dev` in the configured weight format, with its tokenizer.
pub fn load_model(dev: &Device, cfg: &TrainConfig) -> Result<(Model, Tokenizer)> {
    load::open(dev, &cfg.model, cfg.weights.format())
}

/// Trains to the end: metrics to `<out>/metrics.jsonl` (one line per step, per validation, per
/// probe; lines past a resumed checkpoint are dropped first, so none is written twice),
/// checkpoints, the final adapter in `<out>/adapter`, the loss curve `<out>/loss.svg` (redrawn at
/// every validation and checkpoint) and `<out>/summary.json`.
pub async fn run(tr: Trainer, on: &mut dyn FnMut(Event<'_>)) -> Result<Summary> {
    run_with(tr, None, on).await
}

/// `run` with a `probe` of the adapter every `probe.every` steps.
/// Steps are queued and read back every `Session::readback_every` steps, and before a validation, a
/// probe, a checkpoint and the end; each read-back then records and reports its steps in order.
pub async fn run_with(mut tr: Trainer, mut probe: Option<Probe<'_>>, on: &mut dyn FnMut(Event<'_>)) -> Result<Summary> {
    let out = tr.cfg.out.clone();
    std::fs::create_dir_all(&out).map_err(crate::error::io_at(&out, "create"))?;
    load::write_atomic(&out.join("config.toml"), tr.cfg.to_toml().as_bytes())?;
    let metrics_path = out.join("metrics.jsonl");
    let svg_path = out.join("loss.svg");
    let mut history = crate::train::metrics::read(&metrics_path, tr.session.step)?;
    crate::train::metrics::rewrite(&metrics_path, &history)?;
    let mut metrics =
        std::fs::OpenOptions::new().append(true).create(true).open(&metrics_path).map_err(crate::error::io_at(&metrics_path, "open"))?;
    let mut record = |history: &mut History, r: Record| -> Result<()> {
        metrics.write_all(crate::train::metrics::line(&r).as_bytes()).map_err(crate::error::io_at(&metrics_path, "append to"))?;
        history.records.push(r);
        Ok(())
    };
    on(Event::Started { trainer: &tr });
    let t0 = Instant::now();
    let tokens0 = tr.session.tokens;
    while !tr.done() {
        tr.queue()?;
        // Every N steps and at the end; 0 = never. Both before the checkpoint: a run killed
        // between them resumes from the checkpoint before and redoes them once.
        let (done, step) = (tr.done(), tr.session.step);
        let due = |every: usize| every > 0 && (done || step.is_multiple_of(every));
        let save = done || due(tr.cfg.save_every);
        let probing = probe.as_ref().is_some_and(|p| due(p.every));
        if save || probing || due(tr.cfg.val_every) || tr.session.queued() >= tr.session.readback_every() {
            let Flushed { reports, error, .. } = tr.flush().await?;
            for report in reports {
                record(&mut history, Record::Step(report.clone()))?;
                on(Event::Step(&report));
            }
            if let Some(e) = error {
                return Err(e);
            }
        }
        let mut redraw = false;
        if due(tr.cfg.val_every) {
            if let Some(v) = tr.validate().await? {
                record(&mut history, Record::Val(v.clone()))?;
                on(Event::Validated(&v));
                redraw = true;
            }
        }
        if let Some(p) = probe.as_mut().filter(|p| due(p.every)) {
            let e = (p.check)(&tr)?;
            record(&mut history, Record::Eval(e.clone()))?;
            on(Event::Evaluated(&e));
        }
        if save {
            let p = tr.save().await?;
            on(Event::Saved(&p));
            redraw = true;
        }
        if redraw {
            load::write_atomic(&svg_path, crate::train::metrics::loss_svg(&history).as_bytes())?;
        }
    }
    let adapter = out.join("adapter");
    load::peft::save(&tr.dev, &tr.model, &adapter, &tr.cfg.model.display().to_string()).await?;
    load::write_atomic(&svg_path, crate::train::metrics::loss_svg(&history).as_bytes())?;
    let seconds = t0.elapsed().as_secs_f64();
    let (trainable, total) = tr.model.trainable_params();
    let steps = history.steps();
    let summary = Summary {
        steps: tr.session.step,
        first_loss: steps.first().map(|r| r.loss),
        final_loss: steps.last().map(|r| r.loss),
        tokens: tr.session.tokens,
        seconds,
        tokens_per_s: (tr.session.tokens - tokens0) as f64 / seconds.max(1e-9),
        peak_rss_mib: crate::train::metrics::peak_rss().map(|b| b as f64 / (1 << 20) as f64),
        trainable_params: trainable,
        total_params: total,
        adapter,
        best_val: history.best_validation().cloned(),
    };
    load::write_atomic(&out.join("summary.json"), serde_json::to_string_pretty(&summary).unwrap_or_default().as_bytes())?;
    Ok(summary)
}
