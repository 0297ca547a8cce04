"""The processors that capture or bound attention (the layers themselves: `layers`).

Behaviour lives in processor objects installed with `unet.set_attn_processor` and removed in
`finally`; a controller object decides, per layer and per call, whether the layer needs an
additive bias (bounded attention) and whether its probabilities must be materialised (only the
layers a loss reads). Every other call goes through the fused attention kernel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from .layers import AttnLayer, Kind, unet_attention_layers

__all__ = [
    "AttentionController",
    "AttnLayer",
    "CaptureController",
    "Kind",
    "MifoAttnProcessor",
    "installed_processors",
    "last_block",
    "truncated_forward",
    "unet_attention_layers",
]


class AttentionController(Protocol):
    """Decides, per call, what a MifoAttnProcessor does on its layer."""

    def bias(
        self, layer: AttnLayer, batch: int, q_len: int, k_len: int, dtype: torch.dtype
    ) -> torch.Tensor | None: ...

    def wants_probs(self, layer: AttnLayer) -> bool: ...

    def record(self, layer: AttnLayer, probs: torch.Tensor, scores: torch.Tensor) -> None:
        """probs: (B, heads, Q, K) as used (bias applied); scores: the logits before the bias."""


class MifoAttnProcessor:
    """Scaled dot-product attention with an optional additive bias and optional capture."""

    def __init__(self, layer: AttnLayer, controller: AttentionController):
        self.layer = layer
        self.controller = controller

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, q_len, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        k_len = key.shape[1]
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        bias = self.controller.bias(self.layer, batch, q_len, k_len, query.dtype)
        if attention_mask is not None:
            extra = attn.prepare_attention_mask(attention_mask, k_len, batch)
            extra = extra.view(batch, attn.heads, -1, k_len)
            bias = extra if bias is None else bias + extra

        out = self._attend(query, key, value, bias, attn.scale)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        bias: torch.Tensor | None,
        scale: float,
    ) -> torch.Tensor:
        """Attention over (B, heads, L, d) heads: explicit probabilities when the controller
        records them, else the fused kernel."""
        if self.controller.wants_probs(self.layer):
            # scale before the product: raw fp16 dot products can overflow
            scores = torch.matmul(query * scale, key.transpose(-1, -2))
            probs = (scores if bias is None else scores + bias).softmax(dim=-1)
            self.controller.record(self.layer, probs, scores)
            return torch.matmul(probs.to(value.dtype), value)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scale)


@contextlib.contextmanager
def installed_processors(unet: Any, processors: Mapping[str, Any]) -> Iterator[None]:
    """Install processors on the named layers; restore the originals on exit, also on error."""
    if not processors:
        yield
        return
    originals = dict(unet.attn_processors)
    unknown = set(processors) - set(originals)
    if unknown:
        raise KeyError(f"not attention layers of this UNet: {sorted(unknown)}")
    try:
        unet.set_attn_processor({**originals, **processors})
        yield
    finally:
        unet.set_attn_processor(originals)


class _StopForward(Exception):
    """Raised after the last block whose attention a loss reads: the rest is not needed."""


def last_block(unet: Any, layers: Iterable[AttnLayer]) -> Any:
    """The UNet block that runs last among those holding `layers` (down < mid < up)."""
    order = {"down": 0, "mid": 1, "up": 2}
    place, block = max(
        ((lay.place, lay.block) for lay in layers), key=lambda pb: (order[pb[0]], pb[1])
    )
    return unet.mid_block if place == "mid" else getattr(unet, f"{place}_blocks")[block]


@contextlib.contextmanager
def truncated_forward(module: Any) -> Iterator[Callable[[Callable[[], Any]], bool]]:
    """Yield a runner that calls a UNet forward and stops it right after `module`.

    The runner returns True when the forward was cut there. Attention maps captured up to
    that point (and their autograd graph) are all a latent-guidance loss needs.
    """

    def stop(*_: Any) -> None:
        raise _StopForward

    handle = module.register_forward_hook(stop)

    def run(forward: Callable[[], Any]) -> bool:
        try:
            forward()
        except _StopForward:
            return True
        return False

    try:
        yield run
    finally:
        handle.remove()


class CaptureController:
    """Learning: materialise head-averaged cross-attention on the selected layers while active."""

    def __init__(self, layers: Iterable[AttnLayer]):
        self.layers = {layer.name: layer for layer in layers}
        self.wanted: set[str] = set()
        self.active = False
        self.maps: dict[str, torch.Tensor] = {}

    def select(self, names: Iterable[str]) -> None:
        """Capture only these layers from now on (the loss layers of the current phase)."""
        self.wanted = set(names)

    def reset(self, active: bool) -> None:
        """Start a forward pass: drop old maps, capture only when `active`."""
        self.maps = {}
        self.active = active

    def bias(
        self, layer: AttnLayer, batch: int, q_len: int, k_len: int, dtype: torch.dtype
    ) -> None:
        return None

    def wants_probs(self, layer: AttnLayer) -> bool:
        return self.active and layer.name in self.wanted

    def record(self, layer: AttnLayer, probs: torch.Tensor, scores: torch.Tensor) -> None:
        self.maps[layer.name] = probs.mean(dim=1)  # (B, pixels, tokens)

    def processors(self) -> dict[str, MifoAttnProcessor]:
        return {name: MifoAttnProcessor(layer, self) for name, layer in self.layers.items()}
