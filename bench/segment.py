"""Time per click of segmentation, with and without the cached image embedding.

    .venv/bin/python bench/segment.py [--repeats 7] [--threads 1] [--vit-b]

One click is `Segmenter.segment(image, [one include point])` on a 640x480 scene, the point
moving from click to click. "Cold" clears the embedding cache first, so the click pays for
the image embedding; "warm" finds it cached and runs the prompt encoder and mask decoder
only (image hashing, mask scaling to 640x480 included in both). Also one `propose()` call
(16x16 grid) on a cached embedding. Medians of `--repeats`, after a warm-up click.

Rows:
- `tiny` on the CPU: the built-in random test SAM (64 px input).
- `--vit-b`: SAM ViT-B's architecture (transformers' SamConfig defaults, 1024 px input) with
  seeded random weights on the CPU: the pinned checkpoint's cost, not its masks.
- GPU: the pinned checkpoint (`DEFAULT_SEGMENT_MODEL`) on CUDA when a GPU is present and the
  weights are in the local Hugging Face cache; otherwise the row says "not measured" and why.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as `python bench/segment.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, median, set_threads, table, write_json
from mifo_engine.errors import ModelLoadError
from mifo_engine.sam import (
    DEFAULT_SEGMENT_MODEL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoadedSam,
    check_sam_model,
    load_sam,
)
from mifo_engine.segmentation import Segmenter
from mifo_engine.segprompts import SegmentConfig
from tests.helpers.images import make_scene

WIDTH, HEIGHT = 640, 480


def vit_b_random(device: torch.device) -> LoadedSam:
    """SAM ViT-B's architecture with seeded random weights (no download)."""
    from transformers import SamConfig, SamModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SamModel(SamConfig()).eval().requires_grad_(False).to(device)
    return LoadedSam(
        spec="vit-b-random",
        model_id="vit-b-random",
        revision=None,
        weights_hash="-",
        model=model,
        device=device,
        input_size=1024,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clicks(segmenter: Segmenter, repeats: int) -> dict[str, Any]:
    """Median seconds of a cold click, a warm click and a proposal call."""
    image = make_scene(WIDTH, HEIGHT, n=2, seed=0)[0]
    device = segmenter.sam.device
    points = [[[40 + 37 * i % (WIDTH - 80), 60 + 23 * i % (HEIGHT - 120)]] for i in range(repeats)]
    segmenter.segment(image, [{"points": [[10, 10]]}])  # warm-up: lazy kernels, allocations
    cold, warm, cold_cpu, warm_cpu, embed, reused = [], [], [], [], [], []
    for point in points:
        segmenter.clear_cache()
        start, start_cpu = time.perf_counter(), time.process_time()
        first = segmenter.segment(image, [{"points": point}])
        _sync(device)
        cold.append(time.perf_counter() - start)
        cold_cpu.append(time.process_time() - start_cpu)
        embed.append(first.embed_s)
        start, start_cpu = time.perf_counter(), time.process_time()
        second = segmenter.segment(image, [{"points": [[point[0][0] + 5, point[0][1] + 5]]}])
        _sync(device)
        warm.append(time.perf_counter() - start)
        warm_cpu.append(time.process_time() - start_cpu)
        reused.append(second.embedding_reused and not first.embedding_reused)
    config = SegmentConfig(points_per_side=16, min_predicted_iou=0.0, min_stability=0.0)
    propose = []
    for _ in range(max(1, repeats // 2)):
        start = time.perf_counter()
        segmenter.propose(image, config=config)
        _sync(device)
        propose.append(time.perf_counter() - start)
    return {
        "cold_click_s": median(cold),
        "warm_click_s": median(warm),
        "cold_click_cpu_s": median(cold_cpu),
        "warm_click_cpu_s": median(warm_cpu),
        "embedding_s": median(embed),
        "propose_16x16_s": median(propose),
        "reused_every_time": all(reused),
        "cold_all_s": cold,
        "warm_all_s": warm,
    }


def gpu_row(repeats: int) -> dict[str, Any]:
    """The pinned checkpoint on CUDA, or why it was not measured."""
    row: dict[str, Any] = {"device": "cuda", "model": DEFAULT_SEGMENT_MODEL}
    if not torch.cuda.is_available():
        return row | {"not_measured": "no CUDA GPU on this machine"}
    try:
        check_sam_model(DEFAULT_SEGMENT_MODEL)
    except ModelLoadError as exc:
        return row | {"not_measured": f"weights not in the local cache ({exc.message})"}
    sam = load_sam(DEFAULT_SEGMENT_MODEL, device="cuda", local_files_only=True)
    return row | clicks(Segmenter(sam), repeats)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument("--vit-b", action="store_true", help="also SAM ViT-B's size on the CPU")
    parser.add_argument(
        "--out", default=None, help="JSON path (default bench/results/segment.json)"
    )
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    cpu = torch.device("cpu")
    rows = [{"device": "cpu", "model": "tiny"} | clicks(Segmenter(load_sam("tiny")), args.repeats)]
    if args.vit_b:
        vit_b = Segmenter(vit_b_random(cpu))
        rows.append(
            {"device": "cpu", "model": "ViT-B, random weights"} | clicks(vit_b, args.repeats)
        )
    rows.append(gpu_row(args.repeats))
    result = {
        "benchmark": "segment",
        "settings": vars(args) | {"threads": threads, "image": f"{WIDTH}x{HEIGHT}"},
        "machine": machine(),
        "rows": rows,
    }
    path = write_json("segment", result, args.out)
    print(f"Segmentation, one click on a {WIDTH}x{HEIGHT} image, medians of {args.repeats}")
    print(table(HEADERS, [_cells(r) for r in rows]))
    print(f"\nJSON: {path}")
    return result


HEADERS = [
    "device",
    "model",
    "cold click ms",
    "warm click ms",
    "cold / warm CPU ms",
    "embedding ms",
    "propose ms",
]


def _cells(row: dict[str, Any]) -> list[Any]:
    if "not_measured" in row:
        return [row["device"], row["model"], "not measured: " + row["not_measured"], *[""] * 4]
    cpu = f"{1e3 * row['cold_click_cpu_s']:.4g} / {1e3 * row['warm_click_cpu_s']:.4g}"
    return [
        row["device"],
        row["model"],
        1e3 * row["cold_click_s"],
        1e3 * row["warm_click_s"],
        cpu if row["device"] == "cpu" else "-",
        1e3 * row["embedding_s"],
        1e3 * row["propose_16x16_s"],
    ]


if __name__ == "__main__":
    main()
