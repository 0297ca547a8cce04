"""`mifo learn` and `mifo synthesize` (and `mifo evaluate`, in `evalcli`): the engine from the
command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from .config import LearnConfig, SynthesisConfig
from .errors import Canceled, LayoutError, MifoError, ModelLoadError

# Modules that import torch load inside the commands: the service commands of `mifo` share
# this parser and run where the engine extra is not installed.
log = logging.getLogger("mifo")
EXIT_BAD_INPUT = 2
EXIT_CANCELED = 130
PREVIEW_RESOLUTION = 512  # for checking files before the model (and its size) is loaded


def register(sub: Any) -> None:
    """Add the engine commands to the `mifo` command."""
    from .evalcli import add_evaluate  # it builds on this module's helpers

    _add_learn(sub)
    _add_synthesize(sub)
    add_evaluate(sub)


def _add_learn(sub: Any) -> None:
    """`mifo learn IMAGE MASK... --out DIR`."""
    learn = sub.add_parser(
        "learn",
        help="learn one token per instance mask from one image",
        description="Learn one token (<asset0>, <asset1>, ...) per instance mask from one image "
        "and save the concept to a directory.",
    )
    learn.add_argument("image", help="the image (PNG or JPEG)")
    learn.add_argument(
        "masks",
        nargs="+",
        metavar="MASK",
        help="one mask per instance, in order (PNG/JPEG; L, RGB or RGBA)",
    )
    learn.add_argument("--out", required=True, help="new directory to write the concept to")
    _model_arg(
        learn,
        "base model: 'tiny' (random test model), 'sd21-random', a local diffusers directory, or HUB_ID[@REVISION]; default: $MIFO_BASE_MODEL, else SD 2.1 base",
    )
    learn.add_argument(
        "--names", help="comma-separated instance names, one per mask (default asset0, asset1, ...)"
    )
    learn.add_argument(
        "--init-words", help="comma-separated words to initialise each token from, e.g. car,dog"
    )
    learn.add_argument(
        "--phase1-steps",
        type=int,
        help="token-learning steps, reward steps included (default 800; below 200 the first quarter are reward steps)",
    )
    learn.add_argument(
        "--phase2-steps", type=int, help="fine-tune steps (default 400; 0 skips the fine-tune)"
    )
    learn.add_argument("--seed", type=int, help="random seed (default 0)")
    _device_arg(learn)
    learn.add_argument(
        "--config", help="JSON file with any LearnConfig fields; the options above override it"
    )
    _json_arg(learn)
    learn.set_defaults(func=_learn)


def _add_synthesize(sub: Any) -> None:
    """`mifo synthesize CONCEPT_DIR --prompt ... --box TOKEN=x0,y0,x1,y1 --out DIR`."""
    synth = sub.add_parser(
        "synthesize",
        help="generate images of a learned concept, one box per instance",
        description="Generate images of a learned concept's instances; each --box pins one token to a region.",
    )
    synth.add_argument("concept", metavar="CONCEPT_DIR", help="directory written by `mifo learn`")
    synth.add_argument(
        "--prompt", required=True, help='e.g. "a photo of <asset0> and <asset1> at the beach"'
    )
    synth.add_argument(
        "--box",
        action="append",
        default=[],
        metavar="TOKEN=x0,y0,x1,y1",
        help="box of a token (or instance name) as fractions of width and height, repeatable",
    )
    synth.add_argument(
        "--out", required=True, help="new directory for the images, previews and synthesis.json"
    )
    synth.add_argument("--num-images", type=int, help="images to generate (default 1)")
    synth.add_argument(
        "--seed", type=int, help="seed of the first image; the others use seed+1, ... (default 0)"
    )
    synth.add_argument("--steps", type=int, help="DDIM steps (default 50)")
    synth.add_argument(
        "--guidance-scale", type=float, help="classifier-free guidance scale (default 7.5)"
    )
    synth.add_argument(
        "--no-box-control",
        action="store_true",
        help="ignore the boxes' control (plain generation; boxes still drive the diagnostics)",
    )
    _model_arg(synth, "base model; default: the one the concept was learned on")
    _device_arg(synth)
    synth.add_argument(
        "--config", help="JSON file with any SynthesisConfig fields; the options above override it"
    )
    _json_arg(synth)
    synth.set_defaults(func=_synthesize)


def _model_arg(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--model", help=text)


def _json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON object on stdout (progress stays on stderr)",
    )


def _device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where to run (default auto: cuda if available)",
    )


def _learn(args: argparse.Namespace) -> int:
    return _run(args, _do_learn)


def _synthesize(args: argparse.Namespace) -> int:
    return _run(args, _do_synthesize)


def _run(args: argparse.Namespace, body: Any) -> int:
    # Messages for the person at the terminal go to the stderr of this call (not a global
    # logging set-up, which an embedding program may own).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("mifo", "mifo_engine"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        body(args)
    except Canceled:
        sys.stderr.write(f"mifo {args.command}: interrupted; nothing was written\n")
        return EXIT_CANCELED
    except KeyboardInterrupt:
        sys.stderr.write(f"mifo {args.command}: interrupted; nothing was written\n")
        return EXIT_CANCELED
    except MifoError as exc:
        sys.stderr.write(f"mifo {args.command}: error: {' '.join(str(exc).split())}\n")
        return EXIT_BAD_INPUT
    finally:
        for name in ("mifo", "mifo_engine"):
            logging.getLogger(name).removeHandler(handler)
    return 0


def _overrides(pairs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in pairs.items() if v is not None}


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",")]


def _do_learn(args: argparse.Namespace) -> None:
    from .inputs import check_inputs
    from .learning import learn
    from .models import DEFAULT_BASE_MODEL, load_base_model
    from .runtime import check_new_directory

    base_cfg = LearnConfig.from_file(args.config) if args.config else LearnConfig()
    values = base_cfg.to_dict()
    values.update(
        _overrides(
            {
                "phase1_steps": args.phase1_steps,
                "phase2_steps": args.phase2_steps,
                "seed": args.seed,
            }
        )
    )
    if args.init_words is not None:
        values["init_words"] = _split(args.init_words)
    cfg = LearnConfig.from_mapping(values)
    check_new_directory(args.out, field="--out")
    # Reject bad files before loading a model that may take minutes to load; shares are
    # checked again at the model's own resolution once it is known.
    check_inputs(
        args.image, args.masks, resolution=cfg.resolution or PREVIEW_RESOLUTION, config=cfg
    )
    spec = args.model or getattr(args, "env_model", None) or DEFAULT_BASE_MODEL
    _check_layers(spec, cfg)
    base = load_base_model(spec, device=args.device)
    with _Bars() as bars:
        concept = learn(
            base, args.image, args.masks, names=_split(args.names), config=cfg, progress=bars
        )
    concept.save(args.out)
    tokens: list[dict[str, Any]] = []
    lines = []
    for t in concept.tokens:
        d = concept.diagnostics.get(t.token, {})
        outside = float(d.get("leakage_outside_mask", 0))
        others = float(d.get("leakage_into_other_instances", 0))
        tokens.append({"token": t.token, "name": t.name, "outside": outside, "others": others})
        lines.append(
            f"{t.token} ({t.name}): attention outside its mask {100 * outside:.1f}%, "
            f"inside other instances {100 * others:.1f}%"
        )
    _summary(args, [*lines, f"concept written to {args.out}"], {"out": args.out, "tokens": tokens})


def _do_synthesize(args: argparse.Namespace) -> None:
    from .concept import Concept, read_metadata
    from .layout import validate_synthesis_request
    from .models import load_base_model, load_tokenizer
    from .runtime import check_new_directory
    from .synthesis import synthesize

    meta = read_metadata(args.concept)
    cfg_values = (
        SynthesisConfig.from_file(args.config) if args.config else SynthesisConfig()
    ).to_dict()
    cfg_values.update(
        _overrides(
            {
                "num_images": args.num_images,
                "seed": args.seed,
                "steps": args.steps,
                "guidance_scale": args.guidance_scale,
            }
        )
    )
    if args.no_box_control:
        cfg_values["box_control"] = False
    if args.steps is not None and cfg_values["guidance_steps"] > args.steps:
        cfg_values["guidance_steps"] = args.steps
    cfg = SynthesisConfig.from_mapping(cfg_values)
    boxes = dict(_parse_box(b) for b in args.box)
    check_new_directory(args.out, field="--out")
    spec = args.model or meta["base_model"]["spec"]
    # The prompt and boxes are checked with the tokenizer alone, before the weights load.
    validate_synthesis_request(meta, args.prompt, boxes, load_tokenizer(spec))
    _check_layers(spec, cfg)
    base = load_base_model(spec, device=args.device)
    concept = Concept.load(args.concept)
    with _Bars() as bars:
        result = synthesize(base, concept, args.prompt, boxes, config=cfg, progress=bars)
    result.save(args.out)
    images, lines = [], []
    for k, (seed, diag) in enumerate(zip(result.seeds, result.in_box_share, strict=True)):
        shares = ", ".join(f"{tok} {100 * v:.0f}% in box" for tok, v in diag.items())
        lines.append(f"image_{k:02d}.png (seed {seed})" + (f": {shares}" if shares else ""))
        images.append({"file": f"image_{k:02d}.png", "seed": int(seed), "in_box_share": diag})
    _summary(args, [*lines, f"images written to {args.out}"], {"out": args.out, "images": images})


def _check_layers(spec: str, cfg: LearnConfig | SynthesisConfig) -> None:
    """Refuse a config naming attention layers the model lacks before its weights load, where
    its configs are on this machine (learning and synthesis check the loaded UNet again)."""
    from .layers import check_layers
    from .models import attention_structure

    try:
        structure = attention_structure(spec)
    except ModelLoadError:
        return  # not here yet (a hub model to fetch), or broken: loading says which
    check_layers(structure, cfg)


def _summary(args: argparse.Namespace, lines: list[str], data: dict[str, Any]) -> None:
    """What a run made, on stdout (progress and warnings are on stderr): lines for a person,
    or one JSON object with `--json`."""
    text = json.dumps(data) if args.json else "\n".join(lines)
    sys.stdout.write(text + "\n")


def _parse_box(text: str) -> tuple[str, list[float]]:
    key, sep, coords = text.partition("=")
    try:
        values = [float(v) for v in coords.split(",")]
    except ValueError:
        values = []
    if not sep or not key.strip() or len(values) != 4:
        raise LayoutError(
            f"--box {text!r} is not TOKEN=x0,y0,x1,y1.",
            field="--box",
            fix='write e.g. --box "<asset0>=0.05,0.30,0.45,0.80"',
        )
    return key.strip(), values


class _Bars:
    """One progress bar per phase on stderr, of one width whatever the losses read: their
    names keep the order they first came in and each value a fixed width. A phase that ended
    shows its full count and its time, no ETA."""

    OPEN = "{desc:<12} {percentage:3.0f}%|{bar:24}| {n_fmt:>5}/{total_fmt:<5} [{elapsed}<{remaining}]{postfix}"
    DONE = "{desc:<12} {percentage:3.0f}%|{bar:24}| {n_fmt:>5}/{total_fmt:<5} [{elapsed}]{postfix}"

    def __enter__(self) -> _Bars:
        self.bar: Any = None
        self.phase: str | None = None
        self.keys: list[str] = []
        return self

    def __call__(self, p: Any) -> None:
        from tqdm import tqdm

        if p.phase != self.phase:
            self._finish()
            self.phase, self.keys = p.phase, []
            self.bar = tqdm(
                total=p.total, desc=p.phase, file=sys.stderr, leave=True, bar_format=self.OPEN
            )
        self.keys += [k for k in p.losses if k not in self.keys]
        values = " ".join(
            f"{k}={p.losses[k]:>10.3e}" if k in p.losses else f"{k}={'':>10}" for k in self.keys
        )
        self.bar.n = p.step
        self.bar.postfix = values
        self.bar.refresh()

    def _finish(self) -> None:
        if self.bar is not None:
            self.bar.n = self.bar.total  # the phase ran to its end: no ETA, a full bar
            self.bar.bar_format = self.DONE
            self.bar.refresh()
            self.bar.close()
            self.bar = None

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self._finish()
        elif self.bar is not None:
            self.bar.close()
