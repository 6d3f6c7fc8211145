// One thread of the CPU backend's pool in the threaded build: loads the same module on the engine
// worker's shared memory and runs the rayon thread it is handed (src/web/threads.rs). It never
// returns while the page lives. A trap here (a panic, out of memory) cannot reach the engine
// worker, which is blocked waiting for this thread's work: it is told to the page directly, on the
// `flexlora-engine` broadcast channel, so the page shows it instead of waiting forever.
import init, { thread_run, last_panic } from './pkg-threads/flexlora.js';

self.onmessage = async ({ data: { module, memory, handle, index } }) => {
  try {
    await init({ module_or_path: module, memory });
  } catch (e) {
    self.postMessage({ error: `loading the module: ${e.message ?? e}` });
    return;
  }
  self.postMessage('running');
  try {
    thread_run(handle);
  } catch (e) {
    const panic = last_panic?.();
    new BroadcastChannel('flexlora-engine').postMessage({ event: 'thread-died', thread: index, error: panic ?? String(e.message ?? e) });
  }
};
