// Shared helpers for the headless-Chromium tests and web/bench.mjs: a loopback HTTP server for web/
// (at /) and the data directory (at /data/), cross-origin isolated (COOP/COEP) so wasm threads and
// SharedArrayBuffer work, and a Chromium launcher that fails loudly under CI when the browser is missing.
import http from 'node:http';
import { createReadStream } from 'node:fs';
import { stat, access } from 'node:fs/promises';
import { constants } from 'node:fs';
import { extname, join, normalize, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

export const webRoot = fileURLToPath(new URL('..', import.meta.url));
export const dataDir = resolve(process.env.FLEXLORA_DATA ?? join(webRoot, '..', '..', 'shared', 'data'));

const types = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.map': 'application/json',
  '.wasm': 'application/wasm',
  '.zip': 'application/zip',
  // Served as bytes: the page decompresses .gz itself (DecompressionStream), so no Content-Encoding.
  '.gz': 'application/gzip',
  '.jsonl': 'application/jsonl; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.gguf': 'application/octet-stream',
  '.safetensors': 'application/octet-stream',
};

/** Headers every response carries: cross-origin isolation (COOP + COEP) and no caching. */
export const isolationHeaders = {
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-embedder-policy': 'require-corp',
  'cross-origin-resource-policy': 'same-origin',
  'cache-control': 'no-store',
};

/**
 * Starts a server on 127.0.0.1 (random port unless `port`). `mounts` maps URL prefixes (ending in
 * "/") to directories and exact URL paths to files; by default "/" is web/ and "/data/" the data
 * directory. Serves GET and HEAD with Content-Length and Last-Modified, and single byte ranges.
 * `server.requests` records every request as { method, path, status }. Returns the server with
 * `server.url` (origin, no trailing slash).
 */
export function serve({ mounts, port = 0, headers = isolationHeaders } = {}) {
  const table = mounts ?? { '/data/': dataDir, '/': webRoot };
  const entries = Object.entries(table).sort((a, b) => b[0].length - a[0].length);
  const requests = [];
  const server = http.createServer(async (req, res) => {
    const pathname = decodeURIComponent(new URL(req.url, 'http://127.0.0.1').pathname);
    const record = { method: req.method, path: pathname, status: 0 };
    requests.push(record);
    const send = (status, extra = {}, body) => {
      record.status = status;
      res.writeHead(status, { ...headers, ...extra });
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405);
    let file = null;
    for (const [prefix, target] of entries) {
      if (prefix.endsWith('/') ? pathname.startsWith(prefix) : pathname === prefix) {
        if (!prefix.endsWith('/')) { file = target; break; }
        const base = resolve(target);
        const p = normalize(join(base, pathname.slice(prefix.length)));
        if (p !== base && !p.startsWith(base + sep)) return send(403);
        file = p;
        break;
      }
    }
    if (!file) return send(404);
    let st;
    try {
      st = await stat(file);
      if (st.isDirectory()) { file = join(file, 'index.html'); st = await stat(file); }
    } catch {
      return send(404, { 'content-type': 'text/plain' }, 'not found');
    }
    const common = {
      'content-type': types[extname(file)] ?? 'application/octet-stream',
      'last-modified': st.mtime.toUTCString(),
      'accept-ranges': 'bytes',
    };
    let start = 0;
    let end = st.size - 1;
    let status = 200;
    const range = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range ?? '');
    if (range && (range[1] || range[2])) {
      if (range[1]) { start = Number(range[1]); if (range[2]) end = Math.min(Number(range[2]), end); }
      else start = Math.max(0, st.size - Number(range[2]));
      if (start > end) return send(416, { 'content-range': `bytes */${st.size}` });
      status = 206;
      common['content-range'] = `bytes ${start}-${end}/${st.size}`;
    }
    record.status = status;
    res.writeHead(status, { ...headers, ...common, 'content-length': String(end - start + 1) });
    if (req.method === 'HEAD' || st.size === 0) return res.end();
    createReadStream(file, { start, end }).on('error', () => res.destroy()).pipe(res);
  });
  server.requests = requests;
  return new Promise((ok, fail) => {
    server.on('error', fail);
    server.listen(port, '127.0.0.1', () => {
      server.url = `http://127.0.0.1:${server.address().port}`;
      ok(server);
    });
  });
}

export const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const chromiumArgs = ['--headless=new', '--no-sandbox', '--enable-unsafe-webgpu',
  '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];

/**
 * Whether a test may run. Without Chromium (or playwright-core) it returns a skip reason, except
 * under CI=true, where it throws: CI must never pass by skipping.
 */
export async function browserAvailable() {
  let reason = null;
  try { await access(chromiumPath, constants.X_OK); } catch { reason = `no Chromium at ${chromiumPath} (set CHROMIUM)`; }
  if (!reason) {
    try { await import('playwright-core'); } catch { reason = 'playwright-core is not installed (npm install in web/)'; }
  }
  if (reason && process.env.CI === 'true') throw new Error(`CI=true and ${reason}`);
  return reason;
}

/**
 * Launches headless Chromium and opens a context whose requests may only reach `allowOrigin`
 * (everything else is aborted and listed in `blocked`, so a test can assert nothing left the machine).
 * Returns { browser, context, blocked, close }.
 */
export async function launch({ allowOrigin, args = [] } = {}) {
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    ignoreDefaultArgs: ['--headless'],
    args: [...chromiumArgs, ...args],
  });
  const context = await browser.newContext();
  const blocked = [];
  if (allowOrigin) {
    await context.route('**/*', (route) => {
      const url = route.request().url();
      if (url.startsWith(allowOrigin + '/') || url.startsWith('data:') || url.startsWith('blob:')) return route.continue();
      blocked.push(url);
      return route.abort();
    });
  }
  return { browser, context, blocked, close: () => browser.close() };
}

/** Opens `url` in a new page of `context`, collecting console lines and page errors in `page.logs`. */
export async function openPage(context, url, { readyTitle, timeout = 60_000 } = {}) {
  const page = await context.newPage();
  page.logs = [];
  page.on('console', (m) => page.logs.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => page.logs.push(`[pageerror] ${e}`));
  await page.goto(url);
  if (readyTitle) {
    await page.waitForFunction((t) => document.title === t || document.title.startsWith('error'), readyTitle, { timeout });
    const title = await page.title();
    if (title !== readyTitle) throw new Error(`page ${url} reported "${title}"\n${page.logs.join('\n')}`);
  }
  return page;
}
