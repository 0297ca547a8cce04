"""The chaos soak's faults (bench/chaos.py): a database proxy that can blackhole, and the
injector that picks one fault every few seconds and heals it again.

Faults, each recorded with the jobs it hit (see `Fault`):

| kind           | what                                                                     |
|----------------|--------------------------------------------------------------------------|
| kill_worker    | SIGKILL a job worker's process group, start it again                     |
| pause_worker   | SIGSTOP a job worker's group for longer than the lease, then SIGCONT     |
| restart_redis  | SIGKILL the broker (keeps nothing on disk), start it on the same port    |
| blackhole_db   | one process' database proxy stops forwarding for 15-30 s, then resumes   |
| kill_api       | SIGKILL an API replica, start it again                                   |
| skew_worker    | restart a job worker under `faketime` with its clock moved by +-5 min    |
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.chaos import Cluster

KINDS = (
    "kill_worker",
    "pause_worker",
    "restart_redis",
    "blackhole_db",
    "kill_api",
    "skew_worker",
)
SKEW_SECONDS = 300
WORKER_STOP_GRACE = 20.0  # a warm shutdown (skew restart) gets this long before SIGKILL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BlackholeProxy:
    """A loopback TCP proxy to `target` whose every connection can be frozen: while
    blackholed, nothing is forwarded in either direction, yet no socket is closed (the
    kernel keeps acknowledging what peers send), and new connections are accepted but get
    no answer. That is a database behind a network that silently drops everything, not one
    that refuses: clients only learn from their own timeouts. `resume()` delivers whatever
    waited, late, as a healed network would."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(128)
        threading.Thread(target=self._accept, daemon=True, name=f"proxy-{self.port}").start()

    @property
    def blackholed(self) -> bool:
        return not self._flowing.is_set()

    def blackhole(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()  # frees every waiting pipe, which then finds its socket closed
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            socks, self._socks = list(self._socks), set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._socks.update(socks)

    def _connect(self, client: socket.socket) -> None:
        """Reach the target only while flowing: a connection opened during a blackhole
        waits, unanswered, like a SYN into a dropped route (the kernel accepted it here)."""
        self._flowing.wait()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        self._track(upstream)
        ends = [2]
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(src, dst, ends), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, ends: list[int]) -> None:
        with contextlib.suppress(OSError):
            while True:
                self._flowing.wait()
                data = src.recv(65536)
                if not data or self._closed:
                    break
                self._flowing.wait()  # read during a blackhole: held until it ends
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with self._lock:
            ends[0] -= 1
            last = ends[0] == 0
            if last:
                self._socks.discard(src)
                self._socks.discard(dst)
        if last:  # both directions ended: the connection is over
            src.close()
            dst.close()


@dataclass
class Fault:
    """One injected fault: what, on which component, when (seconds since the soak's start),
    the jobs it hit and how those were attributed, and when it was healed."""

    number: int
    kind: str
    target: str
    started: float
    healed: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    # Jobs running on the component (or, for the broker, queued) when the fault began.
    affected: list[str] = field(default_factory=list)
    # log: the worker's own log named the job; elimination: the only running job no other
    # worker's log claims, and this the only worker without one; none: nothing was running.
    attribution: str = "none"
    # Seconds after `started` at which the component answered again (API ready, worker
    # ready, broker answering), for faults that hit no job.
    component_back: float | None = None
    # Filled by the checker from the job timelines (bench.chaos_check.recovery).
    recovery_seconds: float | None = None
    first_back_seconds: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Injector:
    """Every `every` seconds (jittered), one fault, in a thread of its own that heals it.

    Kinds come from `random.Random(seed)`: each round is a shuffle of every enabled kind, so
    a short soak still sees each kind once; targets are drawn from the same generator among
    the components no other fault holds. At most `max_workers_down` job workers are faulted
    at once, so the queue always moves."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        seed: int,
        every: float,
        kinds: tuple[str, ...] = KINDS,
        max_workers_down: int = 2,
        blackhole_seconds: tuple[float, float] = (15.0, 30.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.every, self.kinds = every, kinds
        self.max_workers_down = max_workers_down
        self.blackhole_seconds = blackhole_seconds
        self.clock = clock  # the soak's clock, shared with the job timelines
        self.faults: list[Fault] = []
        self.crashes: list[dict[str, Any]] = []
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._rotation: list[str] = []
        self._loop = threading.Thread(target=self._run, daemon=True, name="chaos-injector")

    def now(self) -> float:
        return round(self.clock(), 2)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        """No new faults; wait for the running ones to heal themselves."""
        self._stop.set()
        self._loop.join()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        next_at = time.monotonic() + self.every / 2
        while not self._stop.wait(0.5):
            self._restart_crashed()
            if time.monotonic() < next_at:
                continue
            next_at = time.monotonic() + self.every * self.rng.uniform(0.8, 1.2)
            picked = self._pick()
            if picked is None:
                continue
            fault = Fault(len(self.faults) + 1, picked[0], picked[1], self.now())
            self.faults.append(fault)
            thread = threading.Thread(
                target=self._inject, args=(fault,), daemon=True, name=f"fault-{fault.number}"
            )
            self._threads.append(thread)
            thread.start()

    def _pick(self) -> tuple[str, str] | None:
        """The next kind of the rotation that has a free target (others wait their turn)."""
        if not self._rotation:
            self._rotation = list(self.kinds)
            self.rng.shuffle(self._rotation)
        for i, kind in enumerate(self._rotation):
            targets = self._targets(kind)
            if targets:
                self._rotation.pop(i)
                target = self.rng.choice(targets)
                with self._lock:
                    self._busy.add(target)
                return kind, target
        return None

    def _targets(self, kind: str) -> list[str]:
        workers = list(self.cluster.workers)
        with self._lock:
            busy = set(self._busy)
        workers_down = len(busy & set(workers))
        free_workers = [w for w in workers if w not in busy]
        if workers_down >= self.max_workers_down:
            free_workers = []
        if kind in ("kill_worker", "pause_worker", "skew_worker"):
            return free_workers
        if kind == "kill_api":
            return [a for a in self.cluster.apis if a not in busy]
        if kind == "restart_redis":
            return [] if "redis" in busy else ["redis"]
        if kind == "blackhole_db":
            others = [a for a in (*self.cluster.apis, "control") if a not in busy]
            return free_workers + others
        raise ValueError(f"unknown fault kind {kind!r}")

    def _inject(self, fault: Fault) -> None:
        try:
            getattr(self, f"_{fault.kind}")(fault)
        except Exception as exc:  # recorded; the heal step at the end restores everything
            fault.error = f"{type(exc).__name__}: {exc}"
        finally:
            if fault.healed is None:
                fault.healed = self.now()
            with self._lock:
                self._busy.discard(fault.target)

    def _hit(self, fault: Fault) -> None:
        """Record the jobs running on the target worker as the fault begins."""
        jobs, how = self.cluster.running_on(fault.target)
        fault.affected, fault.attribution = sorted(jobs), how

    def _kill_worker(self, fault: Fault) -> None:
        self._hit(fault)
        self.cluster.stop(fault.target, signal.SIGKILL)
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.cluster.start(fault.target)
        fault.healed = self.now()
        if self.cluster.wait_worker(fault.target, 90):
            fault.component_back = self.now() - fault.started

    def _pause_worker(self, fault: Fault) -> None:
        self._hit(fault)
        seconds = self.cluster.settings.lease_seconds + self.rng.uniform(5, 10)
        fault.detail["paused_seconds"] = round(seconds, 1)
        self.cluster.signal(fault.target, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            self.cluster.signal(fault.target, signal.SIGCONT)
        fault.healed = self.now()
        fault.component_back = fault.healed - fault.started

    def _restart_redis(self, fault: Fault) -> None:
        fault.affected, fault.attribution = sorted(self.cluster.queued_jobs()), "queued"
        down = self.rng.uniform(0.5, 3.0)
        fault.detail["down_seconds"] = round(down, 1)
        self.cluster.restart_redis(down)
        fault.healed = self.now()
        fault.component_back = fault.healed - fault.started

    def _blackhole_db(self, fault: Fault) -> None:
        if fault.target in self.cluster.workers:
            self._hit(fault)
        seconds = self.rng.uniform(*self.blackhole_seconds)
        fault.detail["blackholed_seconds"] = round(seconds, 1)
        proxy = self.cluster.proxies[fault.target]
        proxy.blackhole()
        try:
            time.sleep(seconds)
        finally:
            proxy.resume()
        fault.healed = self.now()
        if fault.target in self.cluster.apis:
            if self.cluster.wait_api(fault.target, 60):
                fault.component_back = self.now() - fault.started
        else:
            fault.component_back = fault.healed - fault.started

    def _kill_api(self, fault: Fault) -> None:
        self.cluster.stop(fault.target, signal.SIGKILL)
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.cluster.start(fault.target)
        fault.healed = self.now()
        if self.cluster.wait_api(fault.target, 90):
            fault.component_back = self.now() - fault.started

    def _skew_worker(self, fault: Fault) -> None:
        self._hit(fault)
        skew = self.rng.choice((SKEW_SECONDS, -SKEW_SECONDS))
        fault.detail["skew_seconds"] = skew
        # A warm shutdown hands the running job back at its next step; one that outlasts the
        # grace is killed, and its job's run is lost like a killed worker's.
        killed = self.cluster.stop(fault.target, signal.SIGTERM, grace=WORKER_STOP_GRACE)
        fault.detail["killed_after_grace"] = killed
        self.cluster.start(fault.target, skew=skew)
        fault.detail["incarnation"] = self.cluster.incarnations[fault.target][-1].number
        fault.healed = self.now()
        if self.cluster.wait_worker(fault.target, 90):
            fault.component_back = self.now() - fault.started

    def _restart_crashed(self) -> None:
        """A service process that exited by itself (not by a fault) is started again, and
        the exit is reported: the soak is not about that, but it must be seen."""
        with self._lock:
            busy = set(self._busy)
        for name, code in self.cluster.exited(exclude=busy):
            why = self.cluster.last_error(name)
            self.crashes.append({"at": self.now(), "process": name, "exit_code": code, "why": why})
            self.cluster.start(name)
