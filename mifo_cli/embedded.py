"""`mifo serve`: the API and one worker process on one machine, with nothing to install.

SQLite in MIFO_DATA_DIR (migrated here), a local object folder, and Celery's file-system
transport as the broker. Settings given in the environment still win. The periodic duties
(core.duties) run on threads of this process, where production runs them from celery beat.

Stopping (Ctrl-C, SIGTERM) takes under STOP_SECONDS: the worker puts a running job back in
the queue at its next step (worker.runner), so the next `mifo serve` runs it from the start.

A worker that exits on its own (killed, out of memory, a crash) is started again after a
pause (RESTART_SECONDS); its job is re-queued when its lease lapses. While it is down,
`/readyz` says so. One that cannot start (it exits within QUICK_SECONDS of each start,
QUICK_EXITS times running) stops `mifo serve` with exit code 1 and the reason in the log.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("mifo")

EMBEDDED_ONLY = ("MIFO_DATABASE_URL", "MIFO_BROKER_URL", "MIFO_STORAGE_URL")
STOP_SECONDS = 10.0  # from the signal to the exit of every process
HTTP_DRAIN_SECONDS = 3  # open requests (event streams too) get this long to end
RESTART_SECONDS = (1.0, 2.0, 5.0)  # the pause before a restart, by the quick exits so far
QUICK_SECONDS = 30.0  # a worker that exits sooner than this after its start did not start
QUICK_EXITS = 3  # that many quick exits in a row: it will not start; stop `mifo serve`


def serve(host: str, port: int) -> int:
    import uvicorn

    from api.http.state import PROBES, STOPPING
    from core.duties import Duties, in_process

    settings = _prepared_settings()
    config = uvicorn.Config(
        "api.main:app_factory",
        factory=True,
        host=host,
        port=port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=HTTP_DRAIN_SECONDS,
    )
    http = server(config)
    env = {**os.environ, "MIFO_DATA_DIR": str(settings.data_dir.resolve())}
    # -P: not the current folder first on the import path, where a user's `queue.py` would
    # shadow the standard library's module the broker client imports.
    argv = [sys.executable, "-P", "-m", "mifo_cli", "worker", "--pool", "solo"]
    # STOPPING: set the moment a signal begins the shutdown (Ctrl-C reaches the worker too),
    # so the worker's own warm shutdown is never taken for a crash to restart from.
    worker = Worker(argv, env, stopping=STOPPING)

    def give_up() -> None:  # as on Ctrl-C: requests waiting for their job answer at once
        STOPPING.set()
        http.should_exit = True

    worker.on_give_up = give_up
    # uvicorn re-raises the signal it caught once it has shut down; without handlers of our
    # own that would end this process before the worker is stopped, with a traceback. Asked
    # to stop (Ctrl-C, SIGTERM) is a clean end: status 0.
    stopped_by: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: stopped_by.append(signum))
    PROBES["worker"] = worker.check
    try:
        with in_process(Duties.from_settings(settings)):
            try:
                http.run()
            finally:  # the worker starts handing its job back while the duties stop
                worker.terminate()
        if stopped_by:
            log.info("stopped by %s", signal.Signals(stopped_by[0]).name)
    finally:
        PROBES.pop("worker", None)
        worker.stop(deadline=time.monotonic() + STOP_SECONDS - HTTP_DRAIN_SECONDS - 1)
    return 1 if worker.gave_up else 0


def _prepared_settings() -> Any:
    """The settings, their data folder made and the database migrated, and what is used said."""
    from core.db import upgrade
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
    return settings


class Worker:
    """The worker child of `mifo serve`, started again when it exits on its own."""

    def __init__(
        self, argv: Sequence[str], env: dict[str, str], stopping: threading.Event | None = None
    ) -> None:
        """`stopping`: once set, an exit is the end, not a crash (terminate() sets it too)."""
        self.argv, self.env = list(argv), env
        self.on_give_up: Callable[[], object] = lambda: None
        self.gave_up = False
        self._stopping = stopping or threading.Event()
        self._lock = threading.Lock()  # between a restart and stop()
        self._process, self._started = self._start(), time.monotonic()
        threading.Thread(target=self._watch, name="mifo-worker-watch", daemon=True).start()

    def check(self) -> None:
        """Readiness: raises while the worker is not running."""
        code = self._process.poll()
        if code is None:
            return
        if self.gave_up:
            raise RuntimeError(f"the worker cannot start (exit code {code}); mifo serve stops")
        raise RuntimeError(f"the worker exited (code {code}); it is being started again")

    def terminate(self) -> None:
        """Begin the warm shutdown; no restart after it."""
        with self._lock:
            self._stopping.set()
            if self._process.poll() is None:
                self._process.terminate()

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The child now running (or the last one, once it exited)."""
        return self._process

    def stop(self, deadline: float) -> None:
        """Warm shutdown (a running job goes back to the queue at its next step), then a kill
        at `deadline`: a job stopped by the kill is re-queued once its lease lapses."""
        self.terminate()
        try:
            self._process.wait(timeout=max(0.5, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("the worker did not stop in time; killed")
            self._process.kill()
            self._process.wait()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv,
            env=self.env,
            preexec_fn=_die_with_parent() if sys.platform == "linux" else None,  # noqa: PLW1509
        )

    def _watch(self) -> None:
        quick = 0
        while True:
            code = self._process.wait()
            if self._stopping.is_set():
                return
            quick = quick + 1 if time.monotonic() - self._started < QUICK_SECONDS else 0
            if quick >= QUICK_EXITS:
                log.error(
                    "the worker exited %d times within %g s of its start (last exit code %s): "
                    "stopping; its log above says why",
                    quick,
                    QUICK_SECONDS,
                    code,
                )
                self.gave_up = True
                self.on_give_up()
                return
            pause = RESTART_SECONDS[min(quick, len(RESTART_SECONDS) - 1)]
            log.error("the worker exited (code %s); starting it again in %g s", code, pause)
            if self._stopping.wait(pause):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self._process, self._started = self._start(), time.monotonic()
            log.info("the worker started again (pid %d)", self._process.pid)


def server(config: Any) -> Any:
    """uvicorn's server for `config`, which also tells the API when it begins to stop: a
    request waiting for its job (Prefer: wait) then answers its 202 within the drain."""
    import uvicorn

    from api.http.state import STOPPING

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            STOPPING.set()
            super().handle_exit(sig, frame)

    return Server(config)


@functools.cache
def _die_with_parent() -> Callable[[], None]:
    """What the worker child runs before it starts (Linux): receive SIGTERM when `mifo serve`
    dies, even by SIGKILL. libc is looked up here, in the parent: the child of a process with
    threads may only do little before exec, and loading a library is not among it."""
    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl

    def child() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        # Ctrl-C is `mifo serve`'s to handle: it stops the worker with SIGTERM. Ignored
        # until Celery installs its own handlers, so a Ctrl-C while the worker still starts
        # does not end it with a KeyboardInterrupt traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    return child
