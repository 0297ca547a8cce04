"""Quality beside the paper: SIM-C, SIM-D, NSIM-D and CS of example concepts, printed next to
the published rows of the paper's Table 1 (semantic learning) and Table 2 (precise synthesis).

    .venv/bin/python bench/quality.py --concept concepts/cars --concept concepts/pots
    .venv/bin/python bench/quality.py --smoke    # CPU, tiny models: checks that the code runs

Each concept (a folder written by `mifo learn` on SD 2.1 base with the paper's schedule) is
scored twice with `mifo_engine.evaluate`, on the base model it was learned on:

- learning table: the paper's ten editability prompts, one instance per prompt and one box
  (the evaluation's default protocol);
- synthesis table: the same ten prompts with every instance of the concept in them
  ("a photo of <asset0> and <asset1> at the beach"), one box per instance.

The rows are the means over every concept's (image, subject) pairs. Our figures need a CUDA
device, the base model and the pinned CLIP and DINO weights on this machine (no download is
attempted); without any of them each of our rows reads "not measured" and says why, and
nothing is invented. `--smoke` runs the same code with the tiny models on the CPU; its
figures come from random weights and are printed as such, never as results.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/quality.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, scene, table, write_json

PAPER = "MIFO: Learning and Synthesizing Multi-Instance from One Image"
# Table 1, semantic learning: (SIM-D, NSIM-D, SIM-D x NSIM-D) as published.
PAPER_TABLE_1: dict[str, tuple[float, float, float]] = {
    "TI-m": (0.7525, 0.7094, 0.5338),
    "DB-m": (0.7685, 0.7220, 0.5548),
    "BaS": (0.7781, 0.7253, 0.5643),
    "MIFO (paper)": (0.7918, 0.7258, 0.5746),
}
# Table 2, precise synthesis: (SIM-C, SIM-D, NSIM-D, CS, HPS v2) as published.
PAPER_TABLE_2: dict[str, tuple[float, float, float, float, float]] = {
    "BD": (0.608, 0.762, 0.721, 0.129, 25.312),
    "MD": (0.628, 0.778, 0.730, 0.132, 26.339),
    "BA": (0.606, 0.790, 0.727, 0.131, 24.943),
    "MIFO (paper)": (0.609, 0.792, 0.726, 0.132, 25.094),
}
NOT_MEASURED = "not measured"


def synthesis_prompts(tokens: list[str]) -> tuple[str, ...]:
    """The paper's templates with every instance in them: "a photo of <asset0> and <asset1> ..."."""
    from mifo_engine.evalconfig import PAPER_PROMPTS, TOKEN_SLOT

    return tuple(p.replace(TOKEN_SLOT, " and ".join(tokens)) for p in PAPER_PROMPTS)


def why_not(args: argparse.Namespace) -> str | None:
    """Why our rows cannot be measured here, or None."""
    import torch

    from mifo_engine.concept import read_metadata
    from mifo_engine.errors import MifoError
    from mifo_engine.features import FeatureModels
    from mifo_engine.models import check_base_model

    if not torch.cuda.is_available():
        return "no CUDA device"
    if not args.concept:
        return "no concept given (--concept DIR)"
    try:
        for folder in args.concept:
            check_base_model(read_metadata(folder)["base_model"]["spec"])
        args.features = FeatureModels(
            args.clip_model, args.dino_model, device=args.device, local_files_only=True
        )
        args.features.provenance()  # loads both from local files, or raises
    except MifoError as exc:
        return f"weights not on this machine: {exc.message}"
    return None


def measure(concepts: list[Any], args: argparse.Namespace, base_for: Any) -> dict[str, Any]:
    """Both tables' rows of our method over the concepts: each a MetricRow as a dict."""
    import mifo_engine as me
    from mifo_engine.metrics import ImageScore, metric_rows

    learning: list[ImageScore] = []
    synthesis: list[ImageScore] = []
    config = me.EvaluationConfig(
        prompts=me.EvaluationConfig().prompts[: args.prompts],
        images_per_prompt=args.images_per_prompt,
        steps=args.steps,
        clip_model=args.clip_model,
        dino_model=args.dino_model,
    )
    features = getattr(args, "features", None) or me.FeatureModels(
        args.clip_model, args.dino_model, device=args.device
    )
    records = []
    for concept in concepts:
        base = base_for(concept)
        tokens = [t.token for t in concept.tokens]
        for stage, prompts, into in (
            ("learning", config.prompts, learning),
            ("synthesis", synthesis_prompts(tokens)[: args.prompts], synthesis),
        ):
            result = me.evaluate(base, concept, prompts=prompts, config=config, features=features)
            into += result.images
            records.append({"stage": stage, "tokens": tokens, **result.record()})
    everyone = {"all": "all instances"}
    pooled = {
        stage: metric_rows([_pooled(s) for s in scores], everyone)[1].to_dict()
        for stage, scores in (("learning", learning), ("synthesis", synthesis))
    }
    return {"rows": pooled, "evaluations": records, "feature_models": features.provenance()}


def _pooled(score: Any) -> Any:
    """A score whose subjects all count as one token, for rows over every concept."""
    from dataclasses import replace

    return replace(score, subjects=tuple(replace(s, token="all") for s in score.subjects))


def report(ours: dict[str, Any] | None, reason: str | None, label: str) -> str:
    """Both tables: the paper's rows, then ours (or why it is missing)."""

    def value(stage: str, key: str) -> Any:
        if ours is None:
            return f"{NOT_MEASURED} ({reason})" if key == "sim_d" else NOT_MEASURED
        return ours["rows"][stage][key]

    # the published figures with their published decimals; ours with four
    t1 = [[name, *(f"{v:.4f}" for v in values)] for name, values in PAPER_TABLE_1.items()]
    product: Any = NOT_MEASURED
    if ours is not None:
        row = ours["rows"]["learning"]
        product = None if None in (row["sim_d"], row["nsim_d"]) else row["sim_d"] * row["nsim_d"]
    t1.append(
        [
            label,
            *(_ours(v) for v in (value("learning", "sim_d"), value("learning", "nsim_d"), product)),
        ]
    )
    t2 = [[name, *(f"{v:.3f}" for v in values)] for name, values in PAPER_TABLE_2.items()]
    metrics = (value("synthesis", k) for k in ("sim_c", "sim_d", "nsim_d", "cs"))
    t2.append([label, *(_ours(v) for v in metrics), "absent"])
    return "\n\n".join(
        [
            f"Semantic learning (paper: {PAPER}, Table 1)",
            table(["method", "SIM-D", "NSIM-D", "SIM-D x NSIM-D"], t1),
            f"Precise synthesis (paper: {PAPER}, Table 2)",
            table(["method", "SIM-C", "SIM-D", "NSIM-D", "CS", "HPS v2"], t2),
        ]
    )


def _ours(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def smoke(args: argparse.Namespace) -> dict[str, Any]:
    """The whole path on the CPU with the tiny models, 1 step: code check, not a result."""
    import mifo_engine as me

    base = me.load_base_model("tiny", device="cpu")
    image, masks = scene(96, 2, 0)
    cfg = me.LearnConfig(phase1_steps=2, phase2_steps=1, diagnostic_timesteps=(100,))
    concept = me.learn(base, image, masks, names=["left", "right"], config=cfg)
    with tempfile.TemporaryDirectory() as tmp:
        concept = me.Concept.load(concept.save(Path(tmp) / "c"))
    args.clip_model = args.dino_model = "tiny"
    args.device, args.steps, args.images_per_prompt, args.prompts = "cpu", 1, 1, 1
    return measure([concept], args, lambda _: base)


def main(argv: list[str] | None = None) -> int:
    from mifo_engine.evalconfig import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", action="append", default=[], metavar="DIR")
    parser.add_argument("--prompts", type=int, default=10, help="the first N of the ten")
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL)
    parser.add_argument("--dino-model", default=DEFAULT_DINO_MODEL)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models: a code check")
    parser.add_argument("--out", help="JSON path (default bench/results/quality.json)")
    args = parser.parse_args(argv)
    ours, reason, label = None, None, "MIFO (this engine)"
    if args.smoke:
        ours, label = smoke(args), "tiny smoke (random weights, not a result)"
    else:
        reason = why_not(args)
        if reason is None:
            ours = _run(args)
    print(report(ours, reason, label))
    data = {"machine": machine(), "not_measured": reason, "smoke": args.smoke, "ours": ours}
    data["paper"] = {"title": PAPER, "table_1": PAPER_TABLE_1, "table_2": PAPER_TABLE_2}
    if not args.smoke or args.out:
        print(f"\nwritten to {write_json('quality', data, args.out)}")
    return 0


def _run(args: argparse.Namespace) -> dict[str, Any]:
    """Our rows on the GPU: each concept on the base model it was learned on."""
    import mifo_engine as me

    concepts = [me.Concept.load(folder) for folder in args.concept]
    loaded: dict[str, Any] = {}

    def base_for(concept: Any) -> Any:
        spec = concept.base.spec
        if spec not in loaded:
            loaded.clear()  # one base model in memory at a time
            loaded[spec] = me.load_base_model(spec, device=args.device, local_files_only=True)
        return loaded[spec]

    return measure(concepts, args, base_for)


if __name__ == "__main__":
    sys.exit(main())
