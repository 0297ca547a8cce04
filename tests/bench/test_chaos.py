"""A short chaos soak on real processes (bench/chaos.py): two API replicas, three job workers,
the control worker and `mifo beat` on PostgreSQL, a Redis and an S3 server of their own, under
about sixty jobs from three tenants while workers are killed, paused past their lease and
restarted with a skewed clock, Redis restarts empty, an API replica dies and one process'
database link goes silent. Once healed and drained, no accepted job may be lost, no job may
appear that no client was given, none may have two results, and no object may be orphaned.

The seed is fixed and each round of faults holds every kind once, so the same faults come in
the same order on every run; what they hit depends on timing, and nothing here asserts one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.chaos import SoakConfig, run_soak
from bench.common import write_json

MISSING = [tool for tool in ("faketime", "redis-server") if shutil.which(tool) is None]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"the chaos soak needs {' and '.join(MISSING)} on the PATH "
        "(Debian: apt-get install faketime redis-server)",
    ),
]


def test_a_short_chaos_soak_loses_nothing_and_orphans_nothing(tmp_path: Path) -> None:
    config = SoakConfig(
        seed=20250101,
        syntheses=50,
        learns=4,
        tenants=3,
        fault_every=8.0,
        duration=70.0,
        folder=tmp_path,
    )
    report = run_soak(config)
    write_json("chaos", report.as_dict(), tmp_path / "report.json")
    print(report.table())  # shown by pytest when the test fails, with the logs' folder
    print(report.fault_table())
    print(f"logs and report.json: {report.logs}")
    found = report.findings
    assert report.accepted >= 50, (report.refused, report.answers)
    assert report.counts["lost"] == 0, found["lost"]
    assert report.counts["unexpected"] == 0, found["unexpected"]
    assert report.counts["duplicated"] == 0, found["duplicated"]
    assert report.counts["orphans"] == 0, found["orphans"]
    assert report.counts["idempotency_violations"] == 0, found["idempotency_violations"]
    for check in (
        "missing_artifacts",
        "over_attempts",
        "paused_or_skewed_failed",
        "cancels_not_kept",
        "webhooks_missing",
        "webhook_ids_unknown",
    ):
        assert report.counts[check] == 0, (check, found[check])
    kinds = {kind for kind, n in report.fault_counts.items() if n}
    assert len(kinds) >= 4, report.fault_counts
