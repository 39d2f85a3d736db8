"""Drives `bitnet serve` with langchain-openai (pinned in .ci/run), as a LangChain application would:
`ChatOpenAI(base_url=..., api_key=..., model=MODEL, temperature=0)`.

Usage: langchain_client.py BASE_URL API_KEY MODEL_ID

Checks `invoke` and `stream` (greedy: the same text), `bind_tools` with a Pydantic tool and a `@tool` function
under a named `tool_choice` (an AIMessage whose tool_calls fit the schema), the `@tool` run on those arguments
and its ToolMessage sent back for an answer, and `with_structured_output` with a Pydantic model by
`json_schema`, by `function_calling` and by the default method (an instance of the model each time). Run by
tests/integration/python_clients.rs, which also refuses any connection beyond 127.0.0.1 (tests/python/netguard).
"""

import json
from importlib.metadata import version
from typing import Literal

import pydantic
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from checks import PROMPT, QUESTION, WEATHER_PARAMETERS, check, ok, run, valid_json


class GetWeather(pydantic.BaseModel):
    """The weather in a city."""

    # additionalProperties false: the random-weight model would otherwise go on writing keys of its own.
    model_config = pydantic.ConfigDict(extra="forbid")
    city: str = pydantic.Field(max_length=12)
    unit: Literal["C", "F"]


# The same arguments: a bare signature would leave the city's length unbounded.
@tool(args_schema=GetWeather)
def get_weather(city: str, unit: Literal["C", "F"]) -> str:
    """The weather in a city."""
    return f"18 {unit}, rain in {city}"


class City(pydantic.BaseModel):
    """A city."""

    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(max_length=12)
    population: int = pydantic.Field(ge=0, le=100000)
    kind: Literal["town", "city"]


def invoke_and_stream(chat):
    reply = chat.invoke(PROMPT)
    check(isinstance(reply, AIMessage), f"invoke: {reply!r}")
    check(isinstance(reply.content, str) and reply.content, f"invoke: content {reply.content!r}")
    usage = reply.usage_metadata
    check(usage and 0 < usage["output_tokens"] <= 12 and usage["input_tokens"] > 0, f"invoke: usage {usage}")
    finish = reply.response_metadata.get("finish_reason")
    check(finish in ("stop", "length"), f"invoke: finish_reason {finish!r}")
    ok("invoke", f"{usage['output_tokens']} tokens, {finish}, {reply.content!r}")

    chunks = list(chat.stream(PROMPT))
    text = "".join(c.content for c in chunks)
    check(text == reply.content, f"stream: {text!r} != invoke's {reply.content!r}")
    check(sum(1 for c in chunks if c.content) > 1, f"stream: {len(chunks)} chunks, not streamed")
    ok("stream", f"{len(chunks)} chunks, the same text")


def one_call(reply, name, what):
    check(isinstance(reply, AIMessage), f"{what}: {reply!r}")
    check(not reply.invalid_tool_calls, f"{what}: invalid tool calls {reply.invalid_tool_calls}")
    check(len(reply.tool_calls) == 1, f"{what}: {len(reply.tool_calls)} tool calls in {reply!r}")
    call = reply.tool_calls[0]
    check(call["name"] == name, f"{what}: name {call['name']!r}, expected {name!r}")
    check(call["id"], f"{what}: no id in {call}")
    # args is the parsed JSON; checked as the server's text would be.
    valid_json(json.dumps(call["args"]), WEATHER_PARAMETERS, f"{what} args")
    finish = reply.response_metadata.get("finish_reason")
    check(finish == "tool_calls", f"{what}: finish_reason {finish!r}")
    return call


def tools(chat):
    # A Pydantic tool, named in tool_choice.
    reply = chat.bind_tools([GetWeather, get_weather], tool_choice="GetWeather").invoke(QUESTION)
    call = one_call(reply, "GetWeather", "bind_tools Pydantic")
    GetWeather.model_validate(call["args"])

    # A @tool function: the call it gets is run, and its ToolMessage goes back with the conversation.
    bound = chat.bind_tools([GetWeather, get_weather], tool_choice="get_weather")
    messages = [HumanMessage(QUESTION)]
    reply = bound.invoke(messages)
    call = one_call(reply, "get_weather", "bind_tools @tool")
    result = get_weather.invoke(call)
    check(isinstance(result, ToolMessage) and result.tool_call_id == call["id"], f"tool result: {result!r}")
    messages += [reply, result]
    answer = chat.bind_tools([GetWeather, get_weather]).invoke(messages)
    check(isinstance(answer.content, str) and answer.content, f"tool result turn: {answer!r}")
    check(not answer.tool_calls, f"tool result turn: calls again {answer.tool_calls}")
    ok("tools", f"GetWeather and get_weather({call['args']}), its result {result.content!r} answered")


def structured_output(chat):
    got = []
    for method in ("json_schema", "function_calling", None):
        kwargs = {"method": method} if method else {}
        city = chat.with_structured_output(City, **kwargs).invoke("Describe a city.")
        check(isinstance(city, City), f"with_structured_output method={method}: {city!r}")
        got.append(f"{method or 'default'} {city!r}")
    ok("with_structured_output", ", ".join(got))


def main(base_url, api_key, model_id):
    print(f"langchain-openai {version('langchain-openai')} against {base_url}", flush=True)

    def chat(max_tokens):
        return ChatOpenAI(
            base_url=base_url + "/v1", api_key=api_key, model=model_id, temperature=0, max_tokens=max_tokens,
            max_retries=0, timeout=60,
        )

    invoke_and_stream(chat(12))
    tools(chat(60))
    structured_output(chat(80))


if __name__ == "__main__":
    run(main, __doc__)
