// Fine-tuning in the page (src/web/train.rs, the fine-tune panel) against native `flexlora train`,
// in headless Chromium: SmolLM2-135M, NF4 base, a tiny JSONL set of short examples, the same
// settings and seed on both sides.
// - 3 steps on the wasm CPU backend and on WebGPU (SwiftShader): each step's loss, gradient norm and
//   FLeX penalty equal the native CPU run's within a tolerance stated below.
// - The adapter the page trained, downloaded as PEFT files, loads natively and gives the page's
//   greedy tokens.
// - MBPP's train split, as `flexlora web` serves it, gives the page as many examples as native.
//
// Needs: FLEXLORA_MODEL_GGUF, FLEXLORA_DATA, the native binary (FLEXLORA_BIN, default
// target/debug/flexlora), web/pkg (scripts/build-web.sh), Debian's chromium, playwright-core.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { chromiumArgs, chromiumPath } from './harness.mjs';

const repo = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const bin = process.env.FLEXLORA_BIN ?? join(repo, 'target/debug/flexlora');
const model = process.env.FLEXLORA_MODEL_GGUF && resolve(repo, process.env.FLEXLORA_MODEL_GGUF);
const work = mkdtempSync(join(tmpdir(), 'flexlora-train-'));
const PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n';

// The run on both sides. Everything the page does not default like native is given explicitly.
const STEPS = 3;
const CONFIG = {
  steps: STEPS, lr: 1e-3, batch_size: 2, max_len: 64, seed: 5, warmup_steps: 0, optimizer: 'adamw',
  lora: { rank: 4, alpha: 8, targets: ['q_proj', 'v_proj', 'down_proj'] },
  flex: { mode: 'train', lambda: 0.5 },
};
const FLAGS = ['--steps', String(STEPS), '--lr', '1e-3', '--batch-size', '2', '--max-len', '64', '--seed', '5', '--warmup-steps', '0',
  '--optimizer', 'adamw', '--lora-rank', '4', '--lora-alpha', '8', '--lora-targets', 'q_proj,v_proj,down_proj',
  '--flex-mode', 'train', '--flex-lambda', '0.5', '--val-every', '0', '--save-every', '0', '--weights', 'nf4'];
// Tolerances, relative, on each step's loss, gradient norm and FLeX penalty:
// - wasm CPU: the same f32 ops as native, but its matmul kernels (SIMD128, 4-wide) add in another
//   order than native's AVX2/AVX-512 ones, and its libm's exp/ln differ in the last bit: ~1e-6
//   per op, which three AdamW steps carry into the loss at ~1e-5. 1e-4 leaves room and still fails
//   on any real difference (a wrong mask, seed or update moves the loss by > 1e-2).
// - WebGPU: SwiftShader's reductions run in other orders and its exp/log are approximations
//   (WGSL allows a few ULP); the op suite measures up to ~1e-5 relative per op, 2e-3 on the
//   spectral penalty (an FFT in f32), so 3e-3 here.
const TOL = { cpu: 1e-4, webgpu: 3e-3 };

let server, url, browser, data, native;

function run(args) {
  return execFileSync(bin, args, { cwd: repo, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26 }).toString();
}

// stdout and stderr of a native run that must succeed.
function runAll(args) {
  const r = spawnSync(bin, args, { cwd: repo, encoding: 'utf8', maxBuffer: 1 << 26 });
  assert.equal(r.status, 0, `flexlora ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout + r.stderr;
}

// The f32 tensors of a safetensors file, by name.
function safetensors(bytes) {
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8'));
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    assert.equal(t.dtype, 'F32', `${name}: ${t.dtype}`);
    const [a, b] = t.data_offsets;
    const body = bytes.subarray(8 + n + a, 8 + n + b);
    out[name] = Array.from({ length: body.length / 4 }, (_, i) => body.readFloatLE(i * 4));
  }
  return out;
}

function startServer() {
  return new Promise((ok, fail) => {
    server = spawn(bin, ['web', '--model', model, '--port', '0'], { cwd: repo, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    server.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/flexlora web: (http:\/\/\S+)/);
      if (m) ok(m[1]);
    });
    server.on('exit', (code) => fail(new Error(`flexlora web exited with ${code}: ${out}`)));
  });
}

async function openPage(device) {
  const page = await (await browser.newContext()).newPage();
  const logs = [];
  page.on('console', (m) => logs.push(m.text()));
  page.on('pageerror', (e) => logs.push(String(e)));
  page.logs = logs;
  await page.goto(`${url}?device=${device}&threads=1`);
  await page.waitForFunction(() => document.title !== 'flexlora', null, { timeout: 120_000 });
  assert.equal(await page.title(), 'flexlora: ready', logs.join('\n'));
  const dev = await page.evaluate(() => window.flexlora.state.device);
  assert.equal(dev.kind, device === 'cpu' ? 'CPU' : 'GPU', `asked for ${device}, got ${JSON.stringify(dev)}`);
  await page.evaluate((u) => window.flexlora.loadModel({ url: u, weights: 'nf4' }), '/files/model/' + model.split('/').pop());
  return page;
}

// Starts the run in the page with the test's settings and data, then runs its steps in one request.
async function trainInPage(page) {
  return page.evaluate(async ({ config, text, steps }) => {
    const info = await window.flexlora.trainStart(config, { text, name: 'data.jsonl' });
    const r = await window.flexlora.trainSteps(steps);
    return { info, reports: r.steps, done: r.done };
  }, { config: CONFIG, text: data, steps: STEPS });
}

function assertSameSteps(page, got, tol, what) {
  assert.equal(got.length, native.length, `${what}: ${got.length} steps, native ran ${native.length}`);
  const rel = (a, b) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-12);
  let worst = 0;
  got.forEach((g, i) => {
    const n = native[i];
    assert.equal(g.step, n.step);
    assert.equal(g.tokens, n.tokens, `${what} step ${n.step}: other batches than native (${g.tokens} vs ${n.tokens} tokens)`);
    for (const k of ['loss', 'grad_norm', 'flex_penalty']) {
      const e = rel(g[k], n[k]);
      worst = Math.max(worst, e);
      assert.ok(e <= tol, `${what} step ${n.step}: ${k} ${g[k]} vs native ${n[k]} (relative ${e.toExponential(2)} > ${tol})`);
    }
  });
  console.log(`${what}: ${got.length} steps, losses ${got.map((g) => g.loss.toFixed(6)).join(', ')}; worst relative difference to native ${worst.toExponential(2)}`);
}

before(async () => {
  assert.ok(model, 'FLEXLORA_MODEL_GGUF is not set (scripts/fetch-model.sh prints the path)');
  assert.ok(existsSync(bin), `${bin} is missing: build with cargo build`);
  const rows = [
    { prompt: 'def add(a, b):\n', completion: '    return a + b\n' },
    { prompt: 'def square(x):\n', completion: '    return x * x\n' },
    { prompt: 'def fibonacci(n):\n', completion: '    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n' },
    { text: 'def is_even(n):\n    return n % 2 == 0\n' },
    { prompt: 'def maximum(xs):\n', completion: '    return max(xs)\n' },
  ];
  data = rows.map((r) => JSON.stringify(r)).join('\n') + '\n';
  const file = join(work, 'data.jsonl');
  writeFileSync(file, data);
  const out = join(work, 'native');
  run(['train', '--device', 'cpu', '--model', model, '--data', file, '--out', out, ...FLAGS]);
  native = readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((r) => r.loss !== undefined && r.grad_norm !== undefined);
  assert.equal(native.length, STEPS, 'the native run did not log one line per step');
  assert.ok(native.every((r) => r.flex_penalty > 0), 'FLeX is on: the native run must log its penalty');
  url = await startServer();
  browser = await chromium.launch({ executablePath: chromiumPath, ignoreDefaultArgs: ['--headless'], args: chromiumArgs });
});

after(async () => {
  await browser?.close();
  server?.kill();
  rmSync(work, { recursive: true, force: true });
});

test('wasm CPU backend: 3 training steps equal native; the downloaded adapter loads natively with the page\'s greedy tokens', { timeout: 900_000 }, async () => {
  const page = await openPage('cpu');
  const { info, reports, done } = await trainInPage(page);
  assert.equal(info.total_steps, STEPS);
  assert.ok(done, 'the run should be done after its steps');
  assertSameSteps(page, reports, TOL.cpu, 'wasm CPU');
  // The plot and the status line show the run.
  assert.match(await page.locator('#train-status').textContent(), new RegExp(`step ${STEPS} of ${STEPS}, loss`));
  assert.ok(await page.locator('#train-plot polyline.loss').count() === 1, 'no loss curve drawn');
  // The trained adapter is in the page's adapter list and applied: greedy tokens with it...
  const pageIds = await page.evaluate(async (prompt) => {
    const r = await window.flexlora.generate(prompt, { chat: false, temperature: 0, max_new_tokens: 24 });
    return r.ids;
  }, PROMPT);
  // ...equal native `flexlora generate` with the files the page downloads.
  const files = await page.evaluate(async () => {
    const f = await window.flexlora.trainAdapterFiles();
    return { config: f.config, weights: Array.from(new Uint8Array(f.weights)) };
  });
  const dir = join(work, 'from-page');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'adapter_config.json'), files.config);
  writeFileSync(join(dir, 'adapter_model.safetensors'), Buffer.from(files.weights));
  const json = join(work, 'gen.json');
  run(['generate', '--device', 'cpu', '--model', model, '--weights', 'nf4', '--adapter', dir, '--prompt', PROMPT, '--max-new-tokens', '24', '--json', json]);
  const nativeIds = JSON.parse(readFileSync(json, 'utf8')).ids;
  assert.deepEqual(pageIds, nativeIds, 'the page\'s greedy tokens with its adapter vs native generate --adapter with the downloaded files');
  // And the downloaded weights are the native run's: same tensors, each within 1% in norm. Not
  // element by element: AdamW's first steps move each weight by about ±lr whatever the gradient's
  // size, so where a gradient is near 0 a 1e-6 difference in it flips that weight's step.
  const mine = safetensors(Buffer.from(files.weights));
  const theirs = safetensors(readFileSync(join(work, 'native', 'adapter', 'adapter_model.safetensors')));
  assert.deepEqual(Object.keys(mine).sort(), Object.keys(theirs).sort(), 'the page\'s adapter tensors vs the native run\'s');
  let worst = 0;
  for (const [name, want] of Object.entries(theirs)) {
    const got = mine[name];
    const norm = Math.hypot(...want);
    const diff = Math.hypot(...want.map((w, i) => got[i] - w));
    assert.ok(norm > 0, `${name} is all zero after training: the test could not tell a trained adapter from a fresh one`);
    worst = Math.max(worst, diff / norm);
    assert.ok(diff <= 1e-2 * norm, `${name}: the page's differs from native's by ${(diff / norm).toExponential(2)} of its norm`);
  }
  console.log(`downloaded adapter vs native: worst relative difference in norm ${worst.toExponential(2)}`);
  await page.close();
});

test('WebGPU (SwiftShader): 3 training steps equal native', { timeout: 1_800_000 }, async () => {
  const page = await openPage('webgpu');
  const { reports } = await trainInPage(page);
  assertSameSteps(page, reports, TOL.webgpu, 'WebGPU');
  await page.close();
});

test('MBPP\'s train split as `flexlora web` serves it: as many examples as native training', { timeout: 600_000 }, async () => {
  const page = await openPage('cpu');
  const info = await page.evaluate(async () => {
    const served = window.flexlora.manifest.train_data;
    if (!served?.length) return null;
    const r = await fetch(served[0].url);
    return window.flexlora.trainStart({ steps: 1, max_len: 512 }, { text: await r.text(), name: 'mbpp' });
  });
  assert.ok(info, 'flexlora web offers no training data (manifest.train_data): is FLEXLORA_DATA set?');
  const out = runAll(['train', '--device', 'cpu', '--model', model, '--data', 'mbpp', '--out', join(work, 'mbpp'), '--steps', '1', '--max-len', '512', '--val-every', '0', '--lora-rank', '2', '--batch-size', '1', '--weights', 'nf4']);
  const m = out.match(/data: (\d+) examples \((\d+) truncated to \d+ tokens, (\d+) left without targets/);
  assert.ok(m, `native train printed no example count: ${out}`);
  assert.equal(info.examples, Number(m[1]) - Number(m[3]), 'examples trained on in the page vs native --data mbpp');
  assert.ok(info.examples > 300, `MBPP's train split has 374 tasks; the page got ${info.examples}`);
  assert.match(info.memory.text, /^about \d+ MiB \(weights/, 'the page states the run\'s memory before it starts');
  // A run that cannot fit is refused before anything is allocated, with the estimate, not a crash.
  const refused = await page.evaluate(async () => {
    const r = await fetch(window.flexlora.manifest.train_data[0].url);
    try {
      await window.flexlora.trainStart({ steps: 1, max_len: 2048, batch_size: 512 }, { text: await r.text(), name: 'mbpp' });
      return null;
    } catch (e) { return String(e.message ?? e); }
  });
  assert.match(refused ?? 'not refused', /this run needs about \d+ MiB .* over the 4096 MiB a wasm32 page can address; lower the batch size/, refused);
  const still = await page.evaluate(() => window.flexlora.generate('def f():', { chat: false, temperature: 0, max_new_tokens: 4 }));
  assert.equal(still.generated_tokens, 4, 'the page still works after the refusal');
  await page.close();
});

// One training state: a native checkpoint continues in the page, a page checkpoint natively, and
// each continuation follows the uninterrupted native run's losses within the wasm CPU tolerance.
test('a native checkpoint continues in the page and a page checkpoint natively, on the native run\'s losses', { timeout: 900_000 }, async () => {
  const file = join(work, 'data.jsonl'); // the `data` setting both sides record: the same file
  const flags4 = FLAGS.map((f, i) => (FLAGS[i - 1] === '--steps' ? '4' : FLAGS[i - 1] === '--save-every' ? '2' : f));
  const full = join(work, 'native4');
  run(['train', '--device', 'cpu', '--model', model, '--data', file, '--out', full, ...flags4, '--keep-checkpoints', '3']);
  const want = readFileSync(join(full, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((r) => r.grad_norm !== undefined);
  assert.equal(want.length, 4);
  const close = (got, what) => {
    assert.deepEqual(got.map((r) => r.step), [3, 4], `${what}: steps`);
    got.forEach((g, i) => {
      const n = want[2 + i];
      for (const k of ['loss', 'grad_norm', 'flex_penalty']) {
        const e = Math.abs(g[k] - n[k]) / Math.abs(n[k]);
        assert.ok(e <= TOL.cpu, `${what} step ${n.step}: ${k} ${g[k]} vs the uninterrupted native run's ${n[k]} (relative ${e.toExponential(2)})`);
      }
    });
    console.log(`${what}: steps 3-4 losses ${got.map((g) => g.loss.toFixed(6)).join(', ')} (native ${want.slice(2).map((n) => n.loss.toFixed(6)).join(', ')})`);
  };
  const page = await openPage('cpu');
  // Native step 2 -> the page.
  const ck2 = readFileSync(join(full, 'checkpoints', 'step-0000002', 'checkpoint.safetensors'));
  const resumed = await page.evaluate(async ({ bytes, text, name }) => {
    const info = await window.flexlora.trainResume(new Uint8Array(bytes).buffer, { text, name });
    const r = await window.flexlora.trainSteps(2);
    return { info, steps: r.steps };
  }, { bytes: Array.from(ck2), text: data, name: file });
  assert.equal(resumed.info.step, 2);
  close(resumed.steps, 'native checkpoint continued in the page');
  // The page, steps 1-2 -> natively.
  const pageCk = await page.evaluate(async ({ config, text, name }) => {
    await window.flexlora.trainStart(config, { text, name });
    await window.flexlora.trainSteps(2);
    return Array.from(new Uint8Array(await window.flexlora.trainCheckpoint()));
  }, { config: { ...CONFIG, steps: 4 }, text: data, name: file });
  const ckFile = join(work, 'from-page.safetensors');
  writeFileSync(ckFile, Buffer.from(pageCk));
  const cont = join(work, 'continued');
  run(['train', '--device', 'cpu', '--model', model, '--resume', ckFile, '--out', cont]);
  const got = readFileSync(join(cont, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((r) => r.grad_norm !== undefined);
  close(got, 'page checkpoint continued natively');
  // A damaged checkpoint is refused, naming the file (another model is refused too: train::state tests).
  const other = Buffer.from(pageCk);
  const err = await page.evaluate(async ({ bytes, text }) => {
    try {
      await window.flexlora.trainResume(new Uint8Array(bytes).buffer, { text, name: 'x' }, 'bad.safetensors');
      return null;
    } catch (e) { return String(e.message ?? e); }
  }, { bytes: Array.from(other.subarray(0, 100)), text: data });
  assert.match(err ?? '', /bad\.safetensors/, `a damaged checkpoint must be refused naming the file: ${err}`);
  await page.close();
});

// The panel's buttons: Start runs the loop, Pause stops it between requests, Resume continues to
// the end; the steps are those of one uninterrupted run (the same numbers as the first test's).
test('Start, Pause and Resume in the panel', { timeout: 600_000 }, async () => {
  const page = await openPage('cpu');
  const r = await page.evaluate(async ({ config, text }) => {
    const f = window.flexlora;
    const until = async (cond) => { while (!cond()) await new Promise((ok) => setTimeout(ok, 20)); };
    document.getElementById('train-every').value = '1';
    await f.trainStart(config, { text, name: 'data.jsonl' });
    const loop = f.trainLoop();
    await until(() => f.training.reports.length >= 1);
    document.getElementById('train-pause').click();
    await loop;
    const paused = { steps: f.training.reports.length, status: document.getElementById('train-status').textContent, resumeEnabled: !document.getElementById('train-resume').disabled };
    document.getElementById('train-resume').click();
    await until(() => !f.training.looping && f.training.reports.length >= config.steps);
    return { paused, reports: f.training.reports, status: document.getElementById('train-status').textContent };
  }, { config: CONFIG, text: data });
  assert.ok(r.paused.steps >= 1 && r.paused.steps < STEPS, `paused after ${r.paused.steps} of ${STEPS} steps`);
  assert.match(r.paused.status, /^paused: step \d/);
  assert.ok(r.paused.resumeEnabled, 'Resume is enabled while paused');
  assert.match(r.status, new RegExp(`^done: step ${STEPS} of ${STEPS}`));
  assertSameSteps(page, r.reports, TOL.cpu, 'paused and resumed');
  await page.close();
});
