"""A real S3-compatible HTTP server for tests: moto's server (`moto_server`, from moto[server] on PyPI) as
its own process on a loopback port. No MinIO binary installs offline; moto speaks the same S3 REST API to
boto3, so the client code under test is exactly what talks to MinIO or AWS.

    with s3_server() as server:          # server.endpoint = "http://127.0.0.1:PORT"
        server.make_bucket("media")
        settings = Settings(blobs={"url": "s3://media/mmrag", "s3": server.settings()})
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# moto accepts any credentials; boto3 refuses to sign without some. Every process the tests start (mmrag
# serve, Ray workers) inherits these.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "mmrag-test", "AWS_SECRET_ACCESS_KEY": "mmrag-test-secret"}


@dataclass
class S3Server:
    endpoint: str

    def settings(self) -> dict[str, Any]:
        """The `blobs.s3` settings that reach this server."""
        return {"endpoint_url": self.endpoint, "region": "us-east-1", "addressing_style": "path"}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for obj in listed.get("Contents", []))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def s3_server() -> Iterator[S3Server]:
    for key, value in CREDENTIALS.items():
        os.environ.setdefault(key, value)
    executable = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = _free_port()
    process = subprocess.Popen(
        [executable, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(endpoint, timeout=2)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                time.sleep(0.2)
        yield S3Server(endpoint)
    finally:
        process.terminate()
        process.wait(timeout=30)
