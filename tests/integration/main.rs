//! End-to-end tests: the real `bitnet` binary on the fixtures of `fixtures/` (checkpoints made by
//! Hugging Face transformers) and on broken copies of them.

mod bad_input;
mod bench;
mod browser;
mod chromium;
mod cli;
mod convert;
mod errors;
mod fuzz_replay;
mod gguf;
mod gguf_bad_input;
mod gguf_export;
mod hostile;
mod http;
mod hub_cache;
mod hub_download;
mod hub_standin;
mod hub_terminal;
mod kill;
mod model_store;
mod openai_node;
mod openai_py;
mod page;
mod perplexity;
mod python_clients;
mod run_chat;
mod serve;
mod serve_fields;
mod serve_guards;
mod serve_routes;
mod serve_structured;
mod serve_tools;
mod terminal;
mod util;
mod verify;
