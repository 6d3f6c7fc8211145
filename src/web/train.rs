//! Fine-tuning in the page: the browser's side of `train::session::Session`, the in-memory run
//! that `flexlora train` drives natively. The page sends the settings (a `TrainConfig` as JSON,
//! absent fields at their defaults) and the data (JSONL text, `{"prompt","completion"}` or
//! `{"text"}` lines, as natively); a fresh adapter is attached to the loaded model, kept in the
//! engine's adapter set (so the chat uses it as soon as it exists) and trained by the same steps
//! as natively. `train_steps` queues steps and reads their numbers back once.

use serde_json::json;
use wasm_bindgen::prelude::*;

use super::{bad, js, put, take, Engine};
use crate::model::load::peft;
use crate::train::config::TrainConfig;
use crate::train::data;
use crate::train::session::Session;

/// A run in the page: its settings, its session and the adapter (index in the engine's adapter
/// set) it trains.
pub(super) struct Training {
    cfg: TrainConfig,
    session: Session,
    adapter: usize,
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
    cfg.lora.targets.sort_by_key(|t| t.index());
    cfg.lora.targets.dedup();
    cfg.validate().map_err(js)?;
    let dev = &e.dev;
    let l = e.loaded.as_mut().ok_or_else(|| bad("load a model before training"))?;
    let texts = crate::data::text::parse_jsonl(data_jsonl, data_name).map_err(js)?;
    let (examples, stats) = data::tokenize(&l.tok, &texts, cfg.max_len, cfg.mask_prompt).map_err(js)?;
    let examples: Vec<_> = examples.into_iter().filter(|x| x.targets() > 0).collect();
    if examples.is_empty() {
        return Err(bad(format!(
            "{data_name}: no example has a token to train on at max_len {} (raise it, or check the file)",
            cfg.max_len
        )));
    }
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
    let (trainable, total) = l.model.trainable_params();
    let out = json!({
        "adapter": adapter,
        "examples": session.examples().len(),
        "truncated": stats.truncated,
        "tokens": stats.tokens,
        "target_tokens": stats.target_tokens,
        "total_steps": session.total_steps,
        "trainable_params": trainable,
        "total_params": total,
    });
    e.training = Some(Training { cfg, session, adapter });
    Ok(out.to_string())
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
    let flushed = t.session.flush(dev, now_s() - t0).await.map_err(js)?;
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

/// Ends the run: its adapter stays in the adapter set (the chat can use it), its optimizer state
/// is dropped.
#[wasm_bindgen]
pub fn train_stop() -> Result<(), JsValue> {
    let mut e = take()?;
    e.training = None;
    put(e);
    Ok(())
}
