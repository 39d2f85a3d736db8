#!/usr/bin/env python3
"""Concurrent streaming clients against `bitnet serve`: aggregate decode tokens/s and per-token gaps.

    python3 tools/load.py http://127.0.0.1:8080 --clients 1 2 4 --max-tokens 64

Each client sends one greedy chat completion with `stream: true` and timestamps every content chunk (one
per token). Two aggregate figures: `tok/s all` counts the chunks after each client's first over the span
from the earliest first token to the latest last one (so it includes the ramp while later clients still
prefill); `tok/s steady` counts the chunks that arrived while every client was decoding (from the latest
first token to the earliest last one) over that window. Standard library only.
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse


def stream_one(url, prompt, max_tokens, key, out):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stop": [],
    })
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    stamps = []
    buf = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            data = event.decode().removeprefix("data: ")
            if data == "[DONE]":
                continue
            v = json.loads(data)
            if v.get("choices") and v["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
    out.append({"start": t0, "stamps": stamps})


def run(url, clients, max_tokens, key):
    results = []
    threads = [
        threading.Thread(
            target=stream_one,
            args=(url, f"Client {i} asks: tell me a long story about the sea.", max_tokens, key, results),
        )
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    firsts = [r["stamps"][0] for r in results if r["stamps"]]
    lasts = [r["stamps"][-1] for r in results if r["stamps"]]
    tokens = sum(max(len(r["stamps"]) - 1, 0) for r in results)
    span = max(lasts) - min(firsts)
    gaps = [b - a for r in results for a, b in zip(r["stamps"], r["stamps"][1:])]
    w0, w1 = max(firsts), min(lasts)
    steady = sum(1 for r in results for t in r["stamps"] if w0 < t <= w1)
    steady_tok_s = steady / (w1 - w0) if w1 > w0 else 0.0
    return {
        "clients": clients,
        "decode_tokens": tokens,
        "aggregate_decode_tok_s": tokens / span if span > 0 else 0.0,
        "steady_decode_tok_s": steady_tok_s,
        "median_gap_ms": 1e3 * statistics.median(gaps) if gaps else 0.0,
        "ttft_s": [round(r["stamps"][0] - r["start"], 3) for r in results if r["stamps"]],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--api-key")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    rows = [run(a.url, n, a.max_tokens, a.api_key) for n in a.clients]
    base = rows[0]["aggregate_decode_tok_s"]
    for r in rows:
        r["vs_first"] = r["aggregate_decode_tok_s"] / base if base else 0.0
        r["steady_vs_first"] = r["steady_decode_tok_s"] / base if base else 0.0
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'clients':>7} {'tokens':>7} {'tok/s all':>10} {'x first':>8} {'tok/s steady':>13} {'x first':>8} "
          f"{'gap ms':>7}  TTFT s")
    for r in rows:
        print(f"{r['clients']:>7} {r['decode_tokens']:>7} {r['aggregate_decode_tok_s']:>10.2f} "
              f"{r['vs_first']:>8.2f} {r['steady_decode_tok_s']:>13.2f} {r['steady_vs_first']:>8.2f} "
              f"{r['median_gap_ms']:>7.1f}  {r['ttft_s']}")


if __name__ == "__main__":
    main()
