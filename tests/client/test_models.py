"""The client's models name every field the API's response schemas document, so a typed
client user sees all of an answer (extra fields from a newer server still pass through)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from api import schemas
from mifo_client import models

PAIRS = [
    (schemas.TokenPublic, models.Token),
    (schemas.ErrorPublic, models.JobError),
    (schemas.ConceptPublic, models.Concept),
    (schemas.ProgressPublic, models.Progress),
    (schemas.ImagePublic, models.Image),
    (schemas.ImageMetricsPublic, models.ImageMetrics),
    (schemas.SubjectMetricsPublic, models.SubjectMetrics),
    (schemas.EvaluationPublic, models.Evaluation),
    (schemas.MetricRowPublic, models.MetricRow),
    (schemas.EvaluatedImagePublic, models.EvaluatedImage),
    (schemas.Link, models.Link),
    (schemas.SegmentationPublic, models.Segmentation),
    (schemas.SegmentMaskPublic, models.SegmentMask),
    (schemas.SegmentCandidatePublic, models.SegmentCandidate),
    (schemas.QueuePublic, models.Queue),
    (schemas.JobResult, models.JobResult),
    (schemas.JobPublic, models.Job),
    (schemas.ConceptCreated, models.ConceptCreated),
    (schemas.ConceptsPublic, models.ConceptsPage),
    (schemas.JobsPublic, models.JobsPage),
]


@pytest.mark.parametrize(("api", "client"), PAIRS, ids=[a.__name__ for a, _ in PAIRS])
def test_the_client_model_has_every_field_of_the_api_schema(
    api: type[BaseModel], client: type[BaseModel]
) -> None:
    assert set(api.model_fields) - set(client.model_fields) == set()


def test_every_response_schema_of_a_job_or_concept_has_its_client_model() -> None:
    """A new response schema for jobs or concepts needs its client model too."""
    paired = {a for a, _ in PAIRS}
    nested: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [
        schemas.ConceptCreated,
        schemas.ConceptsPublic,
        schemas.JobsPublic,
    ]
    while todo:
        model = todo.pop()
        if model in nested:
            continue
        nested.add(model)
        for field in model.model_fields.values():
            for arg in _models_in(field.annotation):
                todo.append(arg)
    assert nested - paired == set()


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]
