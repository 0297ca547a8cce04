"""The progress reporter: fraction over the phases, ETA, throttled writes, loss terms, and a
database that cannot take a write."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from mifo_engine.config import LearnConfig
from worker.progress import ProgressReporter, learn_plan


class _Ctx:
    def __init__(self) -> None:
        self.settings = SimpleNamespace(progress_interval=1.0, webhook_progress_seconds=10.0)
        self.writes: list[dict[str, Any]] = []
        self.sessions = None
        self.publisher = SimpleNamespace(publish=lambda job_id: None)


def _reporter(plan: Any, clock: list[float], monkeypatch: pytest.MonkeyPatch) -> Any:
    ctx = _Ctx()
    import worker.progress as progress

    monkeypatch.setattr(progress, "session_scope", lambda sessions: _NullScope())
    monkeypatch.setattr(
        progress.jobs, "record_progress", lambda session, **kw: ctx.writes.append(kw) or True
    )
    reporter = ProgressReporter(ctx, uuid.uuid4(), plan, clock=lambda: clock[0])  # type: ignore[arg-type]
    return reporter, ctx


class _NullScope:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_fraction_spans_the_phases_and_writes_are_throttled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = learn_plan(LearnConfig(phase1_steps=6, phase2_steps=2, diagnostic_timesteps=(1, 2)))
    assert plan == [("phase1", 6), ("phase2", 2), ("diagnostics", 2)]
    clock = [0.0]
    reporter, ctx = _reporter(plan, clock, monkeypatch)
    for step in range(7):  # phase1: 0.1 s per step; only the first and the last are written
        clock[0] = step * 0.1
        assert reporter(SimpleNamespace(phase="phase1", step=step, total=6)) is True
    assert [w["step"] for w in ctx.writes] == [0, 6]
    last = ctx.writes[-1]
    assert last["fraction"] == pytest.approx(0.6)
    assert last["eta_seconds"] == pytest.approx(0.6 * 0.4 / 0.6)  # elapsed * rest / done
    clock[0] = 2.0
    reporter(SimpleNamespace(phase="diagnostics", step=1, total=2))
    assert ctx.writes[-1]["fraction"] == pytest.approx(0.9)


def test_unplanned_phase_uses_its_own_fraction(monkeypatch: pytest.MonkeyPatch) -> None:
    reporter, ctx = _reporter((), [5.0], monkeypatch)
    reporter(SimpleNamespace(phase="synthesis", step=5, total=20))
    assert ctx.writes[-1]["fraction"] == 0.25 and ctx.writes[-1]["eta_seconds"] == 0.0


def test_the_steps_loss_terms_are_written_with_the_progress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reporter, ctx = _reporter((), [0.0], monkeypatch)
    terms = {"rec": 0.5, "reward": float("nan"), "prior": 0.125}
    reporter(SimpleNamespace(phase="phase1", step=1, total=6, losses=terms))
    assert ctx.writes[-1]["losses"] == {"rec": 0.5, "prior": 0.125}  # JSON has no NaN
    reporter(SimpleNamespace(phase="diagnostics", step=6, total=6))
    assert ctx.writes[-1]["losses"] == {}


def test_a_progress_write_the_database_cannot_take_does_not_stop_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stalled or unreachable database fails the write, not the job: the run goes on, its
    lease is the heartbeat's, and the next write goes through once the database answers."""
    from sqlalchemy.exc import OperationalError

    import worker.progress as progress

    reporter, ctx = _reporter((), [0.0], monkeypatch)
    answers = [OperationalError("UPDATE jobs", {}, Exception("no answer")), None]

    def record(session: Any, **kw: Any) -> bool:
        failure = answers.pop(0)
        if failure is not None:
            raise failure
        ctx.writes.append(kw)
        return True

    monkeypatch.setattr(progress.jobs, "record_progress", record)
    assert reporter(SimpleNamespace(phase="p", step=1, total=4)) is True
    assert ctx.writes == []
    reporter.last_write = -10.0  # due again
    assert reporter(SimpleNamespace(phase="p", step=2, total=4)) is True
    assert [w["step"] for w in ctx.writes] == [2]
