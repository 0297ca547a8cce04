"""Attention layers on any SD-style UNet: where they are, which ones each part of the method
reads, and the refusal of a configuration that names layers the model does not have.

No torch here: the HTTP front end checks a request's options against the base model's UNet
config with this module before a job is queued, and the engine checks them against the
loaded UNet before a run does any work.

The rule (docs/engine-api.md, "Base models"). Configs name attention layers as SD 2.1 base
has them at 512 px: a place (`down`, `mid`, `up`) and the side of the layer's map for a 64x64
latent. At each place, a model's blocks with cross-attention, counted from the coarsest, are
ranks 0, 1, 2, ...; a configured side `s` names rank `k` where `s = c * 2**k`, `c` being
SD 2.1's coarsest cross-attention side at that place (down 16, mid 8, up 16, read from its
UNet config). A named rank selects that block's layers (cross-attention, and self-attention
where the method reads it too); on SD 2.1 and on every UNet of its layout (the built-in
`tiny` included) that is the very layer the side names. A rank the model lacks is refused
with `ConfigError`, naming the field and what the model offers.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .config import LearnConfig, Place, SynthesisConfig
from .errors import ConfigError, ModelLoadError
from .sources import UNSUPPORTED_FIX

Kind = Literal["self", "cross"]
Block = tuple[str, int]  # a place and a block index there (0 for the mid block)

REFERENCE_LATENT = 64  # config sides are given for SD 2.1 at 512 px
PLACES: tuple[Place, ...] = ("down", "mid", "up")
_NAME = re.compile(
    r"^(down_blocks\.(\d+)|mid_block|up_blocks\.(\d+))\..*\.(attn1|attn2)\.processor$"
)
# The block types whose attention modules are transformer blocks (attn1 self, attn2 cross),
# as diffusers names them (it also reads a "UNetRes" prefix); the mid block's default first.
_CROSS_BLOCKS: dict[str, str] = {
    "down": "CrossAttnDownBlock2D",
    "mid": "UNetMidBlock2DCrossAttn",
    "up": "CrossAttnUpBlock2D",
}


@dataclass(frozen=True)
class AttnLayer:
    """One attention module of the UNet, located by place, block and resolution."""

    name: str  # processor key, as in unet.attn_processors
    place: Place
    block: int  # index within its place (0 for the mid block)
    kind: Kind
    resolution: int  # side of the square feature map this layer sees, for the model's latent


def unet_attention_layers(
    processor_names: Iterable[str], unet_config: Mapping[str, Any], latent_size: int
) -> list[AttnLayer]:
    """Describe every attention processor of a UNet from its name and the UNet config."""
    n_levels = len(unet_config["block_out_channels"])
    layers = []
    for name in processor_names:
        m = _NAME.match(name)
        if m is None:
            continue
        kind: Kind = "self" if m.group(4) == "attn1" else "cross"
        if m.group(2) is not None:
            place: Place = "down"
            block = int(m.group(2))
            level = block
        elif m.group(3) is not None:
            place, block = "up", int(m.group(3))
            level = n_levels - 1 - block
        else:
            place, block, level = "mid", 0, n_levels - 1
        layers.append(AttnLayer(name, place, block, kind, _side(latent_size, level)))
    return layers


def _side(latent_size: int, level: int) -> int:
    return max(1, latent_size >> level)


@dataclass(frozen=True)
class AttnStructure:
    """Where a UNet has cross-attention: per place its blocks, the coarsest first, and the
    side of each block's maps at `latent_size`."""

    latent_size: int
    blocks: Mapping[str, tuple[int, ...]]
    sides: Mapping[Block, int]

    @classmethod
    def from_layers(cls, layers: Iterable[AttnLayer], latent_size: int) -> AttnStructure:
        """From the layers of a loaded UNet (`unet_attention_layers`)."""
        sides: dict[Block, int] = {
            (lay.place, lay.block): lay.resolution for lay in layers if lay.kind == "cross"
        }
        return cls._of(latent_size, sides)

    @classmethod
    def from_unet_config(cls, config: Mapping[str, Any], latent_size: int) -> AttnStructure:
        """From a UNet2DConditionModel config alone (no weights, no torch)."""
        n_levels = len(config["block_out_channels"])
        sides: dict[Block, int] = {}
        for place, key in (("down", "down_block_types"), ("up", "up_block_types")):
            for i, kind in enumerate(config[key]):
                if _is_cross(place, kind):
                    level = i if place == "down" else n_levels - 1 - i
                    sides[(place, i)] = _side(latent_size, level)
        if _is_cross("mid", config.get("mid_block_type", _CROSS_BLOCKS["mid"])):
            sides[("mid", 0)] = _side(latent_size, n_levels - 1)
        return cls._of(latent_size, sides)

    @classmethod
    def _of(cls, latent_size: int, sides: Mapping[Block, int]) -> AttnStructure:
        # coarse first: the down blocks from the last, the up blocks from the first
        blocks: dict[str, tuple[int, ...]] = {
            place: tuple(sorted((b for p, b in sides if p == place), reverse=place == "down"))
            for place in PLACES
        }
        return cls(latent_size, blocks, dict(sides))

    def block_at(self, place: str, side: int) -> int | None:
        """The block that a configured (place, side) names on this model, or None."""
        first = reference_sides().get(place)
        if first is None or side < first or side % first or (side // first) & (side // first - 1):
            return None
        rank = (side // first).bit_length() - 1
        have = self.blocks.get(place, ())
        return have[rank] if rank < len(have) else None

    def offers(self) -> str:
        """What a config can name on this model, place by place, with the maps' sides."""
        parts = []
        for place in PLACES:
            first = reference_sides()[place]
            names = [
                f"{first << k} ({self.sides[(place, b)]}x{self.sides[(place, b)]})"
                for k, b in enumerate(self.blocks[place])
            ]
            parts.append(f"{place} {', '.join(names) if names else 'none'}")
        return "; ".join(parts)

    def names(self, place: str) -> list[int]:
        """The sides a config may name at `place` on this model."""
        first = reference_sides().get(place, 0)
        return [first << k for k in range(len(self.blocks.get(place, ())))]


def _is_cross(place: str, block_type: str | None) -> bool:
    if block_type is None:
        return False
    return block_type.removeprefix("UNetRes") == _CROSS_BLOCKS[place]


@functools.cache
def reference_sides() -> dict[str, int]:
    """SD 2.1 base's coarsest cross-attention side at each place, at 512 px (64x64 latent)."""
    from .builtin import sd21_unet_config

    ref = AttnStructure.from_unet_config(sd21_unet_config(), REFERENCE_LATENT)
    return {place: ref.sides[(place, ref.blocks[place][0])] for place in PLACES}


def check_supported(unet_config: Mapping[str, Any], structure: AttnStructure, where: str) -> None:
    """ModelLoadError unless the method can run on a UNet of this config and structure."""
    extra = unet_config.get("addition_embed_type")
    if extra:
        raise ModelLoadError(
            f"Base model {where}: its UNet needs added conditioning (addition_embed_type "
            f"{extra!r}, as SDXL's does), which this engine does not give.",
            field="model",
            fix=UNSUPPORTED_FIX,
        )
    if not structure.blocks["up"]:
        raise ModelLoadError(
            f"Base model {where}: its UNet has no cross-attention in its up blocks, which "
            f"learning and synthesis read (it has: {structure.offers()}).",
            field="model",
            fix=UNSUPPORTED_FIX,
        )


# --- the layers each part of the method reads


@dataclass(frozen=True)
class LearnBlocks:
    """The blocks whose cross-attention a learning run's losses and diagnostics read."""

    phase1: frozenset[Block]
    phase2: frozenset[Block]
    diagnostics: frozenset[Block]  # every up block with cross-attention


@dataclass(frozen=True)
class SynthesisBlocks:
    """The blocks a synthesis reads: the loss blocks in config order, the refinement block."""

    loss: tuple[Block, ...]
    refine: Block | None


def learn_blocks(structure: AttnStructure, cfg: LearnConfig) -> LearnBlocks:
    """The blocks `cfg` names on this model; ConfigError where a loss that runs names one the
    model lacks."""
    phase2_runs = cfg.phase2 and cfg.phase2_steps > 0
    return LearnBlocks(
        phase1=_named(
            structure,
            ("attn_loss_place", (cfg.attn_loss_place,)),
            ("attn_loss_resolutions", cfg.attn_loss_resolutions),
            strict=cfg.attn_loss != "none",
        ),
        phase2=_named(
            structure,
            ("phase2_attn_places", cfg.phase2_attn_places),
            ("phase2_attn_resolutions", cfg.phase2_attn_resolutions),
            strict=phase2_runs,
        ),
        diagnostics=frozenset(("up", b) for b in structure.blocks["up"]),
    )


def synthesis_blocks(structure: AttnStructure, cfg: SynthesisConfig) -> SynthesisBlocks:
    """The blocks `cfg` names on this model; ConfigError where one is missing (the refinement
    block only when box control refines masks)."""
    if not cfg.loss_layers:
        raise _refusal(structure, "loss_layers", "nothing", "name at least one [place, side]")
    loss = []
    for place, side in cfg.loss_layers:
        block = structure.block_at(place, side)
        if block is None:
            raise _missing(structure, "loss_layers", place, side)
        loss.append((place, block))
    block = structure.block_at(cfg.refine_place, cfg.refine_resolution)
    if block is None and cfg.box_control and cfg.mask_refinement:
        field = "refine_place" if not structure.blocks[cfg.refine_place] else "refine_resolution"
        raise _missing(structure, field, cfg.refine_place, cfg.refine_resolution)
    return SynthesisBlocks(tuple(loss), None if block is None else (cfg.refine_place, block))


def check_layers(structure: AttnStructure, cfg: LearnConfig | SynthesisConfig) -> None:
    """ConfigError, naming the field and what the model offers, unless every attention layer
    that `cfg` names exists on a UNet of this structure."""
    if isinstance(cfg, LearnConfig):
        learn_blocks(structure, cfg)
    else:
        synthesis_blocks(structure, cfg)


def pick(layers: Iterable[AttnLayer], kind: Kind, blocks: Collection[Block]) -> list[AttnLayer]:
    """The layers of one kind in the given blocks, in the UNet's order."""
    return [lay for lay in layers if lay.kind == kind and (lay.place, lay.block) in blocks]


def _named(
    structure: AttnStructure,
    places: tuple[str, Sequence[Place]],
    sides: tuple[str, Sequence[int]],
    *,
    strict: bool,
) -> frozenset[Block]:
    """Every block a (place, side) of the two lists names. With `strict`, each place and each
    side must name at least one block, else ConfigError."""
    (place_field, place_list), (side_field, side_list) = places, sides
    found = {
        (place, side): block
        for place in place_list
        for side in side_list
        if (block := structure.block_at(place, side)) is not None
    }
    if strict:
        if not (place_list and side_list):
            empty = side_field if place_list else place_field
            raise _refusal(structure, empty, "nothing", "name at least one")
        # a place without cross-attention, a side naming nothing, a place given nothing
        for place in place_list:
            if not structure.blocks[place]:
                raise _missing(structure, place_field, place, *side_list)
        for side in side_list:
            if not any(s == side for _, s in found):
                raise _missing(structure, side_field, "/".join(place_list), side)
        for place in place_list:
            if not any(p == place for p, _ in found):
                raise _missing(structure, place_field, place, *side_list)
    return frozenset((place, block) for (place, _), block in found.items())


def _missing(structure: AttnStructure, field: str, places: str, *sides: int) -> ConfigError:
    """`places` (one, or several joined by "/") and `sides` name nothing on this model."""
    named = f"{places} {', '.join(map(str, sides))}".strip()
    offered = [(p, structure.names(p)) for p in places.split("/")]
    fix = "; ".join(
        f"one of {', '.join(map(str, names))} at {p}" if names else f"another place than {p}"
        for p, names in offered
    )
    return _refusal(structure, field, f"{named}, which this base model lacks", f"name {fix}")


def _refusal(structure: AttnStructure, field: str, what: str, fix: str) -> ConfigError:
    return ConfigError(
        f"Config field '{field}' names {what}. Its cross-attention, by the names configs use "
        f"(SD 2.1's map sides at 512 px) with its own map sides in brackets: "
        f"{structure.offers()}.",
        field=field,
        fix=fix,
    )
