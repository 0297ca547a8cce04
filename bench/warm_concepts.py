"""Warm concepts: what a worker that already holds a concept saves on a synthesis.

    .venv/bin/python bench/warm_concepts.py [--steps 50] [--rounds 5] [--adaptation lora]

On CPU with the tiny model. A concept is learned (a couple of steps: its weights do not matter
for speed) and stored in a local object store, as a learning job leaves it. Each round runs
one synthesis on a cold worker (an empty concept cache: the files are fetched and the concept
loaded, as on a worker that never ran it) and one on a warm worker (the concept is in the
cache), through `worker.cache.ConceptCache`, the worker's own code. Printed: the load (fetch +
`load_concept`) per request, the synthesis itself, and the share of a request the load is.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import mifo_engine as me

if __package__ in (None, ""):  # run as `python bench/warm_concepts.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, median, scene, set_threads, spread, table, write_json
from core.storage import LocalStorage
from worker.cache import ConceptCache

PROMPT = "a photo of <asset0> and <asset1> on a table"
BOXES = {"<asset0>": (0.05, 0.3, 0.45, 0.8), "<asset1>": (0.55, 0.3, 0.95, 0.8)}


def stored_concept(base: Any, adaptation: str, root: Path) -> tuple[LocalStorage, str, int]:
    """A learned concept in a local object store: (store, its prefix, its size in bytes)."""
    image, masks = scene()
    config = me.LearnConfig(
        phase1_steps=2,
        reward_steps=1,
        phase2=adaptation != "none",
        phase2_mode="full" if adaptation == "full" else "lora",
        phase2_steps=1,
        diagnostic_timesteps=(100,),
    )
    folder = root / "learned"
    me.learn(base, image, masks, config=config).save(folder)
    storage, prefix = LocalStorage(root / "objects"), "concepts/bench/concept/attempt-1/"
    size = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        storage.put(prefix + path.relative_to(folder).as_posix(), data)
        size += len(data)
    return storage, prefix, size


def request(base: Any, cache: ConceptCache, storage: LocalStorage, prefix: str, steps: int) -> dict:
    """One synthesis request as a worker serves it: the concept from its cache, then drawing."""
    start = time.perf_counter()
    concept = cache.get(uuid.UUID(int=1), storage, prefix)
    loaded = time.perf_counter()
    me.synthesize(base, concept, PROMPT, BOXES, config=me.SynthesisConfig(steps=steps))
    return {"load": loaded - start, "synthesis": time.perf_counter() - loaded}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps per synthesis")
    parser.add_argument("--rounds", type=int, default=5, help="cold/warm pairs, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--adaptation", choices=("lora", "full", "none"), default="lora")
    parser.add_argument("--out", default=None, help="JSON path")
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    base = me.load_base_model("tiny", device="cpu")
    with tempfile.TemporaryDirectory(prefix="mifo-warm-") as tmp:
        storage, prefix, size = stored_concept(base, args.adaptation, Path(tmp))
        warm_cache = ConceptCache(4)
        request(base, warm_cache, storage, prefix, args.steps)  # warms the cache and torch
        cold, warm = [], []
        for _ in range(args.rounds):
            cold.append(request(base, ConceptCache(4), storage, prefix, args.steps))
            warm.append(request(base, warm_cache, storage, prefix, args.steps))
    rows = []
    for name, runs in (("cold worker", cold), ("warm worker", warm)):
        load, synth = [r["load"] for r in runs], [r["synthesis"] for r in runs]
        total = median([a + b for a, b in zip(load, synth, strict=True)])
        rows.append([name, f"{median(load) * 1000:.1f}", f"{median(synth):.2f}", f"{total:.2f}"])
    saved = median([r["load"] for r in cold]) - median([r["load"] for r in warm])
    request_s = median([r["load"] + r["synthesis"] for r in cold])
    print(table(["worker", "load (ms)", "synthesis (s)", "request (s)"], rows))
    print(
        f"concept {size / 1e6:.2f} MB ({args.adaptation}); a warm worker saves "
        f"{saved * 1000:.1f} ms per request, {saved / request_s:.1%} of a {args.steps}-step "
        f"request; threads {threads}"
    )
    result = {
        "machine": machine(),
        "args": vars(args),
        "concept_bytes": size,
        "cold": cold,
        "warm": warm,
        "load_saved_seconds": saved,
        "share_of_request": saved / request_s,
        "load_spread_cold": spread([r["load"] for r in cold]),
    }
    write_json("warm_concepts", result, args.out)
    return result


if __name__ == "__main__":
    main()
