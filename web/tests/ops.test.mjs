// The whole op suite in the browser (issue 18): `flexlora selftest`'s cases, every op forward and
// backward on seeded odd shapes, run by web/selftest.html in headless Chromium. Two columns:
//   - WebGPU (SwiftShader here) against the CPU backend compiled to wasm, with each case's tolerance;
//   - that wasm CPU backend (SIMD128) against the NATIVE portable CPU twin's outputs for the same
//     seeded inputs, through `flexlora selftest --dump` (sampled values, largest |value| and block
//     sums: src/selftest/digest.rs says what that comparison sees and why it is not bitwise).
// A corrupted dump must make exactly the corrupted op fail (so the comparison can fail). Writes the
// matrix to target/browser-selftest.md (and the raw result to target/browser-selftest.json).
// Under CI=true a browser without WebGPU is a failure, not a skip.
//
// Needs: the native binary (FLEXLORA_BIN, default target/debug/flexlora), web/pkg-selftest
// (scripts/build-web.sh), Debian's chromium, playwright-core.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { browserAvailable, launch, serve, webRoot } from './harness.mjs';

const repo = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const bin = process.env.FLEXLORA_BIN ?? join(repo, 'target/debug/flexlora');
const ci = process.env.CI === 'true';
const work = mkdtempSync(join(tmpdir(), 'flexlora-ops-'));
const skip = (await browserAvailable()) || false;

let server, browser;

before(async () => {
  if (skip) return;
  assert.ok(existsSync(bin), `${bin} is missing: build with cargo build`);
  assert.ok(existsSync(join(webRoot, 'pkg-selftest/flexlora_bg.wasm')), 'web/pkg-selftest is missing: run scripts/build-web.sh');
  // The native reference: the portable CPU twin's digests (the CPU tiers run too: a few seconds).
  execFileSync(bin, ['selftest', '--backend', 'cpu', '--dump', join(work, 'native.json')], { cwd: repo, stdio: ['ignore', 'ignore', 'inherit'] });
  const dump = JSON.parse(readFileSync(join(work, 'native.json'), 'utf8'));
  // A copy with one sampled value of matmul.forward moved far outside its tolerance.
  const mm = dump.cases.find((c) => c.op === 'matmul.forward');
  const s = mm.outputs[0].samples[5];
  s[1] = String(Number(s[1]) + 1.0); // values are strings: exact f64 text (digest.rs, `Num`)
  writeFileSync(join(work, 'corrupt.json'), JSON.stringify(dump));
  server = await serve({ mounts: { '/native.json': join(work, 'native.json'), '/corrupt.json': join(work, 'corrupt.json'), '/': webRoot } });
  browser = await launch({ allowOrigin: server.url });
});

after(async () => {
  await browser?.close();
  server?.close();
  rmSync(work, { recursive: true, force: true });
});

async function selftest(query) {
  const page = await browser.context.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[pageerror] ${e}`));
  await page.goto(`${server.url}/selftest.html?${query}`);
  await page.waitForFunction(() => !document.title.endsWith('running'), null, { timeout: 600_000 });
  const result = await page.evaluate(() => window.flexloraSelftest);
  await page.close();
  assert.ok(result && !result.error, `the page reported ${JSON.stringify(result?.error)}\n${logs.join('\n')}`);
  return result;
}

function failures(column) {
  return column.outcomes.filter((o) => !o.pass).map((o) => `${o.op}: ${o.detail}`).join('\n');
}

function markdown(result, secs) {
  const { columns, ops } = result;
  const lines = [
    `Browser selftest (headless Chromium, web/selftest.html), ${new Date().toISOString()}, ${secs.toFixed(0)} s in all.`,
    'WebGPU is judged against the wasm CPU backend; the wasm CPU backend against the native portable CPU twin',
    '(sampled values, largest |value|, block sums; its max error is over the samples). Cells: result, max error, time.',
    '',
    `| op | ${columns.map((c) => c.label).join(' | ')} |`,
    `|---|${columns.map(() => '---').join('|')}|`,
  ];
  for (const op of ops) {
    const cells = columns.map((c) => {
      const o = c.outcomes.find((x) => x.op === op);
      return o ? `${o.pass ? 'ok' : 'FAIL'} ${o.max_err.toExponential(1)} ${(o.secs * 1e3).toFixed(0)} ms` : 'FAIL (did not run)';
    });
    lines.push(`| ${op} | ${cells.join(' | ')} |`);
  }
  return lines.join('\n') + '\n';
}

test('every op forward and backward: WebGPU against the wasm CPU twin, and the wasm CPU backend against native', { skip, timeout: 900_000 }, async (t) => {
  const t0 = Date.now();
  const result = await selftest('backend=all&native=/native.json');
  const secs = (Date.now() - t0) / 1000;
  mkdirSync(join(repo, 'target'), { recursive: true });
  writeFileSync(join(repo, 'target/browser-selftest.md'), markdown(result, secs));
  writeFileSync(join(repo, 'target/browser-selftest.json'), JSON.stringify(result, null, 1));
  console.log(markdown(result, secs));
  assert.equal(result.ops.length, 30, 'the selftest has 30 rows (every op family, forward and backward)');

  const [gpu, cpu] = result.columns;
  assert.match(cpu.label, /^wasm CPU \(SIMD128/, 'the wasm CPU column runs the SIMD128 build');
  assert.equal(cpu.open_error, null, `the native dump was not taken: ${cpu.open_error}`);
  assert.equal(cpu.outcomes.length, 30);
  assert.ok(cpu.outcomes.every((o) => o.pass), `wasm CPU vs native:\n${failures(cpu)}`);

  assert.match(gpu.label, /^WebGPU/);
  if (gpu.open_error) {
    // No silent skip: under CI=true a missing WebGPU fails the test.
    assert.ok(!ci, `CI=true and no WebGPU in headless Chromium: ${gpu.open_error}`);
    t.diagnostic(`*** skipped: WebGPU column: ${gpu.open_error} ***`);
    console.log(`*** skipped: no WebGPU in this Chromium (${gpu.open_error}); the wasm CPU column ran ***`);
  } else {
    assert.equal(gpu.outcomes.length, 30);
    assert.ok(gpu.outcomes.every((o) => o.pass), `WebGPU vs the wasm CPU twin:\n${failures(gpu)}`);
  }
  assert.equal(result.passed, !gpu.open_error);
});

test('a native dump with one value moved fails that op, and only that op', { skip, timeout: 300_000 }, async () => {
  const result = await selftest('backend=cpu&native=/corrupt.json');
  const [cpu] = result.columns;
  assert.equal(result.passed, false);
  const bad = cpu.outcomes.filter((o) => !o.pass);
  assert.deepEqual(bad.map((o) => o.op), ['matmul.forward'], failures(cpu));
  assert.match(bad[0].detail, /^c\[\d+\]: wasm .*, native .* \(allowed difference/);
});
