// Loads the wasm-bindgen build from ./pkg and runs the matmul check. The page title ends as
// "flexlora: PASS" or "flexlora: FAIL", which is what the headless test waits for.
import init, { matmul_check } from './pkg/flexlora.js';

const status = document.getElementById('status');
const report = document.getElementById('report');

async function run() {
  if (!navigator.gpu) throw new Error('this browser exposes no WebGPU (navigator.gpu is missing)');
  await init();
  const params = new URLSearchParams(location.search);
  const [m, n, k] = ['m', 'n', 'k'].map((key, i) => Number(params.get(key) ?? [67, 45, 131][i]));
  const result = JSON.parse(await matmul_check(m, n, k, 42n));
  // Same tolerance rule as the native tests: atol + rtol * |ref| with the largest reference value.
  const ok = result.max_abs_diff <= 1e-4 + 1e-4 * result.max_abs_ref;
  report.textContent = JSON.stringify(result, null, 2);
  status.textContent = ok ? 'PASS: WebGPU matches the CPU backend' : 'FAIL: WebGPU and CPU results differ';
  status.className = ok ? 'pass' : 'fail';
  window.flexloraResult = { ok, ...result };
  document.title = ok ? 'flexlora: PASS' : 'flexlora: FAIL';
}

run().catch((e) => {
  status.textContent = 'FAIL: ' + e;
  status.className = 'fail';
  window.flexloraResult = { ok: false, error: String(e) };
  document.title = 'flexlora: FAIL';
});
