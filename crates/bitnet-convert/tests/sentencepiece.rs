//! The `tokenizer.json` made from the 1bitLLM fixture's SentencePiece `tokenizer.model` against
//! transformers: the ids and decodes of `fixtures/tokenizer-cases-sentencepiece.json`, and the
//! reference file transformers writes for the same folder.

use std::path::{Path, PathBuf};

use bitnet_convert::ConvertError;
use bitnet_convert::sentencepiece::{ModelType, PieceType, SentencePieceModel, convert_folder};
use serde_json::Value;
use tokenizers::Tokenizer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn fixture_dir() -> PathBuf {
    fixtures().join("bitnet-1bitllm-tiny")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn converted() -> Tokenizer {
    let c = convert_folder(&fixture_dir()).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    Tokenizer::from_bytes(&c.json).unwrap()
}

fn reference() -> Tokenizer {
    Tokenizer::from_file(fixtures().join("bitnet-1bitllm-tiny.tokenizer.json-reference")).unwrap()
}

/// Every case through `tok`: ids with and without special tokens, and the three decodes. Returns the
/// number of cases checked.
fn check_cases(tok: &Tokenizer, who: &str) -> usize {
    let cases = read_json(&fixtures().join("tokenizer-cases-sentencepiece.json"));
    let cases = cases["cases"].as_array().unwrap();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let plain = tok.encode(text, false).unwrap();
        assert_eq!(plain.get_ids(), ids(&c["ids"]), "{who}: {text:?}");
        let tokens: Vec<&str> = c["pieces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(plain.get_tokens(), tokens, "{who}: {text:?}");
        let special = tok.encode(text, true).unwrap();
        let with = ids(&c["ids_add_special_tokens"]);
        assert_eq!(special.get_ids(), with, "{who}: {text:?}");
        assert_eq!(
            tok.decode(&ids(&c["ids"]), false).unwrap(),
            c["decoded"],
            "{who}: {text:?}"
        );
        assert_eq!(
            tok.decode(&with, false).unwrap(),
            c["decoded_add_special_tokens"],
            "{who}: {text:?}"
        );
        assert_eq!(
            tok.decode(&with, true).unwrap(),
            c["decoded_skip_special_tokens"],
            "{who}: {text:?}"
        );
    }
    cases.len()
}

#[test]
fn converted_tokenizer_gives_transformers_ids_and_decodes() {
    assert_eq!(check_cases(&converted(), "converted"), 42);
}

#[test]
fn reference_tokenizer_gives_the_same_ids() {
    // The oracle's own file through the Rust `tokenizers` crate: the cases hold for it too, so a
    // difference between the two files would show up as a failing case above, not as a crate quirk.
    assert_eq!(check_cases(&reference(), "reference"), 42);
}

#[test]
fn converted_json_matches_the_reference_where_transformers_fixes_it() {
    let ours: Value =
        serde_json::from_slice(&convert_folder(&fixture_dir()).unwrap().json).unwrap();
    let theirs = read_json(&fixtures().join("bitnet-1bitllm-tiny.tokenizer.json-reference"));
    for key in [
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
        "added_tokens",
    ] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    let (m, r) = (&ours["model"], &theirs["model"]);
    for key in [
        "type",
        "fuse_unk",
        "byte_fallback",
        "ignore_merges",
        "vocab",
        "merges",
    ] {
        assert_eq!(m[key], r[key], "model.{key}");
    }
    // transformers 5.23 leaves the unknown token out of the BPE model; transformers 4 and the original
    // LlamaConverter set it, as does this converter (no case differs: byte fallback covers every byte).
    assert_eq!(m["unk_token"], "<unk>");
    assert_eq!(r["unk_token"], Value::Null);
}

#[test]
fn the_fixture_model_reads_as_sentencepiece_wrote_it() {
    let bytes = std::fs::read(fixture_dir().join("tokenizer.model")).unwrap();
    let m = SentencePieceModel::parse(&bytes).unwrap();
    // The trainer options fixtures/families.py gives (LLaMA 2's): BPE, byte fallback, identity
    // normalization, dummy prefix, whitespace kept.
    assert_eq!(m.model_type, ModelType::Bpe);
    assert!(m.byte_fallback && m.add_dummy_prefix && !m.remove_extra_whitespaces);
    assert_eq!(m.normalizer_name, "identity");
    assert!(!m.has_charsmap);
    assert_eq!((m.unk_id, m.bos_id, m.eos_id), (0, 1, 2));
    assert_eq!(m.pieces.len(), 498);
    let kinds: Vec<PieceType> = m.pieces[..3].iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        [PieceType::Unknown, PieceType::Control, PieceType::Control]
    );
    for b in 0..256 {
        let p = &m.pieces[3 + b];
        assert_eq!(
            (p.piece.as_str(), p.kind),
            (format!("<0x{b:02X}>").as_str(), PieceType::Byte)
        );
    }
    // BPE scores are minus the merge rank.
    assert_eq!(
        (m.pieces[259].piece.as_str(), m.pieces[259].score),
        ("▁t", 0.0)
    );
    assert_eq!(
        (m.pieces[260].piece.as_str(), m.pieces[260].score),
        ("he", -1.0)
    );
    assert_eq!(m.pieces[497].piece, "j");
}

/// A copy of the fixture's tokenizer files (no weights) with `edit` applied.
fn tokenizer_folder(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for name in [
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
    ] {
        std::fs::copy(fixture_dir().join(name), tmp.path().join(name)).unwrap();
    }
    edit(tmp.path());
    tmp
}

fn error_of(dir: &Path) -> String {
    match convert_folder(dir) {
        Ok(_) => panic!("{}: converted", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_malformed_model_is_refused_naming_the_file() {
    let model = std::fs::read(fixture_dir().join("tokenizer.model")).unwrap();
    let truncated = tokenizer_folder(|d| {
        std::fs::write(d.join("tokenizer.model"), &model[..model.len() / 2]).unwrap()
    });
    let e = error_of(truncated.path());
    assert!(
        e.contains("tokenizer.model: not a valid SentencePiece model"),
        "{e}"
    );
    assert!(e.contains("claims") || e.contains("truncated"), "{e}");

    let json =
        tokenizer_folder(|d| std::fs::write(d.join("tokenizer.model"), b"{\"a\": 1}").unwrap());
    let e = error_of(json.path());
    assert!(
        e.contains("tokenizer.model: not a valid SentencePiece model"),
        "{e}"
    );

    let empty = tokenizer_folder(|d| std::fs::write(d.join("tokenizer.model"), b"").unwrap());
    let e = error_of(empty.path());
    // An empty protobuf is a valid message of defaults: a Unigram model with no pieces.
    assert!(
        e.contains("tokenizer.model: a SentencePiece unigram model"),
        "{e}"
    );
}

#[test]
fn a_unigram_model_is_refused_naming_the_file() {
    // The fixture's model with trainer_spec.model_type appended as 1 (Unigram): protobuf keeps the last
    // value of a field that occurs twice, so this is the same model declared Unigram.
    let mut model = std::fs::read(fixture_dir().join("tokenizer.model")).unwrap();
    model.extend_from_slice(&[0x12, 0x02, 0x18, 0x01]);
    let dir = tokenizer_folder(|d| std::fs::write(d.join("tokenizer.model"), &model).unwrap());
    let e = convert_folder(dir.path()).unwrap_err();
    assert!(matches!(e, ConvertError::Tokenizer { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("tokenizer.model: a SentencePiece unigram model; only BPE models"),
        "{e}"
    );
    assert!(e.contains("needs its own tokenizer.json"), "{e}");
}

#[test]
fn contradictory_added_tokens_are_refused_naming_the_file() {
    let taken = tokenizer_folder(|d| {
        std::fs::write(
            d.join("added_tokens.json"),
            r#"{"<pad>": 498, "</line>": 5}"#,
        )
        .unwrap()
    });
    let e = error_of(taken.path());
    assert!(e.contains("added_tokens.json: field `</line>`"), "{e}");
    assert!(
        e.contains("but piece 5 of tokenizer.model is `<0x02>`"),
        "{e}"
    );

    let gap = tokenizer_folder(|d| {
        std::fs::write(d.join("added_tokens.json"), r#"{"<extra>": 505}"#).unwrap()
    });
    let e = error_of(gap.path());
    assert!(e.contains("added_tokens.json: field `<extra>`"), "{e}");
    assert!(e.contains("leaves a gap"), "{e}");
    assert!(e.contains("next id is 500"), "{e}");

    let clash = tokenizer_folder(|d| {
        std::fs::write(d.join("added_tokens.json"), r#"{"<mask>": 498}"#).unwrap()
    });
    let e = error_of(clash.path());
    assert!(
        e.contains("added_tokens.json: field `<mask>`: id 498 is `<mask>`"),
        "{e}"
    );
    assert!(
        e.contains("tokenizer_config.json gives that id to `<pad>`"),
        "{e}"
    );

    let not_ids = tokenizer_folder(|d| {
        std::fs::write(d.join("added_tokens.json"), r#"{"<x>": "a"}"#).unwrap()
    });
    let e = error_of(not_ids.path());
    assert!(
        e.contains("added_tokens.json: field `<x>`: expected a token id"),
        "{e}"
    );
}

#[test]
fn tokenizer_config_settings_shape_the_json() {
    let dir = tokenizer_folder(|d| {
        let path = d.join("tokenizer_config.json");
        let mut tc = read_json(&path);
        tc["add_eos_token"] = true.into();
        tc["legacy"] = true.into();
        std::fs::write(&path, serde_json::to_vec(&tc).unwrap()).unwrap();
    });
    let json: Value = serde_json::from_slice(&convert_folder(dir.path()).unwrap().json).unwrap();
    assert_eq!(json["pre_tokenizer"]["prepend_scheme"], "always");
    let tok = Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap();
    let enc = tok.encode("a</line>b", true).unwrap();
    // legacy: the text after an added token gets its own `▁`; add_eos_token: `</s>` at the end.
    assert_eq!(enc.get_tokens(), ["<s>", "▁a", "</line>", "▁b", "</s>"]);

    let no_prefix = tokenizer_folder(|d| {
        let path = d.join("tokenizer_config.json");
        let mut tc = read_json(&path);
        tc["add_prefix_space"] = false.into();
        tc["add_bos_token"] = false.into();
        std::fs::write(&path, serde_json::to_vec(&tc).unwrap()).unwrap();
    });
    let json: Value =
        serde_json::from_slice(&convert_folder(no_prefix.path()).unwrap().json).unwrap();
    assert_eq!(json["pre_tokenizer"]["prepend_scheme"], "never");
    let decoders = json["decoder"]["decoders"].as_array().unwrap();
    assert!(
        decoders.iter().all(|d| d["type"] != "Strip"),
        "{decoders:?}"
    );
    let tok = Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap();
    let enc = tok.encode("a b", true).unwrap();
    assert_eq!(enc.get_tokens(), ["a", "▁b"]);
}
