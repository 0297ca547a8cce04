"""A request's options against the server's base model: options naming attention layers its
UNet lacks (a decoder side past its finest block, a mid block without cross-attention) are
refused here, naming the option and what the model offers, instead of failing the job. The
engine reads where the UNet has cross-attention from its config, without torch."""

from __future__ import annotations

from typing import Any

from core.engine import LearnConfig, MifoError, SynthesisConfig, check_layers
from core.problems import from_engine


def fits_model(config: LearnConfig | SynthesisConfig, structure: Any) -> None:
    """422 invalid_config (field `options.<name>`) unless every attention layer `config`
    names exists on the base model (`structure`: `AppState.attention_structure()`)."""
    try:
        check_layers(structure, config)
    except MifoError as exc:
        raise from_engine(exc, prefix="options.") from exc
