"""Resident memory of a process running the local engine under an exact-simulator-like load; prints JSON.

Each "unit" sends ROWS token_probs requests at once (gathered into batches, forwarded in worker threads
as `label` does): a ~1,500-token shared prefix, the unit's own explanation line, then a listing of 2-4
words, each read at its TAB. VmRSS is sampled every 0.2 s; the JSON gives the peak, the RSS after each
unit, the seconds, and the engine's malloc trims (`llm/malloc.py`). Run it twice to compare:

    python eval/perf_memory.py [--units 4] [--rows 64] [--model qwen2.5-coder-1.5b]
    AUTOINTERP_MALLOC_TRIM=0 python eval/perf_memory.py      # the engine without trimming
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import random
import threading
import time

from autointerp.llm import malloc
from autointerp.llm.base import TokenProbsRequest
from autointerp.llm.local import LocalLLM


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024**2


class Peak(threading.Thread):
    """The highest VmRSS seen, sampled every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.stop = 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_gb())
            self.stop.wait(0.2)


def requests(unit: int, rows: int, rng: random.Random) -> list[TokenProbsRequest]:
    src = inspect.getsource(asyncio.base_events)
    words = [w for w in src.split() if w.isalpha()]
    prefix = "We study neurons. Examples of explanations and activations follow.\n\n" + src[:5000]
    out = []
    for _ in range(rows):
        body = f"{prefix}\n\nNeuron {unit}\nExplanation: {' '.join(rng.sample(words, 8))}\n<start>\n"
        pos = []
        for _ in range(rng.randint(2, 4)):
            body += rng.choice(words) + "\t"
            pos.append(len(body))
            body += "0\n"
        out.append(TokenProbsRequest(prompt=body, positions=pos, candidates=list("0123456789")))
    return out


async def main(args: argparse.Namespace) -> dict:
    rng = random.Random(0)
    llm = LocalLLM(args.model)
    peak = Peak()
    peak.start()
    t0 = time.perf_counter()
    await llm.token_probs(requests(-1, 1, rng)[0])
    loaded = {"seconds": round(time.perf_counter() - t0, 1), "rss_gb": round(rss_gb(), 2)}
    per_unit = []
    t1 = time.perf_counter()
    for u in range(args.units):
        t = time.perf_counter()
        await asyncio.gather(*(llm.token_probs(q) for q in requests(u, args.rows, rng)))
        per_unit.append({"seconds": round(time.perf_counter() - t, 1), "rss_gb": round(rss_gb(), 2)})
    peak.stop.set()
    stats = llm.engine.stats
    return {
        "model": args.model,
        "trim": malloc.enabled() and malloc.glibc() is not None,
        "units": args.units,
        "rows": args.rows,
        "loaded": loaded,
        "per_unit": per_unit,
        "seconds": round(time.perf_counter() - t1, 1),
        "peak_rss_gb": round(max(peak.peak, rss_gb()), 2),
        "final_rss_gb": round(rss_gb(), 2),
        "trims": stats["trims"],
        "trim_seconds": round(stats["trim_s"], 3),
        "forward_tokens": stats["forward_tokens"],
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=4)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    print(json.dumps(asyncio.run(main(ap.parse_args())), indent=1))
