// The fixed benchmark prompt, shared by the wllama page and (for the same text) flexlora's bench hook:
// `n` common English words, each with its leading space, so a byte-level BPE tokenizer (GPT-2 style
// pre-tokenizer, as SmolLM2's and Qwen2.5's) gives one token per word. With a BOS token the model
// sees n + 1 tokens; benchPromptText(n - 1) then gives n in all. The engines report the exact count.
export const BENCH_WORDS = [' the', ' of', ' and', ' to', ' in', ' is', ' for', ' that', ' with', ' on',
  ' as', ' it', ' by', ' this', ' be', ' from', ' at', ' or', ' an', ' are', ' not', ' have', ' one', ' all',
  ' which', ' can', ' more', ' will', ' other', ' time', ' new', ' list'];

export function benchPromptText(n) {
  let text = '';
  for (let i = 0; i < n; i++) text += BENCH_WORDS[(i * 7 + (i >> 5)) % BENCH_WORDS.length];
  return text;
}
