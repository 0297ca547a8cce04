"""Real servers for tests: an S3-compatible HTTP server (moto) and free ports."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import boto3

# moto accepts any credentials; boto3 only needs some to sign requests.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server(bucket: str) -> Iterator[str]:
    """Yield the endpoint URL of a moto S3 server holding an empty `bucket`."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=bucket
        )
        yield endpoint
    finally:
        server.stop()


class TcpProxy:
    """A loopback TCP proxy to `target` that can be stopped (every connection cut, the port
    closed) and started again on the same port: a database that goes away and comes back.
    `stall()` stops forwarding but keeps every socket open, so the kernel still acknowledges
    what clients send and nothing answers: a server process that is stuck; `flow()` resumes."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        import threading

        self.target, self.host = target, host
        self.port = free_port()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._flowing = threading.Event()
        self._flowing.set()

    def stall(self) -> None:
        self._flowing.clear()

    def flow(self) -> None:
        self._flowing.set()

    def start(self) -> None:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._socks.clear()

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while self._flowing.wait() and (data := src.recv(65536)):
                self._flowing.wait()  # a stall holds what was read: nothing goes through
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


FORWARD = """
import socket, sys, threading
def pipe(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
host, port, to_host, to_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((host, port))
listener.listen(64)
print("ready", flush=True)
while True:
    client, _ = listener.accept()
    try:
        upstream = socket.create_connection((to_host, to_port), timeout=5)
    except OSError:
        client.close()
        continue
    upstream.settimeout(None)
    for a, b in ((client, upstream), (upstream, client)):
        threading.Thread(target=pipe, args=(a, b), daemon=True).start()
"""


class FrozenLink:
    """A route to a local TCP service through a network namespace of this test's own, whose
    link can drop every packet (no reset, no answer): a database behind a frozen network.

    127.0.0.1:<target> <- proxy on HOST (root namespace) <- veth <- forwarder on PEER (the
    namespace) <- clients, which connect to `address`. `freeze()` makes the veth drop all
    packets: the namespace drops its address, so what reaches it is silently discarded (no
    reset, no answer, the link and routes stay up), and `thaw()` gives the address back.
    Needs root and iproute2's `ip`."""

    HOST, PEER = "10.251.7.1", "10.251.7.2"  # the test's own hosts, inside its namespace

    def __init__(self, target: int) -> None:
        import subprocess
        import sys
        import uuid as _uuid

        tag = _uuid.uuid4().hex[:6]
        self.ns, self.veth, self.peer = f"mifo-{tag}", f"mf{tag}a", f"mf{tag}b"
        self._run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True)
        self._ns = lambda *cmd: self._run("ip", "netns", "exec", self.ns, *cmd)
        self._run("ip", "netns", "add", self.ns)
        self._run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", self.peer)
        self._run("ip", "link", "set", self.peer, "netns", self.ns)
        self._run("ip", "addr", "add", f"{self.HOST}/30", "dev", self.veth)
        self._run("ip", "link", "set", self.veth, "up")
        self._ns("ip", "addr", "add", f"{self.PEER}/30", "dev", self.peer)
        self._ns("ip", "link", "set", self.peer, "up")
        self._ns("ip", "link", "set", "lo", "up")
        self.proxy = TcpProxy(("127.0.0.1", target), host=self.HOST)
        self.proxy.start()
        self.port = free_port()
        self.forwarder = subprocess.Popen(
            [
                *("ip", "netns", "exec", self.ns, sys.executable, "-c", FORWARD),
                *(self.PEER, str(self.port), self.HOST, str(self.proxy.port)),
            ],
            stdout=subprocess.PIPE,
        )
        assert self.forwarder.stdout is not None and self.forwarder.stdout.readline() == b"ready\n"

    @property
    def address(self) -> tuple[str, int]:
        return self.PEER, self.port

    def freeze(self) -> None:
        self._ns("ip", "addr", "del", f"{self.PEER}/30", "dev", self.peer)
        # Keep the peer's link-layer address known, so packets are sent on and dropped there
        # rather than refused here for want of a neighbour.
        mac = self._ns("cat", f"/sys/class/net/{self.peer}/address").stdout.decode().strip()
        self._run(
            "ip", "neigh", "replace", self.PEER, "lladdr", mac, "dev", self.veth, "nud", "permanent"
        )

    def thaw(self) -> None:
        self._ns("ip", "addr", "add", f"{self.PEER}/30", "dev", self.peer)
        self._run("ip", "neigh", "del", self.PEER, "dev", self.veth)

    def close(self) -> None:
        import subprocess

        self.forwarder.kill()
        self.forwarder.wait()
        self.proxy.stop()
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
