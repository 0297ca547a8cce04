"""The service's one door into the engine (`mifo_engine`): every engine name that `api/`,
`core/` and `worker/` use comes from here, so the surface the service depends on is this
page. Importing it is cheap (no torch); learning, synthesis and loading weights import
torch when they are called, in a worker.

| what | used by |
|---|---|
| `LearnConfig`, `SynthesisConfig` | request checks (api), job runs (worker) |
| `MifoError`, `ModelLoadError`, `Canceled` | problem mapping (core.problems), the runner |
| `DEFAULT_BASE_MODEL`, `load_tokenizer`, `check_base_model`, `native_resolution` | settings, prompt and upload checks, readiness |
| `attention_structure`, `check_layers` | options against the base model's UNet (api checks; torch-free) |
| `check_inputs`, `instance_names`, `load_image`, `mask_to_binary`, `to_rgb` | upload checks, stored inputs |
| `validate_synthesis_request` | synthesis requests |
| `EvaluationConfig`, `PAPER_PROMPTS`, `plan_runs`, `check_feature_spec`, `DEFAULT_CLIP_MODEL`, `DEFAULT_DINO_MODEL` | evaluation requests and settings (torch-free) |
| `evaluate`, `score_synthesis`, `feature_models` | the worker's evaluations and scored syntheses |
| `load_base_model`, `load_concept`, `learn`, `synthesize`, `use_cpu_threads` | the worker |
| `DEFAULT_SEGMENT_MODEL`, `SegmentConfig`, `check_prompts` | segmentation settings and requests (torch-free) |
| `segmenter`, `palette` | the worker's segmentations (and the colours of their overlays) |
| `export_archive` | concept export (core.export; torch-free) |
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mifo_engine.config import LearnConfig, SynthesisConfig
from mifo_engine.errors import Canceled, MifoError, ModelLoadError
from mifo_engine.evalconfig import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_DINO_MODEL,
    PAPER_PROMPTS,
    EvaluationConfig,
    check_feature_spec,
    plan_runs,
)
from mifo_engine.inputs import check_inputs, instance_names, load_image, mask_to_binary, to_rgb
from mifo_engine.layers import check_layers
from mifo_engine.layout import validate_synthesis_request
from mifo_engine.models import (
    DEFAULT_BASE_MODEL,
    attention_structure,
    check_base_model,
    load_tokenizer,
    native_resolution,
)
from mifo_engine.sam import DEFAULT_SEGMENT_MODEL
from mifo_engine.segprompts import SegmentConfig, check_prompts

if TYPE_CHECKING:
    from mifo_engine.concept import Concept
    from mifo_engine.evaluation import EvaluationResult
    from mifo_engine.features import FeatureModels
    from mifo_engine.models import LoadedBase
    from mifo_engine.segmentation import Segmenter

__all__ = [
    "DEFAULT_BASE_MODEL",
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_DINO_MODEL",
    "DEFAULT_SEGMENT_MODEL",
    "PAPER_PROMPTS",
    "Canceled",
    "EvaluationConfig",
    "LearnConfig",
    "MifoError",
    "ModelLoadError",
    "SegmentConfig",
    "SynthesisConfig",
    "attention_structure",
    "check_base_model",
    "check_feature_spec",
    "check_layers",
    "check_inputs",
    "check_prompts",
    "evaluate",
    "instance_names",
    "export_archive",
    "feature_models",
    "learn",
    "load_base_model",
    "load_concept",
    "load_image",
    "load_tokenizer",
    "mask_to_binary",
    "native_resolution",
    "palette",
    "plan_runs",
    "score_synthesis",
    "segmenter",
    "synthesize",
    "to_rgb",
    "use_cpu_threads",
    "validate_synthesis_request",
]


def load_base_model(spec: str, *, device: str) -> LoadedBase:
    from mifo_engine.models import load_base_model as load

    return load(spec, device=device)


def use_cpu_threads(base: LoadedBase, threads: int) -> int:
    from mifo_engine.device import use_cpu_threads as use

    return use(base.device, threads)


def load_concept(folder: str) -> Concept:
    from mifo_engine.concept import Concept

    return Concept.load(folder)


def learn(base: LoadedBase, **kwargs: Any) -> Any:
    """mifo_engine.learning.learn: the learned concept."""
    from mifo_engine.learning import learn as run

    return run(base, **kwargs)


def synthesize(base: LoadedBase, concept: Concept, **kwargs: Any) -> Any:
    """mifo_engine.synthesis.synthesize: the images and their diagnostics."""
    from mifo_engine.synthesis import synthesize as run

    return run(base, concept, **kwargs)


def evaluate(base: LoadedBase, concept: Concept, **kwargs: Any) -> EvaluationResult:
    """mifo_engine.evaluation.evaluate: the concept's quality metrics, its images and chart."""
    from mifo_engine.evaluation import evaluate as run

    return run(base, concept, **kwargs)


def score_synthesis(result: Any, concept: Concept, features: FeatureModels, **kwargs: Any) -> Any:
    """mifo_engine.evaluation.score_synthesis: the metrics of each image of a synthesis."""
    from mifo_engine.evaluation import score_synthesis as run

    return run(result, concept, features, **kwargs)


def feature_models(clip_model: str, dino_model: str, *, device: str) -> FeatureModels:
    """mifo_engine.features.feature_models: CLIP and DINO, each loaded on its first use; the
    set asked for last is kept (a worker scores every job with the one set)."""
    from mifo_engine.features import feature_models as get

    return get(clip_model, dino_model, device=device)


def palette() -> tuple[tuple[int, int, int], ...]:
    """mifo_engine.render.PALETTE: the instances' colours, in order (previews, the console)."""
    from mifo_engine.render import PALETTE

    return PALETTE


def segmenter(spec: str, *, device: str, config: SegmentConfig | None = None) -> Segmenter:
    """mifo_engine.segmentation.Segmenter on the SAM of `spec`, loaded on its first request;
    it keeps the embeddings of the images it saw last (the clicks after the first are cheap)."""
    from mifo_engine.segmentation import Segmenter

    return Segmenter(spec, config, device=device)


def export_archive(concept_dir: str, archive: str) -> Any:
    """mifo_engine.export.export_archive: the concept as a zip of diffusers files."""
    from mifo_engine.export import export_archive as run

    return run(concept_dir, archive)
