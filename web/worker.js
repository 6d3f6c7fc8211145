// The model runs here, off the page's thread: the flexlora library compiled to WebAssembly
// (built by scripts/build-web.sh). This file only relays messages to the library's wasm-bindgen
// API (src/web.rs); it holds no model logic.
//
// Two builds of the same library: ./pkg-threads (shared memory, rayon's pool on Web Workers
// running ./thread.js) when the page is cross-origin isolated and more than one thread is asked
// for, else ./pkg (one thread). `init` says which one runs and why.
//
// Requests: { id, op, ...args } -> replies { id, ok: true, result } or { id, ok: false, error }.
// Events while working: { event: 'progress', stage, done, total, detail } and
// { event: 'token', gen, text }. Requests run one at a time in arrival order, except `stop`,
// which is handled at once: generation yields to this worker's event loop between tokens, so a
// stop request is seen before the next token.
let wasm = null; // the loaded build's exports
let engine = null; // { threads, threadsWhy, build }
let ready = null;
let stopRequested = new Set();
let dead = null; // set after a panic or out-of-memory: the module's state can't be trusted

function post(msg, transfer) { self.postMessage(msg, transfer ?? []); }

// A macrotask boundary that is not clamped like nested setTimeout(0).
const channel = new MessageChannel();
const waiting = [];
channel.port1.onmessage = () => waiting.shift()?.();
function yieldToEvents() { return new Promise((r) => { waiting.push(r); channel.port2.postMessage(0); }); }

// A Rust panic comes with its message (the panic hook keeps it). Anything else that stops the
// module is a trap, and the usual one here is a failed allocation: Rust aborts when memory.grow is
// refused (past wasm32's 4 GiB or the browser's own limit) and the module can't be trusted after.
function describe(e) {
  const panic = wasm?.last_panic?.();
  const text = String(e?.message ?? e);
  if (panic) { dead = panic; return `the engine stopped: ${panic} (reload the page)`; }
  if (e instanceof WebAssembly.RuntimeError || (e instanceof RangeError && /allocation failed|memory/i.test(text))) {
    dead = text;
    let mem = '';
    try { const [used, max] = wasm.memory_bytes(); mem = ` with ${(used / 2 ** 30).toFixed(2)} GiB of its ${(max / 2 ** 30).toFixed(0)} GiB in use`; } catch { /* the module is gone */ }
    return `out of memory in WebAssembly: the engine stopped (${text})${mem}; a wasm32 page addresses at most 4 GiB and the browser may allow less, and a failed allocation stops the module like this. Try a smaller model or the WebGPU device, and reload the page`;
  }
  return text;
}

// Starts `n` Web Workers for rayon's pool (see src/web/threads.rs for the order) and returns the
// number of threads the CPU backend runs on.
async function startThreads(mod, n) {
  const handle = mod.thread_pool_new(n);
  const [module, memory] = mod.thread_init_data();
  await Promise.all(Array.from({ length: n }, (_, i) => new Promise((ok, fail) => {
    const w = new Worker(new URL('./thread.js', import.meta.url), { type: 'module', name: `flexlora-thread-${i}` });
    w.onmessage = (ev) => (ev.data === 'running' ? ok() : fail(new Error(`thread ${i}: ${ev.data?.error ?? ev.data}`)));
    w.onerror = (e) => fail(new Error(`thread ${i}: ${e.message || 'its worker failed to load'}`));
    w.postMessage({ module, memory, handle, index: i });
  })));
  return mod.thread_pool_build(handle);
}

// Loads the threaded build when it can run, else the single-threaded one; says why.
async function loadEngine(threads) {
  let why;
  if (!(threads > 1)) why = 'one thread was asked for';
  else if (!self.crossOriginIsolated) why = 'the page is not cross-origin isolated (served without COOP/COEP headers), so WebAssembly threads are unavailable; `flexlora web` serves it isolated';
  else {
    try {
      const mod = await import('./pkg-threads/flexlora.js');
      await mod.default();
      mod.install_panic_hook();
      const n = await startThreads(mod, threads);
      wasm = mod;
      return { build: 'threads', threads: n, threadsWhy: `the page is cross-origin isolated, so ${n} threads (Web Workers) run the CPU backend` };
    } catch (e) {
      why = `the threaded build did not start (${e.message ?? e}), so one thread runs`;
    }
  }
  const mod = await import('./pkg/flexlora.js');
  await mod.default();
  mod.install_panic_hook();
  wasm = mod;
  return { build: 'single', threads: 1, threadsWhy: why };
}

const ops = {
  async init({ device, threads }) {
    ready ??= loadEngine(threads ?? 1).then((e) => { engine = e; });
    await ready;
    const info = JSON.parse(await wasm.init_device(device));
    return { ...info, build: engine.build, threads_why: engine.threadsWhy, threads_asked: threads ?? 1 };
  },

  async loadModel({ name, bytes, weights }) {
    post({ event: 'progress', stage: 'parse', done: 0, total: 1, detail: name });
    let last = 0;
    const info = await wasm.load_model(name, new Uint8Array(bytes), weights ?? 'auto', (done, total, tensor) => {
      const now = performance.now();
      if (done === total || now - last > 100) {
        last = now;
        post({ event: 'progress', stage: 'quantize', done, total, detail: tensor });
      }
    });
    return JSON.parse(info);
  },

  async loadAdapter({ name, configText, weights }) {
    return wasm.load_adapter(name, configText, new Uint8Array(weights));
  },

  async setAdapter({ index }) {
    wasm.set_adapter(index);
    return JSON.parse(wasm.model_info());
  },

  async modelInfo() { return JSON.parse(wasm.model_info()); },

  async tokenize({ text }) { return Array.from(wasm.tokenize(text)); },

  // Fine-tuning (src/web/train.rs): start a run, run steps (one read-back per call), the adapter.
  async trainStart({ name, config, data, dataName }) {
    return JSON.parse(wasm.train_start(name, JSON.stringify(config), data, dataName));
  },
  async trainSteps({ n }) { return JSON.parse(await wasm.train_steps(n)); },
  async trainAdapterFiles() {
    const r = await wasm.train_adapter_files();
    return { config: r.config, weights: r.weights };
  },
  async trainStop() { wasm.train_stop(); },
  async trainCheckpoint() { const bytes = await wasm.train_checkpoint(); return bytes.slice().buffer; },
  async trainResume({ name, checkpoint, data, dataName }) {
    return JSON.parse(wasm.train_resume(name, new Uint8Array(checkpoint), data, dataName));
  },

  // Streams `token` events and returns the generation's ids, text, finish reason and timing.
  async generate({ gen, prompt, options }) {
    stopRequested.delete(gen);
    const started = JSON.parse(await wasm.start(prompt, JSON.stringify(options ?? {})));
    post({ event: 'prefill', gen, ...started, prompt_ids: undefined });
    let stopped = false;
    for (;;) {
      await yieldToEvents();
      if (stopRequested.has(gen)) { stopped = true; break; }
      const text = await wasm.next_token();
      if (text === undefined) break;
      if (text) post({ event: 'token', gen, text });
      else post({ event: 'tick', gen });
    }
    stopRequested.delete(gen);
    const info = JSON.parse(wasm.stream_info());
    if (stopped) info.finish = 'stopped';
    info.prompt_ids = started.prompt_ids;
    return info;
  },
};

// A trap inside an async library call happens in wasm-bindgen's task queue, not in the awaited
// call: it surfaces here, uncaught, and the request would never be answered. Answer it.
let current = null; // the id of the request running now
const onTrap = (err) => {
  const error = describe(err);
  dead ??= error;
  if (current !== null) post({ id: current, ok: false, error });
  else post({ event: 'engine-stopped', error });
  current = null;
};
self.addEventListener('error', (ev) => { ev.preventDefault(); onTrap(ev.error ?? ev.message); });
self.addEventListener('unhandledrejection', (ev) => { ev.preventDefault(); onTrap(ev.reason); });

let queue = Promise.resolve();
self.onmessage = (ev) => {
  const msg = ev.data;
  if (msg.op === 'stop') { stopRequested.add(msg.gen); return; }
  // After a trap the request that hit it never finishes (its future is gone), so the queue
  // behind it would wait forever: answer at once instead.
  if (dead) { post({ id: msg.id, ok: false, error: `the engine stopped earlier (${dead}); reload the page` }); return; }
  queue = queue.then(async () => {
    if (dead) { post({ id: msg.id, ok: false, error: `the engine stopped earlier (${dead}); reload the page` }); return; }
    const op = ops[msg.op];
    current = msg.id;
    try {
      if (!op) throw new Error(`unknown request ${msg.op}`);
      const result = await op(msg);
      if (current === msg.id) post({ id: msg.id, ok: true, result });
    } catch (e) {
      if (current === msg.id) post({ id: msg.id, ok: false, error: describe(e) });
    }
    current = null;
  });
};
