//! `bitnet-chat`: text in and out of a BitNet model.
//!
//! The crate is the model's text pipeline, one module per stage, in the order data flows:
//!
//! 1. [`template`]: [`ChatTemplate`] turns a conversation ([`Message`]s) into the prompt text, exactly as
//!    transformers' `apply_chat_template` does (the checkpoint's Jinja template, or the BitNet b1.58 2B4T
//!    one for files without a template).
//! 2. [`Tokenizer`] (here, in the crate root) wraps the Hugging Face `tokenizer.json` embedded in a
//!    `.bitnet` file and applies the model's BOS policy: a prompt starts with exactly one BOS, added here
//!    if the tokenizer's own post-processor did not add it (the original LLaMA 3 `tokenizer.json` does
//!    not; later releases do).
//! 3. The model (another crate) turns token ids into logits.
//! 4. [`sampler`]: [`Sampler`] picks the next id from the logits under [`SamplingParams`] (greedy, or
//!    repetition penalty, temperature, top-k, top-p, min-p and a seeded PRNG that draws the same tokens
//!    on every machine).
//! 5. [`detok`]: [`Detokenizer`] turns the stream of ids back into text piece by piece, never splitting
//!    a UTF-8 character that byte-level BPE spreads over several tokens.
//! 6. [`stop`]: [`StopMatcher`] watches that text for `--stop` strings, holding back a tail that may be
//!    the start of one, and ends generation at the first.
//!
//! [`constraint`] holds the hook for constrained decoding: a [`TokenConstraint`] (a grammar) masks the
//! logits before step 4.
//!
//! Every fallible step returns [`ChatError`], whose messages name what is at fault.
//!
//! One chat turn, end to end (`next_logits` stands for the model):
//!
//! ```no_run
//! use bitnet_chat::{ChatTemplate, Detokenizer, Message, Sampler, SamplingParams, StopMatcher};
//! # fn next_logits(_ids: &[u32]) -> Vec<f32> { vec![0.0; 128_256] }
//! # fn main() -> Result<(), bitnet_chat::ChatError> {
//! let file = bitnet_format::BitnetFile::open("model.bitnet").expect("a .bitnet file");
//! let tokenizer = bitnet_chat::Tokenizer::from_file(&file)?;
//! let info = tokenizer.info();
//! let bos = info.bos_token_id.and_then(|id| tokenizer.token(id)).unwrap_or_default();
//! let eos = info.eos_token_ids.first().and_then(|&id| tokenizer.token(id)).unwrap_or_default();
//! let template = ChatTemplate::from_source("model.bitnet", info.chat_template.as_deref(), bos, eos)?;
//!
//! let prompt = template.render(&[Message::user("Hello!")], true)?;
//! let mut ids = tokenizer.encode_prompt(&prompt)?;
//! let params = SamplingParams { temperature: 0.6, top_p: 0.9, ..SamplingParams::default() };
//! let mut sampler = Sampler::new(params)?;
//! let mut detok = Detokenizer::new(&tokenizer);
//! let mut stops = StopMatcher::new(&["\nUser:"])?;
//! for _ in 0..sampler.params().max_tokens {
//!     let id = sampler.sample(&next_logits(&ids), &ids)?;
//!     if info.eos_token_ids.contains(&id) {
//!         break;
//!     }
//!     ids.push(id);
//!     let out = stops.push(&detok.push(id)?);
//!     print!("{}", out.text);
//!     if out.stop.is_some() {
//!         break;
//!     }
//! }
//! if !stops.is_stopped() {
//!     let rest = detok.finish()?;
//!     print!("{}{}", stops.push(&rest).text, stops.finish());
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod constraint;
pub mod detok;
#[doc(hidden)]
pub mod fuzzing;
pub mod sampler;
pub mod stop;
pub mod template;
mod untrusted;

use bitnet_format::TokenizerInfo;

pub use constraint::{TokenConstraint, allows_only, is_allowed, mask_logits};
pub use detok::Detokenizer;
pub use sampler::{Sampler, SamplingParams, TokenLogprobs};
pub use stop::{StopMatcher, StopOutput};
pub use template::{BITNET_2B4T_CHAT_TEMPLATE, ChatTemplate, KNOWN_ROLES, Message, validate_roles};

/// Errors of the text pipeline: tokenizer, chat template, sampling, streaming.
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
    /// A message holds special-token text that could not be kept apart from the template's own tokens.
    #[error("{0}")]
    Untrusted(String),
    /// Encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Tokenize(String),
    /// Streaming decoding met a tokenizer whose text changes behind what was already emitted.
    #[error(
        "streaming decode: the text of the last {window} tokens ({text:?}) no longer starts with what was \
         already emitted ({emitted:?}); this tokenizer's decoder is not prefix-stable"
    )]
    Detokenize {
        /// Tokens in the decoding window.
        window: usize,
        /// What was emitted from the window.
        emitted: String,
        /// The window's text now.
        text: String,
    },
    /// The chat template does not compile.
    #[error("chat template '{template}' does not parse: {message}")]
    TemplateSyntax {
        /// Template name (usually the model file).
        template: String,
        /// minijinja's message, with the line.
        message: String,
    },
    /// The chat template failed while rendering.
    #[error("chat template '{template}' failed to render: {message}")]
    TemplateRender {
        /// Template name.
        template: String,
        /// minijinja's message, with the line.
        message: String,
    },
    /// The chat template called `raise_exception`: it rejects the conversation.
    #[error("chat template '{template}' rejected the conversation: {message}")]
    TemplateException {
        /// Template name.
        template: String,
        /// The message the template raised.
        message: String,
    },
    /// A chat prompt was asked for with no messages.
    #[error("the conversation has no messages; a chat prompt needs at least one")]
    NoMessages,
    /// A message has a role the caller does not accept.
    #[error("message {index} has role '{role}'; the known roles are {allowed}")]
    UnknownRole {
        /// Index of the message in the conversation.
        index: usize,
        /// Its role.
        role: String,
        /// The accepted roles, comma-separated.
        allowed: String,
    },
    /// A sampling parameter is out of range.
    #[error("sampling parameter {name} = {value} is invalid: it must be {expected}")]
    InvalidSampling {
        /// Parameter name (`temperature`, `top_p`, ...).
        name: &'static str,
        /// The value given.
        value: String,
        /// The accepted range.
        expected: &'static str,
    },
    /// The logits handed to the sampler are empty.
    #[error("cannot sample from an empty logits vector")]
    EmptyLogits,
    /// A logit is NaN or +inf (a bug upstream; -inf masks a token and is fine).
    #[error("logit {index} of {len} is {value}; only finite values and -inf can be sampled from")]
    BadLogit {
        /// Token id of the logit.
        index: usize,
        /// Vocabulary size.
        len: usize,
        /// Its value.
        value: f32,
    },
    /// Every logit is -inf: no token can be sampled.
    #[error("every one of the {len} logits is -inf: no token can be sampled")]
    NoCandidates {
        /// Vocabulary size.
        len: usize,
    },
    /// A context token id (for the repetition penalty) is outside the logits.
    #[error("context token id {id} is outside the vocabulary of {len} logits")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Vocabulary size.
        len: usize,
    },
    /// A constraint on the output (a grammar) failed or allows nothing more.
    #[error("constrained decoding: {0}")]
    Constraint(String),
    /// A stop string is empty.
    #[error("stop string {index} is empty; a stop string needs at least one character")]
    EmptyStop {
        /// Index of the stop string among those given.
        index: usize,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, ChatError>;

/// The model's tokenizer with its BOS policy.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    info: TokenizerInfo,
    /// Whether the decoder turns `<0xNN>` tokens into bytes (SentencePiece byte fallback).
    byte_fallback: bool,
    /// For text that must not become control tokens.
    plain: untrusted::Plain,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Runs `f`, which calls into `tokenizers`, turning a panic inside it (a malformed tokenizer.json can
/// cause one) into an error: no panic crosses this crate's boundary.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        Err(ChatError::BadTokenizer(format!(
            "{what} failed inside the tokenizers library: {why}"
        )))
    })
}

impl Tokenizer {
    /// Loads `tokenizer.json` bytes (as embedded in a `.bitnet` file) with the file's tokenizer metadata.
    /// The tokenizer is tried once on a sample text, so a malformed one fails here rather than on a
    /// user's request.
    pub fn from_bytes(json: Option<&[u8]>, info: &TokenizerInfo) -> Result<Tokenizer> {
        let json = json.ok_or(ChatError::NoTokenizer)?;
        let inner = guarded("loading tokenizer.json", || {
            let t = tokenizers::Tokenizer::from_bytes(json)
                .map_err(|e| ChatError::BadTokenizer(e.to_string()))?;
            t.encode("Hello, world! 123", true)
                .map_err(|e| ChatError::BadTokenizer(format!("it cannot encode a sample: {e}")))?;
            Ok(t)
        })?;
        // Asked of the decoder itself rather than read from its JSON: `<0x41>` decodes to "A" exactly
        // when a ByteFallback step is in the decoder chain.
        let byte_fallback = inner
            .token_to_id("<0x41>")
            .is_some_and(|id| inner.decode(&[id], false).is_ok_and(|t| t == "A"));
        Ok(Tokenizer {
            plain: untrusted::Plain::new(&inner),
            inner,
            info: info.clone(),
            byte_fallback,
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
        let enc = guarded("tokenizing", || {
            self.inner
                .encode(text, false)
                .map_err(|e| ChatError::Tokenize(e.to_string()))
        })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a prompt: the tokenizer's own encoding with special tokens, then exactly one BOS at the
    /// start when the model wants one.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let enc = guarded("tokenizing", || {
            self.inner
                .encode(text, true)
                .map_err(|e| ChatError::Tokenize(e.to_string()))
        })?;
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
        guarded("decoding", || {
            self.inner
                .decode(ids, false)
                .map_err(|e| ChatError::Tokenize(e.to_string()))
        })
    }

    /// Text of `ids` without the special tokens' text (what generated text shows).
    pub fn decode_text(&self, ids: &[u32]) -> Result<String> {
        guarded("decoding", || {
            self.inner
                .decode(ids, true)
                .map_err(|e| ChatError::Tokenize(e.to_string()))
        })
    }

    /// The text of a token id (as in the vocabulary, e.g. `<|begin_of_text|>`), if the id exists. This is
    /// how a caller gets the `bos_token`/`eos_token` strings a chat template wants from the file's ids.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is a byte-fallback token (`<0x0A>` and the like) that the decoder turns into one byte.
    pub fn is_byte_token(&self, id: u32) -> bool {
        self.byte_fallback
            && self.inner.id_to_token(id).is_some_and(|t| {
                let b = t.as_bytes();
                b.len() == 6
                    && t.starts_with("<0x")
                    && b[5] == b'>'
                    && b[3..5].iter().all(u8::is_ascii_hexdigit)
            })
    }

    /// The longest token's text in bytes (at least 1): a text longer than `n` times this cannot be fewer
    /// than `n` tokens, which bounds a prompt's length before it is tokenized.
    pub fn longest_token_bytes(&self) -> usize {
        self.inner
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1)
    }

    /// The Hugging Face tokenizer underneath (a grammar engine reads its vocabulary and decoder).
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The bytes a token stands for on its own: a byte-fallback token's byte, a byte-level BPE token's
    /// bytes (GPT-2's byte-to-character map undone), else the decoder's text of the token alone.
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>> {
        if self.is_byte_token(id)
            && let Some(t) = self.inner.id_to_token(id)
            && let Ok(b) = u8::from_str_radix(&t[3..5], 16)
        {
            return Ok(vec![b]);
        }
        if let (Some(tokenizers::DecoderWrapper::ByteLevel(_)), Some(t)) =
            (self.inner.get_decoder(), self.inner.id_to_token(id))
            && !self.plain.is_added(id)
            && let Some(bytes) = t.chars().map(byte_level_byte).collect::<Option<Vec<u8>>>()
        {
            return Ok(bytes);
        }
        Ok(self.decode(&[id])?.into_bytes())
    }

    /// The id of a token's text, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// The byte GPT-2's byte-level alphabet writes as `c`: printable Latin-1 bytes as themselves, the other 68
/// bytes as U+0100 onwards in byte order.
fn byte_level_byte(c: char) -> Option<u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let code = c as u32;
    if code < 256 && printable(code as u8) {
        return Some(code as u8);
    }
    let k = code.checked_sub(256)? as usize;
    (0..=255u8).filter(|&b| !printable(b)).nth(k)
}
