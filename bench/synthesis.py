"""Synthesis: the engine against diffusers' StableDiffusionPipeline, and the cost of box control.

    .venv/bin/python bench/synthesis.py [--steps 50] [--rounds 5] [--adaptation lora]

On CPU with the tiny model. The concept is learned with a couple of steps (its weights do not
matter for speed) with the default LoRA phase 2, so every UNet call goes through the adapters;
the pipeline is built from the same components inside `concept.applied` (as the engine test
`test_without_boxes_matches_the_diffusers_pipeline` does), so it pays for them too. Same
prompt, seed, steps, DDIM, guidance 7.5, batch `--images`.

Totals: the engine's `synthesize()` call (applying the concept, encoding, sampling, decoding,
previews) against applying the concept + building the pipeline + calling it; the bare pipeline
call is shown too. Per step: the spacing of the engine's progress reports and of the
pipeline's `callback_on_step_end`. With box control on, a guided step (latent optimisation
plus the denoising step) is set against an unguided controlled step and a pipeline step; a
forward pre-hook on the UNet counts the optimisation iterations each guided step ran.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

import mifo_engine as me

if __package__ in (None, ""):  # run as `python bench/synthesis.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, median, scene, set_threads, spread, table, write_json

TARGET_OVERHEAD = 0.15
PROMPT = "a photo of <asset0> and <asset1> at the beach"
BOXES = {"<asset0>": (0.05, 0.3, 0.45, 0.8), "<asset1>": (0.55, 0.3, 0.95, 0.8)}
PIPE_CALL = "diffusers pipeline: call only"
PIPE = "diffusers pipeline: apply concept + build + call"
NO_BOXES = "engine: no boxes"
OFF = "engine: boxes, box_control=False"
ON = "engine: boxes, box_control=True"


class Timer:
    """Wall and CPU timestamps of each step report, and UNet calls made up to each report."""

    def __init__(self, unet: Any):
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.calls: list[int] = []
        self.first_call: float | None = None  # wall time of the first UNet call
        self._count = 0
        self._hook = unet.register_forward_pre_hook(self._called)

    def _called(self, *_: Any) -> None:
        if self.first_call is None:
            self.first_call = time.perf_counter()
        self._count += 1

    def mark(self, *_: Any) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.calls.append(self._count)

    def close(self) -> None:
        self._hook.remove()

    def steps(self, clock: str = "wall") -> list[float]:
        t = self.wall if clock == "wall" else self.cpu
        return [b - a for a, b in zip(t, t[1:], strict=False)]

    def phases(self, start: float, end: float) -> dict[str, float]:
        """Wall seconds before the first UNet call, from it to the last step, and after."""
        assert self.first_call is not None
        return {
            "setup_s": self.first_call - start,
            "loop_s": self.wall[-1] - self.first_call,
            "finish_s": end - self.wall[-1],
        }

    def calls_per_step(self) -> list[int]:
        return [b - a for a, b in zip(self.calls, self.calls[1:], strict=False)]


def run_engine(base: Any, concept: Any, boxes: Any, cfg: me.SynthesisConfig) -> dict:
    timer = Timer(base.unet)
    w, c = time.perf_counter(), time.process_time()
    try:
        me.synthesize(base, concept, PROMPT, boxes, config=cfg, progress=timer.mark)
    finally:
        timer.close()
    end = time.perf_counter()
    return {
        "total_wall": end - w,
        "total_cpu": time.process_time() - c,
        **timer.phases(w, end),
        "steps_wall": timer.steps(),
        "steps_cpu": timer.steps("cpu"),
        "calls": timer.calls_per_step(),
    }


def run_pipeline(base: Any, concept: Any, cfg: me.SynthesisConfig) -> dict:
    timer = Timer(base.unet)

    def on_step(pipe: Any, i: int, t: Any, kwargs: dict) -> dict:
        timer.mark()
        return kwargs

    w, c = time.perf_counter(), time.process_time()
    timer.wall.append(w)  # replaced by the first UNet call below: step 1 starts there
    timer.cpu.append(c)
    timer.calls.append(0)
    try:
        with concept.applied(base) as tokenizer:
            pipe: Any = StableDiffusionPipeline(
                vae=base.vae,
                text_encoder=base.text_encoder,
                tokenizer=tokenizer,
                unet=base.unet,
                scheduler=DDIMScheduler.from_config(base.scheduler_config),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
            pipe.set_progress_bar_config(disable=True)
            cw, cc = time.perf_counter(), time.process_time()
            pipe(
                [PROMPT] * cfg.num_images,
                height=base.resolution,
                width=base.resolution,
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance_scale,
                generator=[torch.Generator().manual_seed(s) for s in cfg.image_seeds()],
                callback_on_step_end=on_step,
            )
            call_wall, call_cpu = time.perf_counter() - cw, time.process_time() - cc
    finally:
        timer.close()
    end = time.perf_counter()
    timer.wall[0] = timer.first_call  # type: ignore[assignment]
    timer.cpu[0] = math.nan  # CPU time at the first UNet call is not known: drop that step
    return {
        "total_wall": end - w,
        "total_cpu": time.process_time() - c,
        **timer.phases(w, end),
        "call_wall": call_wall,
        "call_cpu": call_cpu,
        "steps_wall": timer.steps(),
        "steps_cpu": timer.steps("cpu"),
        "calls": timer.calls_per_step(),
    }


def by_variant(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(r for r in rows if r["variant"] == name)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--guidance-steps", type=int, default=15, help="steps with latent guidance")
    parser.add_argument("--images", type=int, default=1, help="images per call (batch)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument("--adaptation", choices=("lora", "full", "none"), default="lora")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=None, help="JSON path (default bench/results/synthesis.json)"
    )
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    started = time.perf_counter()

    base = me.load_base_model("tiny", device="cpu")
    image, masks = scene()
    learn_cfg = me.LearnConfig(
        phase1_steps=2,
        reward_steps=1,
        phase2=args.adaptation != "none",
        phase2_mode="full" if args.adaptation == "full" else "lora",
        phase2_steps=1,
        diagnostic_timesteps=(100,),
        seed=args.seed,
    )
    concept = me.learn(base, image, masks, config=learn_cfg)
    cfg = me.SynthesisConfig(
        steps=args.steps,
        guidance_steps=args.guidance_steps,
        num_images=args.images,
        seed=args.seed,
    )
    off = cfg.replace(box_control=False)
    variants: dict[str, Callable[[], dict]] = {
        PIPE: lambda: run_pipeline(base, concept, cfg),
        NO_BOXES: lambda: run_engine(base, concept, None, off),
        OFF: lambda: run_engine(base, concept, BOXES, off),
        ON: lambda: run_engine(base, concept, BOXES, cfg),
    }
    # Warm-up: one short run of each kind (lazy imports, allocator, kernel selection).
    run_pipeline(base, concept, cfg.replace(steps=2))
    run_engine(base, concept, BOXES, cfg.replace(steps=2, guidance_steps=1))

    names = list(variants)
    runs: dict[str, list[dict]] = {k: [] for k in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            gc.collect()  # a collection left over from the last run would land in this one
            runs[name].append(variants[name]())
    runs[PIPE_CALL] = [
        {
            **x,
            "total_wall": x["call_wall"],
            "total_cpu": x["call_cpu"],
            "setup_s": x["setup_s"] - (x["total_wall"] - x["call_wall"]),
        }
        for x in runs[PIPE]
    ]

    def pooled(name: str, key: str, part: slice = slice(None)) -> list[float]:
        return [v for x in runs[name] for v in x[key][part] if not math.isnan(v)]

    n = args.images
    ref = {
        "total_wall": median([x["total_wall"] for x in runs[PIPE]]),
        "total_cpu": median([x["total_cpu"] for x in runs[PIPE]]),
        "step_wall": median(pooled(PIPE, "steps_wall")),
        "step_cpu": median(pooled(PIPE, "steps_cpu")),
    }
    rows: list[dict[str, Any]] = []
    for name in [PIPE_CALL, PIPE, NO_BOXES, OFF, ON]:
        total_wall = median([x["total_wall"] for x in runs[name]])
        total_cpu = median([x["total_cpu"] for x in runs[name]])
        step_wall = median(pooled(name, "steps_wall"))
        step_cpu = median(pooled(name, "steps_cpu"))
        rows.append(
            {
                "variant": name,
                "total_wall_s": [x["total_wall"] for x in runs[name]],
                "s_per_image_wall": total_wall / n,
                "s_per_image_cpu": total_cpu / n,
                "ratio_total_wall": total_wall / ref["total_wall"],
                "ratio_total_cpu": total_cpu / ref["total_cpu"],
                "step_wall_s": spread(pooled(name, "steps_wall")),
                "step_cpu_s": spread(pooled(name, "steps_cpu")),
                "ratio_step_wall": step_wall / ref["step_wall"],
                "ratio_step_cpu": step_cpu / ref["step_cpu"],
                **{
                    k: median([x[k] for x in runs[name]]) for k in ("setup_s", "loop_s", "finish_s")
                },
            }
        )
    g = args.guidance_steps
    calls = pooled(ON, "calls", slice(0, g))
    guided: dict[str, Any] = {
        "optimisation_iterations_per_guided_step": (sum(calls) - len(calls)) / max(1, len(calls)),
        "total_s_per_image_wall": by_variant(rows, ON)["s_per_image_wall"],
        "total_s_per_image_cpu": by_variant(rows, ON)["s_per_image_cpu"],
    }
    for clock in ("wall", "cpu"):
        gs = pooled(ON, f"steps_{clock}", slice(0, g))
        us = pooled(ON, f"steps_{clock}", slice(g, None))
        guided[f"guided_step_{clock}_s"] = spread(gs)
        guided[f"unguided_step_{clock}_s"] = spread(us)
        guided[f"pipeline_step_{clock}_s"] = ref[f"step_{clock}"]
        guided[f"guided_over_unguided_{clock}"] = median(gs) / median(us)
        guided[f"guided_over_pipeline_step_{clock}"] = median(gs) / ref[f"step_{clock}"]
        guided[f"unguided_over_pipeline_step_{clock}"] = median(us) / ref[f"step_{clock}"]
    overhead = {
        name: {
            f"{what}_{clock}": by_variant(rows, name)[f"ratio_{what}_{clock}"] - 1.0
            for what in ("total", "step")
            for clock in ("wall", "cpu")
        }
        for name in (NO_BOXES, OFF)
    }
    result = {
        "benchmark": "synthesis",
        "model": "tiny",
        "device": "cpu",
        "settings": vars(args) | {"threads": threads},
        "machine": machine(),
        "wall_s": time.perf_counter() - started,
        "variants": rows,
        "box_control": guided,
        "target_overhead": TARGET_OVERHEAD,
        "overhead_box_control_off": overhead,
        "target_met": {
            k: {m: v <= TARGET_OVERHEAD for m, v in o.items()} for k, o in overhead.items()
        },
    }
    path = write_json("synthesis", result, args.out)

    print(
        f"Synthesis, tiny model ({base.resolution} px), CPU, {threads} torch thread(s), "
        f"{args.steps} DDIM steps, batch {n}, concept adaptation '{args.adaptation}', "
        f"{args.rounds} rounds (medians)"
    )
    print(
        table(
            [
                "per call",
                "s/image",
                "x pipe",
                "cpu s/image",
                "x pipe",
                "setup s",
                "loop s",
                "end s",
            ],
            [
                [
                    r["variant"],
                    r["s_per_image_wall"],
                    r["ratio_total_wall"],
                    r["s_per_image_cpu"],
                    r["ratio_total_cpu"],
                    r["setup_s"],
                    r["loop_s"],
                    r["finish_s"],
                ]
                for r in rows
            ],
        )
    )
    print("(setup: call to first UNet call; loop: to the last step report; end: to the return)\n")
    print(
        table(
            ["per denoising step", "ms", "p25-p75", "x pipe", "cpu ms", "x pipe"],
            [
                [
                    r["variant"],
                    1e3 * r["step_wall_s"]["median"],
                    f"{1e3 * r['step_wall_s']['p25']:.0f}-{1e3 * r['step_wall_s']['p75']:.0f}",
                    r["ratio_step_wall"],
                    1e3 * r["step_cpu_s"]["median"],
                    r["ratio_step_cpu"],
                ]
                for r in rows[1:]
            ],
        )
    )
    print(f"('x pipe': against '{PIPE}'; a step is the spacing of two step reports)")
    print(
        f"\nBox control on: each of the first {g} steps optimises the latent "
        f"({guided['optimisation_iterations_per_guided_step']:.2f} iterations per step on average)"
    )
    print(
        table(
            ["step", "wall ms", "x unguided", "x pipe step", "cpu ms", "x unguided", "x pipe step"],
            [
                [
                    label,
                    1e3 * guided[f"{key}_wall_s"]["median"],
                    guided[f"{key}_wall_s"]["median"] / guided["unguided_step_wall_s"]["median"],
                    guided[f"{key}_wall_s"]["median"] / ref["step_wall"],
                    1e3 * guided[f"{key}_cpu_s"]["median"],
                    guided[f"{key}_cpu_s"]["median"] / guided["unguided_step_cpu_s"]["median"],
                    guided[f"{key}_cpu_s"]["median"] / ref["step_cpu"],
                ]
                for label, key in (
                    ("guided", "guided_step"),
                    ("unguided, bounded", "unguided_step"),
                )
            ],
        )
    )
    print(
        f"Total with box control on: {guided['total_s_per_image_wall']:.3g} s/image "
        f"(cpu {guided['total_s_per_image_cpu']:.3g} s)"
    )
    print(f"\nTarget: box control off at most {TARGET_OVERHEAD:.0%} over the pipeline")
    for k, o in overhead.items():
        verdicts = ", ".join(
            f"{m} {v:+.1%} ({'met' if v <= TARGET_OVERHEAD else 'MISSED'})" for m, v in o.items()
        )
        print(f"  {k}: {verdicts}")
    print(f"\nJSON: {path}")
    return result


if __name__ == "__main__":
    main()
