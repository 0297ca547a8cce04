"""`mifo serve` keeps its worker running: one that exits is started again (readiness says
when it is down), one that cannot start stops `mifo serve`, and a user's module named like a
standard one in the folder it runs in does not break the worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from mifo_cli import embedded
from mifo_client import Client
from tests.helpers.serve import BOXES, PROMPT, QUICK, ROOT, serve_process
from tests.helpers.servers import free_port
from tests.helpers.wait import wait_until

EXIT_3 = [sys.executable, "-c", "import sys; sys.exit(3)"]
SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_worker_that_cannot_start_stops_mifo_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "RESTART_SECONDS", (0.05, 0.1, 0.2))
    gave_up = threading.Event()
    worker = embedded.Worker(EXIT_3, env={})
    worker.on_give_up = gave_up.set
    try:
        assert gave_up.wait(20)
        assert worker.gave_up
        with pytest.raises(RuntimeError, match=r"cannot start \(exit code 3\)"):
            worker.check()
    finally:
        worker.stop(deadline=time.monotonic() + 5)


def test_a_worker_that_ran_is_started_again_and_not_after_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(embedded, "QUICK_SECONDS", 0.0)  # every exit comes after a real run
    monkeypatch.setattr(embedded, "RESTART_SECONDS", (0.05,))
    worker = embedded.Worker(SLEEP, env={})
    try:
        first = worker.process.pid
        worker.check()  # running: ready
        worker.process.kill()
        wait_until(lambda: worker.process.pid != first and worker.process.poll() is None, 10)
        worker.check()
        assert not worker.gave_up
    finally:
        worker.stop(deadline=time.monotonic() + 5)
    stopped = worker.process
    assert stopped.poll() is not None
    time.sleep(0.3)  # a restart would come after 0.05 s
    assert worker.process is stopped


def test_an_exit_once_stopping_is_set_is_the_end_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`mifo serve` passes the event its signal handler sets: a worker that ends its warm
    shutdown before the API has drained is not started again."""
    monkeypatch.setattr(embedded, "QUICK_SECONDS", 0.0)
    monkeypatch.setattr(embedded, "RESTART_SECONDS", (0.05,))
    stopping = threading.Event()
    worker = embedded.Worker(SLEEP, env={}, stopping=stopping)
    try:
        stopping.set()  # as Ctrl-C: the handler first, then the worker ends by itself
        ended = worker.process
        ended.kill()
        ended.wait(10)
        time.sleep(0.3)  # a restart would come after 0.05 s
        assert worker.process is ended and not worker.gave_up
        assert "the worker exited" not in caplog.text
    finally:
        worker.stop(deadline=time.monotonic() + 5)


def _workers(serve_pid: int) -> list[int]:
    """The pids of `mifo serve`'s worker children (one, or none while it restarts)."""
    children = psutil.Process(serve_pid).children()
    return [c.pid for c in children if "worker" in " ".join(c.cmdline())]


@pytest.mark.slow
def test_mifo_serve_restarts_a_killed_worker_and_ignores_a_users_queue_py(
    tmp_path: Path, scene: tuple[Path, list[Path]]
) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    # The standard library's `queue` is what the broker client imports first.
    (folder / "queue.py").write_text("raise ImportError('a user script, not the stdlib')\n")
    with serve_process(tmp_path / "data", cwd=folder) as (base, proc), Client(base) as client:
        assert httpx.get(f"{base}/readyz").json()["checks"]["worker"] == "ok"
        created = client.learn(*scene, options=QUICK)
        assert client.wait(created.job, timeout=300).succeeded

        (killed,) = _workers(proc.pid)
        psutil.Process(killed).send_signal(signal.SIGKILL)
        log = tmp_path / "data" / "serve.log"
        wait_until(lambda: "the worker exited (code -9)" in log.read_text(), 20)
        wait_until(lambda: len(_workers(proc.pid)) == 1 and killed not in _workers(proc.pid), 30)
        wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, 60)

        job = client.synthesize(created.concept, PROMPT, BOXES, steps=2)
        assert client.wait(job, timeout=300).succeeded


# Imported by every Python process started with it on PYTHONPATH: it ends the worker only.
WORKER_FAILS = """import os
if b"worker" in open("/proc/self/cmdline", "rb").read().split(b"\\0"):
    os._exit(3)
"""


@pytest.mark.slow
def test_mifo_serve_whose_worker_cannot_start_stops_with_exit_code_1(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(WORKER_FAILS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIFO_")}
    env |= {"PYTHONPATH": str(tmp_path / "site"), "MIFO_DATA_DIR": str(tmp_path / "data")}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-P", "-m", "mifo_cli", "serve", "--base-model", "tiny"]
            + ["--port", str(free_port())],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        try:
            code = serve.wait(120)  # three starts, 2 + 5 s apart, then the shutdown
        finally:
            if serve.poll() is None:
                os.killpg(serve.pid, signal.SIGKILL)
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert "the worker exited 3 times within 30 s of its start (last exit code 3)" in text


@pytest.mark.slow
def test_ctrl_c_with_an_event_stream_open_is_no_worker_crash(
    tmp_path: Path, scene: tuple[Path, list[Path]]
) -> None:
    """Ctrl-C reaches the worker as well: its warm shutdown, while the API still drains an
    open event stream, must not be taken for a crash and restarted."""
    data = tmp_path / "data"
    with serve_process(data) as (base, proc), Client(base) as client:
        created = client.learn(*scene, options={**QUICK, "phase1_steps": 400})
        wait_until(lambda: client.job(created.job).status == "running", 120, interval=0.2)
        with httpx.stream("GET", f"{base}/v1/jobs/{created.job.id}/events", timeout=30) as events:
            next(events.iter_lines())
            os.killpg(proc.pid, signal.SIGINT)
            started = time.monotonic()
            proc.wait(30)
        assert time.monotonic() - started < 10
        assert proc.returncode == 0
    text = (data / "serve.log").read_text()
    assert "starting it again" not in text and "the worker exited" not in text, text[-3000:]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_idle_mifo_serve_stops_cleanly(tmp_path: Path, signum: int) -> None:
    """Ctrl-C (to the whole group, as a terminal sends it) or SIGTERM (to mifo serve, as a
    service manager sends it): status 0, the worker stopped in time, no traceback."""
    data = tmp_path / "data"
    with serve_process(data) as (_, proc):
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        assert proc.wait(30) == 0
    text = (data / "serve.log").read_text()
    assert f"stopped by {signal.Signals(signum).name}" in text, text[-3000:]
    assert "Traceback" not in text and "did not stop in time" not in text, text[-3000:]
