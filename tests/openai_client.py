"""Drives `bitnet serve` with the official `openai` Python package, as a real client would.

Usage: openai_client.py BASE_URL API_KEY MODEL_ID [REFERENCE_ID]

BASE_URL is the server's root (http://127.0.0.1:PORT); the client talks to BASE_URL/v1. Prints one line
per check and exits non-zero, with the reason, at the first failure. Run by the Rust integration test
`openai_py` (tests/integration/openai_py.rs).
"""

import json
import sys
from typing import Literal

import openai
import pydantic

PROMPT = [{"role": "user", "content": "Say something about ternary weights."}]


def check(cond, message):
    if not cond:
        raise AssertionError(message)


def ok(name, detail=""):
    print(f"ok   {name}" + (f": {detail}" if detail else ""), flush=True)


def check_usage(usage, what):
    check(usage is not None, f"{what}: no usage")
    for field in ("prompt_tokens", "completion_tokens", "total_tokens"):
        check(
            isinstance(getattr(usage, field), int),
            f"{what}: usage.{field} is {getattr(usage, field)!r}, not an int",
        )
    check(usage.prompt_tokens > 0, f"{what}: prompt_tokens {usage.prompt_tokens}")
    check(
        usage.total_tokens == usage.prompt_tokens + usage.completion_tokens,
        f"{what}: total_tokens {usage.total_tokens} != prompt {usage.prompt_tokens}"
        f" + completion {usage.completion_tokens}",
    )


def models(client, model_id, reference_id):
    ids = [m.id for m in client.models.list()]
    check(model_id in ids, f"models.list(): {model_id!r} not in {ids}")
    if reference_id:
        check(reference_id in ids, f"models.list(): {reference_id!r} not in {ids}")
    check(
        client.models.retrieve(model_id).id == model_id,
        f"models.retrieve({model_id!r}) answered another id",
    )
    ok("models", ", ".join(ids))


def chat(client, model_id, what="chat"):
    resp = client.chat.completions.create(
        model=model_id, messages=PROMPT, temperature=0, max_tokens=12
    )
    check(resp.object == "chat.completion", f"{what}: object {resp.object!r}")
    check(len(resp.choices) == 1, f"{what}: {len(resp.choices)} choices")
    choice = resp.choices[0]
    check(choice.message.role == "assistant", f"{what}: role {choice.message.role!r}")
    text = choice.message.content
    check(isinstance(text, str) and text, f"{what}: content {text!r}")
    check(choice.finish_reason in ("stop", "length"), f"{what}: finish_reason {choice.finish_reason!r}")
    check_usage(resp.usage, what)
    check(
        0 < resp.usage.completion_tokens <= 12,
        f"{what}: completion_tokens {resp.usage.completion_tokens} with max_tokens=12",
    )
    if choice.finish_reason == "length":
        check(
            resp.usage.completion_tokens == 12,
            f"{what}: finish_reason length after {resp.usage.completion_tokens} of 12 tokens",
        )
    ok(what, f"{resp.usage.completion_tokens} tokens, {choice.finish_reason}, {text!r}")
    return text, resp.usage


def chat_stream(client, model_id, expected_text, expected_usage):
    stream = client.chat.completions.create(
        model=model_id,
        messages=PROMPT,
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, usage, chunks = [], None, None, 0
    for chunk in stream:
        chunks += 1
        check(chunk.object == "chat.completion.chunk", f"chat stream: object {chunk.object!r}")
        if chunk.usage is not None:
            check(not chunk.choices, "chat stream: the usage chunk has choices")
            usage = chunk.usage
            continue
        check(usage is None, "chat stream: a content chunk after the usage chunk")
        delta = chunk.choices[0].delta
        if delta.content:
            parts.append(delta.content)
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    text = "".join(parts)
    check(
        text == expected_text,
        f"chat stream: joined deltas {text!r} != non-streamed {expected_text!r}",
    )
    check(finish in ("stop", "length"), f"chat stream: finish_reason {finish!r}")
    check_usage(usage, "chat stream")
    check(
        (usage.prompt_tokens, usage.completion_tokens)
        == (expected_usage.prompt_tokens, expected_usage.completion_tokens),
        f"chat stream: usage {usage} != non-streamed {expected_usage}",
    )
    check(len(parts) > 1, f"chat stream: the text came in {len(parts)} delta(s), not streamed")
    ok("chat stream", f"{chunks} chunks, {len(parts)} with text, usage chunk last")


def completions(client, model_id):
    prompt = "The capital of France is"
    resp = client.completions.create(model=model_id, prompt=prompt, temperature=0, max_tokens=10)
    check(resp.object == "text_completion", f"completion: object {resp.object!r}")
    text = resp.choices[0].text
    check(isinstance(text, str) and text, f"completion: text {text!r}")
    check(resp.choices[0].finish_reason in ("stop", "length"), f"completion: finish_reason {resp.choices[0].finish_reason!r}")
    check_usage(resp.usage, "completion")
    ok("completion", f"{resp.usage.completion_tokens} tokens, {text!r}")

    stream = client.completions.create(
        model=model_id, prompt=prompt, temperature=0, max_tokens=10, stream=True
    )
    parts = [c.choices[0].text for c in stream if c.choices]
    streamed = "".join(parts)
    check(streamed == text, f"completion stream: {streamed!r} != non-streamed {text!r}")
    ok("completion stream", f"{len(parts)} chunks")
    return prompt, text


def stop_list(client, model_id, prompt, text):
    # Stop at a piece of the greedy continuation: the reply must end just before it.
    words = text.split()
    check(len(words) >= 2, f"stop: the greedy continuation {text!r} is too short to cut")
    cut = words[1]
    expected = text[: text.index(cut)]
    resp = client.completions.create(
        model=model_id,
        prompt=prompt,
        temperature=0,
        max_tokens=10,
        stop=["<never appears>", cut],
    )
    got = resp.choices[0].text
    check(got == expected, f"stop={['<never appears>', cut]!r}: {got!r}, expected {expected!r}")
    check(resp.choices[0].finish_reason == "stop", f"stop: finish_reason {resp.choices[0].finish_reason!r}")
    ok("stop list", f"cut at {cut!r}")


def bad_request(client, model_id):
    try:
        client.chat.completions.create(model=model_id, messages=PROMPT, temperature=-1)
    except openai.BadRequestError as e:
        check(e.status_code == 400, f"bad request: status {e.status_code}")
        check("temperature" in str(e), f"bad request: the message does not name temperature: {e}")
        ok("bad request", f"BadRequestError: {e.body.get('message') if isinstance(e.body, dict) else e}")
        return
    raise AssertionError("temperature=-1 was accepted: expected openai.BadRequestError")


def sampling_fields(client, model_id):
    """logprobs, n, stop, penalties and logit_bias through the client's own types."""
    resp = client.chat.completions.create(
        model=model_id, messages=PROMPT, temperature=0, max_tokens=5, logprobs=True, top_logprobs=2
    )
    content = resp.choices[0].logprobs.content
    check(len(content) == resp.usage.completion_tokens, f"logprobs: {len(content)} entries")
    check(all(len(c.top_logprobs) == 2 and c.logprob <= 0 for c in content), "logprobs: top_logprobs")
    check(all(c.token == c.top_logprobs[0].token for c in content), "logprobs: greedy is the top token")
    resp = client.completions.create(
        model=model_id, prompt="The capital of France is", temperature=0.9, seed=4, max_tokens=6, n=3, stop=["\n\n"]
    )
    check([c.index for c in resp.choices] == [0, 1, 2], f"n=3: {len(resp.choices)} choices")
    resp = client.completions.create(
        model=model_id, prompt="The capital of France is", temperature=0, max_tokens=6,
        presence_penalty=1.5, frequency_penalty=0.5, logit_bias={"300": 100}, logprobs=1,
    )
    tokens = resp.choices[0].logprobs.tokens
    check(len(set(tokens)) == 1, f"logit_bias +100 on one id: {tokens!r}")
    ok("sampling fields", "logprobs, n=3, stop, penalties, logit_bias")


def unknown_field(client, model_id):
    try:
        client.chat.completions.create(
            model=model_id, messages=PROMPT, max_tokens=2, extra_body={"no_such_field": 1}
        )
    except openai.BadRequestError as e:
        check("no_such_field" in str(e), f"unknown field: the message does not name it: {e}")
        ok("unknown field", "BadRequestError")
        return
    raise AssertionError("an unknown field was accepted: expected openai.BadRequestError")


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def check_weather_args(arguments, what):
    args = json.loads(arguments)
    check(set(args) == {"city", "unit"}, f"{what}: arguments {arguments!r}")
    check(isinstance(args["city"], str) and len(args["city"]) <= 12, f"{what}: city in {arguments!r}")
    check(args["unit"] in ("C", "F"), f"{what}: unit in {arguments!r}")


def tool_calls(client, model_id):
    """tools + tool_choice required, whole and through the client's stream helper, then a tool-result turn."""
    kwargs = dict(
        model=model_id, messages=QUESTION, tools=[WEATHER], tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=60,
    )
    resp = client.chat.completions.create(**kwargs)
    choice = resp.choices[0]
    check(choice.finish_reason == "tool_calls", f"tools: finish_reason {choice.finish_reason!r}")
    check(choice.message.content is None, f"tools: content {choice.message.content!r}")
    calls = choice.message.tool_calls or []
    check(len(calls) == 1, f"tools: {len(calls)} calls")
    call = calls[0]
    check(call.id.startswith("call_") and call.type == "function", f"tools: {call!r}")
    check(call.function.name == "get_weather", f"tools: name {call.function.name!r}")
    check_weather_args(call.function.arguments, "tools")

    with client.chat.completions.stream(**kwargs) as stream:
        final = stream.get_final_completion()
    scall = final.choices[0].message.tool_calls[0]
    check(final.choices[0].finish_reason == "tool_calls", f"tools streamed: {final.choices[0].finish_reason!r}")
    check(
        (scall.function.name, scall.function.arguments) == (call.function.name, call.function.arguments),
        f"tools streamed: {scall!r} differs from {call!r}",
    )

    # The assistant message goes back as the client returned it, then the tool's result.
    messages = QUESTION + [choice.message, {"role": "tool", "tool_call_id": call.id, "content": "18 C, rain"}]
    resp = client.chat.completions.create(
        model=model_id, messages=messages, tools=[WEATHER], temperature=0, max_tokens=8
    )
    check(resp.usage.prompt_tokens > 0 and resp.choices[0].finish_reason is not None, "tool result turn")
    ok("tool calls", f"{call.function.name}({call.function.arguments}), streamed the same, result turn")


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    population: int = pydantic.Field(ge=0, le=100000)
    kind: Literal["town", "city"]


class GetWeather(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=12)
    unit: Literal["C", "F"]


def parse(client, model_id):
    """client.chat.completions.parse with a Pydantic response_format and a Pydantic tool."""
    resp = client.chat.completions.parse(
        model=model_id, messages=[{"role": "user", "content": "Describe a city."}], response_format=City,
        temperature=0, max_tokens=80,
    )
    parsed = resp.choices[0].message.parsed
    check(isinstance(parsed, City), f"parse: {resp.choices[0].message!r}")
    resp = client.chat.completions.parse(
        model=model_id, messages=QUESTION, tools=[openai.pydantic_function_tool(GetWeather)],
        tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=60,
    )
    args = resp.choices[0].message.tool_calls[0].function.parsed_arguments
    check(isinstance(args, GetWeather), f"parse tools: {resp.choices[0].message!r}")
    ok("parse", f"{parsed!r}, {args!r}")


def wrong_key(base_url, model_id):
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="wrong-key", max_retries=0)
    try:
        client.chat.completions.create(model=model_id, messages=PROMPT, max_tokens=2)
    except openai.AuthenticationError as e:
        check(e.status_code == 401, f"wrong key: status {e.status_code}")
        ok("wrong key", "AuthenticationError")
        return
    raise AssertionError("a wrong API key was accepted: expected openai.AuthenticationError")


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    base_url, api_key, model_id = sys.argv[1:4]
    reference_id = sys.argv[4] if len(sys.argv) == 5 else None
    print(f"openai {openai.__version__} against {base_url}", flush=True)
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, timeout=60)

    models(client, model_id, reference_id)
    text, usage = chat(client, model_id)
    chat_stream(client, model_id, text, usage)
    prompt, continuation = completions(client, model_id)
    stop_list(client, model_id, prompt, continuation)
    bad_request(client, model_id)
    sampling_fields(client, model_id)
    unknown_field(client, model_id)
    tool_calls(client, model_id)
    parse(client, model_id)
    wrong_key(base_url, model_id)
    if reference_id:
        chat(client, reference_id, what="chat fp32")
    print("all checks passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL {e}", file=sys.stderr, flush=True)
        sys.exit(1)
