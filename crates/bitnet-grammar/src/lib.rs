//! `bitnet-grammar`: constrained decoding. At every step of generation a grammar says which tokens
//! keep the output valid, and every other logit is masked to `-inf`, so even a model with random
//! weights emits JSON that parses and validates against the schema it was given.
//!
//! The grammar engine is [llguidance](https://docs.rs/llguidance) (the one llama.cpp and others use:
//! an Earley parser over a lexer of derivative-based regexes, and a token trie walked once per step).
//! This crate adapts it to BitNet models, in the order a request flows:
//!
//! 1. `vocab`: the bytes each token id stands for, read from the Hugging Face tokenizer (byte-level
//!    BPE such as LLaMA 3, and SentencePiece with byte fallback).
//! 2. [`GrammarEngine::new`] builds llguidance's token trie and lexer slices over them, once per model
//!    (tens to hundreds of milliseconds for a 128k vocabulary; share the engine in an `Arc`).
//! 3. [`ConstraintSpec`]: what the request asks for, from OpenAI's `response_format`
//!    ([`ConstraintSpec::from_response_format`]) or a Lark grammar.
//! 4. [`GrammarEngine::constraint`] compiles it into a [`Constraint`] for one sequence: `allowed()`
//!    (a bitset over the vocabulary), `commit(token)`, `is_accepting()`. It implements
//!    [`bitnet_chat::TokenConstraint`], which the runtime's decoder takes.
//!
//! Errors are [`GrammarError`]s; the ones a request causes name the field at fault, so a server can
//! answer them with a 400.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod engine;
mod spec;
mod vocab;

pub use engine::{Constraint, GrammarEngine};
pub use spec::ConstraintSpec;

/// Errors of constrained decoding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrammarError {
    /// A request field is malformed.
    #[error("{field} must be {expected}")]
    Field {
        /// The field, as a path (`response_format.json_schema.schema`).
        field: String,
        /// What it must be.
        expected: String,
    },
    /// The grammar or schema does not compile (unsupported keyword, bad Lark syntax, unsatisfiable
    /// schema).
    #[error("{field} cannot be used as a grammar: {message}")]
    Grammar {
        /// The field the grammar came from.
        field: String,
        /// llguidance's message.
        message: String,
    },
    /// The model's tokenizer cannot be read as bytes.
    #[error("the tokenizer cannot be used for constrained decoding: {0}")]
    Tokenizer(String),
    /// The grammar engine failed while decoding.
    #[error("constrained decoding failed: {0}")]
    Decode(String),
}
