// Runs Python programs in a dedicated Worker with Pyodide, so the page stays responsive. The worker is
// kept warm between runs (loading Pyodide takes seconds) and terminated on a timeout: an infinite loop
// cannot be interrupted any other way. The next run starts a fresh worker.
//
//   import { runPython } from './pyodide-runner.js';
//   const r = await runPython(program, { timeoutMs: 10000, onStatus: (s) => ... });
//   // r = { status: 'passed'|'failed'|'timeout'|'error', error: string|null, stdout: string, ms }
//
// passed: the program ran to the end; failed: an AssertionError; error: any other exception (the last
// lines of the Python traceback) or Pyodide failing to load; timeout: killed after timeoutMs of running
// (Pyodide's load time is not counted). Runs are queued: one at a time.

const defaultIndexURL = new URL('./node_modules/pyodide/', import.meta.url).href;
const workerURL = new URL('./pyodide-worker.js', import.meta.url);

let worker = null; // { w, ready: Promise<{ms, version}>, indexURL }
let queue = Promise.resolve();
let nextId = 1;

function startWorker(indexURL, onStatus) {
  const w = new Worker(workerURL, { type: 'module', name: 'pyodide' });
  const entry = { w, indexURL, dead: false };
  entry.ready = new Promise((ok, fail) => {
    const onMessage = (e) => {
      if (e.data.type === 'ready') { w.removeEventListener('message', onMessage); ok(e.data); }
      else if (e.data.type === 'fatal') { w.removeEventListener('message', onMessage); fail(new Error(e.data.error)); }
    };
    w.addEventListener('message', onMessage);
    w.addEventListener('error', (e) => fail(new Error(`Pyodide worker failed to start: ${e.message ?? 'script error'}`)), { once: true });
  });
  w.addEventListener('message', (e) => { if (e.data.type === 'fatal') { entry.dead = true; } });
  onStatus?.('loading Pyodide');
  w.postMessage({ type: 'init', indexURL });
  return entry;
}

function dropWorker() {
  if (worker) worker.w.terminate();
  worker = null;
}

/** Loads Pyodide in the background so the first run does not wait for it. Resolves { ms, version }. */
export function warmUp({ indexURL = defaultIndexURL, onStatus } = {}) {
  if (!worker || worker.dead || worker.indexURL !== indexURL) {
    dropWorker();
    worker = startWorker(indexURL, onStatus);
  }
  const entry = worker;
  return entry.ready.catch((err) => { if (worker === entry) dropWorker(); throw err; });
}

/** Terminates the worker (a later run starts a new one). */
export function terminate() {
  dropWorker();
}

async function runNow(program, { timeoutMs = 10000, onStatus, indexURL = defaultIndexURL, loadTimeoutMs = 120000 } = {}) {
  try {
    let timer;
    const tooSlow = new Promise((_, fail) => {
      timer = setTimeout(() => { dropWorker(); fail(new Error(`Pyodide did not load within ${loadTimeoutMs} ms`)); }, loadTimeoutMs);
    });
    const info = await Promise.race([warmUp({ indexURL, onStatus }), tooSlow]).finally(() => clearTimeout(timer));
    onStatus?.(`Pyodide ${info.version} ready`);
  } catch (err) {
    return { status: 'error', error: String(err?.message ?? err), stdout: '', ms: 0 };
  }
  const { w } = worker;
  const id = nextId++;
  onStatus?.('running');
  const t0 = performance.now();
  return new Promise((ok) => {
    let timer = null;
    const finish = (result) => {
      clearTimeout(timer);
      w.removeEventListener('message', onMessage);
      w.removeEventListener('error', onError);
      onStatus?.(result.status);
      ok(result);
    };
    const onMessage = (e) => {
      if (e.data.type === 'result' && e.data.id === id) {
        const { status, error, stdout, ms } = e.data;
        if (worker?.dead) dropWorker();
        finish({ status, error, stdout, ms: ms || performance.now() - t0 });
      }
    };
    const onError = (e) => {
      dropWorker();
      finish({ status: 'error', error: `Pyodide worker crashed: ${e.message ?? 'unknown error'}`, stdout: '', ms: performance.now() - t0 });
    };
    w.addEventListener('message', onMessage);
    w.addEventListener('error', onError);
    timer = setTimeout(() => {
      dropWorker();
      finish({ status: 'timeout', error: `timed out after ${timeoutMs} ms: the worker was terminated`, stdout: '', ms: performance.now() - t0 });
    }, timeoutMs);
    w.postMessage({ type: 'run', id, program });
  });
}

/**
 * Runs `program` (Python source) to the end in the Pyodide worker.
 * Options: timeoutMs (default 10000, counted from the start of the run, not of Pyodide's load),
 * onStatus(text) for progress ('loading Pyodide', 'running', then the status), indexURL (where
 * pyodide.mjs and its files are; default ./node_modules/pyodide/ next to this module),
 * loadTimeoutMs (default 120000: a Pyodide that has not loaded by then gives status 'error').
 * Resolves { status: 'passed'|'failed'|'timeout'|'error', error: string|null, stdout: string, ms }.
 */
export function runPython(program, options = {}) {
  const p = queue.then(() => runNow(program, options));
  queue = p.catch(() => {});
  return p;
}
