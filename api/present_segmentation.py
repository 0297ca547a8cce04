"""A segmentation job's result as the API shows it: the masks (or the candidates) recorded by
the worker, each with its PNG's link, and the overlay's link."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from api.schemas import SegmentationPublic, SegmentCandidatePublic, SegmentMaskPublic
from core.models import Job

if TYPE_CHECKING:
    from api.present import Presenter

# The artifact kinds a segmentation stores (worker.segmentation): each mask, the overlay.
MASK, OVERLAY = "mask", "preview"


def segmentation_public(presenter: Presenter, job: Job) -> SegmentationPublic:
    """What the worker recorded, with links from the job's artifacts (none once expired)."""
    result: dict[str, Any] = job.result or {}
    files = {(a.kind, a.position): presenter.url(a) for a in job.artifacts}
    return SegmentationPublic(
        mode=result["mode"],
        image_id=result["image_id"],
        width=result["width"],
        height=result["height"],
        masks=[
            SegmentMaskPublic(url=files.get((MASK, m["index"])), **_fields(m))
            for m in result.get("masks", [])
        ],
        candidates=[
            SegmentCandidatePublic(
                url=files.get((MASK, c["index"])),
                stability=c["stability"],
                point=c["point"],
                **_fields(c),
            )
            for c in result.get("candidates", [])
        ],
        overlay_url=files.get((OVERLAY, 0)),
        embedding_reused=bool(result.get("embedding_reused")),
    )


def _fields(entry: dict[str, Any]) -> dict[str, Any]:
    return {name: entry[name] for name in ("index", "score", "area", "box")}
