#!/usr/bin/env python3
"""Per-token decode cost of constrained decoding through `bitnet serve`, end to end.

    python3 tools/constrained.py http://127.0.0.1:8080 4

Alternates, per round, a free chat answer and the same prompt under response_format json_schema (and under
tool_choice required), streamed, greedy, and times the decode client-side: (t_last - t_first) / (chunks - 1),
from the first content chunk to the last (prefill excluded; the prompt prefix is cached after the first round).
Prints each mode's median and the per-round difference to the free answer. Standard library only.
"""
import json
import statistics as st
import sys
import time
import urllib.request

BASE = sys.argv[1]
ROUNDS = int(sys.argv[2])
PROMPT = "List thirty numbers."
SCHEMA = {"type": "object", "properties": {"numbers": {"type": "array", "items": {"type": "integer", "minimum": 0,
          "maximum": 999}, "minItems": 30, "maxItems": 30}}, "required": ["numbers"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "record", "parameters": SCHEMA}}]


def stream(extra):
    body = {"messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": 64, "stream": True}
    body.update(extra)
    req = urllib.request.Request(BASE + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    times = []
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            if not d.get("choices"):
                continue
            delta = d["choices"][0]["delta"]
            if delta.get("content") or delta.get("tool_calls"):
                times.append(time.perf_counter())
    return (times[-1] - times[0]) / (len(times) - 1) * 1000, len(times)


modes = {"free": {}, "json_schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "n",
         "schema": SCHEMA, "strict": True}}}, "tool_required": {"tools": TOOLS, "tool_choice": "required"}}
stream({})  # warm-up: loads pages, caches the prompt
res = {m: [] for m in modes}
for r in range(ROUNDS):
    order = list(modes) if r % 2 == 0 else list(reversed(modes))
    for m in order:
        ms, n = stream(modes[m])
        res[m].append(ms)
        print(f"round {r} {m}: {ms:.2f} ms/token over {n} chunks", flush=True)
for m, v in res.items():
    print(f"{m}: median {st.median(v):.2f} ms/token ({min(v):.2f}-{max(v):.2f})")
for m in ("json_schema", "tool_required"):
    ratios = [a - b for a, b in zip(res[m], res["free"])]
    print(f"{m} minus free, per round: {[round(x, 2) for x in ratios]} ms; median {st.median(ratios):.2f} ms")
