"""Quality evaluation of a learned concept: the paper's SIM-C, SIM-D, NSIM-D and CS.

`evaluate` runs the protocol (the recontextualisation prompts of `EvaluationConfig`
synthesised with one box per instance, then scored); `score_synthesis` scores a synthesis
that was made already. Definitions and choices: docs/engine-api.md, "Evaluation".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .concept import Concept
from .config import SynthesisConfig
from .errors import ConceptError, ConfigError, LayoutError
from .evalconfig import EvaluationConfig, PromptRun, named_text, plan_runs
from .features import FeatureModels, feature_models
from .layout import validate_synthesis_request
from .metrics import (
    ImageScore,
    MetricRow,
    SubjectScore,
    composite_score,
    identity_scores,
    masked_crop,
    metric_rows,
    region_mask,
)
from .runtime import Progress, ProgressFn, atomic_directory, report, versions

if TYPE_CHECKING:
    from .inputs import ImageSource
    from .models import LoadedBase
    from .synthesis import SynthesisResult

PHASE = "evaluation"


@dataclass(frozen=True)
class References:
    """Each instance of the input as DINO sees it: masked crops and their embeddings."""

    tokens: tuple[str, ...]
    crops: tuple[Image.Image, ...]
    embeddings: np.ndarray  # (N, d), L2-normalised

    def index(self, token: str) -> int:
        return self.tokens.index(token)


def instance_references(
    concept: Concept,
    features: FeatureModels,
    fill: Sequence[int],
    inputs: tuple[ImageSource, Sequence[ImageSource]] | None = None,
) -> References:
    """The masked input instances: the concept's own input image and masks, or `inputs`
    (the image and masks learning was given, prepared as learning prepared them)."""
    if inputs is not None:
        from .inputs import prepare_inputs

        prepared = prepare_inputs(
            inputs[0], inputs[1], resolution=concept.resolution, config=concept.config
        )
        image, masks = prepared.image_rgb, [m > 0.5 for m in prepared.masks.numpy()]
    elif concept.input_image is not None and len(concept.input_masks) == len(concept.tokens):
        image = concept.input_image
        masks = [np.asarray(m.convert("L")) > 127 for m in concept.input_masks]
    else:
        raise ConceptError(
            "This concept does not hold its input masks (it was saved before concepts kept "
            "them), so its instances cannot be compared with what synthesis draws.",
            field="concept",
            fix="pass the image and masks it was learned from (inputs=, or --image and --mask "
            "of mifo evaluate), or learn it again",
        )
    if len(masks) != len(concept.tokens):
        raise ConceptError(
            f"{len(masks)} masks given for a concept of {len(concept.tokens)} instances.",
            field="masks",
            fix="give the masks the concept was learned from, in order",
        )
    crops = tuple(masked_crop(image, mask, fill) for mask in masks)
    tokens = tuple(t.token for t in concept.tokens)
    return References(tokens, crops, features.dino_images(crops))


def score_synthesis(
    result: SynthesisResult,
    concept: Concept,
    features: FeatureModels,
    *,
    references: References | None = None,
    regions: Sequence[Mapping[str, np.ndarray]] | None = None,
    fill: Sequence[int] | None = None,
    inputs: tuple[ImageSource, Sequence[ImageSource]] | None = None,
) -> list[ImageScore]:
    """SIM-C of each image, and SIM-D, NSIM-D and CS of each boxed subject in it.

    A subject's region is its box, or its refined mask where `regions` (per image: token ->
    bool mask at any resolution) holds one; prompt tokens without a box get no SIM-D. The
    input instances are the concept's own, or `inputs` (its image and masks) for a concept
    saved without them.
    """
    fill = tuple(fill) if fill is not None else EvaluationConfig().fill
    refs = references or instance_references(concept, features, fill, inputs)
    names = {t.token: t.name for t in concept.tokens}
    text = named_text(result.layout.prompt, names)
    sim_c = features.clip_images(result.images) @ features.text([text])[0]
    subjects = result.layout.subjects
    crops = [
        masked_crop(
            image,
            region_mask(s.box, image.size, (regions[i].get(s.token) if regions else None)),
            fill,
        )
        for i, image in enumerate(result.images)
        for s in subjects
    ]
    dino = features.dino_images(crops) if crops else np.zeros((0, 0))
    scores = []
    for i, seed in enumerate(result.seeds):
        row = []
        for k, s in enumerate(subjects):
            sim_d, nsim_d = identity_scores(
                dino[i * len(subjects) + k], refs.embeddings, refs.index(s.token)
            )
            row.append(
                SubjectScore(
                    s.token, sim_d, nsim_d, composite_score(float(sim_c[i]), sim_d, nsim_d)
                )
            )
        scores.append(
            ImageScore(result.layout.prompt, text, int(seed), float(sim_c[i]), tuple(row))
        )
    return scores


@dataclass
class EvaluationResult:
    """The metrics of a concept: one row per token, the mean row, and every image's scores."""

    rows: list[MetricRow]
    mean: MetricRow
    images: list[ImageScore]
    generated: list[Image.Image]  # aligned with `images`
    references: References
    config: EvaluationConfig
    synthesis: SynthesisConfig
    features: dict[str, dict[str, str | None]]
    concept_base: dict[str, Any]
    versions: dict[str, str] = field(default_factory=versions)

    def record(self) -> dict[str, Any]:
        """The content of evaluation.json."""
        return {
            "rows": [r.to_dict() for r in self.rows],
            "mean": self.mean.to_dict(),
            "images": [s.to_dict() for s in self.images],
            "config": self.config.to_dict(),
            "synthesis": self.synthesis.to_dict(),
            "feature_models": self.features,
            "references": {t: f"references/{_slug(t)}.png" for t in self.references.tokens},
            "base_model": self.concept_base,
            "versions": self.versions,
        }

    def to_json(self) -> str:
        return json.dumps(self.record(), indent=2)

    def table(self) -> str:
        """The rows as a fixed-width text table (mean +- std; CS is the composite of means)."""
        return format_table([*self.rows, self.mean])

    def chart(self) -> Image.Image:
        """A bar chart of the rows: each metric's mean, with its spread as an error bar."""
        from .evalchart import metrics_chart

        return metrics_chart([*self.rows, self.mean], title=_chart_title(self))

    def save(self, directory: str | Path) -> Path:
        """Write evaluation.json, chart.png, the images and the masked references atomically."""
        with atomic_directory(directory) as tmp:
            (tmp / "images").mkdir()
            (tmp / "references").mkdir()
            for image, score in zip(self.generated, self.images, strict=True):
                image.save(tmp / "images" / str(score.file))
            for token, crop in zip(self.references.tokens, self.references.crops, strict=True):
                crop.save(tmp / "references" / f"{_slug(token)}.png")
            self.chart().save(tmp / "chart.png")
            (tmp / "evaluation.json").write_text(self.to_json())
        return Path(directory)


def evaluate(
    base: LoadedBase,
    concept: Concept,
    *,
    prompts: Sequence[str] | None = None,
    images_per_prompt: int | None = None,
    steps: int | None = None,
    seed: int | None = None,
    config: EvaluationConfig | None = None,
    synthesis: SynthesisConfig | None = None,
    features: FeatureModels | None = None,
    inputs: tuple[ImageSource, Sequence[ImageSource]] | None = None,
    progress: ProgressFn | None = None,
) -> EvaluationResult:
    """Synthesise the protocol's prompts with the concept and score every image.

    `prompts`, `images_per_prompt`, `steps` and `seed` override `config`'s; `synthesis`
    gives the other synthesis settings (its count, seeds and steps are the protocol's).
    `features` defaults to `feature_models(config.clip_model, config.dino_model)` on the
    base model's device. `progress` gets Progress("evaluation", step, total), counting the
    denoising steps of all syntheses; returning False stops the run (Canceled).
    """
    from .synthesis import synthesize

    cfg = _config(config, prompts, images_per_prompt, steps, seed)
    runs = _checked_runs(base, concept, cfg)
    synth = _synthesis_config(synthesis or SynthesisConfig(), cfg)
    models = features or feature_models(cfg.clip_model, cfg.dino_model, device=str(base.device))
    refs = instance_references(concept, models, cfg.fill, inputs)
    total = len(runs) * cfg.steps
    report(progress, Progress(PHASE, 0, total))
    scores: list[ImageScore] = []
    generated: list[Image.Image] = []
    for k, run in enumerate(runs):
        relay = _relay(progress, k * cfg.steps, total)
        made = synthesize(base, concept, run.prompt, run.boxes, config=synth, progress=relay)
        regions = made.refined_masks or None  # the refined masks where refinement ran
        scores += score_synthesis(
            made, concept, models, references=refs, regions=regions, fill=cfg.fill
        )
        generated += made.images
    report(progress, Progress(PHASE, total, total))
    named = [_with_file(s, n) for n, s in enumerate(scores)]
    rows, mean = metric_rows(named, {t.token: t.name for t in concept.tokens})
    return EvaluationResult(
        rows=rows,
        mean=mean,
        images=named,
        generated=generated,
        references=refs,
        config=cfg,
        synthesis=synth,
        features=models.provenance(),
        concept_base=concept.metadata()["base_model"],
    )


def _config(
    config: EvaluationConfig | None,
    prompts: Sequence[str] | None,
    images_per_prompt: int | None,
    steps: int | None,
    seed: int | None,
) -> EvaluationConfig:
    changes: dict[str, Any] = {
        "images_per_prompt": images_per_prompt,
        "steps": steps,
        "seed": seed,
        "prompts": None if prompts is None else tuple(prompts),
    }
    cfg = config or EvaluationConfig()
    given = {k: v for k, v in changes.items() if v is not None}
    return cfg.replace(**given) if given else cfg


def _checked_runs(base: LoadedBase, concept: Concept, cfg: EvaluationConfig) -> list[PromptRun]:
    """The protocol's syntheses, each prompt and its boxes checked before any work."""
    runs = plan_runs([(t.token, t.name) for t in concept.tokens], cfg)
    meta = concept.metadata()
    for run in runs:
        try:
            validate_synthesis_request(meta, run.prompt, run.boxes, base.tokenizer)
        except LayoutError as exc:
            raise ConfigError(
                f"Prompt {run.prompt!r} cannot be synthesised: {exc.message}",
                field="prompts",
                fix=exc.fix,
            ) from exc
    return runs


def _synthesis_config(synthesis: SynthesisConfig, cfg: EvaluationConfig) -> SynthesisConfig:
    return synthesis.replace(
        num_images=cfg.images_per_prompt,
        seed=cfg.seed,
        seeds=None,
        steps=cfg.steps,
        guidance_steps=min(synthesis.guidance_steps, cfg.steps),
    )


def _relay(progress: ProgressFn | None, done: int, total: int) -> ProgressFn | None:
    """One synthesis' reports as the evaluation's: steps counted over all syntheses."""
    if progress is None:
        return None

    def relay(p: Progress) -> bool | None:
        if p.step == 0:  # the start of a synthesis: the step before was reported already
            return None
        return progress(Progress(PHASE, done + p.step, total, p.losses))

    return relay


def _with_file(score: ImageScore, n: int) -> ImageScore:
    from dataclasses import replace

    return replace(score, file=f"image_{n:03d}.png")


def _slug(token: str) -> str:
    return token.strip("<>").replace("/", "_")


def _chart_title(result: EvaluationResult) -> str:
    cfg = result.config
    runs = len(result.images) // cfg.images_per_prompt
    return (
        f"{runs} syntheses x {cfg.images_per_prompt} images, {cfg.steps} steps "
        "(bars: mean over images, lines: std)"
    )


def format_table(rows: Sequence[MetricRow]) -> str:
    """Rows as text: token, name, images, SIM-C, SIM-D, NSIM-D (mean +- std) and CS."""

    def cell(mean: float | None, std: float | None) -> str:
        return "-" if mean is None else f"{mean:.4f} +- {0.0 if std is None else std:.4f}"

    header = ("token", "name", "images", "SIM-C", "SIM-D", "NSIM-D", "CS")
    lines = [header]
    for r in rows:
        cs = "-" if r.cs is None else f"{r.cs:.4f}"
        lines.append(
            (
                r.token,
                r.name,
                str(r.images),
                cell(r.sim_c.mean, r.sim_c.std),
                cell(r.sim_d.mean, r.sim_d.std),
                cell(r.nsim_d.mean, r.nsim_d.std),
                cs,
            )
        )
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
