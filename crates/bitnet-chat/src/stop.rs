//! Stop strings (`--stop`) on streamed text.
//!
//! Generated text arrives in pieces (one per token, from [`Detokenizer`](crate::Detokenizer)), and a
//! stop string can span pieces: `"###"` may come as `"#"`, `"##"`. [`StopMatcher::push`] takes a piece
//! and returns the text that is safe to show now, holding back the longest tail that could still
//! become the start of a stop string. When a stop string completes, everything before it is returned
//! and the stop string and whatever follows are dropped; the matcher then stays stopped.
//! [`StopMatcher::finish`] returns the held tail when generation ends for another reason (an end
//! token, the token limit).
//!
//! When several stop strings could match, the one that completes first in the text wins (ties: the
//! one that starts first), which is what a reader scanning the text character by character would see.
//! That makes the result independent of how the text is cut into pieces.

use crate::{ChatError, Result};

/// What one piece of text yields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopOutput {
    /// Text safe to emit now.
    pub text: String,
    /// The stop string that ended generation with this piece, if one did.
    pub stop: Option<String>,
}

/// Finds stop strings in streamed text.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet emitted: a tail that may begin a stop string.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops` (none at all is fine: every piece passes through). An empty stop string
    /// is an error.
    pub fn new<S: AsRef<str>>(stops: &[S]) -> Result<StopMatcher> {
        if let Some(index) = stops.iter().position(|s| s.as_ref().is_empty()) {
            return Err(ChatError::EmptyStop { index });
        }
        Ok(StopMatcher {
            stops: stops.iter().map(|s| s.as_ref().to_string()).collect(),
            held: String::new(),
            stopped: false,
        })
    }

    /// The stop strings.
    pub fn stops(&self) -> &[String] {
        &self.stops
    }

    /// Whether a stop string was hit.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds the next piece of text. After a stop, every piece is dropped.
    pub fn push(&mut self, piece: &str) -> StopOutput {
        if self.stopped {
            return StopOutput::default();
        }
        self.held.push_str(piece);
        if let Some((start, which)) = self.first_match() {
            self.stopped = true;
            let mut text = std::mem::take(&mut self.held);
            text.truncate(start);
            return StopOutput {
                text,
                stop: Some(self.stops[which].clone()),
            };
        }
        let keep = self.partial_tail();
        let text = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        StopOutput { text, stop: None }
    }

    /// Ends the stream without a stop: returns the held tail (empty after a stop) and makes the
    /// matcher ready for a new stream.
    pub fn finish(&mut self) -> String {
        self.stopped = false;
        std::mem::take(&mut self.held)
    }

    /// The match that ends first in `held` (ties: starts first), as (start, stop index).
    fn first_match(&self) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|at| (at + s.len(), at, i)))
            .min()
            .map(|(_, start, i)| (start, i))
    }

    /// Length of the longest tail of `held` (starting on a character boundary) that is a proper prefix
    /// of some stop string.
    fn partial_tail(&self) -> usize {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let from = self.held.len().saturating_sub(longest.saturating_sub(1));
        self.held
            .char_indices()
            .map(|(at, _)| at)
            .filter(|&at| at >= from)
            .find(|&at| {
                let tail = &self.held[at..];
                self.stops
                    .iter()
                    .any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .map_or(0, |at| self.held.len() - at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`, returns (all emitted text, the stop hit, emitted text per piece).
    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>, Vec<String>) {
        let mut m = StopMatcher::new(stops).unwrap();
        let mut all = String::new();
        let mut per = Vec::new();
        let mut hit = None;
        for p in pieces {
            let out = m.push(p);
            all += &out.text;
            per.push(out.text);
            if out.stop.is_some() {
                hit = out.stop;
            }
        }
        all += &m.finish();
        (all, hit, per)
    }

    /// The reference: the whole text at once, earliest-ending match (ties: earliest start).
    fn reference(stops: &[&str], text: &str) -> (String, Option<String>) {
        let mut best: Option<(usize, usize, &str)> = None;
        for s in stops {
            if let Some(at) = text.find(s) {
                let cand = (at + s.len(), at, *s);
                if best.is_none_or(|b| (cand.0, cand.1) < (b.0, b.1)) {
                    best = Some(cand);
                }
            }
        }
        match best {
            Some((_, at, s)) => (text[..at].to_string(), Some(s.to_string())),
            None => (text.to_string(), None),
        }
    }

    #[test]
    fn no_stops_passes_everything_through() {
        let (all, hit, per) = run(&[], &["a", "b"]);
        assert_eq!((all.as_str(), hit), ("ab", None));
        assert_eq!(per, ["a", "b"]);
    }

    #[test]
    fn stop_inside_one_piece() {
        let (all, hit, _) = run(&["###"], &["Hello ### world", "more"]);
        assert_eq!(all, "Hello ");
        assert_eq!(hit.as_deref(), Some("###"));
    }

    #[test]
    fn stop_spanning_pieces_is_held_then_dropped() {
        let (all, hit, per) = run(&["</s>"], &["Hi <", "/", "s", "> after"]);
        assert_eq!(all, "Hi ");
        assert_eq!(hit.as_deref(), Some("</s>"));
        assert_eq!(per, ["Hi ", "", "", ""]);
    }

    #[test]
    fn false_start_is_released() {
        let (all, hit, per) = run(&["STOP"], &["ST", "", "ART here"]);
        assert_eq!((all.as_str(), hit), ("START here", None));
        assert_eq!(per, ["", "", "START here"]);
        // A held tail at the end of the stream comes out of finish.
        let mut m = StopMatcher::new(&["STOP"]).unwrap();
        assert_eq!(m.push("a ST").text, "a ");
        assert_eq!(m.finish(), "ST");
    }

    #[test]
    fn overlapping_prefixes() {
        // "aab" where a partial "aa" could restart: "aaab" must stop at index 1.
        let (all, hit, _) = run(&["aab"], &["a", "a", "a", "b", "c"]);
        assert_eq!((all.as_str(), hit.as_deref()), ("a", Some("aab")));
        // Stops that are prefixes of each other: the shorter completes first.
        let (all, hit, _) = run(&["ab", "abc"], &["xab", "c"]);
        assert_eq!((all.as_str(), hit.as_deref()), ("x", Some("ab")));
        // One that ends first wins over one that starts first.
        let (all, hit, _) = run(&["abcd", "bc"], &["abcd"]);
        assert_eq!((all.as_str(), hit.as_deref()), ("a", Some("bc")));
    }

    #[test]
    fn unicode_stops_and_text() {
        let (all, hit, _) = run(&["👋🏽", "。"], &["你好", "👋", "🏽 more"]);
        assert_eq!((all.as_str(), hit.as_deref()), ("你好", Some("👋🏽")));
        let (all, hit, per) = run(&["é!"], &["caf", "é", "?", " é", "!"]);
        assert_eq!((all.as_str(), hit.as_deref()), ("café? ", Some("é!")));
        assert_eq!(per, ["caf", "", "é?", " ", ""]);
    }

    #[test]
    fn stopped_matcher_drops_later_pieces() {
        let mut m = StopMatcher::new(&["x"]).unwrap();
        let out = m.push("axb");
        assert_eq!(out.text, "a");
        assert!(m.is_stopped());
        assert_eq!(m.push("more"), StopOutput::default());
        assert_eq!(m.finish(), "");
        assert!(!m.is_stopped());
    }

    #[test]
    fn empty_stop_is_an_error() {
        let err = StopMatcher::new(&["ok", ""]).unwrap_err();
        assert!(matches!(err, ChatError::EmptyStop { index: 1 }), "{err}");
    }

    #[test]
    fn every_split_of_every_text_matches_the_whole_text() {
        let stops = ["<|eot_id|>", "\n\nUser:", "ab", "bab", "é!", "😀"];
        let texts = [
            "Hello there.<|eot_id|>trailing",
            "Answer: 4\n\nUser: next",
            "xxbabab",
            "<|eot_id",
            "no stop at all, just < and \n\nUse",
            "café é! 😀",
            "b😀ab",
        ];
        for text in texts {
            let want = reference(&stops, text);
            let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
            // Every single cut, and character by character.
            for &cut in &bounds {
                let (all, hit, _) = run(&stops, &[&text[..cut], &text[cut..]]);
                assert_eq!((all, hit), want, "{text:?} cut at {cut}");
            }
            let chars: Vec<String> = text.chars().map(String::from).collect();
            let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
            let (all, hit, per) = run(&stops, &pieces);
            assert_eq!((all, hit), want.clone(), "{text:?} char by char");
            // Emitted text never contains a stop string or anything after it.
            assert!(want.0.starts_with(&per.concat()), "{text:?}");
        }
    }
}
