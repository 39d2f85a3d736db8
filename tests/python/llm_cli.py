"""Drives `bitnet serve` with Simon Willison's `llm` CLI (pinned in .ci/run), configured as its users
configure any OpenAI-compatible server: entries in `extra-openai-models.yaml` under a fresh `LLM_USER_PATH`.

Usage: llm_cli.py BASE_URL API_KEY MODEL_ID

Runs the real `llm` command (the venv's console script beside this Python, else `python -m llm`) as a
subprocess and checks: the model is listed by `llm models`; a prompt prints text, streamed (the default) and
with `--no-stream` the same greedy text; `--schema` with a JSON schema and with llm's concise syntax
(`'name, age int'`) prints JSON that validates; `--functions` runs a Python function the model calls and sends
its result back (a tool-result turn); a `completion: true` entry answers through /v1/completions;
the key comes from `llm keys set` (`api_key_name`) or from `--key`, and a wrong key is an error exit.
Run by tests/integration/python_clients.rs, which also refuses any connection beyond 127.0.0.1
(tests/python/netguard, inherited by the `llm` process).
"""

import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from importlib.metadata import version
from pathlib import Path

import yaml
from llm.utils import schema_dsl

from checks import PROMPT, check, ok, run, valid_json

CHAT_ID = "bitnet-test"
COMPLETION_ID = "bitnet-test-completion"
KEY_NAME = "bitnet"


def llm_command():
    script = Path(sys.executable).with_name("llm")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "llm"]


class Llm:
    def __init__(self, user_path):
        self.env = dict(os.environ, LLM_USER_PATH=str(user_path))
        # A key in the environment would hide which of ours llm used.
        self.env.pop("OPENAI_API_KEY", None)

    def __call__(self, *args, expect_ok=True):
        proc = subprocess.run(
            llm_command() + list(args), env=self.env, capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL,
        )
        if expect_ok:
            check(
                proc.returncode == 0,
                f"llm {' '.join(args)!r} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}",
            )
        return proc


def configure(user_path, base_url, api_key, model_id, llm):
    entries = [
        {"model_id": CHAT_ID, "model_name": model_id, "api_base": base_url + "/v1", "api_key_name": KEY_NAME,
         "supports_schema": True, "supports_tools": True},
        {"model_id": COMPLETION_ID, "model_name": model_id, "api_base": base_url + "/v1",
         "api_key_name": KEY_NAME, "completion": True},
    ]
    (user_path / "extra-openai-models.yaml").write_text(yaml.safe_dump(entries))
    llm("keys", "set", KEY_NAME, "--value", api_key)
    listed = llm("models").stdout
    check(CHAT_ID in listed and COMPLETION_ID in listed, f"llm models does not list ours:\n{listed}")
    ok("models", f"{CHAT_ID} and {COMPLETION_ID} listed")


def prompt(llm):
    options = ["-o", "temperature", "0", "-o", "max_tokens", "12"]
    streamed = llm("-m", CHAT_ID, *options, PROMPT).stdout
    whole = llm("-m", CHAT_ID, *options, "--no-stream", PROMPT).stdout
    check(streamed.strip(), f"prompt: no text printed: {streamed!r}")
    check(streamed == whole, f"prompt: streamed {streamed!r} != --no-stream {whole!r}")
    ok("prompt", f"streamed and --no-stream print {whole.strip()!r}")


PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def token_id(base_url, api_key, text):
    """The one id the server's tokenizer gives `text`."""
    request = urllib.request.Request(
        base_url + "/tokenize", data=json.dumps({"content": text}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        ids = json.load(resp)["tokens"]
    check(len(ids) == 1, f"/tokenize {text!r}: {ids}, expected one id")
    return ids[0]


def schemas(llm, base_url, api_key):
    options = ["-o", "temperature", "0", "-o", "max_tokens", "60"]
    out = llm("-m", CHAT_ID, *options, "--schema", json.dumps(PERSON_SCHEMA), "Invent a person.").stdout
    bounded = valid_json(out, PERSON_SCHEMA, "--schema JSON")

    # llm's concise syntax bounds nothing, and the random-weight model never chooses to close a string or an
    # object. A bias on '"' and '}' stands in for a model that does: the grammar still decides which tokens
    # are allowed at every step, the bias only picks among them. The key comes from --key this time.
    bias = {token_id(base_url, api_key, '"'): 100, token_id(base_url, api_key, "}"): 100}
    out = llm(
        "-m", CHAT_ID, *options, "-o", "logit_bias", json.dumps(bias), "--key", api_key,
        "--schema", "name, age int", "Invent a person.",
    ).stdout
    concise = valid_json(out, schema_dsl("name, age int"), "--schema 'name, age int'")
    check(set(concise) == {"name", "age"}, f"--schema 'name, age int': {concise}")
    ok("schema", f"JSON schema {bounded}, 'name, age int' {concise}")


# llm turns every top-level callable of the code into a tool, so `typing` is imported as a module.
FUNCTIONS = """import typing


def unit_of(country: typing.Literal["FR", "US"]) -> str:
    \"\"\"The temperature unit a country uses.\"\"\"
    return {"FR": "celsius", "US": "fahrenheit"}[country]
"""


def functions(llm, base_url, api_key):
    """`llm --functions`: llm sends the function as a tool (`tool_choice` auto), reads the streamed call, runs the
    function and sends its result back as a `tool` message. The random-weight model is biased towards `{`, `}`
    and `]}` to stand in for one that calls the tool and ends each call; the grammar still decides which tokens
    are allowed (a call of `unit_of` with a valid `country`). Biased that way it calls again after the result
    too, so llm's chain limit (2) ends the run with an error: that second call is the proof that the result
    turn was accepted and answered."""
    bias = {token_id(base_url, api_key, "{"): 100, token_id(base_url, api_key, "}"): 50,
            token_id(base_url, api_key, "]}"): 60}
    proc = llm(
        "-m", CHAT_ID, "-o", "temperature", "0", "-o", "max_tokens", "100", "-o", "logit_bias", json.dumps(bias),
        "--functions", FUNCTIONS, "--td", "--cl", "2", "Which temperature unit does France use?", expect_ok=False,
    )
    out = proc.stdout + proc.stderr
    calls = [line for line in out.splitlines() if line.startswith("Tool call: unit_of(")]
    check(len(calls) == 1, f"--functions: expected one executed call of unit_of:\n{out}")
    check(calls[0] in ("Tool call: unit_of({'country': 'FR'})", "Tool call: unit_of({'country': 'US'})"), calls[0])
    result = out.splitlines()[out.splitlines().index(calls[0]) + 1].strip()
    check(result in ("celsius", "fahrenheit"), f"--functions: the function's result {result!r}:\n{out}")
    check(proc.returncode != 0 and "Chain limit of 2 exceeded" in proc.stderr,
          f"--functions: expected the second call to reach the chain limit:\n{out}")
    ok("functions", f"{calls[0][len('Tool call: '):]} -> {result}, then a call after the result (chain limit)")


def completion(llm):
    out = llm("-m", COMPLETION_ID, "-o", "temperature", "0", "-o", "max_tokens", "8", "The capital of France is")
    check(out.stdout.strip(), f"completion: no text printed: {out.stdout!r}")
    ok("completion", repr(out.stdout.strip()))


def wrong_key(llm):
    proc = llm("-m", CHAT_ID, "-o", "max_tokens", "2", "--key", "wrong-key", PROMPT, expect_ok=False)
    check(proc.returncode != 0, f"a wrong key was accepted: {proc.stdout!r}")
    check("401" in proc.stderr or "key" in proc.stderr.lower(), f"wrong key: stderr {proc.stderr!r}")
    ok("wrong key", f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1]!r}")


def main(base_url, api_key, model_id):
    print(f"llm {version('llm')} ({' '.join(llm_command())}) against {base_url}", flush=True)
    with tempfile.TemporaryDirectory() as user_path:
        llm = Llm(Path(user_path))
        configure(Path(user_path), base_url, api_key, model_id, llm)
        prompt(llm)
        schemas(llm, base_url, api_key)
        functions(llm, base_url, api_key)
        completion(llm)
        wrong_key(llm)


if __name__ == "__main__":
    run(main, __doc__)
