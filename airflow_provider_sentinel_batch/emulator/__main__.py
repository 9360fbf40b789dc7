"""``sentinel-batch-emulator`` / ``python -m airflow_provider_sentinel_batch.emulator``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from .config import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_TIME_SCALE,
    EmulatorConfig,
    FaultConfig,
    S3Delivery,
)

S3_POLICY_ACCESS_KEY_ENV = "SENTINEL_BATCH_EMULATOR_S3_ACCESS_KEY"
S3_POLICY_SECRET_KEY_ENV = "SENTINEL_BATCH_EMULATOR_S3_SECRET_KEY"

# CLI flag → FaultConfig field
FAULT_FLAGS: dict[str, tuple[str, type, str]] = {
    "--fault-429-rate": ("rate_429", float, "share of API responses answered 429 (0-1)"),
    "--fault-429-retry-after-ms": ("retry_after_ms", int, "Retry-After value of injected 429s, in ms"),
    "--fault-5xx-rate": ("rate_5xx", float, "share of API requests that start a 5xx burst (0-1)"),
    "--fault-5xx-burst": ("burst_5xx", int, "consecutive API requests failing per 5xx burst"),
    "--fault-5xx-status": ("status_5xx", int, "status code of injected server errors (default 503)"),
    "--fault-drop-rate": (
        "drop_rate",
        float,
        "share of API/token requests whose connection is dropped (0-1)",
    ),
    "--fault-404-after-create": (
        "not_found_after_create",
        float,
        "SECONDS a new id answers 404 after create",
    ),
    "--fault-token-429-rate": ("token_429_rate", float, "share of token requests answered 429 (0-1)"),
    "--fault-token-5xx-rate": ("token_5xx_rate", float, "share of token requests answered 503 (0-1)"),
    "--fault-slow-ms": ("slow_ms", int, "extra latency per API/token response, in ms"),
    "--fault-create-delay-ms": ("create_delay_ms", int, "delay of create calls before the job exists, in ms"),
    "--fault-create-answer-delay-ms": (
        "create_answer_delay_ms",
        int,
        "delay of the create answer after the job exists, in ms",
    ),
    "--fault-token-lifetime": ("token_lifetime", float, "override token lifetime (s) as a fault"),
    "--tile-failure-rate": (
        "tile_failure_rate",
        float,
        "share of tiles/features of new jobs that fail (0-1)",
    ),
    "--analysis-failure-rate": (
        "analysis_failure_rate",
        float,
        "share of new jobs whose analysis fails (0-1)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``sentinel-batch-emulator`` command line: server, credentials, S3 delivery, rate limits, faults."""
    p = argparse.ArgumentParser(
        prog="sentinel-batch-emulator",
        description="Local emulator of the Sentinel Hub Batch Processing API (v1 + v2), OAuth and faults.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; loopback only)")
    p.add_argument("--allow-remote", action="store_true", help="allow binding to a non-loopback address")
    p.add_argument("--port", type=int, default=8787, help="port (default 8787; 0 picks a free one)")
    p.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    p.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET)
    p.add_argument("--token-lifetime", type=float, default=3600.0, help="access token lifetime in seconds")
    p.add_argument(
        "--time-scale",
        type=float,
        default=DEFAULT_TIME_SCALE,
        help=f"emulated seconds per real second (default {DEFAULT_TIME_SCALE:g}: Corsica job ~25 s)",
    )
    p.add_argument("--data-dir", default=None, help="where bucket outputs are written (default: a temp dir)")
    p.add_argument(
        "--s3-endpoint-url",
        default=None,
        help="deliver outputs into this S3-compatible server instead of --data-dir (v2 with the request's keys; "
        f"v1 with the keys in ${S3_POLICY_ACCESS_KEY_ENV} / ${S3_POLICY_SECRET_KEY_ENV}, a bucket-policy stand-in)",
    )
    p.add_argument("--s3-region", default="us-east-1", help="region of the S3 server (default us-east-1)")
    p.add_argument("--seed", type=int, default=0, help="seed for ids, tile failures and faults")
    p.add_argument(
        "--pu-budget", type=float, default=None, help="processing units on the account (v2 OUT_OF_PU)"
    )
    p.add_argument("--state-file", default=None, help="JSON file to keep jobs across restarts")
    p.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument(
        "--rate-limit",
        action="append",
        default=None,
        metavar="REQUESTS/SECONDS",
        help="a rate-limit policy of the account, e.g. 600/60 (repeat for several at once; windows in emulated "
        "seconds); over it API calls get 429 with Retry-After in ms",
    )
    p.add_argument(
        "--token-rate-limit",
        action="append",
        default=None,
        metavar="REQUESTS/SECONDS",
        help="a rate-limit policy of the account's token requests, e.g. 30/60 (repeatable; counted apart from "
        "API calls); over it token requests get 429 with Retry-After in ms",
    )
    faults = p.add_argument_group("faults")
    for flag, (_, typ, help_) in FAULT_FLAGS.items():
        faults.add_argument(flag, type=typ, default=None, help=help_)
    faults.add_argument(
        "--fault-429-no-retry-after", action="store_true", help="send 429 without Retry-After"
    )
    return p


def s3_from_args(args: argparse.Namespace) -> S3Delivery | None:
    """S3 delivery from the flags; the bucket-policy keys come from the environment (never the command line)."""
    if not args.s3_endpoint_url:
        return None
    return S3Delivery(
        endpoint_url=args.s3_endpoint_url,
        region=args.s3_region,
        policy_access_key=os.environ.get(S3_POLICY_ACCESS_KEY_ENV) or None,
        policy_secret_key=os.environ.get(S3_POLICY_SECRET_KEY_ENV) or None,
    )


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """The :class:`EmulatorConfig` the parsed flags ask for (not validated yet); unset fault flags stay off."""
    faults = FaultConfig(no_retry_after=args.fault_429_no_retry_after)
    changes = {}
    for flag, (field, _, _) in FAULT_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            changes[field] = value
    faults = faults.updated(**changes)
    return EmulatorConfig(
        host=args.host,
        port=args.port,
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_lifetime=args.token_lifetime,
        time_scale=args.time_scale,
        data_dir=args.data_dir,
        faults=faults,
        seed=args.seed,
        allow_remote_bind=args.allow_remote,
        pu_budget=args.pu_budget,
        state_file=args.state_file,
        log_level=args.log_level,
        access_log=args.access_log,
        s3=s3_from_args(args),
        rate_limits=tuple(args.rate_limit or ()),
        token_rate_limits=tuple(args.token_rate_limit or ()),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM; exit code 2 for bad flags, 1 if it cannot listen or dies."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        config.validate()
    except ValueError as exc:
        print(f"sentinel-batch-emulator: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from .server import EmulatorServer

    server = EmulatorServer(config)
    try:
        server.start()
    except OSError as exc:
        print(
            f"sentinel-batch-emulator: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr
        )
        return 1
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    print(server.ready_line(), flush=True)
    try:
        while not stop.wait(0.5):
            if not server.running:
                print("sentinel-batch-emulator: server thread ended unexpectedly", file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
