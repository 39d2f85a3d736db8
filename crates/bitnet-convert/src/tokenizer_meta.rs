//! The tokenizer files of a checkpoint: tokenizer.json (embedded verbatim, or made from a SentencePiece
//! tokenizer.model by [`crate::sentencepiece`] when there is none), tokenizer_config.json,
//! generation_config.json and chat_template.jinja, read into the header's tokenizer and generation
//! sections (SPEC.md section 6).

use std::path::Path;

use bitnet_format::{GenerationDefaults, TokenizerInfo};
use serde_json::Value;

use crate::checkpoint::read_json_opt;
use crate::error::{ConvertError, Result};
use crate::sentencepiece;

/// Reads an id or list of ids (`eos_token_id` may be either).
fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

/// Finds the id of an added token in tokenizer.json.
fn added_token_id(tokenizer: &Value, content: &str) -> Option<u32> {
    tokenizer
        .get("added_tokens")?
        .as_array()?
        .iter()
        .find_map(|t| {
            (t.get("content")?.as_str()? == content)
                .then(|| t.get("id")?.as_u64().map(|n| n as u32))
                .flatten()
        })
}

/// What the tokenizer files give the header and the file.
pub(crate) struct TokenizerParts {
    pub info: TokenizerInfo,
    /// The `tokenizer.json` bytes to embed.
    pub json: Option<Vec<u8>>,
    /// The file they come from: `tokenizer.json`, or `tokenizer.model` when converted.
    pub json_source: Option<String>,
    pub generation: GenerationDefaults,
}

pub(crate) fn read_tokenizer(
    dir: &Path,
    cfg: &Value,
    warnings: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<TokenizerParts> {
    let tok_path = dir.join("tokenizer.json");
    let spm_path = dir.join("tokenizer.model");
    let (tokenizer_json, json_source) = if tok_path.is_file() {
        let real = crate::source_file::checked(&tok_path)?;
        let bytes = std::fs::read(real).map_err(|e| ConvertError::io(&tok_path, e))?;
        (Some(bytes), Some("tokenizer.json".to_string()))
    } else if spm_path.is_file() {
        let converted = sentencepiece::convert_folder(dir)?;
        warnings.extend(converted.warnings);
        notes.push(format!(
            "{}: no tokenizer.json beside it; made one from this SentencePiece BPE model ({} pieces{}) \
             and the added tokens, as transformers' LlamaTokenizer does",
            spm_path.display(),
            converted.model.pieces.len(),
            if converted.model.byte_fallback {
                ", byte fallback"
            } else {
                ""
            }
        ));
        (Some(converted.json), Some("tokenizer.model".to_string()))
    } else {
        warnings.push(format!(
            "{}: missing (and no tokenizer.model); the file will carry no tokenizer, so it can run token \
             ids but not text",
            tok_path.display()
        ));
        (None, None)
    };
    let tok_value: Option<Value> = match &tokenizer_json {
        Some(bytes) => Some(
            serde_json::from_slice(bytes).map_err(|error| ConvertError::Json {
                path: tok_path.clone(),
                error,
            })?,
        ),
        None => None,
    };
    let tc_path = dir.join("tokenizer_config.json");
    let tc = read_json_opt(&tc_path)?.unwrap_or(Value::Null);
    let gen_path = dir.join("generation_config.json");
    let gen_cfg = read_json_opt(&gen_path)?.unwrap_or(Value::Null);

    let jinja_path = dir.join("chat_template.jinja");
    let chat_template = if jinja_path.is_file() {
        {
            let real = crate::source_file::checked(&jinja_path)?;
            Some(std::fs::read_to_string(real).map_err(|e| ConvertError::io(&jinja_path, e))?)
        }
    } else {
        match tc.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // The list form: [{"name": "default", "template": ...}, ...].
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        }
    };
    if chat_template.is_none() {
        warnings.push(format!(
            "{}: no chat template (nor chat_template.jinja); chat will fall back to the BitNet 2B4T template",
            tc_path.display()
        ));
    }
    let lookup = |text: Option<String>| -> Option<u32> {
        text.and_then(|t| tok_value.as_ref().and_then(|v| added_token_id(v, &t)))
    };
    let bos_token_id = ids(cfg.get("bos_token_id"))
        .first()
        .copied()
        .or_else(|| ids(gen_cfg.get("bos_token_id")).first().copied())
        .or_else(|| lookup(token_text(tc.get("bos_token"))));
    let mut eos: Vec<u32> = Vec::new();
    let mut push = |id: u32| {
        if !eos.contains(&id) {
            eos.push(id);
        }
    };
    ids(gen_cfg.get("eos_token_id"))
        .into_iter()
        .for_each(&mut push);
    ids(cfg.get("eos_token_id")).into_iter().for_each(&mut push);
    if let Some(id) = lookup(token_text(tc.get("eos_token"))) {
        push(id);
    }
    // End-of-turn and end-of-text markers of the LLaMA 3 vocabulary that 2B4T uses.
    for marker in ["<|eot_id|>", "<|end_of_text|>"] {
        if let Some(id) = lookup(Some(marker.to_string())) {
            push(id);
        }
    }
    let pad_token_id = ids(cfg.get("pad_token_id"))
        .first()
        .copied()
        .or_else(|| ids(gen_cfg.get("pad_token_id")).first().copied());
    // Without an explicit `add_bos_token`, a prompt starts with BOS unless the BOS id is also an end id:
    // Falcon3 names `<|endoftext|>` (11) as both, and its tokenizer starts prompts without it.
    let add_bos_token = tc
        .get("add_bos_token")
        .and_then(|v| v.as_bool())
        .unwrap_or(bos_token_id.is_some_and(|b| !eos.contains(&b)));
    let tokenizer = TokenizerInfo {
        tokenizer_json: tokenizer_json
            .as_ref()
            .map(|_| "tokenizer.json".to_string()),
        bos_token_id,
        add_bos_token,
        eos_token_ids: eos,
        pad_token_id,
        chat_template,
    };
    let g = |k: &str| gen_cfg.get(k);
    let generation = GenerationDefaults {
        do_sample: g("do_sample").and_then(|v| v.as_bool()),
        temperature: g("temperature").and_then(|v| v.as_f64()),
        top_p: g("top_p").and_then(|v| v.as_f64()),
        top_k: g("top_k").and_then(|v| v.as_u64()),
        repetition_penalty: g("repetition_penalty").and_then(|v| v.as_f64()),
        max_new_tokens: g("max_new_tokens").and_then(|v| v.as_u64()),
    };
    Ok(TokenizerParts {
        info: tokenizer,
        json: tokenizer_json,
        json_source,
        generation,
    })
}
