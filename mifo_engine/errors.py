"""Typed errors raised by the engine. Each names the offending input and the fix."""

from __future__ import annotations


class MifoError(Exception):
    """Base class: `field` names the input at fault, `fix` says what to do about it."""

    code = "mifo_error"

    def __init__(self, message: str, *, field: str | None = None, fix: str | None = None):
        self.message = message
        self.field = field
        self.fix = fix
        text = message if not fix else f"{message} Fix: {fix}"
        super().__init__(text)


class InputError(MifoError):
    """An image or mask cannot be used (METHOD section 1)."""

    code = "invalid_input"


class MaskSizeMismatch(InputError):
    code = "mask_size_mismatch"


class EmptyMask(InputError):
    code = "empty_mask"


class InstanceTooSmall(InputError):
    code = "instance_too_small"


class TooManyInstances(InputError):
    code = "too_many_instances"


class MasksOverlap(InputError):
    code = "masks_overlap"


class UnreadableImage(InputError):
    code = "unreadable_image"


class ConfigError(MifoError):
    """A configuration field has an unknown name or an invalid value."""

    code = "invalid_config"


class LayoutError(MifoError):
    """A synthesis prompt or box layout cannot be honoured."""

    code = "invalid_layout"


class ModelLoadError(MifoError):
    """The base model could not be found or loaded."""

    code = "model_unavailable"


class ConceptError(MifoError):
    """A concept directory is missing, incomplete or made for another base model."""

    code = "invalid_concept"


class Canceled(MifoError):
    """The progress callback asked the run to stop; nothing was produced."""

    code = "canceled"
