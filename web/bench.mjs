#!/usr/bin/env node
// Browser benchmark: prefill and decode tokens/s in headless Chromium, wllama (llama.cpp in wasm,
// npm @wllama/wllama) against flexlora's own browser build, same GGUF, same browser, same threads.
// Prints one JSON line per measurement on stdout (progress on stderr).
//
//   node bench.mjs [--model PATH] [--threads 1,2] [--prompt 128] [--decode 128] [--runs 3]
//                  [--engines wllama,flexlora] [--devices cpu,webgpu] [--ngl 0] [--no-isolation]
//                  [--flexlora-page /index.html] [--timeout 600] [--native BIN] [--native-weights nf4,auto]
//
// --model: a GGUF file (default $FLEXLORA_MODEL, else SmolLM2-135M-Instruct.Q4_1.gguf in $FLEXLORA_MODELS
//   or the repository's models/, where scripts/fetch-model.sh puts it).
// --threads: thread counts to measure. The page is served cross-origin isolated (COOP/COEP), which
//   wasm threads need; with --no-isolation it is not, and every engine runs single-threaded.
// --ngl: wllama GPU layers (0: wasm CPU; 99: wllama's own WebGPU backend, reported as device webgpu).
// --devices: the devices asked of flexlora (webgpu runs on SwiftShader where there is no GPU).
// --native: the native flexlora binary (default $FLEXLORA_BIN): `flexlora generate` on the CPU with
//   the same prompt, tokens and threads (RAYON_NUM_THREADS), for the browser/native ratio.
// flexlora is measured cold (a fresh browser profile: empty OPFS) and warm (the OPFS cache).
import { basename, resolve } from 'node:path';
import { stat, readdir, readFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { serve, launch, openPage, webRoot, dataDir, browserAvailable, chromiumPath } from './tests/harness.mjs';

function parseArgs(argv) {
  const opts = {
    model: process.env.FLEXLORA_MODEL ?? resolve(process.env.FLEXLORA_MODELS ?? resolve(webRoot, '..', 'models'), 'SmolLM2-135M-Instruct.Q4_1.gguf'),
    threads: '1', prompt: 128, decode: 128, runs: 3, engines: 'wllama,flexlora', devices: 'cpu,webgpu',
    ngl: 0, isolation: true, flexloraPage: '/index.html', timeout: 600,
    native: process.env.FLEXLORA_BIN ?? null, nativeWeights: 'nf4,auto',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => { if (i + 1 >= argv.length) throw new Error(`${a} needs a value`); return argv[++i]; };
    switch (a) {
      case '--model': opts.model = resolve(val()); break;
      case '--threads': opts.threads = val(); break;
      case '--prompt': opts.prompt = Number(val()); break;
      case '--decode': opts.decode = Number(val()); break;
      case '--runs': opts.runs = Number(val()); break;
      case '--engines': opts.engines = val(); break;
      case '--devices': opts.devices = val(); break;
      case '--ngl': opts.ngl = Number(val()); break;
      case '--no-isolation': opts.isolation = false; break;
      case '--flexlora-page': opts.flexloraPage = val(); break;
      case '--timeout': opts.timeout = Number(val()); break;
      case '--native': { const v = val(); opts.native = v ? resolve(v) : null; break; }
      case '--native-weights': opts.nativeWeights = val(); break;
      case '-h': case '--help':
        console.log('usage: node bench.mjs [--model PATH] [--threads 1,2] [--prompt N] [--decode M] [--runs R] '
          + '[--engines wllama,flexlora] [--devices cpu,webgpu] [--ngl 0] [--no-isolation] [--flexlora-page /index.html] [--timeout S] '
          + '[--native BIN] [--native-weights nf4,auto]');
        process.exit(0);
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  opts.threads = opts.threads.split(',').map(Number).filter((n) => n > 0);
  opts.engines = opts.engines.split(',').filter(Boolean);
  opts.devices = opts.devices.split(',').filter(Boolean);
  opts.nativeWeights = opts.nativeWeights.split(',').filter(Boolean);
  return opts;
}

const log = (...a) => console.error('[bench]', ...a);
// Each line carries the 1-minute load average: on a shared machine it says how contended the CPU was.
const emit = (obj) => console.log(JSON.stringify({ ...obj, loadavg_1m: Math.round(loadavg()[0] * 100) / 100 }));

async function benchWllama(context, server, opts, modelUrl, threads, common) {
  const q = new URLSearchParams({ model: modelUrl, threads: String(threads), prompt: String(opts.prompt),
    decode: String(opts.decode), runs: String(opts.runs), ngl: String(opts.ngl) });
  const cpu0 = await cpuSnapshot();
  const wall0 = Date.now();
  const page = await openPage(context, `${server.url}/bench/wllama.html?${q}`);
  const cpuShare = async () => coresUsed(cpu0, await cpuSnapshot(), (Date.now() - wall0) / 1000);
  try {
    await page.waitForFunction(() => document.title !== 'wllama: running', null, { timeout: opts.timeout * 1000 });
    const r = await page.evaluate(() => window.benchResult);
    if (!r?.ok) {
      emit({ ...common, engine: 'wllama', threads_requested: threads, status: 'error', error: r?.error ?? 'no result', log_tail: page.logs.slice(-20) });
      return;
    }
    const base = {
      ...common, engine: 'wllama', version: r.version, libllama: r.libllama, device: opts.ngl > 0 ? 'webgpu' : 'cpu',
      threads_requested: threads, threads: r.threads, multithread: r.multithread, cross_origin_isolated: r.cross_origin_isolated,
      prompt_tokens: opts.prompt, decode_tokens: opts.decode, load_ms: round(r.load_ms), fetch_ms: round(r.fetch_ms),
      open_to_first_token_ms: round(r.open_to_first_token_ms),
      // CPU cores the browser used on average over the whole page (load, warm-up, runs): under 1 per
      // thread means other processes took the rest.
      browser_cpu_cores: await cpuShare(),
    };
    r.runs.forEach((m, i) => emit({ ...base, run: i + 1, prefill_tps: round(m.prefill_tps), decode_tps: round(m.decode_tps),
      first_token_ms: round(m.first_token_ms), wall_decode_tps: round(m.wall_decode_tps), prompt_n: m.prompt_n, predicted_n: m.predicted_n }));
    emit({ ...base, run: 'median', prefill_tps: round(r.prefill_tps), decode_tps: round(r.decode_tps), first_token_ms: round(r.first_token_ms) });
  } catch (e) {
    // A timeout: say how far the page got (its status line and the runs it finished).
    const partial = await page.evaluate(() => ({ stage: document.getElementById('status')?.textContent ?? null, result: window.benchResult ?? null }))
      .catch(() => ({}));
    emit({ ...common, engine: 'wllama', threads_requested: threads, status: 'error', error: String(e.message ?? e), stage: partial.stage,
      multithread: partial.result?.multithread, threads: partial.result?.threads, load_ms: round(partial.result?.load_ms),
      warmup: partial.result?.warmup ?? null, finished_runs: partial.result?.runs ?? [], log_tail: page.logs.slice(-20) });
  } finally {
    await page.close();
  }
}

// flexlora's own page (--flexlora-page, default /index.html) exposes
//   window.flexloraBench({ modelUrl, device: 'webgpu'|'cpu', promptTokens, decodeTokens })
//     -> Promise<{ prefill_tps, decode_tps, first_token_ms, page_open_to_first_token_ms, ... }>
// For each device: a fresh browser context (empty OPFS), one page opened and measured (cold: the
// model is downloaded, hashed and cached), then a second page in the same context measured --runs
// times (warm: the model comes from the OPFS cache; the first run gives the open-to-first-token
// time). The page is opened with ?threads=N, and says how many threads it runs and why.
async function benchFlexlora(chrome, server, opts, modelUrl, threads, common) {
  for (const device of opts.devices) {
    const line = { ...common, engine: 'flexlora', device, threads_requested: threads, prompt_tokens: opts.prompt, decode_tokens: opts.decode };
    const context = await chrome.browser.newContext();
    try {
      for (const phase of ['cold', 'warm']) {
        const page = await openPage(context, `${server.url}${opts.flexloraPage}?bench=1&device=${device}&threads=${threads}`);
        try {
          const present = await page.waitForFunction(() => typeof window.flexloraBench === 'function' && window.flexlora?.state?.device, null, { timeout: 120_000 })
            .then(() => true, () => false);
          if (!present) {
            emit({ ...line, phase, status: 'not available', reason: `${opts.flexloraPage} exposes no window.flexloraBench or opened no device`, log_tail: page.logs.slice(-20) });
            break;
          }
          const dev = await page.evaluate(() => window.flexlora.state.device);
          const devInfo = { device_name: dev.name, threads: dev.kind === 'CPU' ? dev.threads : null, build: dev.build, threads_why: dev.threads_why };
          const runs = phase === 'cold' ? 1 : opts.runs;
          const results = [];
          for (let i = 0; i < runs; i++) {
            const cpu0 = await cpuSnapshot();
            const wall0 = Date.now();
            const r = await page.evaluate((args) => window.flexloraBench(args),
              { modelUrl, device, promptTokens: opts.prompt, decodeTokens: opts.decode, threads });
            const cores = coresUsed(cpu0, await cpuSnapshot(), (Date.now() - wall0) / 1000);
            results.push(r);
            emit({ ...line, ...devInfo, phase, run: i + 1, prefill_tps: round(r?.prefill_tps), decode_tps: round(r?.decode_tps),
              first_token_ms: round(r?.first_token_ms), load_ms: round(r?.load_ms), open_to_first_token_ms: round(r?.page_open_to_first_token_ms),
              model_note: r?.model_note, browser_cpu_cores: cores });
          }
          if (runs > 1) {
            emit({ ...line, ...devInfo, phase, run: 'median', prefill_tps: round(median(results.map((r) => r.prefill_tps))),
              decode_tps: round(median(results.map((r) => r.decode_tps))), open_to_first_token_ms: round(results[0].page_open_to_first_token_ms) });
          }
        } catch (e) {
          emit({ ...line, phase, status: 'error', error: String(e.message ?? e), log_tail: page.logs.slice(-20) });
        } finally {
          await page.close();
        }
      }
    } finally {
      await context.close();
    }
  }
}

function median(xs) {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  return v.length ? (v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2) : null;
}

// Native `flexlora generate` on the same machine, same model, prompt length and thread count (the
// browser/native ratio): the binary is --native BIN (skipped when absent); its --json timing.
async function benchNative(opts, threads, common) {
  if (!opts.native) return;
  const { mkdtempSync, readFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { benchPromptText } = await import('./bench/prompt.js');
  const dir = mkdtempSync(resolve(tmpdir(), 'flexlora-bench-'));
  try {
    for (const weights of opts.nativeWeights) {
      const out = resolve(dir, 'gen.json');
      const args = ['generate', '--device', 'cpu', '--weights', weights, '--model', opts.model, '--prompt', benchPromptText(opts.prompt - 1),
        '--max-new-tokens', String(opts.decode), '--json', out];
      try {
        // `generate` prints its timing on stderr: "prompt N tokens in S s (R tokens/s); generated M tokens in ...".
        const { spawnSync } = await import('node:child_process');
        const p = spawnSync(opts.native, args, { encoding: 'utf8', env: { ...process.env, RAYON_NUM_THREADS: String(threads) } });
        const m = p.stderr.match(/prompt (\d+) tokens in ([\d.]+) s \(([\d.]+) tokens\/s\); generated (\d+) tokens in ([\d.]+) s \(([\d.]+) tokens\/s\)/);
        if (p.error || p.status !== 0 || !m) throw new Error(`${opts.native}: ${p.error ?? `exit ${p.status}`}: ${(p.stderr ?? '').slice(-500)}`);
        emit({ ...common, engine: 'native', device: 'cpu', weights, threads, prompt_tokens: Number(m[1]), generated_tokens: Number(m[4]),
          prefill_tps: Number(m[3]), decode_tps: Number(m[6]), ids: JSON.parse(readFileSync(out, 'utf8')).ids.length });
      } catch (e) {
        emit({ ...common, engine: 'native', weights, threads, status: 'error', error: String(e.message ?? e).slice(-500) });
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// CPU ticks (user + system, 1/100 s) of each process descended from this script: Chromium, which
// Playwright starts as a child, its renderers and GPU process (the workers' threads live in the
// renderer); from /proc, null where it is missing. The difference of two snapshots over wall time
// says how many cores the page really got on a shared machine (processes that exited in between are
// left out).
async function cpuSnapshot(rootPid = process.pid) {
  try {
    const procs = new Map();
    for (const name of await readdir('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      const text = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => null);
      if (!text) continue;
      const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
      procs.set(Number(name), { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) });
    }
    const inTree = (pid) => { for (let p = procs.get(pid)?.ppid ?? 0, n = 0; p > 1 && n < 64; p = procs.get(p)?.ppid ?? 0, n++) if (p === rootPid) return true; return false; };
    const snap = new Map();
    for (const [pid, p] of procs) if (inTree(pid)) snap.set(pid, p.ticks);
    return snap;
  } catch {
    return null;
  }
}

function coresUsed(before, after, seconds) {
  if (!before || !after || seconds <= 0) return null;
  let ticks = 0;
  for (const [pid, t] of after) ticks += t - (before.get(pid) ?? 0);
  return round(ticks / 100 / seconds);
}

function round(x) {
  return typeof x === 'number' && Number.isFinite(x) ? Math.round(x * 100) / 100 : x ?? null;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const skip = await browserAvailable();
  if (skip) throw new Error(skip);
  const st = await stat(opts.model).catch(() => null);
  if (!st?.isFile()) throw new Error(`no model file at ${opts.model} (--model PATH or FLEXLORA_MODEL)`);
  const modelPath = `/model/${basename(opts.model)}`;
  const server = await serve({
    mounts: { [modelPath]: opts.model, '/data/': dataDir, '/': webRoot },
    headers: opts.isolation ? undefined : { 'cache-control': 'no-store' },
  });
  let chrome;
  try {
    chrome = await launch({ allowOrigin: server.url });
    const version = (() => { try { return execFileSync(chromiumPath, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(); } catch { return null; } })();
    const common = { browser: version, model: basename(opts.model), model_bytes: st.size, cpus: cpus().length };
    log(`serving ${webRoot} at ${server.url}, model at ${modelPath}; ${version}`);
    for (const threads of opts.threads) {
      if (opts.engines.includes('wllama')) {
        log(`wllama, ${threads} thread(s)`);
        await benchWllama(chrome.context, server, opts, modelPath, threads, common);
      }
      if (opts.engines.includes('flexlora')) {
        log(`flexlora, ${threads} thread(s)`);
        await benchFlexlora(chrome, server, opts, modelPath, threads, common);
      }
      if (opts.native) {
        log(`native flexlora generate, ${threads} thread(s)`);
        await benchNative(opts, threads, common);
      }
    }
    if (chrome.blocked.length) log('blocked off-machine requests:', chrome.blocked);
  } finally {
    await chrome?.close();
    server.close();
  }
}

main().catch((e) => {
  console.error(`bench.mjs: ${e.message ?? e}`);
  process.exit(1);
});
