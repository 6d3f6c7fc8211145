// The selftest page: UI only. selftest-worker.js runs the library's `selftest` (src/web.rs) off
// this thread; this file fetches or reads the native dump, and renders the result as a table.
// URL parameters: backend=webgpu|cpu|all (default: all when a dump is given, else webgpu) and
// native=URL of a `flexlora selftest --dump` file. The title ends as "flexlora selftest: PASS",
// "...: FAIL" or "error: ...", and window.flexloraSelftest holds the result, for the headless test.
const status = document.getElementById('status');
const matrix = document.getElementById('matrix');
const failures = document.getElementById('failures');
const params = new URLSearchParams(location.search);

function run(backend, dump) {
  document.title = 'flexlora selftest: running';
  status.textContent = `Running (${backend})…`;
  status.className = 'status';
  const worker = new Worker(new URL('./selftest-worker.js', import.meta.url), { type: 'module' });
  return new Promise((ok) => {
    worker.onmessage = ({ data }) => { worker.terminate(); ok(data); };
    worker.onerror = (e) => { worker.terminate(); ok({ error: e.message ?? String(e) }); };
    worker.postMessage({ backend, dump });
  });
}

function show(reply) {
  window.flexloraSelftest = reply;
  if (reply.error) {
    status.textContent = `error: ${reply.error}`;
    status.className = 'status bad';
    document.title = `error: ${reply.error}`;
    return;
  }
  const { columns, ops, passed } = reply;
  const table = document.createElement('table');
  const head = table.createTHead().insertRow();
  for (const h of ['op', ...columns.map((c) => c.label)]) head.appendChild(Object.assign(document.createElement('th'), { textContent: h }));
  const body = table.createTBody();
  for (const op of ops) {
    const row = body.insertRow();
    row.insertCell().textContent = op;
    for (const c of columns) {
      const o = c.outcomes.find((x) => x.op === op);
      const cell = row.insertCell();
      cell.textContent = o ? `${o.pass ? 'ok' : 'FAIL'} ${o.max_err.toExponential(1)} ${(o.secs * 1e3).toFixed(0)} ms` : 'FAIL (did not run)';
      cell.className = o?.pass ? 'ok' : 'fail';
      if (o?.detail) cell.title = o.detail;
    }
  }
  matrix.replaceChildren(table);
  const bad = columns.flatMap((c) => [
    ...(c.open_error ? [`${c.label}: ${c.open_error}`] : []),
    ...c.outcomes.filter((o) => !o.pass).map((o) => `${o.op} on ${c.label}: ${o.detail ?? ''}`),
  ]);
  failures.hidden = bad.length === 0;
  failures.textContent = bad.join('\n');
  status.textContent = passed ? `PASS: every op on ${columns.length} column(s)` : `FAIL: ${bad.length} failure(s), listed below`;
  status.className = passed ? 'status ok' : 'status bad';
  document.title = passed ? 'flexlora selftest: PASS' : 'flexlora selftest: FAIL';
}

async function start() {
  let dump = null;
  if (params.get('native')) {
    const r = await fetch(params.get('native'));
    if (!r.ok) throw new Error(`fetching the native dump ${params.get('native')}: HTTP ${r.status}`);
    dump = await r.text();
  }
  show(await run(params.get('backend') ?? (dump ? 'all' : 'webgpu'), dump));
}

document.getElementById('dump').addEventListener('change', async (e) => {
  const file = e.target.files[0];
  if (file) show(await run(params.get('backend') ?? 'all', await file.text()));
});

start().catch((e) => show({ error: String(e?.message ?? e) }));
