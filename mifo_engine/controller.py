"""The synthesis attention controller: bounded-attention biases, loss maps, refinement maps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from .attention import AttnLayer
from .bounded import (
    background,
    box_regions,
    cross_attention_visibility,
    fill_empty_masks,
    mask_regions,
    self_attention_visibility,
    to_bias,
    token_groups,
)
from .config import SynthesisConfig
from .guidance import subject_masses
from .layout import Layout
from .refine import MeanMap, assign_clusters, kmeans, normalise_columns, soft_cross_attention_masks


class BoundedController:
    """Per-call decisions of the synthesis attention processors.

    Batches are [unconditional, conditional] while denoising and conditional only while the
    latent is optimised; `mode` says which. Maps are keyed by layer name and cleared by the
    loop that reads them.
    """

    def __init__(
        self,
        layout: Layout,
        tokenizer: Any,
        ids: Sequence[int],
        batch: int,
        cfg: SynthesisConfig,
        device: torch.device,
        loss_layers: Sequence[AttnLayer],
        refine_layers: Sequence[AttnLayer],
    ):
        self.layout, self.cfg, self.batch, self.device = layout, cfg, batch, device
        subject_ids = [[tokenizer.convert_tokens_to_ids(s.token)] for s in layout.subjects]
        self.groups = token_groups(
            tokenizer.convert_ids_to_tokens(ids),
            subject_ids,
            list(ids),
            tokenizer.eos_token_id,
            cfg.filler_words,
        )
        # float64 on the CPU: rasterised with Python's rounding of the given floats
        self.boxes = torch.tensor([s.box for s in layout.subjects], dtype=torch.float64).view(-1, 4)
        # ca_control / sa_control switch the masks only: the loss reads every loss layer
        self.loss_layers = list(loss_layers)
        self.refine_layers = list(refine_layers)
        self.diagnostic_layers = [lay for lay in loss_layers if lay.kind == "cross"]
        # membership tests run on every attention call: compare names, not whole records
        self._loss_names = {lay.name for lay in self.loss_layers}
        self._diagnostic_names = {lay.name for lay in self.diagnostic_layers}
        self._refine_names = {lay.name for lay in self.refine_layers}
        self.mode: Literal["denoise", "optimize"] = "denoise"
        self.accumulating = False
        self.masks: torch.Tensor | None = None  # refined (B, S, r, r) bool; None: boxes
        self.opt_maps: dict[str, torch.Tensor] = {}
        self._regions: dict[int, torch.Tensor] = {}
        self._boxes: dict[int, torch.Tensor] = {}
        self._bias: dict[tuple[str, int, str, torch.dtype], torch.Tensor] = {}
        self.sa_maps = MeanMap()  # (B, P, P) head-averaged self-attention, conditional branch
        self.ca_maps = MeanMap()  # (B, S, P) each subject token's cross-attention
        self._centroids: torch.Tensor | None = None
        self._kmeans_gen = torch.Generator("cpu").manual_seed(cfg.image_seeds()[0])
        s = len(layout.subjects)
        self._inbox = torch.zeros(batch, s, device=device)
        self._mass = torch.zeros(batch, s, device=device)

    # --- regions
    def box_raster(self, res: int) -> torch.Tensor:
        """(S, P) rasterised boxes at a layer resolution."""
        if res not in self._boxes:
            self._boxes[res] = box_regions(self.boxes, res).to(self.device)
        return self._boxes[res]

    def regions(self, res: int) -> torch.Tensor:
        """(B, S, P) current regions: boxes, or refined masks once refinement has run."""
        if res not in self._regions:
            if self.masks is None:
                self._regions[res] = self.box_raster(res)[None].expand(self.batch, -1, -1)
            else:
                self._regions[res] = mask_regions(self.masks, res)
        return self._regions[res]

    # --- AttentionController protocol
    def bias(
        self, layer: AttnLayer, batch: int, q_len: int, k_len: int, dtype: torch.dtype
    ) -> torch.Tensor | None:
        if not self.cfg.box_control or not self.layout.subjects:
            return None
        cross = layer.kind == "cross"
        if not (self.cfg.ca_control if cross else self.cfg.sa_control):
            return None
        key = (layer.kind, layer.resolution, self.mode, dtype)
        if key not in self._bias:
            regions = self.regions(layer.resolution)
            if cross:
                cond = to_bias(
                    cross_attention_visibility(
                        regions, self.groups, optimizing=self.mode == "optimize"
                    ),
                    dtype,
                )
                free = torch.zeros_like(cond)  # the unconditional branch is not bounded
                self._bias[key] = cond if self.mode == "optimize" else torch.cat([free, cond])
            else:
                sa = to_bias(self_attention_visibility(regions), dtype)
                self._bias[key] = sa if self.mode == "optimize" else torch.cat([sa, sa])
        bias = self._bias[key]
        if bias.shape[0] != batch or bias.shape[-1] != k_len:
            raise RuntimeError(
                f"attention bias {tuple(bias.shape)} does not fit batch {batch} x {k_len} keys at {layer.name}"
            )
        return bias

    def wants_probs(self, layer: AttnLayer) -> bool:
        if self.mode == "optimize":
            return layer.name in self._loss_names
        if layer.name in self._diagnostic_names:
            return True
        return self.accumulating and layer.name in self._refine_names

    def record(self, layer: AttnLayer, probs: torch.Tensor, scores: torch.Tensor) -> None:
        if self.mode == "optimize":
            self.opt_maps[layer.name] = probs.float().sum(dim=1)  # (B, Q, K), summed over heads
            return
        b = self.batch
        positions = [p[0] for p in self.groups.subjects]
        with torch.no_grad():
            if layer.name in self._diagnostic_names:
                # the model's own preference: attention without the bounding bias
                natural = (
                    scores[b:].float().softmax(dim=-1).mean(dim=1)[:, :, positions].transpose(1, 2)
                )  # (B, S, P)
                self._inbox += (natural * self.box_raster(layer.resolution)[None]).sum(-1)
                self._mass += natural.sum(-1)
            if self.accumulating and layer.name in self._refine_names:
                used = probs[b:].float().mean(dim=1)
                if layer.kind == "self":
                    self.sa_maps.add(used)
                else:
                    self.ca_maps.add(used[:, :, positions].transpose(1, 2))

    # --- latent optimisation
    def masses(
        self,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, tuple[torch.Tensor, torch.Tensor] | None]:
        """(fg, bg) per sample and subject for cross- and self-attention, averaged over loss layers."""
        out: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"cross": [], "self": []}
        end = [] if self.groups.eos is None else [self.groups.eos]
        for lay in self.loss_layers:
            attn = self.opt_maps[lay.name]
            # Eq. 6-10 measure attention against the boxes, even after masks are refined
            regions = self.box_raster(lay.resolution)[None].expand(self.batch, -1, -1)
            if lay.kind == "cross":
                ctx = torch.zeros(
                    self.batch, len(self.groups.subjects), self.groups.length, device=attn.device
                )
                for i, pos in enumerate(self.groups.subjects):
                    ctx[:, i, list(pos) + end] = 1.0
            else:
                ctx = regions.float()
            out[lay.kind].append(subject_masses(attn, ctx, regions, background(regions)))
        self.opt_maps.clear()

        def mean(
            pairs: list[tuple[torch.Tensor, torch.Tensor]],
        ) -> tuple[torch.Tensor, torch.Tensor] | None:
            if not pairs:
                return None
            return torch.stack([p[0] for p in pairs]).mean(0), torch.stack(
                [p[1] for p in pairs]
            ).mean(0)

        return mean(out["cross"]), mean(out["self"])

    # --- mask refinement
    def refine(self) -> None:
        """Cluster the mean self-attention so far into subject masks; regions follow them from now on."""
        sa, ca = self.sa_maps.mean(), self.ca_maps.mean()
        if sa is None or ca is None:
            return
        cfg = self.cfg
        res = int(round(sa.shape[-1] ** 0.5))
        # never more clusters than the map has pixels (a small model's coarse map)
        k = min(cfg.num_clusters * len(self.layout.subjects), sa.shape[1])
        labels, self._centroids = kmeans(
            normalise_columns(sa, cfg.map_norm_eps),
            k,
            iters=cfg.kmeans_iters,
            tol=cfg.kmeans_tol,
            inits=cfg.kmeans_inits,
            generator=self._kmeans_gen,
            init=self._centroids,
        )
        soft = soft_cross_attention_masks(
            ca,
            self.regions(res),
            sharpness=cfg.ca_mask_sharpness,
            offset=cfg.ca_mask_offset,
            eps=cfg.map_norm_eps,
        )
        masks = assign_clusters(labels, k, soft, cfg.cluster_score_threshold)
        masks = fill_empty_masks(masks, self.box_raster(res))
        self.masks = masks.view(self.batch, -1, res, res)
        self._regions.clear()
        self._bias.clear()

    # --- diagnostics
    def in_box_shares(self) -> list[dict[str, float]]:
        """Per image: each subject's share of (unbounded) cross-attention inside its box."""
        share = (self._inbox / self._mass.clamp_min(1e-12)).cpu()
        return [
            {s.token: round(float(share[b, i]), 6) for i, s in enumerate(self.layout.subjects)}
            for b in range(self.batch)
        ]
