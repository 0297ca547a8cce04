"""Learning steps on the CPU with the machine's cores kept busy by other processes: torch's
default thread count against the count a worker chooses (worker.threads, MIFO_CPU_THREADS=0).

    .venv/bin/python bench/cpu_threads.py [--steps 12] [--hogs 2]

Each case runs a short phase-1 learning on `tiny` (random test weights, for timing only) while
`--hogs` busy-loop processes run; figures are the median seconds per step after two warm-up
steps, by wall clock. `--hogs 0` measures the machine as it is.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import mifo_engine as me

if __package__ in (None, ""):  # run as `python bench/cpu_threads.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, scene, table  # noqa: E402
from worker.threads import cpu_threads  # noqa: E402

WARMUP = 2


def _hog() -> None:
    while True:
        pass


def _per_step(base: Any, steps: int, threads: int) -> float:
    torch.set_num_threads(threads)
    image, masks = scene()
    stamps: list[float] = []
    config = me.LearnConfig(
        phase1_steps=steps, reward_steps=steps // 2, phase2=False, diagnostic_timesteps=()
    )
    me.learn(
        base, image, masks, config=config, progress=lambda p: stamps.append(time.perf_counter())
    )
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][WARMUP:]
    return statistics.median(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--hogs", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    base = me.load_base_model("tiny", device="cpu")
    default = torch.get_num_threads()
    idle = {"default": _per_step(base, args.steps, default)} if args.hogs else {}
    hogs = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(args.hogs)]
    for h in hogs:
        h.start()
    try:
        time.sleep(1.0)
        chosen = cpu_threads(0)
        busy = {
            f"default ({default})": _per_step(base, args.steps, default),
            f"chosen ({chosen})": _per_step(base, args.steps, chosen),
        }
    finally:
        for h in hogs:
            h.terminate()
    rows = [[f"before the hogs, {k} threads", f"{v:.3f}"] for k, v in idle.items()]
    rows += [[f"{args.hogs} hogs, {k} threads", f"{v:.3f}"] for k, v in busy.items()]
    print(machine())
    print(table(["case", "s/step"], rows))


if __name__ == "__main__":
    main()
