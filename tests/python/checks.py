"""What the client scripts beside this file share: a check that fails with a message, one line per passed
check, the schemas the random-weight fixture is asked to fill, and the exit convention of the Rust tests
(tests/integration/python_clients.rs): "all checks passed" last on stdout, else "FAIL reason" on stderr and
exit status 1.

The fixture's weights are random, so its free text is noise and it never chooses to end a string or a
number. Every schema here therefore bounds its strings (maxLength), numbers (minimum, maximum) and objects
(additionalProperties false): then the grammar alone brings the output to its end within the token budget,
and whatever comes back must validate.
"""

import json
import sys

import jsonschema

PROMPT = "Say something about ternary weights."
QUESTION = "What is the weather in Paris?"

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": WEATHER_PARAMETERS,
    },
}
CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "population": {"type": "integer", "minimum": 0, "maximum": 100000},
        "kind": {"enum": ["town", "city"]},
    },
    "required": ["name", "population", "kind"],
    "additionalProperties": False,
}


def check(cond, message):
    if not cond:
        raise AssertionError(message)


def ok(name, detail=""):
    print(f"ok   {name}" + (f": {detail}" if detail else ""), flush=True)


def valid_json(text, schema, what):
    """`text` parsed as JSON and validated against `schema`; the value."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as e:
        raise AssertionError(f"{what}: not JSON ({e}): {text!r}") from None
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as e:
        raise AssertionError(f"{what}: {value!r} does not fit the schema: {e.message}") from None
    return value


def run(main, usage):
    """Runs `main(*sys.argv[1:])`; a failed check exits 1 with its message on stderr."""
    args = sys.argv[1:]
    if len(args) != main.__code__.co_argcount:
        sys.exit(usage)
    try:
        main(*args)
    except AssertionError as e:
        print(f"FAIL {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    print("all checks passed", flush=True)
