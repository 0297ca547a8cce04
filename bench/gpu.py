"""Learning and synthesis speed and peak memory on one GPU, for three learning set-ups.

    .venv/bin/python bench/gpu.py            # CUDA, sd21-random (SD 2.1 architecture), 512 px
    .venv/bin/python bench/gpu.py --smoke    # CPU, tiny model, a few steps: checks that it runs

Variants: `default` (LearnConfig defaults: precision auto = bf16 autocast on CUDA, LoRA phase
2, gradient checkpointing auto = on for CUDA), `fp32` (precision "fp32" for learning and
synthesis; TF32 matmuls stay as `tf32` says, on by default) and `full` (phase2_mode "full");
on request (`--variants`) also `nockpt` (gradient checkpointing off).

Learning is driven through `learn()` with a progress callback that waits for the device and
stamps each step; the first `--warmup` steps of each phase are dropped. Steps where the
attention loss ran (t < t_attn) are timed apart from the others, and the paper's schedule
(800 + 400 steps) is projected from those medians with the share of such steps the config
implies (t_attn / train_timesteps). Peak memory is `torch.cuda.max_memory_allocated`, reset
when a phase starts, so each phase's peak includes the model weights; `learn_setup_peak_gb` is
the part of `learn()` before phase 1 (input preparation, VAE encoding). Synthesis: `synthesize()`
with two boxes, `--synth-steps` DDIM steps of which `--guidance-steps` guided, at each batch
size, after a short warm-up call per batch size. `--budget-s` stops measuring (and marks the
rest as skipped) before the run would outgrow its time slot.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

import mifo_engine as me

if __package__ in (None, ""):  # run as `python bench/gpu.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Stamps, machine, median, scene, set_threads, table, write_json

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "fp32": {"precision": "fp32"},
    "full": {"phase2_mode": "full"},
    "nockpt": {"gradient_checkpointing": "off"},  # on request: what checkpointing costs
}
DEFAULT_VARIANTS = ("default", "fp32", "full")
PROMPT = "a photo of <asset0> and <asset1> at the beach"
BOXES = {"<asset0>": (0.05, 0.3, 0.45, 0.8), "<asset1>": (0.55, 0.3, 0.95, 0.8)}
PAPER_PHASE1, PAPER_PHASE2 = 800, 400
# Targets on one H200 at 512 px: (key, most allowed, variants it applies to; None = all).
TARGETS: list[tuple[str, float, tuple[str, ...] | None]] = [
    ("projected_1200_steps_s", 60.0, None),
    ("synthesis_b1_s_per_image", 5.0, None),
    ("synthesis_b4_s_per_image", 2.0, None),
    ("phase1_peak_gb", 16.0, ("default",)),
    ("phase2_peak_gb", 16.0, ("default",)),
    ("phase1_peak_gb", 24.0, ("full",)),
    ("phase2_peak_gb", 24.0, ("full",)),
    ("synthesis_b1_peak_gb", 10.0, None),
    ("synthesis_b4_peak_gb", 10.0, None),
]
GB = 1024**3


class Device:
    """Waits for the device and tracks its peak memory (no-ops on CPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self, *_: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / GB if self.cuda else None

    def allocated_gb(self) -> float | None:
        return torch.cuda.memory_allocated(self.device) / GB if self.cuda else None


class LearnProbe:
    """Progress callback: device-synchronised step stamps, and the peak memory of each phase."""

    def __init__(self, dev: Device):
        self.dev = dev
        self.stamps = Stamps(on_report=dev.sync)
        self.phase = "setup"  # inputs, VAE encoding, before the first phase-1 report
        self.peaks: dict[str, float | None] = {}

    def __call__(self, p: Any) -> None:
        if p.phase != self.phase:
            self.close()
            self.phase = p.phase
            self.dev.reset_peak()
        self.stamps(p)

    def close(self) -> None:
        self.peaks[self.phase] = self.dev.peak_gb()


def phase_figures(
    probe: LearnProbe, phase: str, warmup: int, active_share: float
) -> dict[str, Any]:
    """Measured steps/s, per-kind step medians and the projected seconds per step."""
    times = probe.stamps.steps(phase)[warmup:]
    terms = probe.stamps.step_terms(phase)[warmup:]
    active = [t for t, names in zip(times, terms, strict=True) if set(names) - {"rec", "prior"}]
    plain = [t for t, names in zip(times, terms, strict=True) if not set(names) - {"rec", "prior"}]
    overall = median(times)
    # a kind this short run never drew is projected at the overall median
    a = median(active) if active else overall
    b = median(plain) if plain else overall
    return {
        "steps": len(times),
        "steps_per_s": len(times) / sum(times) if times else math.nan,
        "step_ms_attn": 1e3 * a,
        "step_ms_no_attn": 1e3 * b,
        "projected_step_s": active_share * a + (1 - active_share) * b,
        "peak_gb": probe.peaks.get(phase),
    }


def measure_learning(
    base: Any, image: Any, masks: Any, dev: Device, name: str, args: argparse.Namespace
) -> tuple[dict[str, Any], Any]:
    w = args.warmup
    cfg = me.LearnConfig(
        phase1_steps=w + args.phase1_steps,
        reward_steps=w + args.phase1_steps // 4,  # the paper's reward : penalty = 1 : 3
        phase2_steps=w + args.phase2_steps,
        diagnostic_timesteps=(),
        resolution=args.resolution,
        seed=0,
        **VARIANTS[name],
    )
    probe = LearnProbe(dev)
    dev.reset_peak()
    start = time.perf_counter()
    concept = me.learn(base, image, masks, config=cfg, progress=probe)
    dev.sync()
    wall = time.perf_counter() - start
    probe.close()
    share = cfg.t_attn / cfg.train_timesteps
    p1 = phase_figures(probe, "phase1", w, share)
    p2 = phase_figures(probe, "phase2", w, share)
    stepped = sum(sum(probe.stamps.steps(ph)) for ph in ("phase1", "phase2"))
    projected = PAPER_PHASE1 * p1["projected_step_s"] + PAPER_PHASE2 * p2["projected_step_s"]
    row = {
        "precision": cfg.precision,
        "phase2_mode": cfg.phase2_mode,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "optimizer": cfg.optimizer,
        "tf32": cfg.tf32,
        **{f"phase1_{k}": v for k, v in p1.items() if k != "projected_step_s"},
        **{f"phase2_{k}": v for k, v in p2.items() if k != "projected_step_s"},
        "learn_setup_peak_gb": probe.peaks.get("setup"),
        "projected_1200_steps_s": projected,
        # plus what this call spent outside the steps (inputs, VAE, adapters, copies)
        "projected_learn_call_s": projected + (wall - stepped),
        "learn_call_s": wall,
    }
    return row, concept


def measure_synthesis(
    base: Any, concept: Any, dev: Device, name: str, batch: int, args: argparse.Namespace
) -> dict[str, Any]:
    precision = VARIANTS[name].get("precision", "auto")
    cfg = me.SynthesisConfig(
        steps=args.synth_steps,
        guidance_steps=args.guidance_steps,
        num_images=batch,
        seed=0,
        precision=precision,
    )
    if args.synth_warmup:
        me.synthesize(base, concept, PROMPT, BOXES, config=cfg.replace(steps=2, guidance_steps=1))
    stamps = Stamps(on_report=dev.sync)
    dev.reset_peak()
    start = time.perf_counter()
    me.synthesize(base, concept, PROMPT, BOXES, config=cfg, progress=stamps)
    dev.sync()
    wall = time.perf_counter() - start
    steps = stamps.steps("synthesis")
    g = args.guidance_steps
    return {
        f"synthesis_b{batch}_s_per_image": wall / batch,
        f"synthesis_b{batch}_call_s": wall,
        f"synthesis_b{batch}_guided_step_ms": 1e3 * median(steps[:g]),
        f"synthesis_b{batch}_unguided_step_ms": 1e3 * median(steps[g:]),
        f"synthesis_b{batch}_peak_gb": dev.peak_gb(),
    }


def row_keys(batches: list[int]) -> list[str]:
    """Every key of a result row, in print order."""
    keys = ["variant", "precision", "phase2_mode", "gradient_checkpointing", "optimizer", "tf32"]
    for ph in ("phase1", "phase2"):
        keys += [
            f"{ph}_{k}"
            for k in ("steps", "steps_per_s", "step_ms_attn", "step_ms_no_attn", "peak_gb")
        ]
    keys += [
        "learn_setup_peak_gb",
        "projected_1200_steps_s",
        "projected_learn_call_s",
        "learn_call_s",
    ]
    for b in batches:
        keys += [
            f"synthesis_b{b}_{k}"
            for k in ("s_per_image", "call_s", "guided_step_ms", "unguided_step_ms", "peak_gb")
        ]
    return keys + ["skipped", "target_met"]


def targets_for(name: str) -> dict[str, float]:
    return {k: v for k, v, names in TARGETS if names is None or name in names}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, a few steps")
    parser.add_argument("--model", default=None, help="base model spec (default sd21-random)")
    parser.add_argument("--device", default=None, help="default cuda")
    parser.add_argument("--resolution", type=int, default=None, help="default: the model's")
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, of: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--warmup", type=int, default=None, help="steps dropped per phase (3)")
    parser.add_argument("--phase1-steps", type=int, default=None, help="measured (24)")
    parser.add_argument("--phase2-steps", type=int, default=None, help="measured (12)")
    parser.add_argument("--synth-steps", type=int, default=None, help="DDIM steps (50)")
    parser.add_argument("--guidance-steps", type=int, default=None, help="guided steps (15)")
    parser.add_argument("--batches", default="1,4", help="synthesis batch sizes")
    parser.add_argument(
        "--synth-warmup",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a short synthesis per batch size before timing (default: on, off with --smoke)",
    )
    parser.add_argument("--budget-s", type=float, default=270.0, help="stop measuring after this")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU: 1)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/gpu.json)")
    args = parser.parse_args(argv)
    smoke = {
        "model": "tiny",
        "device": "cpu",
        "warmup": 1,
        "phase1_steps": 3,
        "phase2_steps": 2,
        "synth_steps": 3,
        "guidance_steps": 1,
        "synth_warmup": False,
    }
    full = {
        "model": "sd21-random",
        "device": "cuda",
        "warmup": 3,
        "phase1_steps": 24,
        "phase2_steps": 12,
        "synth_steps": 50,
        "guidance_steps": 15,
        "synth_warmup": True,
    }
    for key, value in (smoke if args.smoke else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 0
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    threads = set_threads(args.threads)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    batches = [int(b) for b in args.batches.split(",")]

    base = me.load_base_model(args.model, device=args.device)
    dev = Device(base.device)
    resolution = args.resolution or base.resolution
    load_s = time.perf_counter() - started
    model_gb = dev.allocated_gb()
    image, masks = scene(size=max(96, resolution))
    print(f"{args.model} on {base.device} at {resolution} px: loaded in {load_s:.1f} s", flush=True)

    rows: list[dict[str, Any]] = []
    for name in names:
        row: dict[str, Any] = dict.fromkeys(row_keys(batches))
        row.update(variant=name, skipped=[])
        rows.append(row)
        concept = None
        for job, batch in [("learning", 0), *((f"synthesis_b{b}", b) for b in batches)]:
            if time.perf_counter() - started > args.budget_s or (batch and concept is None):
                row["skipped"].append(job)
                continue
            t0 = time.perf_counter()
            if batch:
                row.update(measure_synthesis(base, concept, dev, name, batch, args))
            else:
                figures, concept = measure_learning(base, image, masks, dev, name, args)
                row.update(figures)
            print(f"  {name}: {job} measured in {time.perf_counter() - t0:.1f} s", flush=True)
        del concept
        if dev.cuda:
            torch.cuda.empty_cache()

    applies = dev.cuda and resolution == 512
    for row in rows:
        row["target_met"] = {
            k: (None if not applies or row[k] is None else bool(row[k] <= v))
            for k, v in targets_for(row["variant"]).items()
        }
    result = {
        "benchmark": "gpu",
        "model": args.model,
        "device": str(base.device),
        "resolution": resolution,
        "settings": vars(args) | {"threads": threads},
        "machine": machine(),
        "model_load_s": load_s,
        "model_weights_gb": model_gb,
        "targets": [
            {"key": k, "at_most": v, "variants": list(n) if n else "all"} for k, v, n in TARGETS
        ],
        "targets_apply": applies,
        "rows": rows,
        "wall_s": time.perf_counter() - started,
    }
    path = write_json("gpu", result, args.out)
    print_table(result, rows, names, batches, args)
    print(f"\nJSON: {path}")
    return result


def print_table(
    result: dict[str, Any],
    rows: list[dict[str, Any]],
    names: list[str],
    batches: list[int],
    args: argparse.Namespace,
) -> None:
    print(
        f"\n{result['model']} on {result['device']} ({result['machine'].get('gpu', 'no GPU')}), "
        f"{result['resolution']} px; learning: {args.phase1_steps} + {args.phase2_steps} measured "
        f"steps after {args.warmup} warm-up each; synthesis: {args.synth_steps} DDIM steps, "
        f"{args.guidance_steps} guided, 2 boxes; total {result['wall_s']:.0f} s"
    )
    keys = [k for k in row_keys(batches) if k not in ("variant", "skipped", "target_met")]
    lines = []
    for key in keys:
        line: list[Any] = [key]
        for row in rows:
            value = row[key]
            mark = row["target_met"].get(key)
            text = f"{value:.4g}" if isinstance(value, float) else ("-" if value is None else value)
            line.append(f"{text}{'' if mark is None else ' ok' if mark else ' MISSED'}")
        wanted = sorted(
            {f"<= {v:g}" for k, v, n in TARGETS if k == key and (n is None or set(n) & set(names))}
        )
        line.append(", ".join(wanted) if len(wanted) == 1 else _per_variant(key, names))
        lines.append(line)
    print(table(["metric", *names, "target (H200, 512 px)"], lines))
    skipped = {r["variant"]: r["skipped"] for r in rows if r["skipped"]}
    if skipped:
        print(f"skipped (time budget {args.budget_s:.0f} s): {skipped}")
    if not result["targets_apply"]:
        print("targets are for one H200 at 512 px: not judged on this run")


def _per_variant(key: str, names: list[str]) -> str:
    parts = [f"{n} <= {targets_for(n)[key]:g}" for n in names if key in targets_for(n)]
    return ", ".join(parts) if parts else ""


if __name__ == "__main__":
    main()
