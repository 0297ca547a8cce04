"""Cost of the k-means starts of mask refinement: 100 random starts (the first fit) against 1.

    .venv/bin/python bench/refine_kmeans.py [--repeats 5] [--threads 1]

The first refinement of a synthesis fits k-means with `kmeans_inits` (100, as the reference)
random starts and keeps the lowest inertia; later ones warm-start from the last centroids with
one. This times `BoundedController.refine()` itself (column normalisation, k-means, soft
cross-attention masks, cluster assignment) on mean maps of the shape each model produces:
the tiny test model (8x8 maps) and SD 2.1 at 512 px (16x16), 2 subjects, 3 clusters each,
batch 1 and 4. The maps are synthetic but shaped like self-attention: each pixel attends its
neighbourhood, with seeded noise. Each case runs the first fit with `kmeans_inits` 100 and
with 1, and a warm-started fit after it; medians of `--repeats`. Where a GPU is present the
same runs are made on it too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as `python bench/refine_kmeans.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, median, set_threads, table, write_json
from mifo_engine.attention import AttnLayer
from mifo_engine.config import SynthesisConfig
from mifo_engine.controller import BoundedController
from mifo_engine.layout import Layout, Subject

BOXES = ((0.05, 0.3, 0.45, 0.8), (0.55, 0.3, 0.95, 0.8))
IDS = [1022, 2000, 2001, 1023] + [0] * 73


class _Tokenizer:
    eos_token_id = 1023

    def convert_tokens_to_ids(self, token: str) -> int:
        return {"<asset0>": 2000, "<asset1>": 2001}[token]

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        names = {1022: "<|startoftext|>", 2000: "<asset0>", 2001: "<asset1>", 1023: "<|endoftext|>"}
        return [names.get(i, "!") for i in ids]


def maps(
    batch: int, res: int, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean self-attention (B, P, P) and subject cross-attention (B, 2, P) shaped like real ones."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], -1).float()
    d2 = torch.cdist(pos, pos) ** 2
    logits = -d2 / (0.15 * res) ** 2 + 0.5 * torch.randn(batch, res * res, res * res, generator=gen)
    sa = logits.softmax(-1)
    centres = torch.tensor([[0.55 * res, 0.25 * res], [0.55 * res, 0.75 * res]])
    ca = torch.exp(-(torch.cdist(centres, pos) ** 2) / (0.2 * res) ** 2)
    ca = ca[None] + 0.05 * torch.rand(batch, 2, res * res, generator=gen)
    return sa.to(device), ca.to(device)


def controller(
    batch: int, res: int, cfg: SynthesisConfig, device: torch.device
) -> BoundedController:
    layout = Layout(
        "<asset0> <asset1>", tuple(Subject(f"<asset{i}>", str(i), b) for i, b in enumerate(BOXES))
    )
    layer = AttnLayer("up.1.self", "up", 1, "self", res)
    ctl = BoundedController(layout, _Tokenizer(), IDS, batch, cfg, device, [], [layer])
    return ctl


def timed(fn: Any, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run_case(batch: int, res: int, inits: int, device: torch.device, repeats: int) -> dict:
    first, warm = [], []
    for r in range(repeats):
        cfg = SynthesisConfig(num_images=batch, kmeans_inits=inits, seed=r)
        ctl = controller(batch, res, cfg, device)
        sa, ca = maps(batch, res, device, seed=r)
        ctl.sa_maps.add(sa)
        ctl.ca_maps.add(ca)
        first.append(timed(ctl.refine, device))
        warm.append(timed(ctl.refine, device))
    return {"first_s": median(first), "warm_s": median(warm), "first_all_s": first}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument(
        "--out", default=None, help="JSON path (default bench/results/refine_kmeans.json)"
    )
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    # warm-up: first calls pay for lazy kernels and allocations
    run_case(1, 8, 100, devices[0], 1)
    rows = []
    for device in devices:
        for model, res in (("tiny", 8), ("SD 2.1, 512 px", 16)):
            for batch in (1, 4):
                many = run_case(batch, res, 100, device, args.repeats)
                one = run_case(batch, res, 1, device, args.repeats)
                rows.append(
                    {
                        "device": device.type,
                        "model": model,
                        "maps": f"{res}x{res}",
                        "batch": batch,
                        "first_100_inits_s": many["first_s"],
                        "first_1_init_s": one["first_s"],
                        "extra_s": many["first_s"] - one["first_s"],
                        "warm_s": many["warm_s"],
                    }
                )
    result = {
        "benchmark": "refine_kmeans",
        "settings": vars(args) | {"threads": threads},
        "machine": machine(),
        "rows": rows,
    }
    path = write_json("refine_kmeans", result, args.out)
    print(
        f"Mask refinement, refine() per call, medians of {args.repeats}, {threads} torch thread(s)"
    )
    print(
        table(
            [
                "device",
                "model",
                "maps",
                "batch",
                "first, 100 starts ms",
                "first, 1 start ms",
                "extra ms",
                "warm ms",
            ],
            [
                [
                    r["device"],
                    r["model"],
                    r["maps"],
                    r["batch"],
                    1e3 * r["first_100_inits_s"],
                    1e3 * r["first_1_init_s"],
                    1e3 * r["extra_s"],
                    1e3 * r["warm_s"],
                ]
                for r in rows
            ],
        )
    )
    print(f"\nJSON: {path}")
    return result


if __name__ == "__main__":
    main()
