//! Tokenizers: Hugging Face `tokenizer.json` through the `tokenizers` crate, and the same JSON
//! rebuilt from a GGUF vocabulary (`gpt2_tokenizer_json` for byte-level BPE, `llama_spm_tokenizer_json`
//! for SentencePiece BPE), so both sources share one code path and
//! `convert` can write what it loads. Also the chat formats named by a model's chat template.

use serde_json::{json, Value};

use crate::error::{Error, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    /// The model's Jinja chat template, when it has one (used to pick the chat format).
    pub chat_template: Option<String>,
    /// The tokenizer.json this was built from (written out by `convert`).
    pub json: String,
    /// Why the chat template could not be read (a damaged tokenizer_config.json), for `--chat`.
    pub chat_template_error: Option<Error>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({} tokens)", self.vocab_size())
    }
}

fn tok_err(origin: &str, e: impl std::fmt::Display) -> Error {
    Error::Config { file: origin.to_string(), detail: format!("tokenizer: {e}") }
}

impl Tokenizer {
    /// Parses tokenizer.json text; `origin` names the file in errors.
    pub fn from_json(origin: &str, json: String, bos: Option<u32>, eos: Vec<u32>, chat_template: Option<String>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(|e| tok_err(origin, e))?;
        Ok(Tokenizer { inner, bos, eos, chat_template, json, chat_template_error: None })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Token ids of `text`. With `add_special`, the tokenizer's own post-processing applies (e.g.
    /// a BOS token for models that want one). Special tokens written in the text (`<|im_start|>`)
    /// become their ids either way.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special).map_err(|e| tok_err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| tok_err("decode", e))
    }

    /// The prompt for one user message in the model's chat format.
    pub fn chat_prompt(&self, system: Option<&str>, user: &str) -> String {
        format_chat(self.chat_template.as_deref(), system, user)
    }

    /// `chat_prompt` for `--chat`: an error, not the bare message, when the model has no chat
    /// template, its template could not be read, or it is not a format flexlora knows.
    pub fn checked_chat_prompt(&self, system: Option<&str>, user: &str) -> Result<String> {
        if let Some(Error::Config { file, detail }) = &self.chat_template_error {
            return Err(Error::Config { file: file.clone(), detail: format!("{detail}; --chat needs the model's chat template from it") });
        }
        let bad = |detail: &str| Err(Error::InvalidArgument { flag: "--chat", detail: detail.into() });
        match self.chat_template.as_deref() {
            None => bad("the model has no chat template (tokenizer_config.json `chat_template`, GGUF `tokenizer.chat_template`); \
                 drop --chat and write the prompt in the model's format"),
            Some(t) if !["<|im_start|>", "<|start_header_id|>", "[INST]"].iter().any(|m| t.contains(m)) => bad(
                "the model's chat template is not a format flexlora knows (ChatML, Llama 3, Llama 2); drop --chat and write the prompt in \
                 the model's format",
            ),
            Some(_) => Ok(self.chat_prompt(system, user)),
        }
    }
}

/// Formats a single-turn chat for the family the template belongs to (ChatML, Llama 3, Llama 2);
/// without a recognized template the message is used as it is. A template's built-in default
/// system message (SmolLM2 has one) is kept when the caller gives none.
pub fn format_chat(template: Option<&str>, system: Option<&str>, user: &str) -> String {
    let t = template.unwrap_or("");
    if t.contains("<|im_start|>") {
        let default = t
            .split("<|im_start|>system\n")
            .nth(1)
            .and_then(|rest| rest.split("<|im_end|>").next())
            .filter(|s| !s.contains("{{") && !s.contains("{%"));
        let mut out = String::new();
        if let Some(sys) = system.or(default) {
            out += &format!("<|im_start|>system\n{sys}<|im_end|>\n");
        }
        out + &format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
    } else if t.contains("<|start_header_id|>") {
        let sys = system.map(|s| format!("<|start_header_id|>system<|end_header_id|>\n\n{s}<|eot_id|>")).unwrap_or_default();
        format!("{sys}<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    } else if t.contains("[INST]") {
        match system {
            Some(s) => format!("[INST] <<SYS>>\n{s}\n<</SYS>>\n\n{user} [/INST]"),
            None => format!("[INST] {user} [/INST]"),
        }
    } else {
        user.to_string()
    }
}

/// GGUF token types (llama.cpp `llama_token_type`).
pub const TOKEN_UNKNOWN: i32 = 2;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;

/// Tokens matched whole in the text before the model sees it: the types in `special` (e.g.
/// control) as special tokens, user-defined ones as plain added tokens.
fn added_tokens(tokens: &[String], token_types: &[i32], special: &[i32]) -> Vec<Value> {
    token_types
        .iter()
        .zip(tokens)
        .enumerate()
        .filter(|(_, (ty, _))| special.contains(ty) || **ty == TOKEN_USER_DEFINED)
        .map(|(i, (ty, tok))| {
            json!({"id": i, "content": tok, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special.contains(ty)})
        })
        .collect()
}

/// A post-processor that prepends token `bos`, or none.
fn bos_processor(tokens: &[String], bos: Option<u32>) -> Value {
    match bos.and_then(|b| tokens.get(b as usize).map(|t| (b, t))) {
        Some((id, tok)) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tok.as_str(): {"id": tok, "ids": [id], "tokens": [tok]}}}),
        None => Value::Null,
    }
}

/// Builds a Hugging Face tokenizer.json for a GPT-2 style byte-level BPE vocabulary (GGUF
/// `tokenizer.ggml.model == "gpt2"`): `pre` is GGUF's `tokenizer.ggml.pre` naming the
/// pre-tokenizer (SmolLM's splits digits individually before the GPT-2 regex). `bos` is the token
/// id to prepend when the model wants one (GGUF `tokenizer.ggml.add_bos_token`).
pub fn gpt2_tokenizer_json(tokens: &[String], merges: &[String], token_types: &[i32], pre: &str, bos: Option<u32>) -> Result<Value> {
    let vocab: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let byte_level =
        |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    // Regexes as published with each model's tokenizer.json.
    const LLAMA3: &str =
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    let pre_tokenizer = match pre {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "gpt2" | "default" | "gpt-2" | "" => byte_level(true),
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [split(LLAMA3), byte_level(false)]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(QWEN2), byte_level(false)]}),
        other => {
            return Err(Error::Config {
                file: "tokenizer.ggml.pre".into(),
                detail: format!("pre-tokenizer `{other}` is not supported (smollm, gpt2, llama-bpe, qwen2)"),
            })
        }
    };
    let added = added_tokens(tokens, token_types, &[TOKEN_CONTROL]);
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": bos_processor(tokens, bos),
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
    }))
}

/// BPE merges implied by a SentencePiece vocabulary, which stores pieces and scores but no merges:
/// every split of a piece into two pieces of the vocabulary is a merge, ranked by the merged
/// piece's score, highest first. Ties keep vocabulary order, splits of one piece ordered by the
/// ids of their halves, longer left halves first (transformers' `generate_merges` with scores,
/// whose stable descending sort on (score, len(left), len(right)) this reproduces).
pub fn spm_merges(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let ids: std::collections::HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    // (score, chars of left, chars of right, left, right)
    let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (piece, &score) in tokens.iter().zip(scores) {
        if !seen.insert(piece.as_str()) {
            continue; // a repeated piece is one dict entry in the converter
        }
        let mut local: Vec<(f32, usize, usize, &str, &str)> = piece
            .char_indices()
            .skip(1)
            .map(|(at, _)| piece.split_at(at))
            .filter(|(l, r)| ids.contains_key(l) && ids.contains_key(r))
            .map(|(l, r)| (score, l.chars().count(), r.chars().count(), l, r))
            .collect();
        local.sort_by_key(|m| (ids[m.3], ids[m.4]));
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    merges.into_iter().map(|(_, _, _, l, r)| (l.to_string(), r.to_string())).collect()
}

/// Builds a Hugging Face tokenizer.json for a SentencePiece BPE vocabulary (GGUF
/// `tokenizer.ggml.model == "llama"`: Llama 2, Code Llama, TinyLlama), the way transformers'
/// `LlamaConverter` (legacy) made the tokenizer.json published with those models: BPE with byte
/// fallback to `<0xNN>` pieces, merges from the scores (`spm_merges`), a normalizer that
/// prepends "▁" and turns spaces into "▁" (SentencePiece's dummy prefix), no pre-tokenizer, and
/// the decoder undoing both. Unknown and control tokens are special. `bos` as in
/// `gpt2_tokenizer_json`.
pub fn llama_spm_tokenizer_json(tokens: &[String], scores: &[f32], token_types: &[i32], unk: u32, bos: Option<u32>) -> Result<Value> {
    if scores.len() != tokens.len() || token_types.len() != tokens.len() {
        return Err(Error::Config {
            file: "tokenizer.ggml.scores".into(),
            detail: format!(
                "{} tokens but {} scores and {} token types; the GGUF's tokenizer arrays must have one entry per token",
                tokens.len(),
                scores.len(),
                token_types.len()
            ),
        });
    }
    let unk_token = tokens.get(unk as usize).ok_or_else(|| Error::Config {
        file: "tokenizer.ggml.unknown_token_id".into(),
        detail: format!("unknown token id {unk} is past the {} tokens", tokens.len()),
    })?;
    let vocab: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let merges: Vec<Value> = spm_merges(tokens, scores).into_iter().map(|(l, r)| json!([l, r])).collect();
    let replace = |from: &str, to: &str| json!({"type": "Replace", "pattern": {"String": from}, "content": to});
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(tokens, token_types, &[TOKEN_UNKNOWN, TOKEN_CONTROL]),
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace(" ", "\u{2581}")]},
        "pre_tokenizer": null,
        "post_processor": bos_processor(tokens, bos),
        "decoder": {"type": "Sequence", "decoders": [replace("\u{2581}", " "), {"type": "ByteFallback"}, {"type": "Fuse"},
                    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk_token, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges},
    }))
}
