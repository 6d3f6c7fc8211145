// The page: UI only. The model runs in ./worker.js (the flexlora library in WebAssembly); this file
// sends it requests and shows what comes back. `window.flexlora` exposes the same actions the
// buttons use, for the headless tests and the benchmark (web/tests/, web/bench.mjs).
const $ = (id) => document.getElementById(id);

// ---- the worker -------------------------------------------------------------------------------
let worker;
let nextId = 1;
const pending = new Map();
const listeners = new Set();

function startWorker() {
  worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = (ev) => {
    const m = ev.data;
    if (m.id !== undefined) {
      const p = pending.get(m.id);
      pending.delete(m.id);
      if (m.ok) p?.resolve(m.result); else p?.reject(new Error(m.error));
    } else if (m.event === 'engine-stopped') {
      showError(m.error);
    } else {
      for (const l of listeners) l(m);
    }
  };
  // The worker answers a trap itself; this is for a worker that could not even do that.
  worker.onerror = (e) => {
    const text = `the model worker failed: ${e.message ?? e}; reload the page`;
    showError(text);
    for (const p of pending.values()) p.reject(new Error(text));
    pending.clear();
  };
}

// A thread of the threaded build that traps cannot answer, and the worker waiting for it never
// will: web/thread.js says so here, and the page fails every waiting request with the reason.
new BroadcastChannel('flexlora-engine').onmessage = ({ data: m }) => {
  if (m?.event !== 'thread-died') return;
  const oom = /memory allocation|out of memory/i.test(m.error);
  const text = `the engine stopped: thread ${m.thread} of the CPU backend failed (${m.error})${oom ? ': out of memory in WebAssembly, which addresses at most 4 GiB; try a smaller model' : ''}; reload the page`;
  showError(text);
  for (const p of pending.values()) p.reject(new Error(text));
  pending.clear();
};

// Threads for the CPU backend: ?threads=N, else one per logical core (at most 8). They run only
// when the page is cross-origin isolated; the worker says otherwise why not.
function threadsWanted() {
  const asked = Number(new URLSearchParams(location.search).get('threads'));
  return asked > 0 ? Math.floor(asked) : Math.max(1, Math.min(navigator.hardwareConcurrency || 1, 8));
}

function call(op, args = {}, transfer = []) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, op, ...args }, transfer);
  });
}

// ---- small UI helpers -------------------------------------------------------------------------
function showError(text) {
  const box = $('error');
  box.textContent = text;
  box.hidden = !text;
}
function status(id, text, cls = '') { const el = $(id); el.textContent = text; el.className = `status ${cls}`; }
function mib(n) { return `${(n / 1048576).toFixed(n < 10 * 1048576 ? 1 : 0)} MiB`; }
async function guarded(fn) {
  try { showError(''); return await fn(); } catch (e) { showError(String(e.message ?? e)); throw e; }
}

// ---- state ------------------------------------------------------------------------------------
const state = { device: null, model: null, modelSource: null, adapters: [], active: -1, busy: false, gen: 0 };
let manifest = null;

function setBusy(b) {
  state.busy = b;
  const haveModel = !!state.model;
  $('generate').disabled = b || !haveModel;
  $('compare').disabled = b || !haveModel || state.adapters.length === 0;
  $('stop').disabled = !b;
  $('adapters').disabled = b || !haveModel;
  $('run-code').disabled = b || !$('out-0').textContent || !currentTask();
  setTrainButtons();
}

// ---- device -----------------------------------------------------------------------------------
let gpuAdapterInfo = null;
async function webgpuNote() {
  if (!navigator.gpu) return 'this browser has no WebGPU (navigator.gpu is missing)';
  const a = await navigator.gpu.requestAdapter().catch(() => null);
  if (!a) return 'WebGPU is present but offers no adapter';
  // The browser describes its adapter to the page (wgpu sees an anonymous one).
  const i = a.info ?? {};
  gpuAdapterInfo = [i.vendor, i.architecture, i.description].filter(Boolean).join(' ') + (a.isFallbackAdapter || i.isFallbackAdapter ? ' (software fallback adapter)' : '');
  return null;
}

async function initDevice(choice) {
  return guarded(async () => {
    status('device-status', 'Opening the device…');
    const noGpu = await webgpuNote();
    let asked = choice;
    if (noGpu && choice !== 'cpu') asked = 'cpu';
    const info = await call('init', { device: asked, threads: threadsWanted() });
    let why = info.reason;
    if (noGpu && choice !== 'cpu') why = `${noGpu}, so the CPU backend runs`;
    else if (info.kind === 'CPU' && choice === 'auto') why = `${info.reason.replace(/^auto: /, '')}; choose WebGPU to run there anyway`;
    state.device = { ...info, choice };
    if (info.kind === 'GPU') info.name = gpuAdapterInfo || info.name.trim();
    if (choice !== 'auto' && !noGpu) why = 'chosen with the switch';
    const threads = `${info.threads} thread${info.threads === 1 ? '' : 's'}`;
    const what = info.kind === 'GPU' ? `WebGPU: ${info.name}` : `CPU backend in WebAssembly (${info.simd128 ? 'SIMD128' : 'no SIMD'}, ${threads})`;
    status('device-status', `${what} — ${why}${info.kind === 'GPU' ? '' : `. ${threads}: ${info.threads_why}`}`, 'ok');
    $('device-details').hidden = !info.limits;
    $('device-limits').textContent = info.limits ? JSON.stringify({ ...info.limits, ...info.features }, null, 1) : '';
    state.model = null;
    setBusy(false);
    // A model loaded before lives on the old device: load it again on this one.
    if (state.modelSource) await loadModel(state.modelSource);
    return info;
  });
}

// ---- loading ----------------------------------------------------------------------------------
let opfs = null;
async function cacheModule() {
  if (opfs === null) opfs = await import('./opfs.js').catch((e) => ({ missing: String(e) }));
  return opfs;
}

function onProgress(stage) {
  const bar = $('progress');
  bar.hidden = false;
  return ({ loaded, total }) => { bar.max = total || 1; bar.value = loaded; status('model-status', `${stage}: ${mib(loaded)}${total ? ` of ${mib(total)}` : ''}`); };
}

async function fetchBytes(url) {
  const cache = await cacheModule();
  if (cache.cachedFetch) {
    const r = await cache.cachedFetch(url, { onProgress: onProgress('downloading') });
    return { bytes: r.bytes, note: r.fromCache ? 'from the browser cache (OPFS)' : r.cacheNote ?? 'downloaded and cached' };
  }
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
  return { bytes: new Uint8Array(await resp.arrayBuffer()), note: 'downloaded (no cache)' };
}

// wasm32 holds the model file in one buffer, and one allocation is at most 2 GiB (isize::MAX):
// a larger file is refused before it is downloaded or copied, with the reason.
const MAX_MODEL_FILE = 2 ** 31 - 2 ** 26;
function checkModelSize(name, size) {
  if (!(size > MAX_MODEL_FILE)) return;
  throw new Error(`out of memory: ${name} is ${(size / 2 ** 30).toFixed(2)} GiB, and the engine in WebAssembly (wasm32, 4 GiB in all) holds the model file in one buffer of at most ${(MAX_MODEL_FILE / 2 ** 30).toFixed(2)} GiB; choose a smaller model (fewer parameters or a smaller quantization)`);
}

// The size a URL serves (HEAD), or null when the server does not say.
async function remoteSize(url) {
  const r = await fetch(url, { method: 'HEAD' }).catch(() => null);
  const n = Number(r?.ok ? r.headers.get('content-length') : NaN);
  return Number.isFinite(n) && n > 0 ? n : null;
}

// source: { url } or { file: File } or { bytes, name }
async function loadModel(source) {
  return guarded(async () => {
    setBusy(true);
    try {
      const t0 = performance.now();
      let bytes, name, note;
      if (source.url) {
        name = decodeURIComponent(source.url.split('/').pop());
        checkModelSize(name, await remoteSize(source.url));
        ({ bytes, note } = await fetchBytes(source.url));
      } else if (source.file) {
        name = source.file.name;
        checkModelSize(name, source.file.size);
        bytes = new Uint8Array(await source.file.arrayBuffer());
        const cache = await cacheModule();
        note = cache.cacheBytes ? ((await cache.cacheBytes(bytes).catch((e) => ({ cacheNote: String(e) }))).cacheNote ?? 'cached') : 'not cached';
      } else {
        ({ bytes, name } = source);
        checkModelSize(name, bytes.length);
        note = 'from memory';
      }
      state.modelSource = source.file || source.url ? source : { bytes, name };
      status('model-status', `Parsing and quantizing ${name} (${mib(bytes.length)})…`);
      const bar = $('progress');
      const onEvent = (m) => {
        if (m.event === 'progress' && m.stage === 'quantize') {
          bar.max = m.total; bar.value = m.done;
          status('model-status', `Loading weights: tensor ${m.done} of ${m.total} (${m.detail})`);
        }
      };
      listeners.add(onEvent);
      // The worker gets a copy: the page keeps the bytes so a device switch can load again.
      const copy = bytes.slice().buffer;
      let info;
      const weights = source.weights ?? $('weights').value;
      try { info = await call('loadModel', { name, bytes: copy, weights }, [copy]); } finally { listeners.delete(onEvent); bar.hidden = true; }
      state.model = info;
      state.adapters = [];
      state.active = -1;
      renderAdapters();
      const secs = ((performance.now() - t0) / 1000).toFixed(1);
      status('model-status', `${name}: ${info.layers} layers, ${(info.params / 1e6).toFixed(0)}M parameters in ${mib(info.weight_bytes)}, loaded in ${secs} s (${note})`, 'ok');
      return info;
    } finally {
      setBusy(false);
    }
  });
}

// files: [{ name, bytes }] holding adapter_config.json and adapter_model.safetensors
async function loadAdapter(name, files) {
  return guarded(async () => {
    if (!state.model) throw new Error('load a model before an adapter');
    const cfg = files.find((f) => f.name.endsWith('adapter_config.json'));
    const st = files.find((f) => f.name.endsWith('.safetensors'));
    if (!cfg || !st) throw new Error(`adapter ${name}: pick both adapter_config.json and adapter_model.safetensors (got ${files.map((f) => f.name).join(', ') || 'nothing'})`);
    const configText = new TextDecoder().decode(cfg.bytes);
    const weights = st.bytes.slice().buffer;
    const index = await call('loadAdapter', { name, configText, weights }, [weights]);
    state.model = await call('modelInfo');
    state.adapters = state.model.adapters;
    renderAdapters();
    await setAdapter(index);
    return index;
  });
}

function renderAdapters() {
  const box = $('adapters');
  box.querySelectorAll('label.adapter').forEach((l) => l.remove());
  state.adapters.forEach((a, i) => {
    const label = document.createElement('label');
    label.className = 'adapter';
    label.innerHTML = `<input type="radio" name="adapter" value="${i}"> `;
    label.append(`${a.name} (r=${a.rank}, alpha=${a.alpha}, ${a.targets.join(', ')})`);
    box.append(label);
  });
  box.querySelectorAll('input').forEach((inp) => { inp.checked = Number(inp.value) === state.active; });
  setBusy(state.busy);
}

async function setAdapter(index) {
  return guarded(async () => {
    state.model = await call('setAdapter', { index });
    state.active = state.model.active_adapter ?? -1;
    renderAdapters();
  });
}

// ---- generation -------------------------------------------------------------------------------
function options() {
  return {
    chat: document.querySelector('input[name=mode]:checked').value === 'chat',
    temperature: Number($('temperature').value),
    top_p: Number($('top-p').value),
    max_new_tokens: Number($('max-tokens').value),
  };
}

// Generates into output column `col`; resolves with the worker's result (ids, text, timing).
async function generate(prompt, opts, col = 0) {
  const gen = ++state.gen;
  const out = $(`out-${col}`);
  out.textContent = '';
  const t0 = performance.now();
  let prefillDone = null, tokens = 0;
  const speed = $('speed');
  const onEvent = (m) => {
    if (m.gen !== gen) return;
    if (m.event === 'prefill') {
      prefillDone = performance.now();
      speed.textContent = `prefill ${m.prompt_tokens} tokens at ${(m.prompt_tokens / m.prefill_secs).toFixed(1)} tokens/s`;
    } else if (m.event === 'token' || m.event === 'tick') {
      if (m.text) out.textContent += m.text;
      tokens++;
      const secs = (performance.now() - prefillDone) / 1000;
      speed.textContent = `${speed.textContent.split(' · ')[0]} · decode ${tokens} tokens at ${(tokens / secs).toFixed(1)} tokens/s`;
    }
  };
  listeners.add(onEvent);
  try {
    const r = await call('generate', { gen, prompt, options: opts });
    r.wall_ms = performance.now() - t0;
    r.first_token_ms = prefillDone ? prefillDone - t0 : null;
    const dec = r.generated_tokens / Math.max(r.decode_secs, 1e-9);
    speed.textContent = `prefill ${r.prompt_tokens} tokens at ${(r.prompt_tokens / r.prefill_secs).toFixed(1)} tokens/s · decode ${r.generated_tokens} tokens at ${dec.toFixed(1)} tokens/s · ${r.finish}`;
    return r;
  } finally {
    listeners.delete(onEvent);
  }
}

function stop() { worker.postMessage({ op: 'stop', gen: state.gen }); }

async function runOne() {
  return guarded(async () => {
    setBusy(true);
    $('outputs').classList.remove('two');
    $('out-col-1').hidden = true;
    $('out-title-0').textContent = state.active >= 0 ? `adapter: ${state.adapters[state.active].name}` : 'base model';
    try { return await generate($('prompt').value, options(), 0); } finally { setBusy(false); }
  });
}

// Base on the left, the selected adapter (or the first one) on the right, same prompt and options.
async function compare() {
  return guarded(async () => {
    setBusy(true);
    const adapter = state.active >= 0 ? state.active : 0;
    $('outputs').classList.add('two');
    $('out-col-1').hidden = false;
    $('out-title-0').textContent = 'base model';
    $('out-title-1').textContent = `adapter: ${state.adapters[adapter].name}`;
    try {
      await setAdapter(-1);
      const base = await generate($('prompt').value, options(), 0);
      await setAdapter(adapter);
      const adapted = await generate($('prompt').value, options(), 1);
      return { base, adapted };
    } finally { setBusy(false); }
  });
}

// ---- tasks and Pyodide ------------------------------------------------------------------------
let tasksMod = null, tasks = [];
function currentTask() { return tasks[Number($('task').value)] ?? null; }

async function loadTaskList() {
  const sel = $('task');
  try {
    tasksMod ??= await import('./tasks.js');
    tasks = await tasksMod.loadTasks($('task-set').value);
    sel.innerHTML = '';
    tasks.forEach((t, i) => { const o = document.createElement('option'); o.value = i; o.textContent = (t.title.startsWith(t.id) ? t.title : `${t.id}: ${t.title}`).slice(0, 90); sel.append(o); });
    sel.disabled = false;
    $('use-task').disabled = false;
    status('run-status', `${tasks.length} tasks`);
  } catch (e) {
    sel.disabled = true;
    status('run-status', `No tasks: ${e.message ?? e} (flexlora web serves them from the data directory)`);
  }
  setBusy(state.busy);
}

async function runCode() {
  return guarded(async () => {
    const task = currentTask();
    if (!task) throw new Error('pick a task first');
    const { runPython } = await import('./pyodide-runner.js');
    let completion = $('out-0').textContent;
    // A chat answer wraps its code in a fence: run the code inside it.
    const fence = completion.match(/```(?:python)?\n([\s\S]*?)```/);
    if (fence) completion = fence[1];
    const program = tasksMod.buildProgram(task, completion);
    status('run-status', 'Running the tests in Pyodide…');
    const r = await runPython(program, { timeoutMs: 10000, onStatus: (s) => status('run-status', s) });
    const verdict = { passed: 'PASS: every test holds', failed: 'FAIL: a test does not hold', timeout: 'FAIL: killed after the time limit', error: 'FAIL: the program raised an error' }[r.status] ?? r.status;
    status('run-status', `${verdict} (${(r.ms / 1000).toFixed(2)} s)`, r.status === 'passed' ? 'ok' : 'bad');
    $('run-log').hidden = !(r.error || r.stdout);
    $('run-log').textContent = [r.error, r.stdout].filter(Boolean).join('\n');
    return r;
  });
}

// ---- benchmark (web/bench.mjs) -----------------------------------------------------------------
// Prefill and decode speed on `device` for a prompt of about `promptTokens` tokens (the text the
// wllama page uses, web/bench/prompt.js) and up to `decodeTokens` greedy tokens; and the time from
// opening the page to the first token (the model comes from the OPFS cache when it is warm).
async function bench({ modelUrl, device, promptTokens = 128, decodeTokens = 128 }) {
  const { benchPromptText } = await import('./bench/prompt.js');
  if (state.device?.choice !== device) await initDevice(device);
  const t0 = performance.now();
  const sameModel = state.model && state.modelSource?.url === modelUrl;
  if (!sameModel) await loadModel({ url: modelUrl });
  const loadMs = performance.now() - t0;
  const r = await generate(benchPromptText(promptTokens - 1), { chat: false, temperature: 0, max_new_tokens: decodeTokens }, 0);
  return {
    device: state.device.name, prompt_tokens: r.prompt_tokens, generated_tokens: r.generated_tokens,
    prefill_tps: r.prompt_tokens / r.prefill_secs, decode_tps: r.generated_tokens / Math.max(r.decode_secs, 1e-9),
    load_ms: loadMs, first_token_ms: r.first_token_ms, page_open_to_first_token_ms: sameModel ? null : t0 + loadMs + r.first_token_ms,
    model_note: $('model-status').textContent,
  };
}

// ---- wiring -----------------------------------------------------------------------------------
async function filesFrom(list) {
  return Promise.all([...list].map(async (f) => ({ name: f.name, bytes: new Uint8Array(await f.arrayBuffer()) })));
}

async function handleFiles(list) {
  const files = [...list];
  const gguf = files.find((f) => f.name.endsWith('.gguf'));
  if (gguf) await loadModel({ file: gguf });
  const rest = files.filter((f) => !f.name.endsWith('.gguf'));
  if (rest.length) await loadAdapter(rest[0].webkitRelativePath?.split('/')[0] || `adapter ${state.adapters.length + 1}`, await filesFrom(rest));
}

// ---- fine-tuning (src/web/train.rs) -----------------------------------------------------------
// The run lives in the worker; this loop asks it for `every` steps at a time (one read-back of
// their numbers per request), plots each report, and stops between requests when paused.
const training = { info: null, reports: [], paused: false, looping: false, data: null, t0: 0, tokens: 0, secs: 0 };

function trainConfig() {
  const n = (id) => Number($(id).value);
  return {
    steps: n('train-steps'), lr: n('train-lr'), batch_size: n('train-batch'), max_len: n('train-max-len'),
    optimizer: $('train-optimizer').value,
    lora: { rank: n('train-rank'), alpha: 2 * n('train-rank'), targets: $('train-targets').value.split(',').map((t) => t.trim()).filter(Boolean) },
    flex: { mode: $('train-flex').value, lambda: n('train-lambda') },
  };
}

// The data as JSONL text and a name: MBPP's train split from `flexlora web`, or the picked file.
async function trainData() {
  if ($('train-data').value === 'file') {
    if (!training.data) throw new Error('pick a JSONL file of {"prompt","completion"} or {"text"} lines, or the served MBPP split');
    return training.data;
  }
  const url = $('train-data').value;
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status} ${await r.text()}`);
  return { text: await r.text(), name: 'mbpp' };
}

function setTrainButtons() {
  const running = training.looping;
  const haveRun = !!training.info;
  const done = haveRun && training.reports.length > 0 && training.reports.at(-1).step >= training.info.total_steps;
  $('train-start').disabled = running || state.busy || !state.model;
  $('train-pause').disabled = !running;
  $('train-resume').disabled = running || !haveRun || done || !training.paused;
  $('train-download').disabled = running || !haveRun;
  $('train-save').disabled = running || !haveRun;
  $('train-ckpt').disabled = running || state.busy || !state.model;
}

function plotTraining() {
  const svg = $('train-plot');
  const r = training.reports;
  const W = 600, H = 220, L = 46, B = 24, T = 10, R = 10;
  if (!r.length) { svg.innerHTML = ''; return; }
  const total = Math.max(training.info?.total_steps ?? 1, r.at(-1).step);
  const series = [['loss', r.map((x) => [x.step, x.loss])]];
  if (r.some((x) => x.flex_penalty != null)) series.push(['flex', r.map((x) => [x.step, x.flex_penalty ?? 0])]);
  const ys = series.flatMap(([, pts]) => pts.map((p) => p[1])).filter(Number.isFinite);
  const lo = Math.min(0, ...ys), hi = Math.max(...ys) * 1.05 || 1;
  const px = (s) => L + ((s - 0) / total) * (W - L - R);
  const py = (v) => H - B - ((v - lo) / (hi - lo)) * (H - B - T);
  const lines = series.map(([cls, pts]) => `<polyline class="${cls}" fill="none" stroke-width="2" points="${pts.map(([s, v]) => `${px(s).toFixed(1)},${py(v).toFixed(1)}`).join(' ')}"/>`);
  const ticks = [lo, (lo + hi) / 2, hi].map((v) => `<text x="${L - 4}" y="${py(v) + 4}" text-anchor="end">${v.toFixed(2)}</text>`);
  svg.innerHTML = `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#d9dde6"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#d9dde6"/>
    ${ticks.join('')}<text x="${W - R}" y="${H - 6}" text-anchor="end">step ${r.at(-1).step} of ${total}</text>
    <text x="${L + 6}" y="${T + 12}" class="legend">— loss${series.length > 1 ? ' · FLeX penalty (orange)' : ''}</text>${lines.join('')}`;
}

function showTrainStatus() {
  const r = training.reports.at(-1);
  if (!r) return;
  const tps = training.tokens / Math.max(training.secs, 1e-9);
  const flex = r.flex_penalty != null ? `, FLeX ${r.flex_penalty.toFixed(4)}` : '';
  const what = training.looping ? 'training' : training.paused ? 'paused' : 'done';
  status('train-status', `${what}: step ${r.step} of ${training.info.total_steps}, loss ${r.loss.toFixed(4)}${flex}, |g| ${r.grad_norm.toFixed(3)}, ${tps.toFixed(1)} tokens/s`, 'ok');
}

// Starts a run with the page's settings (or `config` merged over them, for the tests); returns
// the run's description (examples, tokens, steps, the adapter's index).
async function trainStart(config = {}, data = null) {
  return guarded(async () => {
    if (!state.model) throw new Error('load a model before fine-tuning');
    const d = data ?? await trainData();
    const cfg = { ...trainConfig(), ...config };
    const name = `trained in the page (${d.name}, r=${cfg.lora?.rank ?? 8}, ${cfg.steps} steps)`;
    const info = await call('trainStart', { name, config: cfg, data: d.text, dataName: d.name });
    await afterStart(info, false);
    return info;
  });
}

// A run started or resumed (`paused`: it waits for Resume): the new adapter in the list, the status.
async function afterStart(info, paused) {
  Object.assign(training, { info, reports: [], paused, tokens: 0, secs: 0 });
  state.model = await call('modelInfo');
  state.adapters = state.model.adapters;
  state.active = state.model.active_adapter ?? -1;
  renderAdapters();
  status('train-status', `${info.examples} examples (${info.target_tokens} trained tokens of ${info.tokens}), step ${info.step} of ${info.total_steps}, ${(info.trainable_params / 1e6).toFixed(2)}M trainable parameters; memory: ${info.memory.text}`, 'ok');
  plotTraining();
  setTrainButtons();
}

// Continues a run from checkpoint bytes (written natively or by `trainCheckpoint`) with the data it
// trained on; the checkpoint's settings replace the page's.
async function trainResume(checkpoint, data = null, name = 'checkpoint.safetensors') {
  return guarded(async () => {
    if (!state.model) throw new Error('load the model the run was trained on first');
    const d = data ?? await trainData();
    const info = await call('trainResume', { name, checkpoint, data: d.text, dataName: d.name });
    await afterStart(info, true);
    return info;
  });
}

async function trainCheckpoint() { return call('trainCheckpoint'); }

async function downloadCheckpoint() {
  return guarded(async () => {
    const bytes = await trainCheckpoint();
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
    a.download = 'checkpoint.safetensors';
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  });
}

// Runs `n` steps in one request; returns their reports (also plotted).
async function trainSteps(n) {
  const r = await call('trainSteps', { n });
  for (const x of r.steps) { training.tokens += x.tokens; training.secs += x.seconds; }
  training.reports.push(...r.steps);
  plotTraining();
  showTrainStatus();
  return r;
}

async function trainLoop() {
  if (training.looping) return;
  training.looping = true;
  training.paused = false;
  setTrainButtons();
  setBusy(true);
  try {
    await guarded(async () => {
      while (!training.paused) {
        const r = await trainSteps(Math.max(1, Number($('train-every').value) || 1));
        if (r.done) break;
      }
    });
  } finally {
    training.looping = false;
    setBusy(false);
    setTrainButtons();
    showTrainStatus();
  }
}

async function trainAdapterFiles() { return call('trainAdapterFiles'); }

async function downloadAdapter() {
  return guarded(async () => {
    const f = await trainAdapterFiles();
    for (const [name, body, type] of [['adapter_config.json', f.config, 'application/json'], ['adapter_model.safetensors', f.weights, 'application/octet-stream']]) {
      const a = document.createElement('a');
      a.href = URL.createObjectURL(new Blob([body], { type }));
      a.download = name;
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
    }
  });
}

function wireTraining() {
  const served = manifest?.train_data ?? [];
  for (const d of served) $('train-data').prepend(new Option(d.name, d.url));
  if (served.length) $('train-data').value = served[0].url;
  $('train-file').onchange = async (e) => {
    const f = e.target.files[0];
    if (!f) return;
    training.data = { text: await f.text(), name: f.name };
    $('train-data').value = 'file';
    $('train-file-name').textContent = `${f.name} (${mib(f.size)})`;
  };
  $('train-start').onclick = async () => { try { await trainStart(); await trainLoop(); } catch { /* shown */ } };
  $('train-pause').onclick = () => { training.paused = true; setTrainButtons(); };
  $('train-resume').onclick = () => trainLoop().catch(() => {});
  $('train-download').onclick = () => downloadAdapter().catch(() => {});
  $('train-save').onclick = () => downloadCheckpoint().catch(() => {});
  $('train-ckpt').onchange = async (e) => {
    const f = e.target.files[0];
    if (!f) return;
    try { await trainResume(await f.arrayBuffer(), null, f.name); } catch { /* shown */ }
  };
  setTrainButtons();
}

function wire() {
  document.querySelectorAll('input[name=device]').forEach((r) => r.addEventListener('change', () => initDevice(r.value).catch(() => {})));
  $('load-url').onclick = () => loadModel({ url: $('model-url').value }).catch(() => {});
  $('weights').onchange = () => { if (state.modelSource) loadModel(state.modelSource).catch(() => {}); };
  $('model-file').onchange = (e) => handleFiles(e.target.files).catch(() => {});
  $('adapter-files').onchange = (e) => handleFiles(e.target.files).catch(() => {});
  $('load-adapter-url').onclick = () => loadAdapterUrl($('adapter-url').value).catch(() => {});
  const drop = $('drop');
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('over'); };
  drop.ondragleave = () => drop.classList.remove('over');
  drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove('over'); handleFiles(e.dataTransfer.files).catch(() => {}); };
  $('adapters').onchange = (e) => setAdapter(Number(e.target.value)).catch(() => {});
  $('generate').onclick = () => runOne().catch(() => {});
  $('compare').onclick = () => compare().catch(() => {});
  $('stop').onclick = stop;
  $('task-set').onchange = loadTaskList;
  $('task').onchange = () => setBusy(state.busy);
  $('use-task').onclick = () => {
    const t = currentTask();
    if (!t) return;
    $('prompt').value = tasksMod.promptFor(t);
    document.querySelector('input[name=mode][value=raw]').checked = true;
  };
  $('run-code').onclick = () => runCode().catch(() => {});
}

// `flexlora web` serves files/manifest.json naming the model and adapters it was given; a static
// copy of the page has none and works from the pickers alone.
async function loadManifest() {
  try {
    const r = await fetch('files/manifest.json');
    if (!r.ok) return null;
    return await r.json();
  } catch { return null; }
}

// An adapter directory at `base` (a URL): its two PEFT files are fetched from there.
async function loadAdapterUrl(base) {
  return guarded(async () => {
    const dir = base.replace(/\/+$/, '');
    const files = await Promise.all(['adapter_config.json', 'adapter_model.safetensors'].map(async (name) => {
      const r = await fetch(`${dir}/${name}`);
      if (!r.ok) throw new Error(`${dir}/${name}: HTTP ${r.status} (an adapter directory holds adapter_config.json and adapter_model.safetensors)`);
      return { name, bytes: new Uint8Array(await r.arrayBuffer()) };
    }));
    return loadAdapter(decodeURIComponent(dir.split('/').pop()), files);
  });
}

async function loadServedAdapters() {
  for (const a of manifest?.adapters ?? []) {
    const files = await Promise.all(a.files.map(async (f) => {
      const r = await fetch(f.url);
      if (!r.ok) throw new Error(`${f.url}: HTTP ${r.status}`);
      return { name: f.name, bytes: new Uint8Array(await r.arrayBuffer()) };
    }));
    await loadAdapter(a.name, files);
  }
}

async function main() {
  startWorker();
  wire();
  manifest = await loadManifest();
  if (manifest?.model) {
    $('served').hidden = false;
    $('served-name').textContent = `${manifest.model.name} (${mib(manifest.model.size)})`;
    $('load-served').onclick = async () => { await loadModel({ url: manifest.model.url }).catch(() => {}); await loadServedAdapters().catch(() => {}); };
  }
  wireTraining();
  const params = new URLSearchParams(location.search);
  const device = params.get('device') ?? 'auto';
  document.querySelector(`input[name=device][value=${device}]`)?.click();
  await initDevice(device).catch(() => {});
  loadTaskList();
  window.flexloraBench = bench;
  window.flexlora = {
    state, manifest, initDevice, loadModel, loadAdapter, loadAdapterUrl, loadServedAdapters, setAdapter, generate, compare, stop, runCode,
    call, setPrompt: (t) => { $('prompt').value = t; },
    trainStart, trainSteps, trainLoop, trainAdapterFiles, trainCheckpoint, trainResume, training,
  };
  document.title = 'flexlora: ready';
  if (params.get('autoload') === '1' && manifest?.model) {
    await loadModel({ url: manifest.model.url }).catch(() => {});
    await loadServedAdapters().catch(() => {});
  }
}

main().catch((e) => { showError(String(e)); document.title = 'flexlora: error'; });
