"""`mifo evaluate`: the quality metrics of a learned concept from the command line."""

from __future__ import annotations

import argparse
from typing import Any

from .cli import _Bars, _device_arg, _json_arg, _model_arg, _overrides, _run, _summary
from .errors import InputError
from .evalconfig import EvaluationConfig, plan_runs


def add_evaluate(sub: Any) -> None:
    """`mifo evaluate CONCEPT_DIR --out DIR`."""
    evaluate = sub.add_parser(
        "evaluate",
        help="score a learned concept with the paper's metrics (SIM-C, SIM-D, NSIM-D, CS)",
        description="Synthesise recontextualisation prompts with a learned concept, one box "
        "per instance, and score each image with CLIP and DINO: a table on stdout, "
        "evaluation.json, chart.png and the images in --out.",
    )
    evaluate.add_argument(
        "concept", metavar="CONCEPT_DIR", help="directory written by `mifo learn`"
    )
    evaluate.add_argument(
        "--out", required=True, help="new directory for evaluation.json, chart.png and images"
    )
    evaluate.add_argument(
        "--prompt",
        action="append",
        metavar="PROMPT",
        help="a prompt with {token} where each instance goes, or one naming the concept's "
        "tokens; repeatable (default: the paper's ten prompts)",
    )
    evaluate.add_argument(
        "--images-per-prompt", type=int, help="images of each synthesis (default 2)"
    )
    evaluate.add_argument("--steps", type=int, help="DDIM steps of each synthesis (default 50)")
    evaluate.add_argument(
        "--seed", type=int, help="seed of each synthesis' first image (default 0)"
    )
    evaluate.add_argument(
        "--clip-model", help="CLIP for SIM-C: 'tiny', a local folder, or owner/name@COMMIT"
    )
    evaluate.add_argument(
        "--dino-model",
        help="DINO for SIM-D and NSIM-D: 'tiny', a local folder, or owner/name@COMMIT",
    )
    evaluate.add_argument(
        "--image", help="the image the concept was learned from (for concepts without masks)"
    )
    evaluate.add_argument(
        "--mask",
        action="append",
        default=[],
        metavar="MASK",
        help="its instance masks, in order, with --image; repeatable",
    )
    _model_arg(evaluate, "base model; default: the one the concept was learned on")
    _device_arg(evaluate)
    evaluate.add_argument(
        "--config", help="JSON file with any EvaluationConfig fields; the options above override it"
    )
    _json_arg(evaluate)
    evaluate.set_defaults(func=lambda args: _run(args, _do_evaluate))


def _do_evaluate(args: argparse.Namespace) -> None:
    from .concept import Concept, read_metadata
    from .evaluation import evaluate
    from .models import load_base_model
    from .runtime import check_new_directory

    meta = read_metadata(args.concept)
    values = (
        EvaluationConfig.from_file(args.config) if args.config else EvaluationConfig()
    ).to_dict()
    values.update(
        _overrides(
            {
                "images_per_prompt": args.images_per_prompt,
                "steps": args.steps,
                "seed": args.seed,
                "clip_model": args.clip_model,
                "dino_model": args.dino_model,
                "prompts": args.prompt,
            }
        )
    )
    cfg = EvaluationConfig.from_mapping(values)
    check_new_directory(args.out, field="--out")
    # The prompts are checked against the concept's tokens before any model loads.
    plan_runs([(t["token"], t["name"]) for t in meta["tokens"]], cfg)
    if bool(args.image) != bool(args.mask):
        raise InputError(
            "--image and --mask go together: the image the concept was learned from and its "
            "masks, in order.",
            field="--image" if args.mask else "--mask",
            fix="give both, or neither for a concept that holds its masks",
        )
    inputs = (args.image, args.mask) if args.image else None
    base = load_base_model(args.model or meta["base_model"]["spec"], device=args.device)
    concept = Concept.load(args.concept)
    with _Bars() as bars:
        result = evaluate(base, concept, config=cfg, inputs=inputs, progress=bars)
    result.save(args.out)
    lines = [result.table(), f"evaluation written to {args.out}"]
    data = {
        "out": args.out,
        "rows": [r.to_dict() for r in result.rows],
        "mean": result.mean.to_dict(),
    }
    _summary(args, lines, data)
