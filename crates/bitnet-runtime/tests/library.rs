//! The runtime used as a library, as the README shows it: open a model, sample, stream text.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use bitnet_model::Backend;
use bitnet_runtime::store::HeadVariant;
use bitnet_runtime::{Engine, LoadOptions, Provider, Quiet, SamplingOverrides, StopReason};

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/demo")
}

#[test]
fn open_sample_and_stream_as_the_readme_shows() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("demo.bitnet");
    Quiet
        .convert(demo().to_str().unwrap(), &file, HeadVariant::Exact)
        .unwrap();
    let engine = Engine::open(file.to_str().unwrap(), &LoadOptions::default(), &Quiet).unwrap();
    let params = engine
        .sampling(&SamplingOverrides {
            temperature: Some(0.0),
            max_tokens: Some(12),
            ..Default::default()
        })
        .unwrap();
    let ids = engine.tokenizer.encode_prompt("The economy").unwrap();
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
            &mut |text| {
                streamed.push_str(text);
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(g.stop, StopReason::Length);
    assert_eq!(g.ids.len(), 12);
    assert_eq!(streamed, g.text);
    assert_eq!(engine.tokenizer.decode(&g.ids).unwrap(), g.text);
    // Greedy is repeatable.
    let mut again = engine.model.session(engine.context());
    let g2 = engine
        .generate(
            &mut again,
            &mut Vec::new(),
            &ids,
            &params,
            &[],
            &never,
            &mut |_| Ok(()),
        )
        .unwrap();
    assert_eq!(g2.ids, g.ids);
}
