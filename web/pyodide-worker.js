// Dedicated module Worker that runs Python programs with Pyodide (CPython compiled to wasm), loaded
// from the local npm install. Driven by pyodide-runner.js, which terminates this worker on a timeout.
//
// Messages in:  { type: 'init', indexURL }        -> { type: 'ready', ms, version } | { type: 'fatal', error }
//               { type: 'run', id, program }       -> { type: 'result', id, status, error, stdout, ms }
//                                                     (+ { type: 'fatal' } when the interpreter died)
// Each program runs in a fresh globals dict as __main__; stdout and stderr are captured (capped).

const STDOUT_LIMIT = 64 * 1024;

let pyodide = null;
let runProgram = null;
let out = '';

function capture(text) {
  if (out.length < STDOUT_LIMIT) out += text.slice(0, STDOUT_LIMIT - out.length) + '\n';
}

// The harness: compiles the program under the name "<program>" with its source in linecache, so a
// traceback shows the failing line (e.g. the assert), and reports (status, error).
const HARNESS = `
import linecache, sys, traceback

def _flexlora_run(src):
    name = "<program>"
    linecache.cache[name] = (len(src), None, src.splitlines(True), name)
    g = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        code = compile(src, name, "exec")
        exec(code, g)
    except SystemExit as e:
        if e.code in (None, 0):
            return ("passed", None)
        return ("error", "SystemExit: " + str(e.code))
    except BaseException as e:
        tb = e.__traceback__
        # Drop the harness's own frame so the traceback starts in the program.
        if tb is not None and tb.tb_frame.f_code.co_name == "_flexlora_run":
            tb = tb.tb_next
        lines = "".join(traceback.format_exception(type(e), e, tb)).rstrip().splitlines()
        keep = lines[-8:] if len(lines) > 8 else lines
        if len(lines) > 8:
            keep = [lines[0], "  ..."] + keep
        status = "failed" if isinstance(e, AssertionError) else "error"
        return (status, "\\n".join(keep))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return ("passed", None)
`;

async function init(indexURL) {
  const t0 = performance.now();
  const { loadPyodide } = await import(new URL('pyodide.mjs', indexURL).href);
  pyodide = await loadPyodide({ indexURL, stdout: capture, stderr: capture });
  pyodide.setStdin({ error: true });
  pyodide.runPython(HARNESS);
  runProgram = pyodide.globals.get('_flexlora_run');
  return { ms: performance.now() - t0, version: pyodide.version };
}

function run(program) {
  out = '';
  const t0 = performance.now();
  const result = runProgram(program);
  const [status, error] = result.toJs();
  result.destroy();
  return { status, error: error ?? null, stdout: out, ms: performance.now() - t0 };
}

self.onmessage = async (e) => {
  const msg = e.data;
  if (msg.type === 'init') {
    try {
      postMessage({ type: 'ready', ...(await init(msg.indexURL)) });
    } catch (err) {
      postMessage({ type: 'fatal', error: `loading Pyodide from ${msg.indexURL} failed: ${err?.message ?? err}` });
    }
  } else if (msg.type === 'run') {
    try {
      postMessage({ type: 'result', id: msg.id, ...run(msg.program) });
    } catch (err) {
      // Not a Python exception (the harness catches those): the interpreter itself failed, e.g. a
      // wasm stack overflow or out of memory. The runner replaces this worker.
      postMessage({ type: 'result', id: msg.id, status: 'error', error: `Pyodide failed: ${err?.message ?? err}`, stdout: out, ms: 0 });
      postMessage({ type: 'fatal', error: String(err?.message ?? err) });
    }
  }
};
