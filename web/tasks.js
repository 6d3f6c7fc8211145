// HumanEval and MBPP tasks for the page: loading them from the server's data directory, the prompt
// given to the model, the stop sequences, and the program (prompt + completion + tests) that Pyodide
// runs. Mirrors src/eval/tasks.rs (and the FLeX template of src/train/data.rs) so the browser asks the
// model the same text and runs the same program as `flexlora eval`.
//
//   const tasks = await loadTasks('humaneval');          // or 'mbpp' (test split, task_ids 11-510)
//   const prompt = promptFor(tasks[0]);                   // the text the model continues
//   const program = buildProgram(tasks[0], completion);   // Python source for runPython

/** Python stops: any new top-level statement ends the function the model was writing (HumanEval). */
export const PYTHON_FUNCTION_STOPS = ['\ndef ', '\nclass ', '\nif __name__', '\nprint(', '\n#', '\nassert'];
/** MBPP whole-program stops: helper functions may follow, so "\ndef " and "\nclass " do not stop. */
export const PYTHON_PROGRAM_STOPS = ['\nif __name__', '\nprint(', '\n#', '\nassert'];

const FILES = { humaneval: 'HumanEval.jsonl.gz', mbpp: 'mbpp.jsonl' };

/** Cuts a completion before the first stop sequence (as `truncate_at_stop` in src/eval/tasks.rs). */
export function truncateAtStop(completion, stop) {
  let end = completion.length;
  for (const s of stop) {
    const i = completion.indexOf(s);
    if (i >= 0 && i < end) end = i;
  }
  return completion.slice(0, end);
}

async function fetchText(url) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${res.statusText}`.trim());
  if (!url.pathname.endsWith('.gz')) return res.text();
  // The server sends the .gz file as bytes; a server that set Content-Encoding: gzip has already had
  // it decoded by the browser, so look at the magic number before inflating.
  const bytes = new Uint8Array(await res.arrayBuffer());
  if (bytes[0] !== 0x1f || bytes[1] !== 0x8b) return new TextDecoder().decode(bytes);
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
  return new Response(stream).text();
}

function parseJsonl(text, file) {
  const rows = [];
  text.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    try {
      rows.push(JSON.parse(line));
    } catch (e) {
      throw new Error(`${file} line ${i + 1}: ${e.message}`);
    }
  });
  return rows;
}

/** As `trim_prompt` in tasks.rs: the prompt without trailing whitespace; that whitespace goes to the
 * front of the canonical solution so prompt + canonical stays the dataset's program byte for byte. */
function trimPrompt(prompt, canonical) {
  const trimmed = prompt.replace(/\s+$/u, '');
  return [trimmed, canonical == null ? canonical : prompt.slice(trimmed.length) + canonical];
}

/** MBPP has no entry_point: the first name called in the first assert that the reference code
 * defines, else the first name called (as `mbpp_entry_point` in tasks.rs). */
function mbppEntryPoint(tests, code) {
  const first = tests[0] ?? '';
  const called = first.split('(')
    .map((before) => before.trimEnd().split(/[^\p{L}\p{N}_]/u).pop())
    .filter((name) => name && name !== 'assert');
  const defined = (name) => code.includes(`def ${name}(`) || code.includes(`class ${name}`);
  return called.find(defined) ?? called[0] ?? '';
}

function humanEvalTasks(rows) {
  return rows.map((r) => {
    const [prompt, canonical] = trimPrompt(r.prompt, r.canonical_solution);
    const name = r.entry_point;
    return {
      id: r.task_id,
      title: `${r.task_id}: ${name}`,
      kind: 'humaneval',
      language: 'python',
      prompt,
      entry_point: name,
      tests: `${r.test}\ncheck(${name})\n`,
      canonical,
      stop: PYTHON_FUNCTION_STOPS,
      test: r.test,
    };
  });
}

function mbppTasks(rows) {
  const clean = (s) => String(s ?? '').replaceAll('\r', '');
  return rows
    .filter((r) => r.task_id >= 11 && r.task_id <= 510)
    .map((r) => {
      const text = clean(r.text);
      const code = clean(r.code);
      const setup = clean(r.test_setup_code);
      const testList = r.test_list.map(clean);
      return {
        id: `MBPP/${r.task_id}`,
        title: `MBPP/${r.task_id}: ${text}`,
        kind: 'mbpp',
        language: 'python',
        // The FLeX template (MbppPrompt::Flex): the description, "\n", one "# <assert>\n" per test.
        prompt: `${text}\n${testList.map((t) => `# ${t}\n`).join('')}`,
        entry_point: mbppEntryPoint(testList, code),
        tests: `${setup}\n${testList.join('\n')}\n`,
        canonical: code,
        stop: PYTHON_PROGRAM_STOPS,
        test_setup_code: setup,
        test_list: testList,
      };
    });
}

/**
 * Loads 'humaneval' (./data/HumanEval.jsonl.gz, 164 tasks) or 'mbpp' (./data/mbpp.jsonl, test split:
 * task_ids 11-510) from `dataUrl` (default './data/', resolved against the page). Each task:
 * { id, title, kind, language: 'python', prompt, entry_point, tests, canonical, stop, ... } where
 * `prompt` is what promptFor returns, `tests` the test code shown to the user, `canonical` the
 * reference completion (buildProgram(task, task.canonical) passes), `stop` the stop sequences.
 * HumanEval tasks also carry `test`; MBPP tasks `test_setup_code` and `test_list`.
 */
export async function loadTasks(kind, { dataUrl = './data/' } = {}) {
  const file = FILES[kind];
  if (!file) throw new Error(`unknown task set "${kind}" (expected humaneval or mbpp)`);
  const base = new URL(dataUrl, globalThis.document?.baseURI ?? globalThis.location?.href);
  const url = new URL(file, base);
  const rows = parseJsonl(await fetchText(url), file);
  return kind === 'humaneval' ? humanEvalTasks(rows) : mbppTasks(rows);
}

/** The text the model continues: HumanEval's prompt (trailing whitespace trimmed, as native eval),
 * as a raw completion; MBPP's FLeX template (description, then each test as a "# assert ..." line). */
export function promptFor(task) {
  return task.prompt;
}

/**
 * The Python program that checks `completion`:
 * HumanEval: prompt + completion + "\n" + test + "\ncheck(entry_point)\n";
 * MBPP: completion (the whole function the model wrote) + "\n" + test_setup_code + "\n" + the
 * test_list asserts, one per line. Same text as `Task::program` in src/eval/tasks.rs.
 */
export function buildProgram(task, completion) {
  if (task.kind === 'humaneval') return `${task.prompt}${completion}\n${task.test}\ncheck(${task.entry_point})\n`;
  if (task.kind === 'mbpp') return `${completion}\n${task.test_setup_code}\n${task.test_list.join('\n')}\n`;
  throw new Error(`buildProgram: unknown task kind "${task.kind}"`);
}
