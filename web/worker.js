// The model runs here, off the page's thread: the flexlora library compiled to WebAssembly
// (./pkg, built by scripts/build-web.sh). This file only relays messages to the library's
// wasm-bindgen API (src/web.rs); it holds no model logic.
//
// Requests: { id, op, ...args } -> replies { id, ok: true, result } or { id, ok: false, error }.
// Events while working: { event: 'progress', stage, done, total, detail } and
// { event: 'token', gen, text }. Requests run one at a time in arrival order, except `stop`,
// which is handled at once: generation yields to this worker's event loop between tokens, so a
// stop request is seen before the next token.
import init, * as wasm from './pkg/flexlora.js';

let ready = null;
let stopRequested = new Set();
let dead = null; // set after a panic or out-of-memory: the module's state can't be trusted

function post(msg, transfer) { self.postMessage(msg, transfer ?? []); }

// A macrotask boundary that is not clamped like nested setTimeout(0).
const channel = new MessageChannel();
const waiting = [];
channel.port1.onmessage = () => waiting.shift()?.();
function yieldToEvents() { return new Promise((r) => { waiting.push(r); channel.port2.postMessage(0); }); }

function describe(e) {
  const panic = wasm.last_panic?.();
  const text = String(e?.message ?? e);
  if (panic) { dead = panic; return `the engine stopped: ${panic} (reload the page)`; }
  if (e instanceof WebAssembly.RuntimeError || /out of memory|memory access out of bounds|Out of memory/i.test(text)) {
    dead = text;
    return `out of memory in WebAssembly (${text}): a wasm32 page addresses at most 4 GiB, and the browser may allow less; try a smaller model or the WebGPU device (reload the page)`;
  }
  return text;
}

const ops = {
  async init({ device }) {
    ready ??= init().then(() => wasm.install_panic_hook());
    await ready;
    return JSON.parse(await wasm.init_device(device));
  },

  async loadModel({ name, bytes, weights }) {
    post({ event: 'progress', stage: 'parse', done: 0, total: 1, detail: name });
    let last = 0;
    const info = await wasm.load_model(name, new Uint8Array(bytes), weights ?? 'nf4', (done, total, tensor) => {
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

let queue = Promise.resolve();
self.onmessage = (ev) => {
  const msg = ev.data;
  if (msg.op === 'stop') { stopRequested.add(msg.gen); return; }
  queue = queue.then(async () => {
    if (dead) { post({ id: msg.id, ok: false, error: `the engine stopped earlier (${dead}); reload the page` }); return; }
    const op = ops[msg.op];
    try {
      if (!op) throw new Error(`unknown request ${msg.op}`);
      post({ id: msg.id, ok: true, result: await op(msg) });
    } catch (e) {
      post({ id: msg.id, ok: false, error: describe(e) });
    }
  });
};
