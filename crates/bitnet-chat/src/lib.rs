//! `bitnet-chat`: text in and out of a BitNet model.
//!
//! [`Tokenizer`] wraps the Hugging Face `tokenizer.json` embedded in a `.bitnet` file and applies the
//! model's BOS policy: a prompt starts with exactly one BOS, added here if the tokenizer's own
//! post-processor did not add it (the original LLaMA 3 `tokenizer.json` does not; later releases do).

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

use bitnet_format::TokenizerInfo;

/// Tokenizer errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    /// The file carries no tokenizer.
    #[error(
        "the model file has no tokenizer.json, so it cannot read text; re-convert it from a folder that has one"
    )]
    NoTokenizer,
    /// The embedded tokenizer.json does not load.
    #[error("the embedded tokenizer.json does not load: {0}")]
    BadTokenizer(String),
    /// Encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Tokenize(String),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, ChatError>;

/// The model's tokenizer with its BOS policy.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    info: TokenizerInfo,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` bytes (as embedded in a `.bitnet` file) with the file's tokenizer metadata.
    pub fn from_bytes(json: Option<&[u8]>, info: &TokenizerInfo) -> Result<Tokenizer> {
        let json = json.ok_or(ChatError::NoTokenizer)?;
        let inner = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| ChatError::BadTokenizer(e.to_string()))?;
        Ok(Tokenizer {
            inner,
            info: info.clone(),
        })
    }

    /// Loads the tokenizer of an open `.bitnet` file.
    pub fn from_file(file: &bitnet_format::BitnetFile) -> Result<Tokenizer> {
        Self::from_bytes(file.tokenizer_json(), &file.header().tokenizer)
    }

    /// The tokenizer's metadata (BOS, stop tokens, chat template).
    pub fn info(&self) -> &TokenizerInfo {
        &self.info
    }

    /// Token ids of `text` as they appear in the text: no BOS, special tokens in the text recognized.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ChatError::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a prompt: the tokenizer's own encoding with special tokens, then exactly one BOS at the
    /// start when the model wants one.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| ChatError::Tokenize(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if let (true, Some(bos)) = (self.info.add_bos_token, self.info.bos_token_id)
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Text of `ids` (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| ChatError::Tokenize(e.to_string()))
    }

    /// The id of a token's text, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
