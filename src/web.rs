//! The browser API (wasm-bindgen), called from the page's Web Worker (`web/worker.js`). It holds
//! no behaviour of its own: device selection, GGUF parsing, the tokenizer, model loading, adapters
//! and generation are the library's code, exactly as the native commands run them. This file
//! only turns JavaScript arguments into library calls and results into JSON.
//!
//! State lives in one engine per worker (a thread-local): the device, the model with its
//! tokenizer, the loaded adapters, the running generation and the fine-tuning run (`train`). The worker calls one function at a
//! time (it queues messages), so a call never finds the engine busy; if it did, the call fails
//! with "busy" rather than blocking.

use std::cell::RefCell;

#[cfg(target_feature = "atomics")]
pub mod threads;
pub mod train;

use serde_json::json;
use wasm_bindgen::prelude::*;

use crate::device::{self, Device, DeviceChoice};
use crate::model::adapter_set::AdapterSet;
use crate::model::generate::{GenerateOptions, Sampling, Stream};
use crate::model::load::{gguf_model, peft, GgufFile};
use crate::model::tokenizer::Tokenizer;
use crate::model::weights::{tensor_names, Model, WeightFormat, WeightSource};
use crate::ops::matmul;
use crate::Tensor;

fn js(e: crate::Error) -> JsValue {
    JsValue::from_str(&e.to_string())
}

fn bad(detail: impl Into<String>) -> JsValue {
    JsValue::from_str(&detail.into())
}

struct Loaded {
    name: String,
    /// `load::fingerprint::model_bytes` of the file, the identity training checkpoints record.
    fingerprint: String,
    /// How its weights were loaded: a training run here records it, and resumes only onto it.
    weights: crate::model::Weights,
    model: Model,
    tok: Tokenizer,
    adapters: AdapterSet,
}

struct Engine {
    dev: Device,
    device_reason: String,
    loaded: Option<Loaded>,
    stream: Option<Stream>,
    /// The fine-tuning run of the loaded model, if one was started (`train`).
    training: Option<train::Training>,
}

thread_local! {
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
}

/// Takes the engine out for the length of an (async) call and puts it back after, so no borrow
/// is held across an await.
fn take() -> Result<Engine, JsValue> {
    ENGINE.with(|e| e.borrow_mut().take()).ok_or_else(|| bad("no device: call init_device first (or a previous call is still running)"))
}

fn put(e: Engine) {
    ENGINE.with(|slot| *slot.borrow_mut() = Some(e));
}

fn loaded(e: &mut Engine) -> Result<&mut Loaded, JsValue> {
    e.loaded.as_mut().ok_or_else(|| bad("no model loaded"))
}

/// Runs `f` on the engine and puts the engine back whatever `f` returns.
async fn with_engine<T, F>(f: impl FnOnce(Engine) -> F) -> Result<T, JsValue>
where
    F: std::future::Future<Output = (Engine, Result<T, JsValue>)>,
{
    let e = take()?;
    let (e, r) = f(e).await;
    put(e);
    r
}

/// Opens a device: `"cpu"` (the CPU backend in WebAssembly), `"webgpu"` (the browser's adapter,
/// software ones included) or `"auto"` (a hardware GPU when the browser has one, else the CPU
/// backend, which is faster than a GPU emulated on the CPU). A loaded model is dropped: the page
/// loads it again on the new device. Returns JSON: name, kind, the reason, and the adapter's
/// limits for WebGPU.
#[wasm_bindgen]
pub async fn init_device(choice: String) -> Result<String, JsValue> {
    let choice = match choice.as_str() {
        "cpu" => DeviceChoice::Cpu,
        "webgpu" | "gpu" => DeviceChoice::Gpu,
        "auto" => DeviceChoice::Auto,
        other => return Err(bad(format!("unknown device `{other}`: use auto, webgpu or cpu"))),
    };
    ENGINE.with(|e| e.borrow_mut().take());
    let sel = device::select(choice, None).await.map_err(js)?;
    let info = device_json(&sel.device, &sel.reason);
    put(Engine { dev: sel.device, device_reason: sel.reason, loaded: None, stream: None, training: None });
    Ok(info.to_string())
}

fn device_json(dev: &Device, reason: &str) -> serde_json::Value {
    let mut v = json!({ "name": dev.name(), "kind": dev.kind(), "reason": reason });
    if let Some(g) = dev.gpu() {
        let l = g.device.limits();
        v["limits"] = json!({
            "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
            "max_buffer_size": l.max_buffer_size,
            "max_compute_workgroup_size_x": l.max_compute_workgroup_size_x,
            "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
            "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
            "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
        });
        v["features"] = json!({
            "shader_f16": g.device.features().contains(wgpu::Features::SHADER_F16),
            "subgroups": g.device.features().contains(wgpu::Features::SUBGROUP),
        });
    } else {
        v["threads"] = json!(crate::device::cpu::threads());
        v["threaded_build"] = json!(cfg!(target_feature = "atomics"));
        v["simd128"] = json!(cfg!(target_feature = "simd128"));
    }
    v
}

/// The device's description as JSON (see [`init_device`]).
#[wasm_bindgen]
pub fn device_info() -> Result<String, JsValue> {
    let e = take()?;
    let v = device_json(&e.dev, &e.device_reason);
    put(e);
    Ok(v.to_string())
}

/// Reports each tensor as the loader takes it, so the page can show progress.
struct Progress<'a> {
    inner: &'a mut dyn WeightSource,
    done: usize,
    total: usize,
    report: &'a js_sys::Function,
}

impl WeightSource for Progress<'_> {
    fn origin(&self) -> String {
        self.inner.origin()
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn get(&mut self, name: &str) -> crate::Result<(Vec<usize>, Vec<f32>)> {
        let got = self.inner.get(name);
        self.tick(name);
        got
    }
    fn get_blocks(&mut self, name: &str) -> crate::Result<Option<(crate::model::load::GgmlType, Vec<usize>, Vec<u8>)>> {
        let got = self.inner.get_blocks(name)?;
        if got.is_some() {
            self.tick(name); // otherwise the loader asks `get` next, which counts it
        }
        Ok(got)
    }
}

impl Progress<'_> {
    fn tick(&mut self, name: &str) {
        self.done += 1;
        let _ = self.report.call3(
            &JsValue::NULL,
            &JsValue::from(self.done as u32),
            &JsValue::from(self.total as u32),
            &JsValue::from_str(name),
        );
    }
}

/// Parses a GGUF model from its bytes, builds its tokenizer and loads its weights on the device
/// as the native `--weights` flag does: `"auto"` (the file's own blocks, the page's default as
/// native's; on the CPU backend and on WebGPU), `"nf4"` (QLoRA's re-quantized base) or `"f32"`;
/// the same choice gives the same tokens natively and here. `progress(done, total, tensor)` is called per tensor. Any
/// adapters loaded for a previous model are dropped. Returns JSON describing the model.
#[wasm_bindgen]
pub async fn load_model(name: String, bytes: Vec<u8>, weights: String, progress: js_sys::Function) -> Result<String, JsValue> {
    use crate::model::Weights;
    let weights = match weights.as_str() {
        "nf4" => Weights::Nf4,
        "auto" => Weights::Auto,
        "f32" => Weights::F32,
        other => return Err(bad(format!("unknown weights `{other}`: use nf4, auto or f32"))),
    };
    let format = weights.format();
    with_engine(|mut e| async move {
        e.loaded = None;
        e.training = None;
        e.stream = None;
        let r = (|| -> Result<Loaded, JsValue> {
            let file_len = bytes.len() as u64;
            let fingerprint = crate::model::load::fingerprint::model_bytes(&name, &bytes);
            let file = GgufFile::from_bytes(name.clone(), bytes).map_err(js)?;
            let cfg = gguf_model::config(&file).map_err(js)?;
            check_fits(&name, file_len, &cfg, format, &e.dev).map_err(bad)?;
            let tok = gguf_model::tokenizer(&file, &cfg).map_err(js)?;
            let total = tensor_names(&cfg).len();
            let mut src = gguf_model::GgufSource { file: &file, cfg: cfg.clone() };
            let mut src = Progress { inner: &mut src, done: 0, total, report: &progress };
            let model = Model::load(&e.dev, cfg, &mut src, format).map_err(js)?;
            Ok(Loaded { name: name.clone(), fingerprint, weights, model, tok, adapters: AdapterSet::new() })
        })();
        match r {
            Ok(l) => {
                let info = model_json(&l);
                e.loaded = Some(l);
                (e, Ok(info.to_string()))
            }
            Err(err) => (e, Err(err)),
        }
    })
    .await
}

/// All a wasm32 module addresses (65536 pages of 64 KiB); browsers may allow less.
const WASM_MEMORY_LIMIT: u64 = 4 << 30;

/// Refuses, before anything is allocated, a model whose weights as loaded cannot fit beside the
/// file's bytes in wasm32's 4 GiB: a lower bound (matrices by `format`, the embedding f32 except
/// under auto, the smallest 2-bit blocks for the file's own ones), so a model this passes may still run out of
/// memory, but one it refuses never fits. WebGPU keeps the weights in GPU buffers, not here.
fn check_fits(name: &str, file_len: u64, cfg: &crate::model::config::Config, format: WeightFormat, dev: &Device) -> Result<(), String> {
    if dev.gpu().is_some() {
        return Ok(());
    }
    let mut need = 0u64;
    for (tensor, shape) in tensor_names(cfg) {
        let n = shape.iter().product::<usize>() as u64;
        let (matrix, embedding) = (shape.len() == 2, tensor == "model.embed_tokens.weight");
        need += match (matrix, format) {
            (false, _) | (true, WeightFormat::F32) => 4 * n,
            // The embedding stays in blocks under auto, else f32.
            (true, WeightFormat::Nf4 { .. }) if embedding => 4 * n,
            (true, WeightFormat::Nf4 { blocksize }) => n / 2 + n / blocksize.max(1) as u64 * 4,
            (true, _) => n / 4,
        };
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if need + file_len > WASM_MEMORY_LIMIT {
        return Err(format!(
            "out of memory: {name} needs at least {:.2} GiB for its weights as loaded ({}) beside the file's {:.2} GiB, more than \
                 the {:.0} GiB a WebAssembly (wasm32) page can address; choose a smaller model, the GGUF's own weights \
                 (`auto`, on the CPU), or the WebGPU device",
            gib(need),
            weights_name(format),
            gib(file_len),
            gib(WASM_MEMORY_LIMIT)
        ));
    }
    Ok(())
}

fn weights_name(f: WeightFormat) -> &'static str {
    match f {
        WeightFormat::F32 => "f32",
        WeightFormat::Nf4 { .. } => "NF4",
        _ => "the GGUF's own blocks",
    }
}

/// Bytes of WebAssembly memory in use now and at most (for the page's out-of-memory messages).
#[wasm_bindgen]
pub fn memory_bytes() -> Vec<f64> {
    let now = core::arch::wasm32::memory_size::<0>() as f64 * 65536.0;
    vec![now, WASM_MEMORY_LIMIT as f64]
}

fn model_json(l: &Loaded) -> serde_json::Value {
    let c = &l.model.cfg;
    let (bytes, params) = l.model.weight_bytes();
    json!({
        "name": l.name,
        "arch": format!("{:?}", c.arch),
        "layers": c.layers, "width": c.c, "mlp_width": c.f, "heads": c.h, "kv_heads": c.kv,
        "vocab": c.vocab, "context": l.model.rope.max_pos,
        "params": params, "weight_bytes": bytes, "weights": weights_note(&l.model),
        "chat_template": l.tok.chat_template.is_some(),
        "adapters": l.adapters.list().iter().map(|(n, cfg)| json!({
            "name": n, "rank": cfg.rank, "alpha": cfg.alpha, "rslora": cfg.rslora,
            "targets": cfg.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "active_adapter": l.adapters.active(),
    })
}

/// How the frozen linear weights are held, for the page ("GGUF blocks (Q4_1)", "NF4").
fn weights_note(m: &Model) -> String {
    use crate::model::weights::Weight;
    let mut kinds: Vec<String> = Vec::new();
    for l in m.layers.iter().flat_map(|l| l.linears()) {
        let k = match &l.weight {
            Weight::F32(_) => "f32".to_string(),
            Weight::Nf4(_) => "NF4 (block 64)".to_string(),
            Weight::Gguf(g) => format!("{:?}", g.ty),
        };
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    let embedding = match &m.embed {
        Weight::Gguf(g) => format!("{:?}", g.ty),
        _ => "f32".to_string(),
    };
    format!("linears: {}; embedding {embedding}; norms f32", kinds.join(", "))
}

/// The loaded model as JSON (see [`load_model`]).
#[wasm_bindgen]
pub fn model_info() -> Result<String, JsValue> {
    let mut e = take()?;
    let r = loaded(&mut e).map(|l| model_json(l).to_string());
    put(e);
    r
}

/// Loads a PEFT adapter (`adapter_config.json` text and `adapter_model.safetensors` bytes) over
/// the model without applying it; returns its index. An adapter for another model (a missing
/// module, a wrong shape) is an error naming the tensor, and leaves the model as it was.
#[wasm_bindgen]
pub fn load_adapter(name: String, config_text: String, weights: Vec<u8>) -> Result<u32, JsValue> {
    let mut e = take()?;
    let dev = &e.dev;
    let r = match e.loaded.as_mut() {
        None => Err(bad("load a model before an adapter")),
        Some(l) => l.adapters.load(&mut l.model, &name, |m| peft::attach_bytes(dev, m, &name, &config_text, &weights)).map_err(js),
    };
    put(e);
    r.map(|i| i as u32)
}

/// Applies adapter `index`, or none (the base model) for a negative index.
#[wasm_bindgen]
pub fn set_adapter(index: i32) -> Result<(), JsValue> {
    let mut e = take()?;
    let r = loaded(&mut e).and_then(|l| l.adapters.activate(&mut l.model, usize::try_from(index).ok()).map_err(js));
    put(e);
    r
}

/// Generation options as the page sends them (JSON); absent fields take the native defaults.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    chat: bool,
    system: Option<String>,
    max_new_tokens: usize,
    temperature: f32,
    top_p: f32,
    top_k: usize,
    seed: u64,
    stop: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        let s = Sampling::default();
        Options {
            chat: false,
            system: None,
            max_new_tokens: 256,
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k,
            seed: s.seed,
            stop: vec![],
        }
    }
}

/// Token ids of `text` as the model sees a prompt (the tokenizer's special tokens added).
#[wasm_bindgen]
pub fn tokenize(text: String) -> Result<Vec<u32>, JsValue> {
    let mut e = take()?;
    let r = loaded(&mut e).and_then(|l| l.tok.encode(&text, true).map_err(js));
    put(e);
    r
}

/// Starts generating a continuation of `prompt` (options as JSON: chat, system, max_new_tokens,
/// temperature, top_p, top_k, seed, stop): runs the prompt and returns JSON with the prompt's
/// token count and prefill time. Then call [`next_token`] until it returns undefined.
#[wasm_bindgen]
pub async fn start(prompt: String, options: String) -> Result<String, JsValue> {
    let o: Options = serde_json::from_str(&options).map_err(|e| bad(format!("generation options: {e}")))?;
    with_engine(|mut e| async move {
        let r = async {
            let l = e.loaded.as_ref().ok_or_else(|| bad("no model loaded"))?;
            let text = if o.chat { l.tok.checked_chat_prompt(o.system.as_deref(), &prompt).map_err(js)? } else { prompt };
            let ids = l.tok.encode(&text, true).map_err(js)?;
            let opts = GenerateOptions {
                max_new_tokens: o.max_new_tokens,
                sampling: Sampling { temperature: o.temperature, top_p: o.top_p, top_k: o.top_k, seed: o.seed },
                stop: o.stop,
            };
            let s = Stream::start(&l.model, &e.dev, &ids, &opts).await.map_err(js)?;
            let info = json!({ "prompt_tokens": ids.len(), "prompt_ids": ids, "prefill_secs": s.timing.prefill_secs });
            Ok::<_, JsValue>((s, info))
        }
        .await;
        match r {
            Ok((s, info)) => {
                e.stream = Some(s);
                (e, Ok(info.to_string()))
            }
            Err(err) => (e, Err(err)),
        }
    })
    .await
}

/// The text the next token adds (possibly empty), or undefined once generation has ended.
#[wasm_bindgen]
pub async fn next_token() -> Result<Option<String>, JsValue> {
    with_engine(|mut e| async move {
        let r = match (e.stream.as_mut(), e.loaded.as_ref()) {
            (Some(s), Some(l)) => s.next(&l.model, &e.dev, &l.tok).await.map_err(js),
            _ => Err(bad("no generation running: call start first")),
        };
        (e, r)
    })
    .await
}

/// The running (or finished) generation as JSON: token ids, text, why it ended, and timing.
#[wasm_bindgen]
pub fn stream_info() -> Result<String, JsValue> {
    let e = take()?;
    let r = match (e.stream.as_ref(), e.loaded.as_ref()) {
        (Some(s), Some(l)) => s.state.text(&l.tok).map_err(js).map(|text| {
            let t = &s.timing;
            json!({
                "ids": s.state.ids, "text": text, "finish": s.state.finish,
                "prompt_tokens": t.prompt_tokens, "prefill_secs": t.prefill_secs,
                "generated_tokens": t.generated_tokens, "decode_secs": t.decode_secs,
            })
            .to_string()
        }),
        _ => Err(bad("no generation has run")),
    };
    put(e);
    r
}

/// Deterministic inputs in [-1, 1), so the page needs no randomness of its own.
fn inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = crate::rng::Rng::new(seed);
    (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect()
}

/// Runs one [m, k] x [k, n] matmul on WebGPU and on the CPU backend (in wasm) and returns a JSON
/// report: the adapter, the largest absolute difference, and the GPU time in milliseconds.
#[wasm_bindgen]
pub async fn matmul_check(m: usize, n: usize, k: usize, seed: u64) -> Result<String, JsValue> {
    let (a, b) = (inputs(m * k, seed), inputs(k * n, seed + 1));
    let gpu = device::select(DeviceChoice::Gpu, None).await.map_err(js)?.device;
    let cpu = Device::cpu();
    let run = |dev: &Device| -> crate::Result<Tensor> {
        let at = Tensor::from_f32(dev, "a", &[m, k], &a)?;
        let bt = Tensor::from_f32(dev, "b", &[k, n], &b)?;
        matmul::forward(dev, &at, &bt, false, false)
    };
    let t0 = js_sys::Date::now();
    let got = run(&gpu).map_err(js)?.to_vec_f32(&gpu).await.map_err(js)?;
    let gpu_ms = js_sys::Date::now() - t0;
    let want = run(&cpu).map_err(js)?.to_vec_f32(&cpu).await.map_err(js)?;
    let max_diff = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
    let max_ref = want.iter().fold(0f32, |a, w| a.max(w.abs()));
    Ok(json!({ "adapter": gpu.name(), "m": m, "n": n, "k": k, "max_abs_diff": max_diff, "max_abs_ref": max_ref, "gpu_ms": gpu_ms })
        .to_string())
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(s: &str);
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps a panic's message for the page (a panic in wasm surfaces in JavaScript only as
/// "unreachable executed"); the worker calls this once after loading the module.
#[wasm_bindgen]
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string();
        console_error(&msg);
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(msg));
    }));
}

/// The message of the last panic, if one happened (after which the module must be reloaded).
#[wasm_bindgen]
pub fn last_panic() -> Option<String> {
    LAST_PANIC.with(|p| p.borrow().clone())
}

/// `flexlora selftest` in the browser, on the same seeded cases: `backend` "webgpu" runs every op
/// forward and backward on this browser's WebGPU adapter against the CPU backend compiled to wasm;
/// "cpu" checks that CPU backend against the native one, given `native_dump` (the JSON `flexlora
/// selftest --dump FILE` writes; without it the column fails and says so); "all" does both.
/// Returns JSON: `columns` (label, open_error, outcomes: op, pass, max_err, secs, detail) in the
/// matrix's op order, and `passed`. A WebGPU adapter that does not open is a failed column.
/// Built only with the `web-selftest` feature, into web/pkg-selftest (see Cargo.toml).
#[cfg(feature = "web-selftest")]
#[wasm_bindgen]
pub async fn selftest(backend: String, native_dump: Option<String>) -> Result<String, JsValue> {
    use crate::selftest::{self as st, digest, Column};
    let (gpu, cpu) = match backend.as_str() {
        "webgpu" | "gpu" => (true, false),
        "cpu" => (false, true),
        "all" => (true, true),
        other => return Err(bad(format!("unknown selftest backend `{other}`: use webgpu, cpu or all"))),
    };
    let cases = st::cases();
    let reference = st::run_each(&cases, &Device::cpu()).await;
    let mut columns = Vec::new();
    if gpu {
        columns.push(match device::select(DeviceChoice::Gpu, None).await {
            Ok(sel) => {
                let ran = st::run_each(&cases, &sel.device).await;
                // Browsers may hide the adapter's name (Chromium does): then its type says what it is.
                let label = match sel.device.gpu().map(|g| &g.info) {
                    Some(i) if !i.name.is_empty() => format!("WebGPU: {} ({:?})", i.name, i.device_type),
                    Some(i) => format!("WebGPU ({:?} adapter, unnamed)", i.device_type),
                    None => "WebGPU".into(),
                };
                Column { label, outcomes: st::judge(&cases, &ran, &reference), open_error: None }
            }
            Err(e) => {
                Column { label: "WebGPU".into(), outcomes: vec![], open_error: Some(format!("this browser gave no WebGPU device: {e}")) }
            }
        });
    }
    if cpu {
        let simd = if cfg!(target_feature = "simd128") { "SIMD128" } else { "no SIMD" };
        let label = format!("wasm CPU ({simd}, {} threads)", crate::device::cpu::threads());
        let dump = native_dump
            .ok_or_else(|| "no native dump given: write one with `flexlora selftest --dump native.json` and choose it".to_string())
            .and_then(|text| digest::Dump::from_json("the native dump", &text).map_err(|e| e.to_string()));
        columns.push(match dump {
            Ok(d) => {
                Column { label: format!("{label} vs {}", d.made_by), outcomes: digest::judge(&cases, &reference, &d), open_error: None }
            }
            Err(e) => Column { label, outcomes: vec![], open_error: Some(e) },
        });
    }
    let passed = columns.iter().all(Column::passed);
    Ok(json!({ "columns": columns, "ops": cases.iter().map(|c| c.op).collect::<Vec<_>>(), "passed": passed }).to_string())
}
