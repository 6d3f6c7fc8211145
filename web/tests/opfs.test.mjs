// OPFS cache (web/opfs.js) in headless Chromium: a fetched file is cached and, after a page reload,
// served from the cache (no GET, same SHA-256); a changed file on the server is fetched again; picked
// bytes are cached by SHA-256; and when OPFS or the quota refuses, the bytes still come with a note.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, writeFile, mkdtemp, rm, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { serve, launch, openPage, browserAvailable, webRoot, dataDir } from './harness.mjs';

const skip = (await browserAvailable()) || false;
let server, chrome, page, tmp;
const sha = (b) => createHash('sha256').update(b).digest('hex');
const DATA_FILE = '/data/HumanEval.jsonl.gz';

before(async () => {
  if (skip) return;
  tmp = await mkdtemp(join(tmpdir(), 'flexlora-opfs-'));
  await writeFile(join(tmp, 'blob.bin'), Buffer.alloc(300_000, 7));
  server = await serve({ mounts: { '/data/': dataDir, '/changing.bin': join(tmp, 'blob.bin'), '/': webRoot } });
  chrome = await launch({ allowOrigin: server.url });
  page = await openPage(chrome.context, `${server.url}/tests/opfs.html`, { readyTitle: 'ready' });
  await page.evaluate(() => window.opfs.clearCache());
});

after(async () => {
  await chrome?.close();
  server?.close();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

const gets = (path) => server.requests.filter((r) => r.method === 'GET' && r.path === path).length;

test('sha256Hex matches node', { skip }, async () => {
  const hex = await page.evaluate(() => window.opfs.sha256Hex(new TextEncoder().encode('abc')));
  assert.equal(hex, sha('abc'));
});

test('a fetched file is cached and a reload serves it from OPFS without downloading', { skip, timeout: 60_000 }, async () => {
  const expected = sha(await readFile(join(dataDir, 'HumanEval.jsonl.gz')));
  const first = await page.evaluate((u) => window.fetchLogged(u), DATA_FILE);
  console.log('first fetch:', JSON.stringify(first));
  assert.equal(first.fromCache, false);
  assert.equal(first.cacheNote, null);
  assert.equal(first.sha256, expected);
  assert.deepEqual(first.head.slice(0, 2), [0x1f, 0x8b], 'the .gz comes as bytes, not decoded');
  assert.ok(first.progressEvents >= 2);
  assert.equal(first.lastProgress.loaded, first.size);
  assert.equal(first.lastProgress.total, first.size, 'progress knows the total from Content-Length');
  assert.equal(gets(DATA_FILE), 1);

  await page.reload();
  await page.waitForFunction(() => document.title === 'ready');
  const second = await page.evaluate((u) => window.fetchLogged(u), DATA_FILE);
  console.log('after reload:', JSON.stringify(second));
  assert.equal(second.fromCache, true);
  assert.equal(second.sha256, expected);
  assert.equal(second.size, first.size);
  assert.equal(gets(DATA_FILE), 1, 'no second GET after the reload');

  const info = await page.evaluate(() => window.opfs.cacheInfo());
  assert.equal(info.available, true);
  assert.ok(info.entries.some((e) => e.sha256 === expected && e.key.endsWith(DATA_FILE)));
});

test('a file that changed on the server is fetched again', { skip, timeout: 60_000 }, async () => {
  const a = await page.evaluate(() => window.fetchLogged('/changing.bin'));
  const b = await page.evaluate(() => window.fetchLogged('/changing.bin'));
  assert.equal(a.fromCache, false);
  assert.equal(b.fromCache, true);
  const changed = Buffer.alloc(300_001, 9);
  await writeFile(join(tmp, 'blob.bin'), changed);
  await utimes(join(tmp, 'blob.bin'), new Date(), new Date(Date.now() + 5000));
  const c = await page.evaluate(() => window.fetchLogged('/changing.bin'));
  assert.equal(c.fromCache, false);
  assert.equal(c.sha256, sha(changed));
});

test('picked bytes are cached by SHA-256 and read back', { skip }, async () => {
  const r = await page.evaluate(async () => {
    const bytes = new TextEncoder().encode('{"r": 8}');
    const c = await window.opfs.cacheBytes(bytes, { name: 'adapter_config.json' });
    const back = await window.opfs.readCached(c.sha256);
    const info = await window.opfs.cacheInfo();
    return { c, back: new TextDecoder().decode(back), listed: info.entries.some((e) => e.key === 'file:adapter_config.json') };
  });
  assert.equal(r.c.cached, true);
  assert.equal(r.c.sha256, sha('{"r": 8}'));
  assert.equal(r.back, '{"r": 8}');
  assert.equal(r.listed, true);
});

test('OPFS refusing (getDirectory throws) gives a cacheNote and still the bytes', { skip, timeout: 60_000 }, async () => {
  const p = await openPage(chrome.context, `${server.url}/tests/opfs.html`, { readyTitle: 'ready' });
  try {
    const r = await p.evaluate(async (u) => {
      navigator.storage.getDirectory = async () => { throw new DOMException('refused by the test', 'SecurityError'); };
      const f = await window.fetchLogged(u);
      const c = await window.opfs.cacheBytes(new Uint8Array([1, 2, 3]));
      const info = await window.opfs.cacheInfo();
      return { f, c, info };
    }, DATA_FILE);
    console.log('getDirectory refused:', r.f.cacheNote);
    assert.equal(r.f.fromCache, false);
    assert.equal(r.f.sha256, sha(await readFile(join(dataDir, 'HumanEval.jsonl.gz'))));
    assert.match(r.f.cacheNote, /unavailable.*SecurityError.*working from memory/);
    assert.equal(r.c.cached, false);
    assert.match(r.c.cacheNote, /SecurityError/);
    assert.equal(r.info.available, false);
  } finally {
    await p.close();
  }
});

test('a QuotaExceededError while writing gives a quota cacheNote and still the bytes', { skip, timeout: 60_000 }, async () => {
  const p = await openPage(chrome.context, `${server.url}/tests/opfs.html`, { readyTitle: 'ready' });
  try {
    const r = await p.evaluate(async (u) => {
      await window.opfs.clearCache();
      FileSystemFileHandle.prototype.createWritable = async function () {
        return {
          write: async () => { throw new DOMException('quota exceeded (forced by the test)', 'QuotaExceededError'); },
          close: async () => {}, abort: async () => {},
        };
      };
      return window.fetchLogged(u);
    }, DATA_FILE);
    console.log('write refused:', r.cacheNote);
    assert.equal(r.fromCache, false);
    assert.ok(r.size > 0);
    assert.match(r.cacheNote, /quota/i);
  } finally {
    await p.close();
  }
});

test('a quota too small for the file gives a cacheNote before writing', { skip, timeout: 60_000 }, async () => {
  const p = await openPage(chrome.context, `${server.url}/tests/opfs.html`, { readyTitle: 'ready' });
  try {
    const r = await p.evaluate(async (u) => {
      await window.opfs.clearCache();
      navigator.storage.estimate = async () => ({ usage: 1000, quota: 2000 });
      const f = await window.fetchLogged(u);
      const info = await window.opfs.cacheInfo();
      return { f, entries: info.entries.length };
    }, DATA_FILE);
    console.log('small quota:', r.f.cacheNote);
    assert.equal(r.f.fromCache, false);
    assert.match(r.f.cacheNote, /quota is too small/);
    assert.equal(r.entries, 0);
  } finally {
    await p.close();
  }
});
