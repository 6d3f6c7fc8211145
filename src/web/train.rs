//! Fine-tuning in the page: the browser's side of `train::session::Session`, the in-memory run
//! that `flexlora train` drives natively. The page sends the settings (a `TrainConfig` as JSON,
//! absent fields at their defaults) and the data (JSONL text, `{"prompt","completion"}` or
//! `{"text"}` lines, as natively); a fresh adapter is attached to the loaded model, kept in the
//! engine's adapter set (so the chat uses it as soon as it exists) and trained by the same steps
//! as natively. `train_steps` queues steps and reads their numbers back once.

use serde_json::json;
use wasm_bindgen::prelude::*;

use super::{bad, js, put, take, Engine, Loaded, WASM_MEMORY_LIMIT};
use crate::device::Device;
use crate::model::load::peft;
use crate::train::adapter::AdapterStore;
use crate::train::config::TrainConfig;
use crate::train::data::{self, Cursor, Example};
use crate::train::memory::{self, Estimate};
use crate::train::optimizer;
use crate::train::session::{Continue, Session};
use crate::train::state::{Checkpoint, ModelId, Progress};

/// A run in the page: its settings, its session and the adapter (index in the engine's adapter
/// set) it trains.
pub(super) struct Training {
    cfg: TrainConfig,
    session: Session,
    adapter: usize,
    /// Seconds spent in steps (checkpoints carry it).
    elapsed_s: f64,
}

fn now_s() -> f64 {
    js_sys::Date::now() / 1000.0
}

/// Starts a run: parses the settings and the data, tokenizes it with the model's tokenizer and
/// template, attaches a fresh adapter named `name` (and applies it) and returns the run as JSON:
/// examples, tokens, steps, trainable parameters and the adapter's index. A run already started
/// is replaced (its adapter stays loaded).
#[wasm_bindgen]
pub fn train_start(name: String, config_json: String, data_jsonl: String, data_name: String) -> Result<String, JsValue> {
    let mut e = take()?;
    let r = start(&mut e, &name, &config_json, &data_jsonl, &data_name);
    put(e);
    r
}

fn start(e: &mut Engine, name: &str, config_json: &str, data_jsonl: &str, data_name: &str) -> Result<String, JsValue> {
    e.training = None;
    let mut cfg: TrainConfig = serde_json::from_str(config_json).map_err(|err| bad(format!("training settings: {err}")))?;
    cfg.data = data_name.to_string();
    // The run trains the model as loaded; its checkpoint says so, for a native `--resume`.
    if let Some(l) = &e.loaded {
        cfg.weights = l.weights;
    }
    cfg.lora.targets.sort_by_key(|t| t.index());
    cfg.lora.targets.dedup();
    cfg.validate().map_err(js)?;
    let dev = &e.dev;
    let l = e.loaded.as_mut().ok_or_else(|| bad("load a model before training"))?;
    let (examples, stats) = examples(l, &cfg, data_jsonl, data_name)?;
    let estimate = check_memory(dev, l, &cfg, &examples)?;
    let lora = cfg.lora.clone();
    let seed = cfg.seed;
    let adapter = l
        .adapters
        .load(&mut l.model, name, |m| {
            m.attach_lora(dev, &lora, seed)?;
            Ok(lora.clone())
        })
        .map_err(js)?;
    l.adapters.activate(&mut l.model, Some(adapter)).map_err(js)?;
    let pad = l.tok.eos.first().copied().unwrap_or(0);
    let session = Session::new(dev, &l.model, &cfg, examples, pad, 1, None).map_err(js)?;
    let out = run_json(
        l,
        &session,
        adapter,
        &estimate,
        json!({ "truncated": stats.truncated, "tokens": stats.tokens, "target_tokens": stats.target_tokens }),
    );
    e.training = Some(Training { cfg, session, adapter, elapsed_s: 0.0 });
    Ok(out.to_string())
}

/// The examples of `data_jsonl` with a target, tokenized as `cfg` says.
fn examples(l: &Loaded, cfg: &TrainConfig, data_jsonl: &str, data_name: &str) -> Result<(Vec<Example>, data::TokenStats), JsValue> {
    let texts = crate::data::text::parse_jsonl(data_jsonl, data_name).map_err(js)?;
    let (examples, stats) = data::tokenize(&l.tok, &texts, cfg.max_len, cfg.mask_prompt).map_err(js)?;
    let examples: Vec<_> = examples.into_iter().filter(|x| x.targets() > 0).collect();
    if examples.is_empty() {
        return Err(bad(format!(
            "{data_name}: no example has a token to train on at max_len {} (raise it, or check the file)",
            cfg.max_len
        )));
    }
    Ok((examples, stats))
}

/// The run's memory (`train::memory::of_run`), refused before anything is allocated when it
/// cannot fit: on the CPU backend, WebAssembly memory in use now plus what training adds must stay
/// under wasm32's 4 GiB; on WebGPU, its largest buffer under the adapter's binding limit.
fn check_memory(dev: &Device, l: &Loaded, cfg: &TrainConfig, examples: &[Example]) -> Result<Estimate, JsValue> {
    let threads = match dev {
        Device::Cpu(_) => crate::device::cpu::threads(),
        Device::Gpu(_) => 1,
    };
    let est = memory::of_run(&l.model, cfg, examples, threads);
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let fix = "lower the batch size or max tokens (or the rank), or pick shorter examples";
    match dev {
        Device::Cpu(_) => {
            let used = core::arch::wasm32::memory_size::<0>() as u64 * 65536;
            if used + est.training() > WASM_MEMORY_LIMIT {
                return Err(bad(format!(
                    "this run needs {} — {:.0} MiB for training on top of the {:.0} MiB of WebAssembly memory in use, over the {:.0} MiB a wasm32 page can address; {fix}",
                    est,
                    mib(est.training()),
                    mib(used),
                    mib(WASM_MEMORY_LIMIT)
                )));
            }
        }
        Device::Gpu(g) => {
            let limit = g.limits.max_storage_buffer_binding_size as u64;
            if est.largest_buffer > limit {
                return Err(bad(format!(
                    "this run needs {}, and one buffer of {:.0} MiB, over this WebGPU adapter's limit of {:.0} MiB per buffer; {fix}",
                    est,
                    mib(est.largest_buffer),
                    mib(limit)
                )));
            }
        }
    }
    Ok(est)
}

/// The run as the page shows it.
fn run_json(l: &Loaded, session: &Session, adapter: usize, est: &Estimate, extra: serde_json::Value) -> serde_json::Value {
    let (trainable, total) = l.model.trainable_params();
    let mut out = json!({
        "adapter": adapter,
        "examples": session.examples().len(),
        "step": session.step,
        "total_steps": session.total_steps,
        "trainable_params": trainable,
        "total_params": total,
        "memory": { "total": est.total(), "training": est.training(), "weights": est.weights, "largest_buffer": est.largest_buffer, "text": est.to_string() },
    });
    if let (Some(o), Some(x)) = (out.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    out
}

/// Runs up to `n` optimizer steps (fewer at the run's end) and reads their numbers back once:
/// JSON `{"steps": [{step, loss, grad_norm, flex_penalty, lr, tokens, targets, seconds}], "done",
/// "step", "total_steps"}`. A step whose loss or gradient norm is not finite is an error after the
/// reports of the steps before it (the adapter keeps the last good step's weights).
#[wasm_bindgen]
pub async fn train_steps(n: u32) -> Result<String, JsValue> {
    let mut e = take()?;
    let r = steps(&mut e, n as usize).await;
    put(e);
    r
}

async fn steps(e: &mut Engine, n: usize) -> Result<String, JsValue> {
    let dev = &e.dev;
    let t = e.training.as_mut().ok_or_else(|| bad("no training run: call train_start first"))?;
    let l = e.loaded.as_mut().ok_or_else(|| bad("no model loaded"))?;
    if l.adapters.active() != Some(t.adapter) {
        return Err(bad("the adapter being trained is not the applied one: apply it (set_adapter) before training on"));
    }
    let n = n.max(1).min(t.session.total_steps - t.session.step.min(t.session.total_steps));
    t.session.set_readback_every(dev, n).map_err(js)?;
    let t0 = now_s();
    for _ in 0..n {
        let (session, model, cfg) = (&mut t.session, &mut l.model, &t.cfg);
        dev.on_pool(|| session.queue(dev, model, cfg)).map_err(js)?;
    }
    let mut flushed = t.session.flush(dev).await.map_err(js)?;
    // After the read-back: on WebGPU the steps run while it waits.
    let secs = now_s() - t0;
    flushed.share_seconds(secs);
    t.elapsed_s += secs;
    let out = json!({
        "steps": flushed.reports,
        "done": t.session.done(),
        "step": t.session.step,
        "total_steps": t.session.total_steps,
    });
    match flushed.error {
        Some(err) => Err(bad(format!("{err} (steps before it: {out})"))),
        None => Ok(out.to_string()),
    }
}

/// The trained adapter as PEFT's two files: `{"config": adapter_config.json text, "weights":
/// adapter_model.safetensors bytes}`, what `flexlora generate --adapter DIR` and PEFT load.
#[wasm_bindgen]
pub async fn train_adapter_files() -> Result<JsValue, JsValue> {
    let mut e = take()?;
    let r = adapter_files(&mut e).await;
    put(e);
    r
}

async fn adapter_files(e: &mut Engine) -> Result<JsValue, JsValue> {
    let t = e.training.as_ref().ok_or_else(|| bad("no training run"))?;
    let l = e.loaded.as_mut().ok_or_else(|| bad("no model loaded"))?;
    if l.adapters.active() != Some(t.adapter) {
        return Err(bad("apply the trained adapter (set_adapter) before saving it"));
    }
    let (config, weights) = peft::files(&e.dev, &l.model, &l.name).await.map_err(js)?;
    let out = js_sys::Object::new();
    js_sys::Reflect::set(&out, &"config".into(), &config.into())?;
    js_sys::Reflect::set(&out, &"weights".into(), &js_sys::Uint8Array::from(weights.as_slice()).into())?;
    Ok(out.into())
}

/// The run's whole state as one `checkpoint.safetensors` (`train::state`), the file `flexlora
/// train` writes natively: adapter, optimizer moments (and Sophia's Hessian estimate), step, data
/// cursor, settings and the model's identity. `flexlora train --resume FILE --out DIR` continues it.
#[wasm_bindgen]
pub async fn train_checkpoint() -> Result<Vec<u8>, JsValue> {
    let mut e = take()?;
    let r = checkpoint(&mut e).await;
    put(e);
    r
}

async fn checkpoint(e: &mut Engine) -> Result<Vec<u8>, JsValue> {
    let dev = &e.dev;
    let t = e.training.as_ref().ok_or_else(|| bad("no training run"))?;
    let l = e.loaded.as_ref().ok_or_else(|| bad("no model loaded"))?;
    if l.adapters.active() != Some(t.adapter) {
        return Err(bad("apply the trained adapter (set_adapter) before saving the run"));
    }
    let lora = l.model.lora.clone().ok_or_else(|| bad("the model has no adapter"))?;
    let mut optimizer = Vec::new();
    for (name, tensor) in t.session.named_state() {
        optimizer.push((name, tensor.shape().to_vec(), tensor.to_vec_f32(dev).await.map_err(js)?));
    }
    let cursor = t.session.cursor();
    let ck = Checkpoint {
        progress: Progress {
            step: t.session.step,
            total_steps: t.session.total_steps,
            epoch: cursor.epoch,
            index: cursor.index,
            tokens: t.session.tokens,
            elapsed_s: t.elapsed_s,
        },
        config: serde_json::to_value(&t.cfg).map_err(|err| bad(format!("the run settings: {err}")))?,
        lora,
        model: ModelId::of(&l.model.cfg, Some(l.fingerprint.clone()), Some(l.name.clone())),
        state_names: t.session.state_names().iter().map(|s| s.to_string()).collect(),
        adapter: peft::host_tensors(dev, &l.model).await.map_err(js)?,
        optimizer,
    };
    ck.encode().map_err(js)
}

/// Continues a run from a `checkpoint.safetensors` (written natively or by `train_checkpoint`) on
/// the loaded model, with the same data (JSONL text) it trained on: its settings, adapter,
/// optimizer state, step and data cursor are the checkpoint's. A checkpoint for another model is
/// refused naming both. Returns the run as `train_start` does.
#[wasm_bindgen]
pub fn train_resume(name: String, checkpoint: Vec<u8>, data_jsonl: String, data_name: String) -> Result<String, JsValue> {
    let mut e = take()?;
    let r = resume(&mut e, &name, &checkpoint, &data_jsonl, &data_name);
    put(e);
    r
}

fn resume(e: &mut Engine, name: &str, bytes: &[u8], data_jsonl: &str, data_name: &str) -> Result<String, JsValue> {
    e.training = None;
    let dev = &e.dev;
    let l = e.loaded.as_mut().ok_or_else(|| bad("load the model the run was trained on first"))?;
    let origin = name;
    let mut ck = Checkpoint::decode(origin, bytes).map_err(js)?;
    ck.check_model(origin, &ModelId::of(&l.model.cfg, Some(l.fingerprint.clone()), Some(l.name.clone()))).map_err(js)?;
    let cfg: TrainConfig = serde_json::from_value(ck.config.clone()).map_err(|err| bad(format!("{origin}: its run settings: {err}")))?;
    cfg.validate().map_err(js)?;
    if cfg.weights != l.weights {
        return Err(bad(format!(
            "{origin}: the run trained over `{}` weights but the model is loaded with `{}`; load it with weights `{}` to continue",
            cfg.weights.name(),
            l.weights.name(),
            cfg.weights.name()
        )));
    }
    let opt = optimizer::from_config(&cfg);
    ck.check_tensors(origin, &l.model.cfg, opt.state_names()).map_err(js)?;
    let (examples, stats) = examples(l, &cfg, data_jsonl, data_name)?;
    let estimate = check_memory(dev, l, &cfg, &examples)?;
    let mut tensors = ck.take_adapter();
    let lora = ck.lora.clone();
    let adapter = l
        .adapters
        .load(&mut l.model, name, |m| {
            m.attach_lora_from(dev, &lora, origin, &mut |n| Ok(tensors.remove(n)))?;
            Ok(lora.clone())
        })
        .map_err(js)?;
    l.adapters.activate(&mut l.model, Some(adapter)).map_err(js)?;
    let store = AdapterStore::load(dev, &l.model, opt.as_ref(), origin, ck.take_optimizer()).map_err(js)?;
    let p = &ck.progress;
    let from = Continue { step: p.step, tokens: p.tokens, cursor: Cursor { epoch: p.epoch, index: p.index }, store };
    let pad = l.tok.eos.first().copied().unwrap_or(0);
    let session = Session::new(dev, &l.model, &cfg, examples, pad, 1, Some(from)).map_err(js)?;
    if session.total_steps != p.total_steps {
        return Err(bad(format!(
            "{origin}: the run has {} steps, but its settings give {} over this data ({data_name}): resume with the data it was trained on",
            p.total_steps, session.total_steps
        )));
    }
    let out = run_json(
        l,
        &session,
        adapter,
        &estimate,
        json!({ "truncated": stats.truncated, "tokens": stats.tokens, "target_tokens": stats.target_tokens, "config": ck.config }),
    );
    e.training = Some(Training { cfg, session, adapter, elapsed_s: p.elapsed_s });
    Ok(out.to_string())
}

/// Ends the run: its adapter stays in the adapter set (the chat can use it), its optimizer state
/// is dropped.
#[wasm_bindgen]
pub fn train_stop() -> Result<(), JsValue> {
    let mut e = take()?;
    e.training = None;
    put(e);
    Ok(())
}
