"""Frozen, typed run configurations with the paper's defaults (METHOD.md).

Every number of the method is a field here; code never hides one. Resolutions of attention
layers are given for SD 2.1 at 512 px (a 64x64 latent); on the model actually used each names
the block of the same rank from the coarsest at its place (`layers`), so the same config
selects the same places on SD 2.1 at any size, on the tiny test UNet, and on UNets of other
depths.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

import pydantic

from .errors import ConfigError

AttnLoss = Literal["none", "reward", "penalty", "reward_then_penalty"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Phase2Mode = Literal["lora", "full"]
Switch = Literal["auto", "on", "off"]
Optimizer = Literal["auto", "adamw", "adamw_fused", "adamw_8bit"]
Place = Literal["down", "mid", "up"]

# Words hidden from every pixel in bounded cross-attention: articles, prepositions,
# conjunctions. A fixed offline list so no NLP model has to be downloaded.
_FILLER_WORDS = (
    "a an the of and or in on at with by for from to into onto over under near beside next "
    "behind above below between across through around but nor so yet , ."
)
FILLER_WORDS: tuple[str, ...] = tuple(_FILLER_WORDS.split())


class _Config:
    """Construction from JSON-like mappings and files, copies with changes, plain dicts."""

    # deprecated field name -> its current name; read by from_mapping, from_file and replace
    RENAMED: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Self:
        """Build from a mapping (e.g. parsed JSON): unknown names and wrong types are refused.

        A deprecated field name (`RENAMED`) is read as its current name.
        """
        return cls(**_validated(cls, cls._current_names(values)))

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        """Build from a JSON file holding an object of fields."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"Cannot read config file {path}: {exc}.",
                field="config",
                fix="pass a JSON object file",
            ) from exc
        if not isinstance(data, dict):
            raise ConfigError(
                f"Config file {path} must hold a JSON object.",
                field="config",
                fix="wrap the fields in {...}",
            )
        return cls.from_mapping(data)

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed, validated like a new config."""
        return self.from_mapping({**self.to_dict(), **self._current_names(changes)})

    @classmethod
    def _current_names(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """`values` with deprecated field names replaced by the current ones."""
        out = dict(values)
        for old, new in cls.RENAMED.items():
            if old not in out:
                continue
            if new in out:
                raise ConfigError(
                    f"{cls.__name__} fields '{old}' and '{new}' are both given; '{old}' is the "
                    f"deprecated name of '{new}'.",
                    field=old,
                    fix=f"give '{new}' only",
                )
            out[new] = out.pop(old)
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit number


@dataclass(frozen=True)
class LearnConfig(_Config):
    """One learning run (METHOD sections 1-3 and the learning switches of section 5)."""

    seed: int = 0
    # --- inputs (section 1)
    resolution: int | None = None  # None: the base model's native size (512 for SD 2.1)
    max_instances: int = 8  # more instances dilute each token's share of the attention
    min_instance_share: float = 0.0  # reject below this share of the image (paper: 0.15)
    warn_instance_share: float = 0.01  # log a warning below this share
    # Two masks sharing more of their pixels than this (intersection over union) are one
    # instance twice: their tokens could not be told apart, so the request is refused.
    max_mask_overlap: float = 0.8
    mask_threshold: float = 0.5  # foreground = luminance (or alpha) above this fraction
    init_words: tuple[str, ...] = ()  # one word per instance (e.g. "car"); empty = random init
    # --- sampling (section 2.1)
    joint_sampling: bool = True  # False: one instance per step (ablation "separate")
    flip_prob: float = 0.5
    prompt_prefix: str = "a photo of"
    # --- noise schedule (DDPM, section 2.2)
    train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    # --- losses (section 2.3-2.5)
    lambda_rec: float = 1.0
    attn_loss: AttnLoss = "reward_then_penalty"
    t_attn: int = 500  # attention loss only for t < t_attn: early steps carry the layout
    attn_loss_place: Place = "up"
    attn_loss_resolutions: tuple[int, ...] = (16, 32)
    lambda_reward: float = 1e-2
    reward_alpha: float = 0.5  # target attention inside the mask: soft, not saturated
    lambda_penalty: float = 2e-2
    # --- phase 1 optimisation (section 2.6)
    # None: the first quarter of phase 1 (the paper: 200 reward + 600 penalty = 800 steps),
    # so that a shorter or longer run keeps the schedule's shape instead of running
    # reward-only once phase1_steps < 200. `reward_iterations` is the resolved number.
    reward_steps: int | None = None
    phase1_steps: int = 800  # reward steps included
    lr: float = 5e-3
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    weight_decay: float = 1e-2
    lr_warmup_steps: int = 10
    lr_num_cycles: int = 1
    grad_clip: float = 1.0
    # --- phase 2 fine-tune (section 3)
    phase2: bool = True
    phase2_mode: Phase2Mode = "lora"
    phase2_steps: int = 400
    phase2_lr: float = 2e-6  # full fine-tune
    phase2_lora_lr: float = 1e-4
    lora_rank: int = 16
    lora_alpha: int = 16  # adapter scale = lora_alpha / lora_rank
    phase2_lambda_penalty: float = 2e-2
    phase2_attn_places: tuple[Place, ...] = ("down", "up")
    phase2_attn_resolutions: tuple[int, ...] = (16,)
    prior_preservation: bool = False
    class_prompt: str | None = None  # e.g. "a photo of a toy"; required with prior preservation
    num_class_images: int = 8
    prior_loss_weight: float = 1.0
    class_image_steps: int = 50
    # --- diagnostics (section 6)
    diagnostic_timesteps: tuple[int, ...] = (100, 250, 400)
    # --- execution
    precision: Precision = (
        "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; fp16 adds loss scaling
    )
    gradient_checkpointing: Switch = "auto"  # auto: on for CUDA (memory), off on CPU (speed)
    optimizer: Optimizer = "auto"  # auto: fused AdamW on CUDA; adamw_8bit needs bitsandbytes
    phase2_train_text_encoder: bool = True  # off: text encoder frozen, its outputs cached
    tf32: bool = True

    def __post_init__(self) -> None:
        _validated(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        _require(0 <= self.seed <= MAX_SEED, "seed", f"a number from 0 to {MAX_SEED}")
        _require(self.phase1_steps >= 0, "phase1_steps", "a number >= 0")
        _require(self.phase2_steps >= 0, "phase2_steps", "a number >= 0")
        _require(
            self.reward_steps is None or self.reward_steps >= 0,
            "reward_steps",
            "a number >= 0, or null for the first quarter of phase1_steps",
        )
        _require(
            0 <= self.t_attn <= self.train_timesteps, "t_attn", "a number in [0, train_timesteps]"
        )
        _require(0.0 <= self.flip_prob <= 1.0, "flip_prob", "a number in [0, 1]")
        _require(0.0 < self.mask_threshold < 1.0, "mask_threshold", "a number in (0, 1)")
        _require(self.max_instances >= 1, "max_instances", "a number >= 1")
        _require(0.0 <= self.min_instance_share < 1.0, "min_instance_share", "a number in [0, 1)")
        _require(0.0 < self.max_mask_overlap <= 1.0, "max_mask_overlap", "a number in (0, 1]")
        _require(self.lr > 0, "lr", "a number > 0")
        _require(self.lora_rank >= 1, "lora_rank", "a number >= 1")
        _require(
            not self.prior_preservation or bool(self.class_prompt),
            "class_prompt",
            "a class description such as 'a photo of a toy' when prior_preservation is on",
        )
        _require(
            self.resolution is None or self.resolution % 8 == 0,
            "resolution",
            "a multiple of 8",
        )

    @property
    def reward_iterations(self) -> int:
        """Phase-1 iterations that use the reward term before the penalty takes over."""
        if self.reward_steps is None:  # a quarter, rounded: 200 of 800, 1 of 2
            return (self.phase1_steps + 2) // 4
        return self.reward_steps

    # The attention loss schedule of section 2.4: reward first, penalty afterwards.
    def attn_term(self, step: int) -> Literal["none", "reward", "penalty"]:
        """Which attention term phase-1 iteration `step` (0-based) uses."""
        if self.attn_loss == "none":
            return "none"
        if self.attn_loss == "reward":
            return "reward"
        if self.attn_loss == "penalty":
            return "penalty"
        return "reward" if step < self.reward_iterations else "penalty"


@dataclass(frozen=True)
class SynthesisConfig(_Config):
    """One synthesis request (METHOD section 4 and the synthesis switches of section 5)."""

    # the deprecated `weight_decay` read like LearnConfig's AdamW weight decay; stored options
    # of older jobs still use it
    RENAMED: ClassVar[Mapping[str, str]] = {"weight_decay": "alpha_decay"}

    steps: int = 50
    guidance_scale: float = 7.5
    eta: float = 0.0
    num_images: int = 1
    seed: int = 0
    seeds: tuple[int, ...] | None = None  # explicit seeds; default seed, seed+1, ...
    negative_prompt: str = ""
    # --- box control switches (section 5)
    box_control: bool = True
    # off: no self-attention mask; the self-attention loss term stays (as the reference)
    sa_control: bool = True
    # off: no cross-attention mask; the cross-attention loss term stays (as the reference)
    ca_control: bool = True
    in_box_term: bool = True
    out_box_term: bool = True
    alpha_decay: bool = True  # False: constant alpha_max (Eq. 11 switched off)
    mask_refinement: bool = True
    # --- latent optimisation (Eq. 6-15)
    guidance_steps: int = 15
    max_guidance_iters: int = 5
    # checked before each iteration, as the reference: the update of the iteration that got
    # under it is applied, and every guided step makes at least one update
    loss_threshold: float = 0.2
    step_size_start: float = 8.0
    step_size_end: float = 2.0
    alpha_max: float = 0.4
    alpha_mid: float = 0.1
    alpha_min: float = 0.01
    alpha_mid_step: int = 3
    alpha_min_step: int = 15
    ca_weight: float = 1.5
    sa_weight: float = 0.5
    loss_layers: tuple[tuple[Place, int], ...] = (("mid", 8), ("up", 16))
    # --- mask refinement (Bounded Attention)
    refine_start: int = 15
    refine_every: int = 5
    refine_place: Place = "up"
    refine_resolution: int = 16
    num_clusters: int = 3  # per subject
    kmeans_iters: int = 100  # Lloyd updates at most per fit (reference: torch_kmeans' 100)
    kmeans_tol: float = 1e-4  # a fit stops once its centroids move less than this (reference)
    # random starts of the first fit, the lowest inertia kept; later fits warm-start from the
    # previous centroids with one (reference: 100). Fewer is faster and less stable.
    kmeans_inits: int = 100
    cluster_score_threshold: float = 0.2
    ca_mask_sharpness: float = 10.0
    ca_mask_offset: float = 0.2
    # added to the maxima that attention maps are divided by, so an all-zero map stays
    # finite (reference: 1e-5)
    map_norm_eps: float = 1e-5
    filler_words: tuple[str, ...] = FILLER_WORDS
    # --- execution
    precision: Precision = "auto"
    tf32: bool = True

    def __post_init__(self) -> None:
        _validated(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        _require(self.steps >= 1, "steps", "a number >= 1")
        _require(self.num_images >= 1, "num_images", "a number >= 1")
        _require(self.guidance_scale >= 1.0, "guidance_scale", "a number >= 1.0")
        _require(self.guidance_steps >= 0, "guidance_steps", "a number >= 0")
        _require(self.max_guidance_iters >= 1, "max_guidance_iters", "a number >= 1")
        _require(self.num_clusters >= 1, "num_clusters", "a number >= 1")
        _require(self.kmeans_iters >= 1, "kmeans_iters", "a number >= 1")
        _require(self.kmeans_inits >= 1, "kmeans_inits", "a number >= 1")
        _require(self.kmeans_tol >= 0, "kmeans_tol", "a number >= 0")
        _require(self.map_norm_eps > 0, "map_norm_eps", "a number > 0")
        _require(self.refine_every >= 1, "refine_every", "a number >= 1")
        _require(
            0 <= self.seed <= MAX_SEED - self.num_images, "seed", f"a number from 0 to {MAX_SEED}"
        )
        _require(
            self.seeds is None or all(0 <= x <= MAX_SEED for x in self.seeds),
            "seeds",
            f"numbers from 0 to {MAX_SEED}",
        )
        _require(
            self.seeds is None or len(self.seeds) == self.num_images,
            "seeds",
            "a list of exactly num_images seeds (or null for seed, seed+1 and so on)",
        )

    def image_seeds(self) -> list[int]:
        """The seed of each image in the batch."""
        return (
            list(self.seeds)
            if self.seeds is not None
            else [self.seed + i for i in range(self.num_images)]
        )


def _require(ok: bool, name: str, rule: str) -> None:
    """Raise a ConfigError unless `ok`; `rule` completes "'name' must be ..."."""
    if not ok:
        raise ConfigError(
            f"Config field '{name}' must be {rule}.", field=name, fix=f"set '{name}' to {rule}"
        )


def _lists_as_tuples(value: Any) -> Any:
    """JSON has lists where the configs declare tuples (nested for `loss_layers`)."""
    if isinstance(value, list):
        return tuple(_lists_as_tuples(v) for v in value)
    return value


@functools.cache
def _schema(cls: type) -> type[pydantic.BaseModel]:
    """The fields of a config class as a strict pydantic model: no coercion of strings or
    booleans into numbers, no NaN or infinities, no unknown names."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {
        f.name: (Annotated[hints[f.name], pydantic.BeforeValidator(_lists_as_tuples)], f.default)
        for f in dataclasses.fields(cls)
    }
    settings = pydantic.ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
    return pydantic.create_model(cls.__name__, __config__=settings, **fields)


def _validated(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` checked against the fields of `cls`; the first problem as a ConfigError."""
    try:
        model = _schema(cls).model_validate(dict(values))
    except pydantic.ValidationError as exc:
        raise _config_error(cls, values, exc.errors()) from None
    return {name: getattr(model, name) for name in values}


def _config_error(cls: type, values: Mapping[str, Any], errors: list[Any]) -> ConfigError:
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        known = ", ".join(sorted(f.name for f in dataclasses.fields(cls)))
        return ConfigError(
            f"Unknown {cls.__name__} field(s): {', '.join(unknown)}.",
            field=unknown[0],
            fix=f"remove them; known fields are: {known}",
        )
    name = str(errors[0]["loc"][0])
    value = values[name]
    if any(e["type"] == "finite_number" for e in errors) or _huge(value):
        return ConfigError(
            f"Config field '{name}' must be a finite number, not {value!r}.",
            field=name,
            fix=f"give '{name}' a finite number (NaN and infinities are not settings)",
        )
    return ConfigError(
        f"Config field '{name}' cannot be {value!r}.",
        field=name,
        fix=f"give {_describe(typing.get_type_hints(cls)[name])}",
    )


def _huge(value: Any) -> bool:
    """An integer too large for a float, where a float is declared."""
    return (
        isinstance(value, int) and not isinstance(value, bool) and abs(value) > sys.float_info.max
    )


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    name = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
    return f"a value of type {name}"
