"""The cost of queue positions on a list page (core/queueinfo.py) against PostgreSQL.

    .venv/bin/python bench/queue_position.py [--queued 20000] [--page 100]

Fills a throwaway database (a PostgreSQL server on 127.0.0.1:5432, as the tests use) with
`--queued` queued synthesis jobs, then times `spots()` for the page of the newest `--page`
of them (the back of the queue) and for the single oldest one (its front), for each
MIFO_WORKER_POOLS mode; medians of 5.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import get_args

from sqlalchemy import insert, select

if __package__ in (None, ""):  # run as `python bench/queue_position.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import auth, queueinfo  # noqa: E402
from core.db import make_engine, make_sessionmaker, session_scope, upgrade  # noqa: E402
from core.models import Job, utcnow  # noqa: E402
from core.settings import WorkerPools  # noqa: E402
from tests.helpers.db import throwaway_postgres  # noqa: E402


def _median_seconds(fn: object, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=20000)
    parser.add_argument("--page", type=int, default=100)
    args = parser.parse_args()
    with throwaway_postgres() as url:
        upgrade(url)
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        with session_scope(sessions) as s:
            tenant = auth.get_or_create_tenant(s, "bench")[0].id
        now = utcnow()
        rows = [
            dict(
                id=uuid.uuid4(),
                tenant_id=tenant,
                kind="synthesize",
                status="queued",
                params={},
                created_at=now + timedelta(microseconds=i),
            )
            for i in range(args.queued)
        ]
        with engine.begin() as conn:
            conn.execute(insert(Job), rows)
            conn.exec_driver_sql("ANALYZE jobs")
        with sessions() as s:
            newest = select(Job).where(Job.status == "queued").order_by(Job.created_at.desc())
            back = s.scalars(newest.limit(args.page)).all()
            front = s.scalars(select(Job).order_by(Job.created_at).limit(1)).all()
            for pools in get_args(WorkerPools):
                queueinfo.spots(s, back, pools=pools)  # warm
                page_s = _median_seconds(functools.partial(queueinfo.spots, s, back, pools=pools))
                one_s = _median_seconds(functools.partial(queueinfo.spots, s, front, pools=pools))
                print(
                    f"{args.queued} queued, pools {pools}: a page of {args.page} at the back "
                    f"{page_s * 1000:.1f} ms, the front job alone {one_s * 1000:.1f} ms"
                )
        engine.dispose()


if __name__ == "__main__":
    main()
