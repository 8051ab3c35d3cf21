"""LLM-layer performance, two comparisons in one run each; prints JSON.

(i) prefix reuse: N token_probs prompts that share a long few-shot prefix, on the local backend
    (embedded SmolLM2-135M, bf16, CPU), with and without reusing the prefix's key/value cache.
(ii) concurrency: M chat requests against a local llama.cpp OpenAI-compatible server (same model,
    Q4_1 GGUF), at concurrency 1 and 8.

Usage: python eval/perf_llm.py [--n 32] [--m 16] [--skip-server]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request

from autointerp.llm import CachedLLM, ChatRequest, Message, TokenProbsRequest
from autointerp.llm.local import LocalLLM

WORDS = [
    "apple",
    "March",
    "river",
    "Tuesday",
    "green",
    "1999",
    "run",
    "not",
    "June",
    "the",
    "def",
    "import",
    "blue",
    "August",
    "never",
    "city",
]


def prefix_prompts(n: int) -> list[TokenProbsRequest]:
    lines = [f"{w}\t{9 if w in {'March', 'June', 'August'} else 0}" for w in WORDS * 6]
    prefix = "Each line: a word, a tab, how strongly it names a month (0-9).\n" + "\n".join(lines) + "\n"
    out = []
    for i in range(n):
        prompt = f"{prefix}{WORDS[i % len(WORDS)]} {i}\t"
        out.append(TokenProbsRequest(prompt=prompt, positions=[len(prompt)], candidates=list("0123456789")))
    return out


def bench_prefix(n: int) -> dict:
    reqs = prefix_prompts(n)
    reuse = LocalLLM("smollm2-135m", prefix_cache=True)
    plain = LocalLLM("smollm2-135m", prefix_cache=False)
    engine = reuse.engine  # shared by both: loads once
    asyncio.run(plain.token_probs_many(reqs[:2]))  # warm up
    t0 = time.perf_counter()
    without = asyncio.run(plain.token_probs_many(reqs))
    t_plain = time.perf_counter() - t0
    engine.prefixes.clear()  # no help from earlier calls: the batch finds its own shared prefix
    t0 = time.perf_counter()
    with_reuse = asyncio.run(reuse.token_probs_many(reqs))
    t_reuse = time.perf_counter() - t0
    diff = max(
        abs(a.probs[0][c] - b.probs[0][c])
        for a, b in zip(with_reuse, without, strict=True)
        for c in a.probs[0]
    )
    n_tokens = len(engine.tok(reqs[0].prompt)["input_ids"])
    return {
        "model": "local:smollm2-135m (bf16, cpu)",
        "prompts": n,
        "tokens_per_prompt": n_tokens,
        "without_reuse_s": round(t_plain, 3),
        "with_reuse_s": round(t_reuse, 3),
        "speedup": round(t_plain / t_reuse, 2),
        "max_abs_prob_diff": round(diff, 4),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_concurrency(m: int) -> dict:
    from autointerp import assets
    from autointerp.llm.openai_backend import OpenAILLM

    gguf = assets.ensure_asset("smollm2-135m", full_check=False)
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--n_threads", "2", "--logits_all", "true"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("llama_cpp.server did not start") from None
                time.sleep(0.5)
        reqs = [
            ChatRequest(
                messages=[Message(role="user", content=f"Write one sentence about the number {i}.")],
                max_tokens=24,
            )
            for i in range(m)
        ]

        def run(concurrency: int) -> float:
            llm = CachedLLM(OpenAILLM("smollm2", base_url=url, concurrency=concurrency))

            async def go():
                return await asyncio.gather(*(llm.chat(r) for r in reqs))

            t0 = time.perf_counter()
            asyncio.run(go())
            return time.perf_counter() - t0

        run(8)  # warm up (the server's prompt cache is per prompt: the timed runs see the same state)
        t1, t8 = run(1), run(8)
        return {
            "server": "llama-cpp-python 0.3.36 server, SmolLM2-135M Q4_1, --n_threads 2",
            "requests": m,
            "concurrency_1_s": round(t1, 3),
            "concurrency_8_s": round(t8, 3),
            "speedup": round(t1 / t8, 2),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--skip-server", action="store_true")
    args = ap.parse_args()
    out = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    out["prefix_reuse"] = bench_prefix(args.n)
    if not args.skip_server:
        out["concurrency"] = bench_concurrency(args.m)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
