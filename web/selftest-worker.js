// Runs the library's selftest (src/web.rs `selftest`, built into ./pkg-selftest by
// scripts/build-web.sh) off the page's thread, one request per worker: { backend, dump } -> the
// result's JSON parsed, or { error }.
import init, { install_panic_hook, last_panic, selftest } from './pkg-selftest/flexlora.js';

self.onmessage = async ({ data: { backend, dump } }) => {
  try {
    await init();
    install_panic_hook();
    self.postMessage(JSON.parse(await selftest(backend, dump ?? undefined)));
  } catch (e) {
    let panic = null;
    try { panic = last_panic(); } catch { /* the module did not load */ }
    self.postMessage({ error: panic ?? String(e?.message ?? e) });
  }
};
