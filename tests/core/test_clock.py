"""Leases on the database's clock: a host whose clock is minutes off (libfaketime moves the
clock of one process) neither loses a live job nor keeps a dead one (PostgreSQL)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from core import clock, jobs
from core.db import make_engine, make_sessionmaker, session_scope
from core.models import utcnow
from tests.helpers.factories import LEASE, make_concept, make_job

ROOT = Path(__file__).resolve().parents[2]
FAKETIME = shutil.which("faketime")
needs_faketime = pytest.mark.skipif(
    FAKETIME is None, reason="Debian's faketime is not installed (.ci/run installs it)"
)

# Run one lifecycle call in a process whose clock is moved by `faketime -f`.
SKEWED = """
import json, sys, uuid
from core import jobs
from core.db import make_engine, make_sessionmaker, session_scope
from core.models import utcnow
url, action, job_id = sys.argv[1], sys.argv[2], uuid.UUID(sys.argv[3])
with session_scope(make_sessionmaker(make_engine(url))) as s:
    if action == "start":
        done = jobs.start(s, job_id=job_id, lease_seconds=30.0).attempts
    elif action == "renew":
        done = jobs.renew(s, job_id=job_id, attempt=1, lease_seconds=30.0).owned
    else:
        done = [x.outcome for x in jobs.requeue_lapsed(s, max_attempts=3)]
print(json.dumps({"done": done, "host_now": utcnow().isoformat()}))
"""


def skewed(offset: str, url: str, action: str, job_id: uuid.UUID) -> dict:
    assert FAKETIME is not None
    out = subprocess.run(
        [FAKETIME, "-f", offset, sys.executable, "-c", SKEWED, url, action, str(job_id)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def lease_left(session: Session, job_id: uuid.UUID) -> float:
    """Seconds left on the job's lease, by the database's clock."""
    return session.execute(
        text("SELECT extract(epoch FROM lease_expires_at - now()) FROM jobs WHERE id = :id"),
        {"id": job_id},
    ).scalar_one()


@needs_faketime
@pytest.mark.parametrize("offset", ["+300s", "-300s"])
def test_a_skewed_worker_keeps_its_live_job_and_a_skewed_reconciler_leaves_it(
    postgres_url: str, offset: str
) -> None:
    sessions = make_sessionmaker(make_engine(postgres_url))
    with session_scope(sessions) as s:
        job_id = make_job(s, make_concept(s)).id
    started = skewed(offset, postgres_url, "start", job_id)
    assert started["done"] == 1
    host_off = (datetime.fromisoformat(started["host_now"]) - utcnow()).total_seconds()
    assert abs(abs(host_off) - 300) < 30  # the process really lived 5 minutes off
    with sessions() as s:  # stamped by the server: 30 s from its now, whatever the host said
        assert 28 < lease_left(s, job_id) <= 30
    assert skewed(offset, postgres_url, "renew", job_id)["done"] is True
    # A reconciler on a host 5 minutes ahead (or behind) sees a live lease.
    other = "-300s" if offset == "+300s" else "+300s"
    assert skewed(other, postgres_url, "reconcile", job_id)["done"] == []
    with sessions() as s:
        assert s.execute(
            text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}
        ).scalar() == ("running")


@needs_faketime
def test_a_dead_jobs_lease_lapses_on_the_database_clock_even_for_a_host_behind(
    postgres_url: str,
) -> None:
    sessions = make_sessionmaker(make_engine(postgres_url))
    with session_scope(sessions) as s:
        job_id = make_job(s, make_concept(s)).id
        jobs.start(s, job_id=job_id, lease_seconds=LEASE)
        s.execute(  # the worker died 31 s into a 30 s lease
            text("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = :id"),
            {"id": job_id},
        )
    # A reconciler whose host is 5 minutes behind still sees the lease as lapsed.
    assert skewed("-300s", postgres_url, "reconcile", job_id)["done"] == ["requeued"]


def test_sqlite_keeps_the_hosts_clock(sqlite_url: str) -> None:
    sessions = make_sessionmaker(make_engine(sqlite_url))
    with sessions() as s:
        assert not clock.on_server(s)
        now = clock.now(s)  # a value of this host, not SQL
        assert isinstance(now, datetime) and abs((now - utcnow()).total_seconds()) < 1
        assert abs((clock.after(s, 30) - now).total_seconds() - 30) < 1
