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
