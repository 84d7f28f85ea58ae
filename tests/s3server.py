"""A local S3 API server for tests and benchmarks: moto's server mode in its own process, bound to
127.0.0.1 on a free port, with every client pointed at it through the environment variables of
:mod:`data_prep.objstore` (``AWS_ENDPOINT_URL`` and static test credentials). No network beyond loopback.

    with S3Server() as s3:            # sets os.environ while open, restores it after
        url = s3.bucket("runs")       # "s3://runs-<n>", a fresh empty bucket
"""
from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.request

ENV = {
    "AWS_ACCESS_KEY_ID": "cclray-test",
    "AWS_SECRET_ACCESS_KEY": "cclray-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never wait for an instance-metadata endpoint
}
_count = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto's S3 server in a subprocess; ``env`` holds the variables that point clients at it."""

    def __init__(self, start_timeout: float = 60.0):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {**ENV, "AWS_ENDPOINT_URL": self.endpoint}
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self._saved: dict = {}

    def start(self) -> "S3Server":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **self.env})
        t0 = time.monotonic()
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto server exited ({self.proc.returncode}); is moto[server] installed "
                                       f"(pip install 'cclray[dev]')?") from None
                if time.monotonic() - t0 > self.start_timeout:
                    self.stop()
                    raise RuntimeError(f"moto server did not answer on {self.endpoint} within "
                                       f"{self.start_timeout:.0f} s") from None
                time.sleep(0.1)
        self._saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        return self

    def stop(self) -> None:
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved = {}
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=ENV["AWS_REGION"],
                            aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"])

    def bucket(self, prefix: str = "cclray") -> str:
        """Create a fresh empty bucket; returns ``s3://<name>``."""
        name = f"{prefix}-{os.getpid()}-{next(_count)}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, url: str) -> list[str]:
        """Every object key under ``s3://bucket/prefix`` (sorted)."""
        bucket, _, prefix = url[len("s3://"):].partition("/")
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))
