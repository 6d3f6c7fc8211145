// wllama benchmark page: loads the GGUF named by ?model= with @wllama/wllama (local npm install, no
// CDN), then for each of `runs` requests feeds a fixed prompt of `prompt` tokens and decodes `decode`
// greedy tokens, measuring prefill and decode tokens/s. Sets window.benchResult and, at the end,
// document.title to "wllama: done" or "wllama: error".
//
// Query parameters: model (URL, required), threads (default 1; more than 1 needs a cross-origin
// isolated page, else wllama runs single-threaded and the result says so), prompt (tokens, default
// 128), decode (tokens, default 128), runs (default 3), ngl (GPU layers; default 0 = wasm CPU only,
// 99 = wllama's WebGPU backend), ctx (context size, default prompt + decode + 64).
//
// The prompt is benchPromptText (bench/prompt.js): common English words that a byte-level BPE
// tokenizer turns into one token each, sized so the model sees `prompt` tokens including BOS
// (wllama's completion API takes text, not token ids); the measured count is reported as prompt_n.
// Decoding ignores EOS so it always produces `decode` tokens. The prompt cache is off, so each run
// prefills from scratch.
import { Wllama, LoggerWithoutDebug } from '../node_modules/@wllama/wllama/esm/index.js';
import { benchPromptText } from './prompt.js';

const statusEl = document.getElementById('status');
const reportEl = document.getElementById('report');
const params = new URLSearchParams(location.search);
const num = (key, dflt) => (params.has(key) ? Number(params.get(key)) : dflt);

function show(text) {
  statusEl.textContent = text;
}

async function measure(wllama, prompt, decode) {
  const t0 = performance.now();
  let tFirst = null;
  let chunks = 0;
  let text = '';
  let timings = null;
  let usage = null;
  await wllama.createCompletion({
    prompt,
    max_tokens: decode,
    temperature: 0,
    top_k: 1,
    ignore_eos: true,
    cache_prompt: false,
    stream: true,
    onData: (chunk) => {
      const piece = chunk.choices?.[0]?.text ?? '';
      if (chunk.choices?.length && tFirst === null) tFirst = performance.now();
      if (chunk.choices?.length) chunks++;
      text += piece;
      if (chunk.timings) timings = chunk.timings;
      if (chunk.usage) usage = chunk.usage;
    },
  });
  const t1 = performance.now();
  const first = (tFirst ?? t1) - t0;
  const wallDecodeTps = chunks > 1 ? (chunks - 1) / ((t1 - (tFirst ?? t1)) / 1000) : null;
  return {
    // llama.cpp's own timings (server-context), the figures llama-bench-style tools report.
    prefill_tps: timings?.prompt_per_second ?? null,
    decode_tps: timings?.predicted_per_second ?? null,
    prompt_n: timings?.prompt_n ?? usage?.prompt_tokens ?? null,
    predicted_n: timings?.predicted_n ?? usage?.completion_tokens ?? null,
    prompt_ms: timings?.prompt_ms ?? null,
    predicted_ms: timings?.predicted_ms ?? null,
    // Wall clock in the page: request to first streamed token, and streamed tokens after the first.
    first_token_ms: first,
    first_token_at_ms: tFirst,
    wall_decode_tps: wallDecodeTps,
    wall_ms: t1 - t0,
    chunks,
    text_head: text.slice(0, 80),
  };
}

async function main() {
  const modelUrl = params.get('model');
  if (!modelUrl) throw new Error('no ?model=URL given');
  const threads = num('threads', 1);
  const promptTokens = num('prompt', 128);
  const decodeTokens = num('decode', 128);
  const runs = num('runs', 3);
  const ngl = num('ngl', 0);
  const ctx = num('ctx', promptTokens + decodeTokens + 64);
  const result = {
    engine: 'wllama',
    version: null,
    libllama: Wllama.getLibllamaVersion?.() ?? null,
    model: modelUrl,
    user_agent: navigator.userAgent,
    cross_origin_isolated: self.crossOriginIsolated,
    hardware_concurrency: navigator.hardwareConcurrency,
    threads_requested: threads,
    ngl,
    prompt_tokens: promptTokens,
    decode_tokens: decodeTokens,
    runs: [],
  };
  window.benchResult = result;
  try {
    const pkg = await (await fetch(new URL('../node_modules/@wllama/wllama/package.json', import.meta.url))).json();
    result.version = pkg.version;
  } catch { /* version stays null */ }

  const wasm = new URL('../node_modules/@wllama/wllama/esm/wasm/wllama.wasm', import.meta.url).href;
  const wllama = new Wllama({ default: wasm }, { logger: params.has('log') ? console : LoggerWithoutDebug, suppressNativeLog: !params.has('log') });
  wllama.setCompat(null); // never the CDN compat build (only Safari/old browsers would want it)

  show(`downloading ${modelUrl}`);
  const tFetch = performance.now();
  const res = await fetch(modelUrl);
  if (!res.ok) throw new Error(`${modelUrl}: HTTP ${res.status}`);
  const blob = await res.blob();
  result.model_bytes = blob.size;
  result.fetch_ms = performance.now() - tFetch;

  show(`loading ${(blob.size / 1048576).toFixed(1)} MiB into wllama (${threads} threads requested)`);
  const tLoad = performance.now();
  await wllama.loadModel([blob], { n_threads: threads, n_ctx: ctx, n_gpu_layers: ngl, n_parallel: 1, warmup: true });
  result.load_ms = performance.now() - tLoad;
  result.multithread = wllama.isMultithread();
  result.threads = wllama.getNumThreads();
  const info = wllama.getLoadedContextInfo();
  result.n_vocab = info.n_vocab;
  result.n_ctx = info.n_ctx;
  result.n_batch = info.n_batch;
  result.n_ubatch = info.n_ubatch;

  const words = Math.max(1, promptTokens - (info.add_bos_token ? 1 : 0));
  const prompt = benchPromptText(words);
  result.add_bos_token = info.add_bos_token;
  show('warm-up request');
  result.warmup = await measure(wllama, benchPromptText(Math.min(16, words)), 4);
  // From navigation start (page open, cold: download + load + warm-up prefill) to its first token.
  result.open_to_first_token_ms = result.warmup.first_token_at_ms;
  for (let r = 0; r < runs; r++) {
    show(`run ${r + 1}/${runs}: prefill ${promptTokens} tokens, decode ${decodeTokens}`);
    const m = await measure(wllama, prompt, decodeTokens);
    result.runs.push(m);
    reportEl.textContent = JSON.stringify(result, null, 2);
  }
  const median = (xs) => {
    const s = xs.filter((x) => x != null).sort((a, b) => a - b);
    if (!s.length) return null;
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  };
  result.prefill_tps = median(result.runs.map((r) => r.prefill_tps));
  result.decode_tps = median(result.runs.map((r) => r.decode_tps));
  result.first_token_ms = median(result.runs.map((r) => r.first_token_ms));
  await wllama.exit();
  result.ok = true;
  reportEl.textContent = JSON.stringify(result, null, 2);
  show(`prefill ${result.prefill_tps?.toFixed(1)} tokens/s, decode ${result.decode_tps?.toFixed(1)} tokens/s, ${result.threads} thread(s)`);
  document.title = 'wllama: done';
}

main().catch((e) => {
  const r = window.benchResult ?? {};
  r.ok = false;
  r.error = String(e?.stack ?? e);
  window.benchResult = r;
  reportEl.textContent = JSON.stringify(r, null, 2);
  show(`error: ${e?.message ?? e}`);
  document.title = 'wllama: error';
});
