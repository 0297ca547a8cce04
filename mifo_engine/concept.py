"""A learned concept: new tokens, their embeddings, fine-tuned weights and diagnostics."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from .conceptfile import FORMAT_VERSION, read_metadata
from .config import LearnConfig
from .errors import ConceptError, LayoutError
from .patching import extended_vocabulary, lora_adapters, swapped_weights
from .runtime import atomic_directory

if TYPE_CHECKING:
    from .models import LoadedBase

Adaptation = Literal["none", "lora", "full"]


@dataclass(frozen=True)
class TokenInfo:
    """One learned token and the instance it stands for."""

    token: str  # "<asset0>"
    name: str  # the user's instance name, e.g. "red car"
    init_word: str | None = None


@dataclass(frozen=True)
class BaseRef:
    """Which base model a concept was learned on."""

    spec: str
    model_id: str
    revision: str | None
    weights_hash: str


@dataclass
class Concept:
    """Everything needed to put the learned instances back onto the base model."""

    tokens: list[TokenInfo]
    embeddings: dict[str, torch.Tensor]  # token -> (D,)
    adaptation: Adaptation
    unet_weights: dict[str, torch.Tensor]
    text_encoder_weights: dict[str, torch.Tensor]
    base: BaseRef
    config: LearnConfig
    resolution: int
    latent_size: int
    coarsest_attention_resolution: int
    versions: dict[str, str]
    diagnostics: dict[str, dict[str, float]] = field(default_factory=dict)
    attention_maps: dict[str, Image.Image] = field(default_factory=dict)
    input_image: Image.Image | None = None
    # each instance's mask on input_image's square (L, 255 inside), in token order
    input_masks: list[Image.Image] = field(default_factory=list)

    @staticmethod
    def mask_images(masks: torch.Tensor) -> list[Image.Image]:
        """(N, R, R) masks in {0, 1} as L images, 255 inside."""
        pixels = (masks.detach().cpu() > 0.5).to(torch.uint8).mul(255).numpy()
        return [Image.fromarray(m) for m in pixels]

    # --- lookup
    def resolve(self, ref: str) -> TokenInfo:
        """Find a token by `<assetK>` or by the instance name given at learning time."""
        for t in self.tokens:
            if ref == t.token or ref == t.name:
                return t
        known = ", ".join(f"{t.token} ({t.name})" for t in self.tokens)
        raise LayoutError(f"Unknown token '{ref}'.", field="boxes", fix=f"use one of: {known}")

    # --- application
    @contextlib.contextmanager
    def applied(self, base: LoadedBase) -> Iterator[Any]:
        """Put the concept onto `base` for the duration of the block; yields the tokenizer."""
        if base.weights_hash != self.base.weights_hash:
            raise ConceptError(
                f"This concept was learned on {self.base.model_id} (weights {self.base.weights_hash[:12]}), "
                f"but the loaded base model is {base.model_id} (weights {base.weights_hash[:12]}).",
                field="model",
                fix=f"load the base model '{self.base.spec}' to use this concept",
            )
        rows = torch.stack([self.embeddings[t.token] for t in self.tokens])
        with contextlib.ExitStack() as stack:
            tokenizer = stack.enter_context(
                extended_vocabulary(base, [t.token for t in self.tokens], rows)
            )
            if self.adaptation == "lora":
                stack.enter_context(
                    lora_adapters(
                        base.unet,
                        base.text_encoder,
                        rank=self.config.lora_rank,
                        alpha=self.config.lora_alpha,
                        seed=self.config.seed,
                        weights={
                            "unet": self.unet_weights,
                            "text_encoder": self.text_encoder_weights,
                        },
                    )
                )
            elif self.adaptation == "full":
                stack.enter_context(swapped_weights(base.unet, self.unet_weights))
                stack.enter_context(swapped_weights(base.text_encoder, self.text_encoder_weights))
            yield tokenizer

    # --- persistence
    def metadata(self) -> dict[str, Any]:
        """The content of concept.json."""
        return {
            "format_version": FORMAT_VERSION,
            "base_model": {
                "spec": self.base.spec,
                "id": self.base.model_id,
                "revision": self.base.revision,
                "weights_hash": self.base.weights_hash,
            },
            "tokens": [
                {"token": t.token, "name": t.name, "init_word": t.init_word} for t in self.tokens
            ],
            "adaptation": self.adaptation,
            "seed": self.config.seed,
            "config": self.config.to_dict(),
            "resolution": self.resolution,
            "latent_size": self.latent_size,
            "coarsest_attention_resolution": self.coarsest_attention_resolution,
            "versions": self.versions,
            "diagnostics": self.diagnostics,
            "files": self._file_names(),
        }

    def _file_names(self) -> dict[str, Any]:
        files: dict[str, Any] = {"embeddings": "embeddings.safetensors"}
        if self.adaptation != "none":
            files["unet"] = f"unet_{self.adaptation}.safetensors"
            files["text_encoder"] = f"text_encoder_{self.adaptation}.safetensors"
        files["attention_maps"] = {
            t.token: f"attention/{_slug(t.token)}.png"
            for t in self.tokens
            if t.token in self.attention_maps
        }
        if self.input_image is not None:
            files["input"] = "input.png"
        if self.input_masks:
            files["masks"] = {t.token: f"masks/{_slug(t.token)}.png" for t in self.tokens}
        return files

    def save(self, directory: str | Path) -> Path:
        """Write the concept atomically: a reader sees either nothing or the whole directory."""
        files = self._file_names()
        with atomic_directory(directory) as tmp:
            save_file(
                {k: v.contiguous() for k, v in self.embeddings.items()},
                str(tmp / files["embeddings"]),
            )
            if self.adaptation != "none":
                save_file(_contiguous(self.unet_weights), str(tmp / files["unet"]))
                save_file(_contiguous(self.text_encoder_weights), str(tmp / files["text_encoder"]))
            (tmp / "attention").mkdir()
            for token, rel in files["attention_maps"].items():
                self.attention_maps[token].save(tmp / rel)
            if self.input_image is not None:
                self.input_image.save(tmp / "input.png")
            for mask, rel in zip(self.input_masks, files.get("masks", {}).values(), strict=False):
                (tmp / rel).parent.mkdir(exist_ok=True)
                mask.save(tmp / rel)
            (tmp / "concept.json").write_text(json.dumps(self.metadata(), indent=2))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> Concept:
        """Read a concept directory written by `save`."""
        root = Path(directory)
        meta = read_metadata(root)
        files = meta["files"]
        try:
            embeddings = load_file(str(root / files["embeddings"]))
            unet = load_file(str(root / files["unet"])) if "unet" in files else {}
            text = load_file(str(root / files["text_encoder"])) if "text_encoder" in files else {}
            maps = {
                tok: Image.open(root / rel).convert("RGB")
                for tok, rel in files.get("attention_maps", {}).items()
            }
            image = Image.open(root / files["input"]).convert("RGB") if "input" in files else None
            masks = [Image.open(root / rel).convert("L") for rel in files.get("masks", {}).values()]
        except (OSError, KeyError) as exc:
            raise ConceptError(
                f"Concept at {root} is incomplete: {exc}.",
                field="concept",
                fix="learn the concept again",
            ) from exc
        b = meta["base_model"]
        return cls(
            tokens=[TokenInfo(t["token"], t["name"], t.get("init_word")) for t in meta["tokens"]],
            embeddings=embeddings,
            adaptation=meta["adaptation"],
            unet_weights=unet,
            text_encoder_weights=text,
            base=BaseRef(b["spec"], b["id"], b["revision"], b["weights_hash"]),
            config=LearnConfig.from_mapping(meta["config"]),
            resolution=meta["resolution"],
            latent_size=meta["latent_size"],
            coarsest_attention_resolution=meta["coarsest_attention_resolution"],
            versions=meta["versions"],
            diagnostics=meta.get("diagnostics", {}),
            attention_maps=maps,
            input_image=image,
            input_masks=masks,
        )


def _contiguous(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _slug(token: str) -> str:
    return token.strip("<>").replace("/", "_")
