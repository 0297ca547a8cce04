"""An evaluation job's result as the API shows it: the metric rows recorded by the worker,
each image's scores with its download link, the chart and evaluation.json as links."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from api.schemas import EvaluatedImagePublic, EvaluationPublic, Link, MetricRowPublic
from core.models import Job

if TYPE_CHECKING:
    from api.present import Presenter

# The artifact kinds an evaluation stores (worker.evaluation).
IMAGE, CHART, RECORD, REFERENCE = "image", "chart", "evaluation", "reference"


def evaluation_public(presenter: Presenter, job: Job) -> EvaluationPublic:
    """The metrics recorded in the job's result, the links from its artifacts."""
    result: dict[str, Any] = job.result or {}
    files = {(a.kind, a.position): presenter.url(a) for a in job.artifacts}
    chart, record = files.get((CHART, 0)), files.get((RECORD, 0))
    references = {
        a.label: presenter.url(a) for a in job.artifacts if a.kind == REFERENCE and a.label
    }
    return EvaluationPublic(
        rows=[MetricRowPublic(**row) for row in result.get("rows", [])],
        mean=MetricRowPublic(**result["mean"]),
        images=[
            EvaluatedImagePublic(
                index=image["index"],
                prompt=image["prompt"],
                text=image["text"],
                seed=image["seed"],
                sim_c=image["sim_c"],
                subjects=image.get("subjects", {}),
                url=files.get((IMAGE, image["index"])),
            )
            for image in result.get("images", [])
        ],
        chart=Link(url=chart) if chart else None,
        record=Link(url=record) if record else None,
        references=references,
        config=result.get("config", {}),
        feature_models=result.get("feature_models", {}),
    )
