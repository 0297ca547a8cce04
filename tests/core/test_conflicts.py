"""Transactions that collide with a concurrent one (PostgreSQL's deadlock and serialization
answers) are retried a bounded number of times and, if they still collide, answered 409:
never reported as the database being unavailable."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core import db


class _Collision(psycopg.errors.DeadlockDetected):
    sqlstate = "40P01"


def _deadlock() -> OperationalError:
    return OperationalError("UPDATE jobs ...", {}, _Collision("deadlock detected"))


def test_a_collision_is_retried_then_succeeds(session: Session) -> None:
    calls = []

    def work() -> str:
        calls.append(1)
        if len(calls) < db.CONFLICT_RETRIES:
            raise _deadlock()
        return "done"

    assert db.retry_conflicts(session, work) == "done" and len(calls) == db.CONFLICT_RETRIES


def test_retries_are_bounded_and_other_errors_are_not_retried(session: Session) -> None:
    calls = []

    def always() -> None:
        calls.append(1)
        raise _deadlock()

    with pytest.raises(OperationalError):
        db.retry_conflicts(session, always)
    assert len(calls) == db.CONFLICT_RETRIES

    def down() -> None:
        calls.append(1)
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    calls.clear()
    with pytest.raises(OperationalError):
        db.retry_conflicts(session, down)
    assert len(calls) == 1


def test_a_collision_left_after_the_retries_is_409_not_503(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import submissions

    def collide(session: Session, work: object) -> None:
        raise _deadlock()

    monkeypatch.setattr(submissions, "retry_conflicts", collide)
    r = client.delete(f"/v1/concepts/{uuid.uuid4()}")
    assert r.status_code == 409, r.text
    assert r.json()["type"].endswith("/concurrent_change") and r.headers["retry-after"] == "1"
