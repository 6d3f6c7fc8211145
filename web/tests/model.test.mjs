// The browser demo against the native build, in headless Chromium: SmolLM2-135M and adapters
// trained here by `flexlora train` (a few steps), served by `flexlora web`, loaded in the page.
// Greedy tokens in the page (wasm CPU backend, and WebGPU on SwiftShader) must equal native
// `flexlora generate` token for token (NF4 weights, and on the CPU the GGUF's own blocks too, the
// page's default as `--weights auto` is native's); the adapter switch must give each adapter's tokens and the
// base model's; broken inputs must show a clear error in the page; a screenshot is written to
// target/web-demo.png and checked to be non-blank.
//
// Needs: FLEXLORA_MODEL_GGUF (scripts/fetch-model.sh), the native binary (FLEXLORA_BIN, default
// target/debug/flexlora), web/pkg (scripts/build-web.sh), Debian's chromium, playwright-core.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { chromiumArgs, chromiumPath, serve, webRoot } from './harness.mjs';

const repo = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const bin = process.env.FLEXLORA_BIN ?? join(repo, 'target/debug/flexlora');
// A relative path is taken from the repository root, as scripts/test.sh gives it.
const model = process.env.FLEXLORA_MODEL_GGUF && resolve(repo, process.env.FLEXLORA_MODEL_GGUF);
const work = mkdtempSync(join(tmpdir(), 'flexlora-web-'));
const PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n';
const TOKENS = 32;

let server, url, browser;
const extraServers = [];
const native = {}; // name -> ids

function run(args, env = {}) {
  return execFileSync(bin, args, { cwd: repo, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26, env: { ...process.env, ...env } }).toString();
}

// Tiny training data: the adapters only have to move the model's greedy tokens.
function trainAdapter(name, seed, lr) {
  const data = join(work, 'data.jsonl');
  if (!existsSync(data)) {
    const rows = [
      { prompt: 'def add(a, b):\n', completion: '    return a + b\n' },
      { prompt: 'def square(x):\n', completion: '    return x * x\n' },
      { prompt: 'def fibonacci(n):\n', completion: '    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n' },
    ];
    writeFileSync(data, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  }
  const out = join(work, name);
  run(['train', '--device', 'cpu', '--model', model, '--data', data, '--out', out, '--steps', '3', '--batch-size', '1',
    '--max-len', '64', '--lr', String(lr), '--seed', String(seed), '--flex-mode', 'off', '--lora-targets', 'q_proj,v_proj,gate_proj,up_proj,down_proj']);
  return join(out, 'adapter');
}

// Native `flexlora generate` on the CPU backend. `weights`: nf4 or auto (the GGUF's own blocks,
// the default natively and in the page).
function nativeIds(adapter, weights = 'nf4') {
  const out = join(work, `gen-${Math.random().toString(36).slice(2)}.json`);
  const args = ['generate', '--device', 'cpu', '--weights', weights, '--model', model, '--prompt', PROMPT, '--max-new-tokens', String(TOKENS), '--json', out];
  if (adapter) args.push('--adapter', adapter);
  // The page computes GGUF blocks with f32 activations (matmul_gguf::int8_enabled): so must native.
  run(args, weights === 'auto' ? { FLEXLORA_INT8: '0' } : {});
  return JSON.parse(readFileSync(out, 'utf8')).ids;
}

function startServer(adapters, modelPath = model) {
  return new Promise((ok, fail) => {
    const args = ['web', '--model', modelPath, '--port', '0', ...adapters.flatMap((a) => ['--adapter', a])];
    const proc = spawn(bin, args, { cwd: repo, stdio: ['ignore', 'pipe', 'inherit'] });
    if (modelPath === model) server = proc; else extraServers.push(proc);
    let out = '';
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/flexlora web: (http:\/\/\S+)/);
      if (m) ok(m[1]);
    });
    proc.on('exit', (code) => fail(new Error(`flexlora web exited with ${code}: ${out}`)));
  });
}

async function openPage(device, { noWebGpu = false, threads = 1, on = browser, at = url } = {}) {
  const context = await on.newContext();
  // A browser without WebGPU: the page sees no navigator.gpu.
  if (noWebGpu) await context.addInitScript(() => Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined }));
  const page = await context.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(m.text()));
  page.on('pageerror', (e) => logs.push(String(e)));
  page.logs = logs;
  await page.goto(`${at}?device=${device}&threads=${threads}`);
  await page.waitForFunction(() => document.title !== 'flexlora', null, { timeout: 120_000 });
  assert.equal(await page.title(), 'flexlora: ready', logs.join('\n'));
  return page;
}

// `weights`: nf4 or auto; null leaves it to the page's weights menu (its default).
async function loadServed(page, weights = 'nf4') {
  return page.evaluate(async (weights) => {
    await window.flexlora.loadModel({ url: window.flexlora.manifest.model.url, weights });
    await window.flexlora.loadServedAdapters();
    return window.flexlora.state.model;
  }, weights);
}

async function pageIds(page, adapter) {
  return page.evaluate(async ({ prompt, tokens, adapter }) => {
    await window.flexlora.setAdapter(adapter);
    const r = await window.flexlora.generate(prompt, { chat: false, temperature: 0, max_new_tokens: tokens });
    return r.ids;
  }, { prompt: PROMPT, tokens: TOKENS, adapter });
}

before(async () => {
  assert.ok(model, 'FLEXLORA_MODEL_GGUF is not set (scripts/fetch-model.sh prints the path)');
  assert.ok(existsSync(bin), `${bin} is missing: build with cargo build`);
  const a1 = trainAdapter('adapter-one', 1, 3e-3);
  const a2 = trainAdapter('adapter-two', 2, 1e-2);
  native.base = nativeIds(null);
  native.one = nativeIds(a1);
  native.two = nativeIds(a2);
  native.autoOne = nativeIds(a1, 'auto');
  console.log('native ids:', JSON.stringify(native));
  assert.notDeepEqual(native.one, native.base, 'adapter one does not change the greedy tokens: the switch test could not fail');
  assert.notDeepEqual(native.two, native.one, 'the two adapters give the same tokens: the switch test could not fail');
  url = await startServer([a1, a2]);
  browser = await chromium.launch({ executablePath: chromiumPath, ignoreDefaultArgs: ['--headless'], args: chromiumArgs });
});

after(async () => {
  await browser?.close();
  server?.kill();
  for (const p of extraServers) p.kill();
  rmSync(work, { recursive: true, force: true });
});

test('wasm CPU backend: greedy tokens equal native, adapter on/off/switch', { timeout: 900_000 }, async () => {
  const page = await openPage('cpu');
  const info = await loadServed(page);
  assert.equal(info.adapters.length, 2, page.logs.join('\n'));
  const dev = await page.evaluate(() => window.flexlora.state.device);
  assert.equal(dev.kind, 'CPU');
  assert.match(info.weights, /NF4/, 'NF4 when asked for');
  assert.deepEqual(await pageIds(page, 0), native.one, 'adapter one in the page vs native');
  assert.deepEqual(await pageIds(page, -1), native.base, 'adapter off: the base model');
  assert.deepEqual(await pageIds(page, 0), native.one, 'adapter on again');
  assert.deepEqual(await pageIds(page, 1), native.two, 'switched to adapter two');
  // The page's default: the file's own blocks (exact weights), as native --weights auto.
  const exact = await loadServed(page, null);
  assert.match(exact.weights, /Q4_1/, 'the page\'s default weights keep the GGUF blocks (as native --weights auto)');
  assert.deepEqual(await pageIds(page, 0), native.autoOne, 'adapter one over the GGUF blocks vs native --weights auto');
  await loadServed(page, 'nf4');
  // The compare view: base left, adapter right, same prompt; then the screenshot.
  await page.evaluate(({ prompt }) => {
    window.flexlora.setPrompt(prompt);
    document.querySelector('input[name=mode][value=raw]').checked = true;
    document.getElementById('max-tokens').value = '32';
  }, { prompt: PROMPT });
  const both = await page.evaluate(() => window.flexlora.compare());
  assert.deepEqual(both.base.ids, native.base);
  assert.deepEqual(both.adapted.ids, native.two);
  mkdirSync(join(repo, 'target'), { recursive: true });
  const shot = join(repo, 'target/web-demo.png');
  const png = await page.screenshot({ path: shot, fullPage: true });
  // Non-blank: the rendered page has many distinct colours (text, cards, the dark output panes).
  const colours = await page.evaluate(async (b64) => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    await img.decode();
    const c = new OffscreenCanvas(img.width, img.height);
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, img.width, img.height).data;
    const seen = new Set();
    for (let i = 0; i < d.length; i += 4 * 7) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    return seen.size;
  }, png.toString('base64'));
  console.log(`screenshot ${shot}: ${colours} distinct colours`);
  assert.ok(colours > 50, `the screenshot looks blank (${colours} colours)`);
  const shown = await page.evaluate(() => [document.getElementById('out-0').textContent, document.getElementById('out-1').textContent]);
  assert.ok(shown[0].length > 10 && shown[1].length > 10, `outputs not shown: ${JSON.stringify(shown)}`);
  await page.close();
});

// The threaded build: `flexlora web` serves the page cross-origin isolated, so two threads run.
test('wasm CPU backend on 2 threads: the page says so, greedy tokens equal native', { timeout: 900_000 }, async () => {
  const page = await openPage('cpu', { threads: 2 });
  const dev = await page.evaluate(() => window.flexlora.state.device);
  assert.equal(dev.kind, 'CPU');
  assert.equal(dev.build, 'threads', `the threaded build did not run: ${dev.threads_why}\n${page.logs.join('\n')}`);
  assert.equal(dev.threads, 2, `threads: ${dev.threads} (${dev.threads_why})`);
  assert.match(await page.locator('#device-status').textContent(), /2 threads.*cross-origin isolated/);
  await loadServed(page);
  assert.deepEqual(await pageIds(page, 0), native.one, 'adapter one on 2 threads vs native');
  assert.deepEqual(await pageIds(page, -1), native.base, 'base model on 2 threads vs native');
  const exact = await loadServed(page, 'auto');
  assert.match(exact.weights, /Q4_1/);
  assert.deepEqual(await pageIds(page, 0), native.autoOne, 'GGUF blocks on 2 threads vs native --weights auto');
  await page.close();
  // The same page from a plain static server (no COOP/COEP): one thread, and the page says why.
  const plain = await serve({ mounts: { '/': webRoot }, headers: { 'cache-control': 'no-store' } });
  try {
    const p2 = await openPage('cpu', { threads: 2, at: `${plain.url}/index.html` });
    const d2 = await p2.evaluate(() => window.flexlora.state.device);
    assert.equal(d2.threads, 1);
    assert.equal(d2.build, 'single');
    assert.match(await p2.locator('#device-status').textContent(), /1 thread: the page is not cross-origin isolated/);
    await p2.close();
  } finally {
    plain.close();
  }
});

test('WebGPU (SwiftShader): greedy tokens equal native, adapter on and off', { timeout: 1_200_000 }, async () => {
  const page = await openPage('webgpu');
  const dev = await page.evaluate(() => window.flexlora.state.device);
  assert.equal(dev.kind, 'GPU', `no WebGPU adapter in headless Chromium: ${JSON.stringify(dev)}\n${page.logs.join('\n')}`);
  console.log('WebGPU adapter:', dev.name);
  await loadServed(page);
  assert.match(await page.evaluate(() => window.flexlora.state.model.weights), /NF4/);
  assert.deepEqual(await pageIds(page, 0), native.one, 'adapter one on WebGPU vs native');
  assert.deepEqual(await pageIds(page, -1), native.base, 'base model on WebGPU vs native');
  await page.close();
});

test('broken inputs show a clear error in the page', { timeout: 600_000 }, async () => {
  const page = await openPage('cpu');
  // A truncated GGUF: the first 3 MB of the model.
  const truncated = await page.evaluate(async () => {
    const all = new Uint8Array(await (await fetch(window.flexlora.manifest.model.url)).arrayBuffer());
    try { await window.flexlora.loadModel({ bytes: all.slice(0, 3_000_000), name: 'truncated.gguf' }); return 'loaded'; } catch { /* shown */ }
    return document.getElementById('error').textContent;
  });
  assert.match(truncated, /truncated\.gguf/, 'the error names the file');
  assert.match(truncated, /truncated|corrupt/i);
  // A mismatched adapter: the right names, but a width that is not this model's.
  await loadServed(page);
  const mismatch = await page.evaluate(async () => {
    const name = 'base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight';
    const header = JSON.stringify({ [name]: { dtype: 'F32', shape: [8, 100], data_offsets: [0, 3200] } });
    const hb = new TextEncoder().encode(header);
    const bytes = new Uint8Array(8 + hb.length + 3200);
    new DataView(bytes.buffer).setBigUint64(0, BigInt(hb.length), true);
    bytes.set(hb, 8);
    const config = JSON.stringify({ peft_type: 'LORA', r: 8, lora_alpha: 16, target_modules: ['gate_proj'] });
    try {
      await window.flexlora.loadAdapter('wrong-model', [{ name: 'adapter_config.json', bytes: new TextEncoder().encode(config) }, { name: 'adapter_model.safetensors', bytes }]);
      return 'loaded';
    } catch { /* shown */ }
    return document.getElementById('error').textContent;
  });
  assert.match(mismatch, /lora_A\.weight/, `the error names the tensor: ${mismatch}`);
  assert.match(mismatch, /shape/);
  // The page still works after both errors: the base model generates.
  const ids = await pageIds(page, -1);
  assert.deepEqual(ids, native.base, 'the base model after the errors');
  await page.close();
});

test('no WebGPU: the CPU backend runs and says why; stop ends a generation; adapters load from a URL; the page runs a task\'s tests in Pyodide', { timeout: 600_000 }, async () => {
  const page = await openPage('webgpu', { noWebGpu: true });
  const dev = await page.evaluate(() => window.flexlora.state.device);
  assert.equal(dev.kind, 'CPU');
  assert.match(await page.locator('#device-status').textContent(), /no WebGPU.*CPU backend runs/);
  await loadServed(page);
  // The same adapter directory by URL: a third adapter, with adapter one's tokens.
  const index = await page.evaluate(() => window.flexlora.loadAdapterUrl('files/adapters/0/'));
  assert.equal(index, 2);
  assert.deepEqual(await pageIds(page, 2), native.one, 'adapter loaded by URL');
  // Stop: start a long generation with the button, stop it once text streams, and check the page
  // kept painting frames while the worker generated.
  await page.evaluate(() => {
    window.flexlora.setPrompt('def sort_numbers(xs):\n');
    document.querySelector('input[name=mode][value=raw]').checked = true;
    document.getElementById('max-tokens').value = '400';
    window.frames_seen = 0;
    const tick = () => { window.frames_seen++; requestAnimationFrame(tick); };
    requestAnimationFrame(tick);
  });
  await page.click('#generate');
  await page.waitForFunction(() => document.getElementById('out-0').textContent.length > 20, null, { timeout: 300_000 });
  const frames = await page.evaluate(() => window.frames_seen);
  await page.click('#stop');
  await page.waitForFunction(() => /stopped/.test(document.getElementById('speed').textContent), null, { timeout: 60_000 });
  const speed = await page.locator('#speed').textContent();
  const tokens = Number(speed.match(/decode (\d+) tokens/)[1]);
  assert.ok(tokens < 400, `stop did not end the generation: ${speed}`);
  assert.ok(frames > 5, `the page painted only ${frames} frames while generating`);
  assert.equal(await page.locator('#generate').isDisabled(), false, 'Generate is enabled again after stop');
  // Run the code: a HumanEval task as the prompt, then its tests on an output in Pyodide. The
  // canonical solution passes; a wrong body fails with the assertion.
  await page.waitForFunction(() => !document.getElementById('task').disabled, null, { timeout: 60_000 });
  await page.click('#use-task');
  assert.match(await page.locator('#prompt').inputValue(), /def has_close_elements/);
  for (const [body, verdict] of [['canonical', /PASS/], ['\n    return False\n', /FAIL: a test does not hold/]]) {
    await page.evaluate(async (body) => {
      const tasks = await import('./tasks.js');
      const t = (await tasks.loadTasks('humaneval'))[0];
      document.getElementById('out-0').textContent = body === 'canonical' ? t.canonical : body;
      document.getElementById('run-code').disabled = false;
      document.getElementById('run-status').textContent = ''; // the last verdict must not count
    }, body);
    await page.click('#run-code');
    await page.waitForFunction(() => /PASS|FAIL/.test(document.getElementById('run-status').textContent), null, { timeout: 180_000 });
    assert.match(await page.locator('#run-status').textContent(), verdict, `${body}: ${await page.locator('#run-log').textContent()}`);
  }
  await page.close();
});

// Out of memory, three ways, each a clear error in the page: a file too large for wasm32 (refused
// before it is downloaded), a header that declares a model too large (refused after parsing,
// before any weight is allocated), and a real failed allocation: Chromium started with V8's limit
// of 256 MiB per WebAssembly memory (as a browser short of memory would refuse memory.grow), where
// SmolLM2 does not fit and the module stops in the middle of loading.
test('out of memory: refused before allocating, and a real failed allocation, each a clear error in the page', { timeout: 600_000 }, async () => {
  // A 5 GiB "model": SmolLM2's first MiB, then a hole (a sparse file: no disk, no download).
  const huge = join(work, 'huge-5GiB.gguf');
  writeFileSync(huge, readFileSync(model).subarray(0, 1 << 20));
  execFileSync('truncate', ['-s', '5G', huge]);
  const hugeUrl = await startServer([], huge);
  let page = await openPage('cpu', { at: hugeUrl });
  const tooLarge = await page.evaluate(async () => {
    try { await window.flexlora.loadModel({ url: window.flexlora.manifest.model.url }); return 'loaded'; } catch { /* shown */ }
    return document.getElementById('error').textContent;
  });
  console.log('too large:', tooLarge);
  assert.match(tooLarge, /out of memory: huge-5GiB\.gguf is 5\.00 GiB.*at most 1\.94 GiB/, tooLarge);
  await page.close();

  // SmolLM2 whose header says 100000 layers (llama.block_count patched): ~100 GiB as loaded.
  page = await openPage('cpu');
  const declared = await page.evaluate(async () => {
    const bytes = new Uint8Array(await (await fetch(window.flexlora.manifest.model.url)).arrayBuffer());
    const key = new TextEncoder().encode('llama.block_count');
    const at = bytes.findIndex((_, i) => key.every((k, j) => bytes[i + j] === k));
    const view = new DataView(bytes.buffer);
    if (at < 0 || view.getUint32(at + key.length, true) !== 4) return `no u32 llama.block_count in the file (${at})`;
    view.setUint32(at + key.length + 4, 100000, true);
    try { await window.flexlora.loadModel({ bytes, name: 'many-layers.gguf' }); return 'loaded'; } catch { /* shown */ }
    return document.getElementById('error').textContent;
  });
  console.log('declared too large:', declared);
  assert.match(declared, /out of memory: many-layers\.gguf needs at least \d+\.\d+ GiB/, declared);
  await loadServed(page);
  assert.deepEqual(await pageIds(page, -1), native.base, 'the engine still works after the refusal');
  await page.close();

  // A real failed allocation: loading NF4 needs more than 256 MiB of wasm memory (the file's
  // blocks, the page's default, fit in it).
  const small = await chromium.launch({ executablePath: chromiumPath, ignoreDefaultArgs: ['--headless'], args: [...chromiumArgs, '--js-flags=--wasm-max-mem-pages=4096'] });
  try {
    page = await openPage('cpu', { on: small });
    const failed = await page.evaluate(async () => {
      try { await window.flexlora.loadModel({ url: window.flexlora.manifest.model.url, weights: 'nf4' }); return 'loaded'; } catch { /* shown */ }
      return document.getElementById('error').textContent;
    });
    console.log('failed allocation:', failed);
    assert.match(failed, /out of memory in WebAssembly: the engine stopped .*GiB .* in use/, `${failed}\n${page.logs.join('\n')}`);
    // The page stays a page: it answers, and the next request says the engine must be reloaded.
    const after = await page.evaluate(async () => {
      try { await window.flexlora.loadModel({ url: window.flexlora.manifest.model.url, weights: 'nf4' }); return 'loaded'; } catch { /* shown */ }
      return document.getElementById('error').textContent;
    });
    assert.match(after, /engine stopped earlier.*reload the page/, after);
  } finally {
    await small.close();
  }
});
