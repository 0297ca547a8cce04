"""The quality evaluation's settings: prompts, layout, masking and the feature models.

Torch-free, like `config`, so that a front end can check an evaluation request without
loading a model. The metrics themselves are in `metrics` and `evaluation`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .config import MAX_SEED, _Config, _require, _validated
from .errors import ConfigError
from .layout import TOKEN_PATTERN

# The slot a prompt template puts each instance's token in.
TOKEN_SLOT = "{token}"

# The editability prompts of the paper's Table 3 (Appendix C.6), one instance per prompt.
PAPER_PROMPTS: tuple[str, ...] = (
    "a photo of {token} at the beach",
    "a photo of {token} in the jungle",
    "a photo of {token} in the snow",
    "a photo of {token} in the street",
    "a photo of {token} on top of a pink fabric",
    "a photo of {token} floating on top of water",
    "a photo of {token} on top of a wooden floor",
    "a photo of {token} with a city in the background",
    "a photo of {token} with a mountain in the background",
    "a photo of {token} with the Eiffel tower in the background",
)

# Feature models, pinned to a hub commit so that a score means the same thing every time.
# CLIP ViT-L/14 (SIM-C); the original DINO's ViT-S/16 (SIM-D, NSIM-D). docs/engine-api.md,
# "Evaluation", says why these two.
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14@32bd64288804d66eefd0ccbe215aa642df71cc41"
DEFAULT_DINO_MODEL = "facebook/dino-vits16@abe3b354cb6a9b6f146096b14a4a9d7eecbcb4bd"
TINY_FEATURES = "tiny"  # seeded random feature models built in code: tests only

# The colour painted outside an instance's mask: the ImageNet mean, which ImageNet
# normalisation (DINO's) maps to within 0.01 of zero (CLIP's own mean is within 2 levels).
IMAGENET_MEAN_RGB = (124, 116, 104)

_COMMIT = re.compile(r"[0-9a-f]{40}")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class EvaluationConfig(_Config):
    """One quality evaluation of a learned concept (docs/engine-api.md, "Evaluation")."""

    # Each prompt is a template with the slot {token} (run once per instance), or names the
    # concept's tokens itself (<asset0> ...; run once, one box per token it names).
    prompts: tuple[str, ...] = PAPER_PROMPTS
    images_per_prompt: int = 2
    steps: int = 50  # DDIM steps of each synthesis
    seed: int = 0  # the images of every prompt use seed, seed+1, ...
    # Where the boxes go: a prompt's k instances share `area`, split into a grid of
    # ceil(sqrt(k)) columns (left to right, then top to bottom, in prompt order), each cell
    # shrunk by `gap` (a fraction of the image) on every side; one instance gets the area.
    area: Box = (0.1, 0.1, 0.9, 0.9)
    gap: float = 0.025
    # Painted outside an instance's mask, on the input instance and on a generated region
    # whose refined mask is known (0-255 RGB).
    fill: tuple[int, int, int] = IMAGENET_MEAN_RGB
    # "tiny", a local folder (transformers' save_pretrained layout), or owner/name@<commit>
    clip_model: str = DEFAULT_CLIP_MODEL
    dino_model: str = DEFAULT_DINO_MODEL

    def __post_init__(self) -> None:
        _validated(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        _require(bool(self.prompts), "prompts", "a list of at least one prompt")
        for prompt in self.prompts:
            _require(
                bool(prompt.strip()) and prompt.count(TOKEN_SLOT) <= 1,
                "prompts",
                "prompts with some text and at most one {token} slot each",
            )
        _require(self.images_per_prompt >= 1, "images_per_prompt", "a number >= 1")
        _require(self.steps >= 1, "steps", "a number >= 1")
        _require(
            0 <= self.seed <= MAX_SEED - self.images_per_prompt,
            "seed",
            f"a number from 0 to {MAX_SEED - self.images_per_prompt}",
        )
        x0, y0, x1, y1 = self.area
        _require(
            0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0,
            "area",
            "[x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1",
        )
        _require(self.gap >= 0.0, "gap", "a number >= 0")
        _require(all(0 <= c <= 255 for c in self.fill), "fill", "three numbers from 0 to 255")
        check_feature_spec(self.clip_model, "clip_model")
        check_feature_spec(self.dino_model, "dino_model")


def check_feature_spec(spec: str, field: str) -> None:
    """ConfigError unless `spec` could name a feature model: a hub id must carry a commit."""
    text = spec.strip()
    if not text:
        raise ConfigError(
            f"Config field '{field}' is empty.",
            field=field,
            fix=f"give '{TINY_FEATURES}', a local folder, or owner/name@<40-hex commit>",
        )
    repo, at, revision = text.partition("@")
    if at and _HUB_ID.fullmatch(repo) and not _COMMIT.fullmatch(revision):
        raise ConfigError(
            f"Config field '{field}' pins {repo} to '{revision}', which is not a commit: "
            "branch and tag names move, and a score must mean the same thing every time.",
            field=field,
            fix=f"give the full 40-hex commit, e.g. {repo}@<commit>",
        )


def grid_boxes(count: int, area: Box, gap: float) -> list[Box]:
    """`count` boxes tiling `area` in a grid of ceil(sqrt(count)) columns, each cell shrunk by
    `gap` on every side (as long as a cell keeps some width and height)."""
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    x0, y0, x1, y1 = area
    w, h = (x1 - x0) / cols, (y1 - y0) / rows
    inset_x = min(gap, w / 4) if count > 1 else 0.0
    inset_y = min(gap, h / 4) if count > 1 else 0.0
    boxes = []
    for k in range(count):
        c, r = k % cols, k // cols
        boxes.append(
            (
                round(x0 + c * w + inset_x, 6),
                round(y0 + r * h + inset_y, 6),
                round(x0 + (c + 1) * w - inset_x, 6),
                round(y0 + (r + 1) * h - inset_y, 6),
            )
        )
    return boxes


@dataclass(frozen=True)
class PromptRun:
    """One synthesis of the protocol: a prompt with the concept's tokens, one box per token."""

    prompt: str
    boxes: dict[str, Box]
    text: str  # the prompt with each token replaced by its instance name (what CLIP reads)


def plan_runs(tokens: Sequence[tuple[str, str]], config: EvaluationConfig) -> list[PromptRun]:
    """The syntheses `config` asks of a concept with these (token, name) pairs, in the order of
    its prompts: a template once per instance (in token order), a prompt that names tokens
    once; ConfigError (field 'prompts') for a prompt that names none of them, or a token the
    concept lacks."""
    names = dict(tokens)
    runs = []
    for prompt in config.prompts:
        if TOKEN_SLOT in prompt:
            runs += [
                PromptRun(
                    prompt.replace(TOKEN_SLOT, token),
                    {token: config.area},
                    prompt.replace(TOKEN_SLOT, name),
                )
                for token, name in tokens
            ]
            continue
        named = list(dict.fromkeys(TOKEN_PATTERN.findall(prompt)))
        unknown = [t for t in named if t not in names]
        if unknown or not named:
            known = ", ".join(f"{t} ({n})" for t, n in tokens)
            what = f"names {', '.join(unknown)}, which" if unknown else "names none of"
            raise ConfigError(
                f"Prompt {prompt!r} {what} this concept's tokens.",
                field="prompts",
                fix=f"put {TOKEN_SLOT} where the instance goes, or name its tokens: {known}",
            )
        boxes = dict(zip(named, grid_boxes(len(named), config.area, config.gap), strict=True))
        runs.append(PromptRun(prompt, boxes, named_text(prompt, names)))
    return runs


def named_text(prompt: str, names: Mapping[str, str]) -> str:
    """The prompt with each of the concept's tokens replaced by its instance name."""
    return TOKEN_PATTERN.sub(lambda m: names.get(m.group(0), m.group(0)), prompt)
