"""MIFO as a library: learn instance tokens from one image, synthesise them with a layout.

Heavy modules (torch, diffusers) load on first use of the names that need them, so that
`mifo_engine.config`, `.errors` and `.layout` stay cheap for the HTTP front end.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import LearnConfig, SynthesisConfig
from .errors import (
    Canceled,
    ConceptError,
    ConfigError,
    InputError,
    LayoutError,
    MifoError,
    ModelLoadError,
)

_LAZY = {
    "LoadedBase": "models",
    "load_base_model": "models",
    "DEFAULT_BASE_MODEL": "models",
    "learn": "learning",
    "Concept": "concept",
    "Progress": "runtime",
    "synthesize": "synthesis",
    "SynthesisResult": "synthesis",
    "validate_synthesis_request": "layout",
    "Segmenter": "segmentation",
    "load_segmenter": "segmentation",
    "SegmentConfig": "segprompts",
    "InstancePrompt": "segprompts",
    "DEFAULT_SEGMENT_MODEL": "sam",
    "EvaluationConfig": "evalconfig",
    "evaluate": "evaluation",
    "score_synthesis": "evaluation",
    "EvaluationResult": "evaluation",
    "FeatureModels": "features",
    "feature_models": "features",
}

__all__ = [
    "Canceled",
    "ConceptError",
    "ConfigError",
    "InputError",
    "LayoutError",
    "LearnConfig",
    "MifoError",
    "ModelLoadError",
    "SynthesisConfig",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mifo_engine' has no attribute {name!r}")
