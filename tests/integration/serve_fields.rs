//! `bitnet serve`'s sampling fields: `logprobs` (chat and text, streamed too), `n`, `logit_bias`,
//! presence and frequency penalties, `top_p: 0`, and their bounds.

use serde_json::{Value, json};

use crate::http::{Server, Stream};
use crate::serve::{error_of, model};

fn events(s: &Server, path: &str, body: &Value) -> Vec<Value> {
    let mut st = Stream::open(&s.addr, path, &[], body);
    assert_eq!(st.status, 200);
    st.rest()
        .into_iter()
        .filter(|e| e != "[DONE]")
        .map(|e| serde_json::from_str(&e).unwrap())
        .collect()
}

#[test]
fn logprobs_in_openai_shapes_streamed_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&model(&dir), &[]);
    let body = json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6,
        "temperature": 0, "logprobs": true, "top_logprobs": 3});
    let v = s.post("/v1/chat/completions", &body).json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap(),
        "{v}"
    );
    for e in content {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{e}");
        // Greedy draws the most likely token.
        assert_eq!(e["token"], top[0]["token"], "{e}");
        assert_eq!(e["logprob"], top[0]["logprob"], "{e}");
        let lps: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(lps.windows(2).all(|w| w[0] >= w[1]) && lps[0] <= 0.0, "{e}");
        assert_eq!(
            e["bytes"].as_array().unwrap().len(),
            e["token"].as_str().unwrap().len()
        );
    }
    // Streamed: the same entries, spread over the chunks.
    let mut st = body.clone();
    st["stream"] = json!(true);
    let streamed: Vec<Value> = events(&s, "/v1/chat/completions", &st)
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(&streamed, content);
    // Text completions: tokens, token_logprobs, top_logprobs and text_offset.
    let body = json!({"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0,
        "logprobs": 2});
    let v = s.post("/v1/completions", &body).json();
    let lp = &v["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(
        tokens.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    let mut at = 0;
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(offsets[i], at);
        at += t.as_str().unwrap().len() as u64;
        assert!(lp["top_logprobs"][i].as_object().unwrap().len() <= 2);
        assert!(lp["token_logprobs"][i].as_f64().unwrap() <= 0.0);
    }
    let mut st = body.clone();
    st["stream"] = json!(true);
    let streamed: Vec<Value> = events(&s, "/v1/completions", &st)
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["tokens"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(&streamed, tokens);
}

#[test]
fn n_sequences_bias_penalties_and_top_p_zero() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&model(&dir), &[]);
    let prompt = "The capital of France is";
    // n = 3 sampled with one seed: three choices, each repeatable, the usage summed.
    let body = json!({"prompt": prompt, "max_tokens": 8, "temperature": 1.0, "seed": 5, "n": 3});
    let a = s.post("/v1/completions", &body).json();
    let b = s.post("/v1/completions", &body).json();
    let texts = |v: &Value| -> Vec<String> {
        v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                assert_eq!(c["index"], i);
                c["text"].as_str().unwrap().to_string()
            })
            .collect()
    };
    assert_eq!(texts(&a).len(), 3);
    assert_eq!(texts(&a), texts(&b));
    assert!(
        texts(&a).iter().any(|t| t != &texts(&a)[0]),
        "seeds differ per choice: {a}"
    );
    let sum: u64 = 3 * 8;
    assert!(a["usage"]["completion_tokens"].as_u64().unwrap() <= sum);
    // Streamed, each choice's deltas join to its text.
    let mut st = body.clone();
    st["stream"] = json!(true);
    let mut joined = vec![String::new(); 3];
    let mut finished = [false; 3];
    for c in events(&s, "/v1/completions", &st) {
        let ch = &c["choices"][0];
        let i = ch["index"].as_u64().unwrap() as usize;
        joined[i].push_str(ch["text"].as_str().unwrap());
        finished[i] |= ch["finish_reason"].is_string();
    }
    assert_eq!(joined, texts(&a));
    assert_eq!(finished, [true; 3]);

    // Greedy, with the log-probabilities to see the tokens.
    let greedy = |extra: Value| -> Vec<String> {
        let mut body = json!({"prompt": prompt, "max_tokens": 10, "temperature": 0, "logprobs": 0});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = s.post("/v1/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    };
    let plain = greedy(json!({}));
    // top_p 0 is greedy whatever the temperature.
    assert_eq!(
        greedy(json!({"temperature": 1.5, "top_p": 0, "seed": 3})),
        plain
    );
    // logit_bias +100 on one id: every token is that one; -100 on it: never.
    let forced = greedy(json!({"logit_bias": {"300": 100}}));
    assert!(forced.iter().all(|t| t == &forced[0]), "{forced:?}");
    assert_ne!(forced, plain);
    assert!(!greedy(json!({"logit_bias": {"300": -100}})).contains(&forced[0]));
    // A frequency or presence penalty changes a greedy text that repeats a token.
    let repeats = (1..plain.len()).any(|i| plain[..i].contains(&plain[i]));
    if repeats {
        assert_ne!(greedy(json!({"frequency_penalty": 2})), plain);
        assert_ne!(greedy(json!({"presence_penalty": 2})), plain);
    }
    let penalized = greedy(json!({"presence_penalty": 2}));
    assert!(
        (1..penalized.len())
            .filter(|&i| penalized[..i].contains(&penalized[i]))
            .count()
            <= (1..plain.len())
                .filter(|&i| plain[..i].contains(&plain[i]))
                .count(),
        "{plain:?} {penalized:?}"
    );

    for (path, body, param) in [
        (
            "/v1/completions",
            json!({"prompt": "a", "presence_penalty": 3}),
            "presence_penalty",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "frequency_penalty": -2.5}),
            "frequency_penalty",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "logit_bias": {"999999999": 1}}),
            "logit_bias.999999999",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "logit_bias": {"x": 1}}),
            "logit_bias.x",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "logit_bias": {"5": 101}}),
            "logit_bias.5",
        ),
        ("/v1/completions", json!({"prompt": "a", "n": 17}), "n"),
        ("/v1/completions", json!({"prompt": "a", "n": 0}), "n"),
        (
            "/v1/completions",
            json!({"prompt": "a", "logprobs": 6}),
            "logprobs",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}),
            "stop",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "a"}], "logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2}),
            "top_logprobs",
        ),
    ] {
        let r = s.post(path, &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(error_of(&r.json()).1, Some(param), "{body}");
    }
}
