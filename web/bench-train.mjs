#!/usr/bin/env node
// Training benchmark: LoRA training tokens/s in the page (headless Chromium; the wasm CPU backend
// and WebGPU, SwiftShader where there is no GPU) against native `flexlora train` on the CPU, same
// model, data (MBPP's train split as `flexlora web` serves it), settings and seed, same machine.
// The first step of each is a warm-up and not counted. Prints one JSON line per measurement.
//
//   node bench-train.mjs [--model PATH] [--steps 4] [--batch 2] [--max-len 256] [--devices cpu,webgpu]
//                        [--threads 1] [--native BIN]
import { resolve, join } from 'node:path';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { chromium } from 'playwright-core';
import { chromiumArgs, chromiumPath, webRoot } from './tests/harness.mjs';

const opts = { model: resolve(webRoot, '..', 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf'), steps: 4, batch: 2, maxLen: 256, devices: 'cpu,webgpu', threads: 1, native: process.env.FLEXLORA_BIN ?? resolve(webRoot, '..', 'target', 'release', 'flexlora') };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const [k, v] = [argv[i], argv[i + 1]];
  if (k === '--model') opts.model = resolve(v);
  else if (k === '--steps') opts.steps = Number(v);
  else if (k === '--batch') opts.batch = Number(v);
  else if (k === '--max-len') opts.maxLen = Number(v);
  else if (k === '--devices') opts.devices = v;
  else if (k === '--threads') opts.threads = Number(v);
  else if (k === '--native') opts.native = resolve(v);
  else throw new Error(`unknown option ${k}`);
}
const config = { steps: opts.steps, batch_size: opts.batch, max_len: opts.maxLen, seed: 0 };
const rate = (steps) => steps.slice(1).reduce((a, s) => a + s.tokens, 0) / steps.slice(1).reduce((a, s) => a + s.seconds, 0);
const say = (o) => console.log(JSON.stringify({ ...o, load: loadavg()[0].toFixed(2) }));

// Native first: `flexlora train` on the CPU with the same settings; metrics.jsonl has each step.
const out = mkdtempSync(join(tmpdir(), 'flexlora-bench-train-'));
execFileSync(opts.native, ['train', '--device', 'cpu', '--model', opts.model, '--data', 'mbpp', '--out', join(out, 'run'), '--steps', String(opts.steps),
  '--batch-size', String(opts.batch), '--max-len', String(opts.maxLen), '--seed', '0', '--val-every', '0', '--save-every', '0'],
{ env: { ...process.env, RAYON_NUM_THREADS: String(opts.threads) }, stdio: ['ignore', 'ignore', 'inherit'] });
const native = readFileSync(join(out, 'run', 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((r) => r.grad_norm !== undefined);
say({ engine: 'native', device: 'cpu', threads: opts.threads, steps: native.length, tokens_per_s: rate(native), losses: native.map((r) => r.loss) });

const server = spawn(opts.native, ['web', '--model', opts.model, '--port', '0'], { stdio: ['ignore', 'pipe', 'inherit'] });
const url = await new Promise((ok, fail) => {
  let text = '';
  server.stdout.on('data', (d) => { text += d; const m = text.match(/flexlora web: (http:\/\/\S+)/); if (m) ok(m[1]); });
  server.on('exit', (c) => fail(new Error(`flexlora web exited with ${c}`)));
});
const browser = await chromium.launch({ executablePath: chromiumPath, ignoreDefaultArgs: ['--headless'], args: chromiumArgs });
try {
  for (const device of opts.devices.split(',')) {
    const page = await (await browser.newContext()).newPage();
    await page.goto(`${url}?device=${device}&threads=${opts.threads}`);
    await page.waitForFunction(() => document.title !== 'flexlora', null, { timeout: 120_000 });
    const r = await page.evaluate(async ({ config }) => {
      const f = window.flexlora;
      await f.loadModel({ url: f.manifest.model.url, weights: 'nf4' });
      const data = await (await fetch(f.manifest.train_data[0].url)).text();
      await f.trainStart(config, { text: data, name: 'mbpp' });
      const steps = [];
      for (let i = 0; i < config.steps; i++) steps.push(...(await f.trainSteps(1)).steps);
      return { steps, device: f.state.device };
    }, { config });
    say({ engine: 'page', device, threads: r.device.threads, steps: r.steps.length, tokens_per_s: rate(r.steps), vs_native: rate(r.steps) / rate(native), losses: r.steps.map((s) => s.loss) });
    await page.close();
  }
} finally {
  await browser.close();
  server.kill();
  rmSync(out, { recursive: true, force: true });
}
