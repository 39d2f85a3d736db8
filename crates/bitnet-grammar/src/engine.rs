//! [`GrammarEngine`] (per model) and [`Constraint`] (per sequence) over llguidance.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::{ConstraintSpec, GrammarError};

/// Runs `f`, turning a panic inside llguidance into an error: no panic crosses this crate.
fn guarded<T>(f: impl FnOnce() -> Result<T, GrammarError>) -> Result<T, GrammarError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        Err(GrammarError::Decode(format!("llguidance panicked: {why}")))
    })
}

/// llguidance's view of the vocabulary: the token trie, and a tokenizer for text the grammar forces.
/// Tokenizing is the trie's greedy longest match, which is not the model tokenizer's canonical split, so
/// the environment says it is not canonical and llguidance never forces tokens by it: every token is
/// sampled from the mask.
struct VocabEnv {
    trie: TokTrie,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// A model's grammar engine: its vocabulary as bytes in a token trie and llguidance's parser factory.
/// Build it once per model and share it across requests; each sequence gets a [`Constraint`].
pub struct GrammarEngine {
    factory: ParserFactory,
    n_logits: usize,
}

impl std::fmt::Debug for GrammarEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarEngine")
            .field("n_logits", &self.n_logits)
            .finish_non_exhaustive()
    }
}

impl GrammarEngine {
    /// The engine for a model whose tokenizer is `hf`, which ends sequences with `stop_ids` (end of
    /// text and end of turn) and gives `n_logits` logits per step (at least the vocabulary the model
    /// samples from; ids without a token are never allowed).
    pub fn new(
        hf: &tokenizers::Tokenizer,
        stop_ids: &[u32],
        n_logits: usize,
    ) -> Result<Arc<GrammarEngine>, GrammarError> {
        let Some(&eos) = stop_ids.first() else {
            return Err(GrammarError::Tokenizer(
                "the model has no end-of-text token, so a grammar could not end the output".into(),
            ));
        };
        if let Some(&bad) = stop_ids.iter().find(|&&id| id as usize >= n_logits) {
            return Err(GrammarError::Tokenizer(format!(
                "end-of-text id {bad} is outside the model's {n_logits} logits"
            )));
        }
        let n = u32::try_from(n_logits)
            .map_err(|_| GrammarError::Tokenizer(format!("{n_logits} logits are too many")))?;
        let bytes = crate::vocab::token_bytes(hf, n_logits)?;
        guarded(|| {
            let trie = TokTrie::from(&TokRxInfo::new(n, eos), &bytes).with_eos_tokens(stop_ids);
            let env: TokEnv = Arc::new(VocabEnv { trie });
            let mut factory = ParserFactory::new_simple(&env)
                .map_err(|e| GrammarError::Tokenizer(e.to_string()))?;
            factory.quiet();
            Ok(Arc::new(GrammarEngine { factory, n_logits }))
        })
    }

    /// Logits per step the engine was built for.
    pub fn n_logits(&self) -> usize {
        self.n_logits
    }

    /// The bytes token `id` stands for (special tokens start with 0xFF).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.factory.tok_env().tok_trie().token(id)
    }

    /// A constraint for one sequence under `spec`; `field` names where the spec came from
    /// (`response_format`), for the error when it does not compile.
    pub fn constraint(
        &self,
        spec: &ConstraintSpec,
        field: &str,
    ) -> Result<Constraint, GrammarError> {
        let grammar = spec.grammar();
        let compile_error = |message: String| GrammarError::Grammar {
            field: field.to_string(),
            message,
        };
        let parser = guarded(|| {
            self.factory
                .create_parser(grammar)
                .map_err(|e| compile_error(e.to_string()))
        })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(compile_error(e));
        }
        Ok(Constraint {
            matcher,
            mask: None,
        })
    }
}

/// One sequence's grammar state: which tokens may come next, advanced token by token. A clone goes on
/// independently (`n` sequences under one schema compile it once).
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    /// The mask of the current step, computed on the first [`Constraint::allowed`] after a commit.
    mask: Option<SimpleVob>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").finish_non_exhaustive()
    }
}

impl Constraint {
    /// The ids allowed next as a bitset (bit `i % 32` of word `i / 32`). End-of-text ids are in it
    /// only when the output is complete; once nothing more can follow, only they are.
    pub fn allowed(&mut self) -> Result<&[u32], GrammarError> {
        if self.mask.is_none() {
            let m = self
                .matcher
                .compute_mask_or_eos()
                .map_err(|e| GrammarError::Decode(e.to_string()))?;
            self.mask = Some(m);
        }
        Ok(self.mask.as_ref().map_or(&[][..], |m| m.as_slice()))
    }

    /// Records `token` as generated; an id the grammar does not allow is an error.
    pub fn commit(&mut self, token: u32) -> Result<(), GrammarError> {
        self.mask = None;
        self.matcher
            .consume_token(token)
            .map_err(|e| GrammarError::Decode(e.to_string()))
    }

    /// Whether the output so far is complete under the grammar.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}

impl bitnet_chat::TokenConstraint for Constraint {
    fn allowed(&mut self) -> bitnet_chat::Result<&[u32]> {
        Constraint::allowed(self).map_err(|e| bitnet_chat::ChatError::Constraint(e.to_string()))
    }

    fn commit(&mut self, token: u32) -> bitnet_chat::Result<()> {
        Constraint::commit(self, token)
            .map_err(|e| bitnet_chat::ChatError::Constraint(e.to_string()))
    }

    fn is_accepting(&mut self) -> bool {
        Constraint::is_accepting(self)
    }
}
