"""A real S3-compatible server on 127.0.0.1 for bucket tests and the demo: moto in server mode, in a child process.

Needs moto with its server dependencies (``pip install "moto[s3]" flask flask-cors``; the project's ``test`` extra
has them) and botocore (the ``s3`` extra). Why moto: it ships as a pure-Python wheel (installed by the ``test`` extra from the lock, no binary download),
starts in about a second, and in server mode speaks the S3 REST protocol with SigV4 signatures, so s3fs,
botocore and the emulator talk to it exactly as to AWS S3 or CDSE's endpoint. With IAM authentication switched
on (after setup, through its ``/moto-api/reset-auth`` control call) it checks every request's signature and
the key's IAM policy: unknown access keys are refused (``InvalidAccessKeyId``), a wrong secret is refused
(``SignatureDoesNotMatch``), a read-only key cannot write (``AccessDenied``) and a missing bucket is
``NoSuchBucket``. MinIO or SeaweedFS would be closer to a production store but come as Go binaries, not as
packages of this project's index.

The server gets two key pairs of its own, generated at start: ``writer`` (``s3:*``, what a delivery bucket's
owner gives the service) and ``reader`` (get/list only, what a results connection needs).

The pytest plugin of this package offers it as fixtures: ``sentinel_batch_s3_server`` (one per session) and
``sentinel_batch_s3_bucket`` (a fresh bucket per test)::

    with S3Server() as s3:
        bucket = s3.create_bucket()
        config = EmulatorConfig(port=0, s3=s3.emulator_delivery())
        s3.airflow_conn(s3.reader_keys)  # an ``aws`` connection dict for results_conn_id
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .config import S3Delivery
from .service import Service

REGION = "eu-central-1"

# Runs in the child: serve moto on a free loopback port, print it, exit when the parent closes our stdin.
_SERVE = textwrap.dedent(
    """
    import sys, threading, os
    from werkzeug.serving import make_server
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    print(server.port, flush=True)

    def watch_parent():
        sys.stdin.read()  # returns when the parent exits or closes the pipe
        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()
    server.serve_forever()
    """
)

_WRITE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}
_READ_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["s3:Get*", "s3:List*", "s3:Head*"],
            "Resource": "*",
        }
    ],
}


@dataclass(frozen=True)
class S3Keys:
    """One access key pair of the test server; the secret stays out of ``repr``."""

    access_key: str
    secret_key: str = field(repr=False)


class S3Server(Service):
    """A moto S3 server with IAM signature checks, on a free port of 127.0.0.1, in its own process."""

    def __init__(self, *, region: str = REGION) -> None:
        self.region = region
        self.port: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self.writer: S3Keys | None = None
        self.reader: S3Keys | None = None
        self._clients: dict[S3Keys, Any] = {}

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60.0) -> S3Server:
        """Start moto in a child process, create the writer and reader keys, then switch on signature checks.

        Returns once the server answers; raises ``RuntimeError`` if it does not within ``timeout`` seconds.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)  # setup runs unauthenticated, then auth goes on
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"moto server did not start (first line: {line!r})")
        self.port = int(line)
        self._wait_ready(timeout)
        self._setup()
        return self

    def _wait_ready(self, timeout: float) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while True:
            try:
                requests.get(f"{self.endpoint_url}/moto-api/data.json", timeout=2)
                return
            except requests.RequestException:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto server did not answer") from None
                time.sleep(0.05)

    def _setup(self) -> None:
        import requests

        iam = self._client("iam", S3Keys("setup", "setup"))  # unauthenticated until reset-auth below
        self.writer = self._user(iam, "sentinel-batch-writer", _WRITE_POLICY)
        self.reader = self._user(iam, "sentinel-batch-reader", _READ_POLICY)
        reply = requests.post(f"{self.endpoint_url}/moto-api/reset-auth", data=b"0", timeout=10)
        reply.raise_for_status()

    @staticmethod
    def _user(iam: Any, name: str, policy: dict[str, Any]) -> S3Keys:
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return S3Keys(key["AccessKeyId"], key["SecretAccessKey"])

    def stop(self) -> None:
        """End the child process (closing its stdin; killed after 10 s); safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        finally:
            if proc.stdout:
                proc.stdout.close()

    # ---------------------------------------------------------------------------------------------- access
    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``; raises ``RuntimeError`` before :meth:`start`."""
        if self.port is None:
            raise RuntimeError("S3 server not started")
        return f"http://127.0.0.1:{self.port}"

    def _client(self, service: str, keys: S3Keys) -> Any:
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=keys.access_key,
            aws_secret_access_key=keys.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def client(self, keys: S3Keys | None = None) -> Any:
        """A botocore S3 client signed with ``keys`` (default: the writer's); cached per key pair."""
        keys = keys or self.writer_keys
        if keys not in self._clients:
            self._clients[keys] = self._client("s3", keys)
        return self._clients[keys]

    @property
    def writer_keys(self) -> S3Keys:
        """The key pair allowed everything (``s3:*``), as a delivery bucket's owner gives the service."""
        assert self.writer is not None, "S3 server not started"
        return self.writer

    @property
    def reader_keys(self) -> S3Keys:
        """The key pair allowed to get and list only, as a results connection needs."""
        assert self.reader is not None, "S3 server not started"
        return self.reader

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket with the writer's keys (default name: a random ``test-...``); returns its name."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.region}
        )
        return name

    def keys_in(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` (listed over the S3 API with the reader's keys)."""
        paginator = self.client(self.reader_keys).get_paginator("list_objects_v2")
        return sorted(
            obj["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
        )

    def get(self, bucket: str, key: str) -> bytes:
        """The bytes of one object, read with the reader's keys."""
        body = self.client(self.reader_keys).get_object(Bucket=bucket, Key=key)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def airflow_conn(self, keys: S3Keys | None = None) -> dict[str, Any]:
        """An ``aws`` connection for this server: login = access key, password = secret, extra endpoint_url."""
        keys = keys or self.reader_keys
        return {
            "conn_type": "aws",
            "login": keys.access_key,
            "password": keys.secret_key,
            "extra": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def emulator_delivery(self, *, policy: bool = True) -> S3Delivery:
        """The emulator's ``S3Delivery`` for this server (``policy``: the writer keys stand in for a bucket
        policy, so v1 requests can deliver)."""
        return S3Delivery(
            endpoint_url=self.endpoint_url,
            region=self.region,
            policy_access_key=self.writer_keys.access_key if policy else None,
            policy_secret_key=self.writer_keys.secret_key if policy else None,
        )
