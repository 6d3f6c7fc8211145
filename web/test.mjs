// Headless Chromium test of the browser build: serves web/ on a loopback port, opens the page with
// WebGPU enabled (SwiftShader when there is no GPU), and waits for the page to report.
// Needs: web/pkg (scripts/build-web.sh), Debian's chromium, and `npm install` here (playwright-core).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = fileURLToPath(new URL('.', import.meta.url));
const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm' };

function serve() {
  const server = http.createServer(async (req, res) => {
    const path = normalize(join(root, new URL(req.url, 'http://127.0.0.1').pathname));
    if (!path.startsWith(root)) { res.writeHead(403).end(); return; }
    try {
      const body = await readFile(path.endsWith('/') ? join(path, 'index.html') : path);
      res.writeHead(200, { 'content-type': types[extname(path)] ?? 'application/octet-stream' }).end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok(server)));
}

test('matmul on WebGPU in headless Chromium matches the CPU backend', { timeout: 180_000 }, async () => {
  const server = await serve();
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    ignoreDefaultArgs: ['--headless'],
    args: ['--headless=new', '--no-sandbox', '--enable-unsafe-webgpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  try {
    const page = await browser.newPage();
    const logs = [];
    page.on('console', (m) => logs.push(m.text()));
    page.on('pageerror', (e) => logs.push(String(e)));
    await page.goto(`http://127.0.0.1:${server.address().port}/check.html`);
    await page.waitForFunction(() => document.title !== 'flexlora: running', null, { timeout: 170_000 });
    const result = await page.evaluate(() => window.flexloraResult);
    console.log('browser result:', JSON.stringify(result));
    if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT });
    assert.equal(result.ok, true, `page reported failure: ${JSON.stringify(result)}\n${logs.join('\n')}`);
    assert.ok(result.max_abs_ref > 0.1, 'reference result is degenerate');
  } finally {
    await browser.close();
    server.close();
  }
});
