// Model and adapter bytes cached in the Origin Private File System, keyed by SHA-256, so a reload
// does not download again. When OPFS or the storage quota refuses, everything keeps working from
// memory and the result says why in `cacheNote`.
//
// Layout: <OPFS root>/flexlora-cache/<sha256>.bin and flexlora-cache/index.json, which maps
// "url:<url>" and "file:<name>" keys to { sha256, size, name, lastModified, etag, time }.
//
//   const { bytes, sha256, fromCache, cacheNote } = await cachedFetch(url, { onProgress });
//   const { sha256, cacheNote } = await cacheBytes(bytesOfAPickedFile, { name: file.name });

const DIR = 'flexlora-cache';
const INDEX = 'index.json';

/** Lower-case hex SHA-256 of `bytes` (Uint8Array, ArrayBuffer or any view). */
export async function sha256Hex(bytes) {
  const data = bytes instanceof ArrayBuffer || ArrayBuffer.isView(bytes) ? bytes : new Uint8Array(bytes);
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', data));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

function describe(err) {
  const name = err?.name ?? 'Error';
  const quota = name === 'QuotaExceededError' || /quota/i.test(String(err?.message ?? ''));
  return quota
    ? `the browser's storage quota refused the cache (${name}: ${err?.message ?? err}); working from memory`
    : `the Origin Private File System is unavailable (${name}: ${err?.message ?? err}); working from memory`;
}

async function cacheDir() {
  if (!globalThis.navigator?.storage?.getDirectory) throw new DOMException('navigator.storage.getDirectory is missing', 'NotSupportedError');
  const root = await navigator.storage.getDirectory();
  return root.getDirectoryHandle(DIR, { create: true });
}

async function readIndex(dir) {
  try {
    const file = await (await dir.getFileHandle(INDEX)).getFile();
    const index = JSON.parse(await file.text());
    return index && typeof index === 'object' ? index : {};
  } catch {
    return {};
  }
}

async function writeFile(dir, name, bytes) {
  const handle = await dir.getFileHandle(name, { create: true });
  const writable = await handle.createWritable();
  try {
    await writable.write(bytes);
    await writable.close();
  } catch (err) {
    await writable.abort().catch(() => {});
    await dir.removeEntry(name).catch(() => {});
    throw err;
  }
}

// Index updates are serialized so parallel downloads (a model and an adapter) do not lose entries.
let indexLock = Promise.resolve();
function updateIndex(dir, change) {
  const p = indexLock.then(async () => {
    const index = await readIndex(dir);
    change(index);
    await writeFile(dir, INDEX, new TextEncoder().encode(JSON.stringify(index)));
  });
  indexLock = p.catch(() => {});
  return p;
}

/** Reads <sha256>.bin from the cache; null when absent or not of `size` bytes (when given). */
async function readBlob(dir, sha256, size) {
  try {
    const file = await (await dir.getFileHandle(`${sha256}.bin`)).getFile();
    if (size != null && file.size !== size) return null;
    return new Uint8Array(await file.arrayBuffer());
  } catch {
    return null;
  }
}

function size(n) {
  if (n < 1024) return `${n} bytes`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1073741824) return `${(n / 1048576).toFixed(1)} MiB`;
  return `${(n / 1073741824).toFixed(2)} GiB`;
}

/** Stores `bytes` as <sha256>.bin unless present; checks the quota first. Returns a note or null. */
async function store(dir, sha256, bytes) {
  try {
    const existing = await (await dir.getFileHandle(`${sha256}.bin`)).getFile();
    if (existing.size === bytes.byteLength) return null;
  } catch { /* not cached yet */ }
  const estimate = await navigator.storage.estimate?.().catch(() => null);
  if (estimate?.quota != null && estimate.usage != null && estimate.quota - estimate.usage < bytes.byteLength) {
    return `the browser's storage quota is too small to cache ${size(bytes.byteLength)} `
      + `(${size(Math.max(0, estimate.quota - estimate.usage))} free of ${size(estimate.quota)}); working from memory`;
  }
  await writeFile(dir, `${sha256}.bin`, bytes);
  return null;
}

async function download(url, onProgress, signal) {
  const res = await fetch(url, { signal });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${res.statusText}`.trim());
  const encoded = res.headers.get('content-encoding');
  const length = Number(res.headers.get('content-length'));
  const total = Number.isFinite(length) && length > 0 && (!encoded || encoded === 'identity') ? length : null;
  const meta = { lastModified: res.headers.get('last-modified'), etag: res.headers.get('etag') };
  onProgress?.({ loaded: 0, total });
  if (!res.body) {
    const bytes = new Uint8Array(await res.arrayBuffer());
    onProgress?.({ loaded: bytes.byteLength, total: bytes.byteLength });
    return { bytes, meta };
  }
  const reader = res.body.getReader();
  let buffer = total ? new Uint8Array(total) : null;
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (buffer && loaded + value.byteLength <= buffer.byteLength) buffer.set(value, loaded);
    else {
      if (buffer) { chunks.push(buffer.subarray(0, loaded)); buffer = null; }
      chunks.push(value);
    }
    loaded += value.byteLength;
    onProgress?.({ loaded, total });
  }
  let bytes;
  if (buffer) bytes = loaded === buffer.byteLength ? buffer : buffer.slice(0, loaded);
  else {
    bytes = new Uint8Array(loaded);
    let at = 0;
    for (const c of chunks) { bytes.set(c, at); at += c.byteLength; }
  }
  return { bytes, meta };
}

/** Whether a cached entry still matches the server's file (HEAD: size, Last-Modified, ETag). A HEAD
 * that fails or is refused (offline, no HEAD support, file gone) keeps the cached copy. */
async function stillFresh(url, entry, signal) {
  let res;
  try {
    res = await fetch(url, { method: 'HEAD', signal, cache: 'no-store' });
  } catch {
    return true;
  }
  if (!res.ok) return true;
  const length = res.headers.get('content-length');
  if (length != null && !res.headers.get('content-encoding') && Number(length) !== entry.size) return false;
  const etag = res.headers.get('etag');
  if (etag && entry.etag && etag !== entry.etag) return false;
  const lastModified = res.headers.get('last-modified');
  if (lastModified && entry.lastModified && lastModified !== entry.lastModified) return false;
  return true;
}

/**
 * Fetches `url` (resolved against the page) with streamed progress, caching the bytes in OPFS.
 * A URL fetched before is read from the cache without downloading, after a HEAD request that checks
 * the server's file is unchanged (size, Last-Modified, ETag; skipped with `revalidate: false`, and a
 * failed HEAD keeps the cache).
 * Options: onProgress({ loaded, total }) (total null without Content-Length), revalidate, signal.
 * Resolves { bytes: Uint8Array, sha256, fromCache: boolean, cacheNote: string|null }; cacheNote says
 * why the cache could not be used (OPFS missing or refused, quota too small) while bytes still come.
 * Rejects only when the download itself fails.
 */
export async function cachedFetch(url, { onProgress, revalidate = true, signal } = {}) {
  const abs = new URL(url, globalThis.document?.baseURI ?? globalThis.location?.href).href;
  const key = `url:${abs}`;
  let dir = null;
  let cacheNote = null;
  try {
    dir = await cacheDir();
  } catch (err) {
    cacheNote = describe(err);
  }
  if (dir) {
    try {
      const entry = (await readIndex(dir))[key];
      if (entry && (!revalidate || await stillFresh(abs, entry, signal))) {
        const bytes = await readBlob(dir, entry.sha256, entry.size);
        if (bytes) {
          onProgress?.({ loaded: bytes.byteLength, total: bytes.byteLength, fromCache: true });
          return { bytes, sha256: entry.sha256, fromCache: true, cacheNote: null };
        }
      }
    } catch (err) {
      cacheNote = describe(err);
      dir = null;
    }
  }
  const { bytes, meta } = await download(abs, onProgress, signal);
  const sha256 = await sha256Hex(bytes);
  if (dir) {
    try {
      cacheNote = await store(dir, sha256, bytes);
      if (!cacheNote) {
        await updateIndex(dir, (index) => {
          index[key] = { sha256, size: bytes.byteLength, name: abs.split('/').pop(), ...meta, time: Date.now() };
        });
      }
    } catch (err) {
      cacheNote = describe(err);
    }
  }
  return { bytes, sha256, fromCache: false, cacheNote };
}

/**
 * Caches bytes the user picked (file picker, drag-and-drop) under their SHA-256; `name` (optional)
 * is recorded in the index as "file:<name>" so cacheInfo lists it. Resolves
 * { sha256, cached: boolean, cacheNote: string|null }; never rejects for a cache failure.
 */
export async function cacheBytes(bytes, { name } = {}) {
  const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes.buffer ?? bytes, bytes.byteOffset ?? 0, bytes.byteLength);
  const sha256 = await sha256Hex(data);
  try {
    const dir = await cacheDir();
    const cacheNote = await store(dir, sha256, data);
    if (cacheNote) return { sha256, cached: false, cacheNote };
    await updateIndex(dir, (index) => {
      index[`file:${name ?? sha256}`] = { sha256, size: data.byteLength, name: name ?? null, time: Date.now() };
    });
    return { sha256, cached: true, cacheNote: null };
  } catch (err) {
    return { sha256, cached: false, cacheNote: describe(err) };
  }
}

/** The cached bytes with this SHA-256, or null. */
export async function readCached(sha256) {
  try {
    return await readBlob(await cacheDir(), sha256);
  } catch {
    return null;
  }
}

/**
 * What the cache holds: { available, note, entries: [{ key, sha256, size, name, time }], bytes,
 * usage, quota } (usage/quota from navigator.storage.estimate, null when unknown). Never rejects.
 */
export async function cacheInfo() {
  const estimate = await globalThis.navigator?.storage?.estimate?.().catch(() => null);
  const info = { available: false, note: null, entries: [], bytes: 0, usage: estimate?.usage ?? null, quota: estimate?.quota ?? null };
  try {
    const dir = await cacheDir();
    info.available = true;
    const index = await readIndex(dir);
    const sizes = new Map();
    for await (const [name, handle] of dir.entries()) {
      if (handle.kind === 'file' && name.endsWith('.bin')) sizes.set(name.slice(0, -4), (await handle.getFile()).size);
    }
    for (const [key, e] of Object.entries(index)) {
      if (sizes.get(e.sha256) === e.size) info.entries.push({ key, sha256: e.sha256, size: e.size, name: e.name ?? null, time: e.time ?? null });
    }
    info.bytes = [...sizes.values()].reduce((a, b) => a + b, 0);
  } catch (err) {
    info.note = describe(err);
  }
  return info;
}

/** Removes every cached file and the index. Resolves { cleared: boolean, note: string|null }. */
export async function clearCache() {
  try {
    if (!globalThis.navigator?.storage?.getDirectory) throw new DOMException('navigator.storage.getDirectory is missing', 'NotSupportedError');
    const root = await navigator.storage.getDirectory();
    await indexLock;
    await root.removeEntry(DIR, { recursive: true }).catch((err) => { if (err?.name !== 'NotFoundError') throw err; });
    return { cleared: true, note: null };
  } catch (err) {
    return { cleared: false, note: describe(err) };
  }
}
