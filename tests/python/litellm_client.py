"""Drives `bitnet serve` with litellm (pinned in .ci/run), as an application routing to an OpenAI-compatible
server would: `litellm.completion(model="openai/MODEL", api_base=..., api_key=...)`.

Usage: litellm_client.py BASE_URL API_KEY MODEL_ID

Checks chat whole and streamed (greedy: the same text, the same usage), a tool call under a named
`tool_choice` whole and streamed (rebuilt by litellm.stream_chunk_builder), a tool-result turn,
`response_format` as a JSON schema and as a Pydantic model, and our 400 and 401 as litellm's exception
types. Run by tests/integration/python_clients.rs, which also refuses any connection beyond 127.0.0.1
(tests/python/netguard).
"""

import os
from importlib.metadata import version
from typing import Literal

# Without it litellm fetches its model-cost map from the network at import.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import litellm  # noqa: E402
import pydantic  # noqa: E402

# stream_chunk_builder looks our model's name up in litellm's price list, finds no provider for it and prints
# a "Provider List" banner on stdout (then goes on); the banner is all this turns off.
litellm.suppress_debug_info = True

from checks import CITY_SCHEMA, PROMPT, QUESTION, WEATHER, WEATHER_PARAMETERS, check, ok, run, valid_json  # noqa: E402


def completion(ctx, **kwargs):
    base_url, api_key, model_id = ctx
    kwargs.setdefault("temperature", 0)
    return litellm.completion(
        model=f"openai/{model_id}", api_base=base_url + "/v1", api_key=api_key, num_retries=0, timeout=60,
        **kwargs,
    )


def chat(ctx):
    resp = completion(ctx, messages=[{"role": "user", "content": PROMPT}], max_tokens=12)
    choice = resp.choices[0]
    text = choice.message.content
    check(isinstance(text, str) and text, f"chat: content {text!r}")
    check(choice.finish_reason in ("stop", "length"), f"chat: finish_reason {choice.finish_reason!r}")
    usage = resp.usage
    check(0 < usage.completion_tokens <= 12 and usage.prompt_tokens > 0, f"chat: usage {usage}")
    check(usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, f"chat: usage {usage}")
    ok("chat", f"{usage.completion_tokens} tokens, {choice.finish_reason}, {text!r}")
    return resp


def chat_stream(ctx, whole):
    stream = completion(
        ctx, messages=[{"role": "user", "content": PROMPT}], max_tokens=12, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    parts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    text = "".join(parts)
    expected = whole.choices[0].message.content
    check(text == expected, f"chat stream: joined deltas {text!r} != non-streamed {expected!r}")
    check(len(parts) > 1, f"chat stream: the text came in {len(parts)} delta(s), not streamed")
    rebuilt = litellm.stream_chunk_builder(chunks)
    check(rebuilt.choices[0].message.content == expected, f"stream_chunk_builder: {rebuilt}")
    check(
        rebuilt.choices[0].finish_reason == whole.choices[0].finish_reason,
        f"chat stream: finish_reason {rebuilt.choices[0].finish_reason!r} != {whole.choices[0].finish_reason!r}",
    )
    got = (rebuilt.usage.prompt_tokens, rebuilt.usage.completion_tokens)
    want = (whole.usage.prompt_tokens, whole.usage.completion_tokens)
    check(got == want, f"chat stream: usage {got} != non-streamed {want}")
    ok("chat stream", f"{len(parts)} text deltas, the same text and usage")


NAMED = {"type": "function", "function": {"name": "get_weather"}}


def one_weather_call(message, what):
    calls = message.tool_calls or []
    check(len(calls) == 1, f"{what}: {len(calls)} tool calls in {message}")
    call = calls[0]
    check(call.id and call.type == "function", f"{what}: {call}")
    check(call.function.name == "get_weather", f"{what}: name {call.function.name!r}")
    valid_json(call.function.arguments, WEATHER_PARAMETERS, f"{what} arguments")
    return call


def tool_call(ctx):
    kwargs = dict(
        messages=[{"role": "user", "content": QUESTION}], tools=[WEATHER], tool_choice=NAMED,
        parallel_tool_calls=False, max_tokens=60,
    )
    resp = completion(ctx, **kwargs)
    choice = resp.choices[0]
    check(choice.finish_reason == "tool_calls", f"tool call: finish_reason {choice.finish_reason!r}")
    call = one_weather_call(choice.message, "tool call")

    rebuilt = litellm.stream_chunk_builder(list(completion(ctx, stream=True, **kwargs)))
    scall = one_weather_call(rebuilt.choices[0].message, "tool call streamed")
    check(
        (scall.function.name, scall.function.arguments) == (call.function.name, call.function.arguments),
        f"tool call streamed: {scall} differs from {call}",
    )
    check(rebuilt.choices[0].finish_reason == "tool_calls", f"tool call streamed: {rebuilt.choices[0]}")

    # The assistant message goes back as litellm returned it, then the tool's result.
    messages = kwargs["messages"] + [
        choice.message.model_dump(),
        {"role": "tool", "tool_call_id": call.id, "content": "18 C, rain"},
    ]
    resp = completion(ctx, messages=messages, tools=[WEATHER], max_tokens=8)
    answer = resp.choices[0]
    check(isinstance(answer.message.content, str) and answer.message.content, f"tool result turn: {answer}")
    check(answer.finish_reason in ("stop", "length"), f"tool result turn: finish_reason {answer.finish_reason!r}")
    ok("tool call", f"get_weather({call.function.arguments}), streamed the same, then a result turn")


class City(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(max_length=12)
    population: int = pydantic.Field(ge=0, le=100000)
    kind: Literal["town", "city"]


def response_format(ctx):
    messages = [{"role": "user", "content": "Describe a city."}]
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": CITY_SCHEMA}}
    resp = completion(ctx, messages=messages, response_format=fmt, max_tokens=80)
    check(resp.choices[0].finish_reason == "stop", f"response_format: {resp.choices[0]}")
    value = valid_json(resp.choices[0].message.content, CITY_SCHEMA, "response_format json_schema")
    # litellm turns a Pydantic class into a strict json_schema itself.
    resp = completion(ctx, messages=messages, response_format=City, max_tokens=80)
    city = City.model_validate_json(resp.choices[0].message.content)
    ok("response_format", f"json_schema {value}, Pydantic {city!r}")


def errors(ctx):
    try:
        completion(ctx, messages=[{"role": "user", "content": PROMPT}], max_tokens=2, temperature=-1)
    except litellm.BadRequestError as e:
        check("temperature" in str(e), f"bad request: the message does not name temperature: {e}")
    else:
        raise AssertionError("temperature=-1 was accepted: expected litellm.BadRequestError")
    base_url, _, model_id = ctx
    try:
        completion((base_url, "wrong-key", model_id), messages=[{"role": "user", "content": PROMPT}], max_tokens=2)
    except litellm.AuthenticationError:
        pass
    else:
        raise AssertionError("a wrong API key was accepted: expected litellm.AuthenticationError")
    ok("errors", "BadRequestError naming temperature, AuthenticationError")


def main(base_url, api_key, model_id):
    print(f"litellm {version('litellm')} against {base_url}", flush=True)
    ctx = (base_url, api_key, model_id)
    whole = chat(ctx)
    chat_stream(ctx, whole)
    tool_call(ctx)
    response_format(ctx)
    errors(ctx)


if __name__ == "__main__":
    run(main, __doc__)
