//! Speculative decoding (`--draft ngram`) gives the text plain decoding gives, greedy and sampled with a
//! seed, on every fixture family and on the trained demo model; and on the demo it does accept drafts.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use bitnet_model::Backend;
use bitnet_runtime::store::HeadVariant;
use bitnet_runtime::{
    Engine, Generation, LoadOptions, NgramDraft, Provider, Quiet, SamplingOverrides,
};

const MODELS: &[&str] = &[
    "demo",
    "bitnet-tiny-tied",
    "bitnet-tiny-untied-sharded",
    "bitnet-llama3-tiny",
    "bitnet-1bitllm-tiny",
    "falcon3-tiny",
];

const PROMPT: &str =
    "The economy is strong. The economy is strong because the people are strong. The economy";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn generate(engine: &Engine, temperature: f32, max_tokens: usize) -> (Generation, String) {
    let params = engine
        .sampling(&SamplingOverrides {
            temperature: Some(temperature),
            top_k: Some(0),
            top_p: Some(1.0),
            seed: Some(7),
            max_tokens: Some(max_tokens),
            ..Default::default()
        })
        .unwrap();
    let ids = engine.tokenizer.encode_prompt(PROMPT).unwrap();
    let mut session = engine.model.session(engine.context());
    let never = AtomicBool::new(false);
    let mut streamed = String::new();
    let g = engine
        .generate(
            &mut session,
            &mut Vec::new(),
            &ids,
            &params,
            &[],
            &never,
            &mut |t| {
                streamed.push_str(t);
                Ok(())
            },
        )
        .unwrap();
    (g, streamed)
}

fn open(file: &Path, draft: Option<NgramDraft>) -> Engine {
    let opts = LoadOptions {
        draft,
        threads: Some(1),
        ..Default::default()
    };
    Engine::open(file.to_str().unwrap(), &opts, &Quiet).unwrap()
}

#[test]
fn drafting_changes_no_token_greedy_or_sampled() {
    let tmp = tempfile::tempdir().unwrap();
    for name in MODELS {
        let file = tmp.path().join(format!("{name}.bitnet"));
        Quiet
            .convert(fixture(name).to_str().unwrap(), &file, HeadVariant::Int8)
            .unwrap();
        let plain = open(&file, None);
        let drafted = open(&file, Some(NgramDraft::default()));
        let eager = open(
            &file,
            Some(NgramDraft {
                max_ngram: 1,
                min_ngram: 1,
                max_tokens: 16,
            }),
        );
        for temperature in [0.0, 0.9] {
            let (want, want_streamed) = generate(&plain, temperature, 48);
            assert!(want.draft.is_none());
            assert_eq!(want_streamed, want.text);
            for engine in [&drafted, &eager] {
                let (got, streamed) = generate(engine, temperature, 48);
                let what = format!("{name} at temperature {temperature}");
                assert_eq!(got.ids, want.ids, "{what}");
                assert_eq!(got.text, want.text, "{what}");
                assert_eq!(streamed, want.text, "{what}");
                assert_eq!(got.stop, want.stop, "{what}");
                let stats = got.draft.expect("draft figures");
                assert!(stats.accepted <= stats.proposed, "{what}: {stats:?}");
                // Every generated token comes from a pass or was an accepted proposal.
                assert!(
                    stats.passes + stats.accepted >= got.ids.len().saturating_sub(1),
                    "{what}: {stats:?}"
                );
                if *name == "demo" && temperature == 0.0 {
                    // Greedy, the demo model repeats itself: drafts get accepted and passes are saved.
                    assert!(stats.accepted > 0, "{what}: {stats:?}");
                    assert!(stats.passes < got.ids.len(), "{what}: {stats:?}");
                }
            }
        }
    }
}

#[test]
fn bad_draft_settings_are_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("tied.bitnet");
    Quiet
        .convert(
            fixture("bitnet-tiny-tied").to_str().unwrap(),
            &file,
            HeadVariant::Exact,
        )
        .unwrap();
    let opts = LoadOptions {
        draft: Some(NgramDraft {
            max_tokens: 0,
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = Engine::open(file.to_str().unwrap(), &opts, &Quiet)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--draft-max"), "{e}");
}
