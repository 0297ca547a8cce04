"""`mifo serve`: the API and one worker process on one machine, with nothing to install.

SQLite in MIFO_DATA_DIR (migrated here), a local object folder, and Celery's file-system
transport as the broker. Settings given in the environment still win. The periodic duties
(core.duties) run on threads of this process, where production runs them from celery beat.

Stopping (Ctrl-C, SIGTERM) takes under STOP_SECONDS: the worker puts a running job back in
the queue at its next step (worker.runner), so the next `mifo serve` runs it from the start.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

log = logging.getLogger("mifo")

EMBEDDED_ONLY = ("MIFO_DATABASE_URL", "MIFO_BROKER_URL", "MIFO_STORAGE_URL")
STOP_SECONDS = 10.0  # from the signal to the exit of every process
HTTP_DRAIN_SECONDS = 3  # open requests (event streams too) get this long to end


def serve(host: str, port: int) -> int:
    import uvicorn

    from core.db import upgrade
    from core.duties import Duties, in_process
    from core.settings import Settings

    settings = Settings()
    overridden = [name for name in EMBEDDED_ONLY if name in os.environ]
    if overridden:
        log.info("using %s from the environment", ", ".join(overridden))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    log.info(
        "embedded mode: data in %s, base model %s%s",
        settings.data_dir.resolve(),
        settings.base_model,
        " (random test weights: images are noise, for trying the service only)"
        if settings.base_model == "tiny"
        else "",
    )
    env = {**os.environ, "MIFO_DATA_DIR": str(settings.data_dir.resolve())}
    worker = subprocess.Popen(
        [sys.executable, "-m", "mifo_cli", "worker", "--pool", "solo"],
        env=env,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
    )
    # uvicorn re-raises the SIGTERM it caught once it has shut down; without a handler of our
    # own that would end this process before the worker is stopped.
    signal.signal(signal.SIGTERM, _exit)
    try:
        with in_process(Duties.from_settings(settings)):
            try:
                config = uvicorn.Config(
                    "api.main:app_factory",
                    factory=True,
                    host=host,
                    port=port,
                    log_level=settings.log_level,
                    access_log=settings.access_log,
                    timeout_graceful_shutdown=HTTP_DRAIN_SECONDS,
                )
                server(config).run()
            finally:  # the worker starts handing its job back while the duties stop
                if worker.poll() is None:
                    worker.terminate()
    finally:
        _stop(worker, deadline=time.monotonic() + STOP_SECONDS - HTTP_DRAIN_SECONDS - 1)
    return 0


def server(config: Any) -> Any:
    """uvicorn's server for `config`, which also tells the API when it begins to stop: a
    request waiting for its job (Prefer: wait) then answers its 202 within the drain."""
    import uvicorn

    from api.state import STOPPING

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            STOPPING.set()
            super().handle_exit(sig, frame)

    return Server(config)


def _stop(worker: subprocess.Popen[bytes], deadline: float) -> None:
    """Warm shutdown (a running job goes back to the queue at its next step), then a kill:
    a job stopped by the kill is re-queued once its lease lapses (MIFO_LEASE_SECONDS)."""
    if worker.poll() is None:
        worker.terminate()
    try:
        worker.wait(timeout=max(0.5, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        log.warning("the worker did not stop in time; killed")
        worker.kill()
        worker.wait()


def _exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _die_with_parent() -> None:
    """In the worker child (Linux): receive SIGTERM when `mifo serve` dies, even by SIGKILL."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
