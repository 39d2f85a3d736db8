//! Inputs of the chat fuzz targets, shared with the replay test CI runs on stable: a value or a clean
//! error, never a panic.

use crate::{ChatTemplate, Message, Tokenizer};

/// `data` as a chat template's source, compiled and rendered on a short conversation.
pub fn template(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = ChatTemplate::new("fuzz", src, "<s>", "</s>") {
        let msgs = [
            Message::system("Be brief.".to_string()),
            Message::user("Hello {{ there }} <|eot_id|>".to_string()),
            Message::assistant("Hi.".to_string()),
            Message::user("Again".to_string()),
        ];
        let _ = t.render(&msgs, true);
    }
}

/// `data` as a tokenizer.json, loaded and used on a sample.
pub fn tokenizer_json(data: &[u8]) {
    let info = bitnet_format::TokenizerInfo::default();
    if let Ok(t) = Tokenizer::from_bytes(Some(data), &info)
        && let Ok(ids) = t.encode_prompt("Hello, world! <s> 123 ✓")
    {
        let _ = t.decode(&ids);
    }
}
