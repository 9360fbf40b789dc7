"""Configuration of the emulator: plain dataclasses, importable without the web stack."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Emulated seconds per wall-clock second by default. The model durations in ``state.Timing`` are roughly
#: what the real service takes; at this speed the Corsica example (72 tiles on grid 0 at 60 m) goes from
#: ``start`` to ``DONE`` in about 25 s.
DEFAULT_TIME_SCALE = 15.0

#: Speed used by the pytest fixture: the Corsica job finishes in well under a second.
FAST_TIME_SCALE = 1000.0

DEFAULT_CLIENT_ID = "emulator-client"
DEFAULT_CLIENT_SECRET = "emulator-secret"  # a documented, local-only default


@dataclass
class FaultConfig:
    """Misbehaviour to inject. Every field defaults to "off"; rates are shares of requests in [0, 1].

    Faults hit ``/api/...`` and the token endpoints, never ``/_emulator/...``. Random draws come from
    generators seeded with ``EmulatorConfig.seed`` (one per fault kind), so a given request sequence
    always gets the same faults.
    """

    rate_429: float = 0.0
    """Share of API responses replaced by ``429 RATE_LIMIT_EXCEEDED``."""
    retry_after_ms: int = 500
    """``Retry-After`` value (milliseconds, as the real service sends it)."""
    no_retry_after: bool = False
    """Send 429 without a ``Retry-After`` header."""
    rate_5xx: float = 0.0
    """Share of API requests that start a burst of server errors."""
    burst_5xx: int = 1
    """How many consecutive API requests fail once a burst starts."""
    status_5xx: int = 503
    """Status code of injected server errors."""
    drop_rate: float = 0.0
    """Share of API and token requests whose connection is closed without any response."""
    not_found_after_create: float = 0.0
    """Wall-clock seconds after create during which the new id answers 404 (database sync lag)."""
    token_429_rate: float = 0.0
    """Share of token requests answered 429."""
    token_5xx_rate: float = 0.0
    """Share of token requests answered 503."""
    slow_ms: int = 0
    """Extra latency added to every API and token response."""
    create_delay_ms: int = 0
    """Wall-clock delay of create calls before the job exists (it then appears at once): two creates that start
    together both pass a preceding list before either job shows up (concurrent executions of one task)."""
    create_answer_delay_ms: int = 0
    """Wall-clock delay of the create answer after the job exists (it is listed at once): the client is still
    waiting for an id the service has already accepted (a worker lost in that window leaves a job behind)."""
    tile_failure_rate: float = 0.0
    """Share of tiles (v1) / features (v2) of new jobs that fail on the first attempt."""
    analysis_failure_rate: float = 0.0
    """Share of new jobs whose analysis ends ``FAILED``."""
    token_lifetime: float | None = None
    """Overrides ``EmulatorConfig.token_lifetime`` for newly issued tokens (short-lifetime fault)."""

    _RATES = (
        "rate_429",
        "rate_5xx",
        "drop_rate",
        "token_429_rate",
        "token_5xx_rate",
        "tile_failure_rate",
        "analysis_failure_rate",
    )

    def validate(self) -> None:
        """Fail early on nonsense values: a typo in a test should not silently disable a fault."""
        for name in self._RATES:
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"fault {name} must be within [0, 1], got {value!r}")
        if self.burst_5xx < 1:
            raise ValueError("fault burst_5xx must be >= 1")
        if not 500 <= self.status_5xx <= 599:
            raise ValueError("fault status_5xx must be a 5xx code")
        if (
            min(
                self.retry_after_ms,
                self.slow_ms,
                self.create_delay_ms,
                self.create_answer_delay_ms,
                self.not_found_after_create,
            )
            < 0
        ):
            raise ValueError("fault durations must not be negative")
        if self.token_lifetime is not None and self.token_lifetime <= 0:
            raise ValueError("fault token_lifetime must be positive")

    def to_dict(self) -> dict[str, Any]:
        """Every field by name (the control plane's ``/_emulator/faults`` answer and the stats)."""
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        """The field names :meth:`updated` accepts."""
        return {f.name for f in dataclasses.fields(cls)}

    def updated(self, **changes: Any) -> FaultConfig:
        """A copy with ``changes`` applied; unknown names raise ``ValueError`` (shown to the caller)."""
        unknown = set(changes) - self.field_names()
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new


@dataclass(frozen=True)
class BucketKeys:
    """An S3 access key pair; the secret never shows in ``repr``."""

    access_key: str
    secret_key: str = field(repr=False)


@dataclass
class S3Delivery:
    """Deliver outputs into an S3-compatible server at ``endpoint_url`` instead of ``data_dir``.

    v2 requests write with their own ``output.delivery.s3`` keys. ``policy_access_key``/``policy_secret_key``
    stand in for what a bucket policy grants the service: v1 requests (which carry no keys) and v2 requests with
    an ``iamRoleARN`` write with them; without them such requests are refused when S3 delivery is on.
    """

    endpoint_url: str
    region: str = "us-east-1"
    policy_access_key: str | None = None
    policy_secret_key: str | None = field(default=None, repr=False)

    def validate(self) -> None:
        """Raise ``ValueError`` for a non-http(s) endpoint or half a policy key pair."""
        if not self.endpoint_url.startswith(("http://", "https://")):
            raise ValueError(f"s3 endpoint_url must be an http(s) URL, got {self.endpoint_url!r}")
        if bool(self.policy_access_key) != bool(self.policy_secret_key):
            raise ValueError("policy_access_key and policy_secret_key go together")

    @property
    def policy_keys(self) -> BucketKeys | None:
        """The bucket-policy stand-in keys, or ``None`` when not both are set."""
        if self.policy_access_key and self.policy_secret_key:
            return BucketKeys(self.policy_access_key, self.policy_secret_key)
        return None


@dataclass
class EmulatorConfig:
    """How to run one emulator instance (see ``docs/emulator.md``)."""

    host: str = "127.0.0.1"
    port: int = 8787
    """TCP port; ``0`` picks a free one (read it back from ``EmulatorServer.base_url``)."""
    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    token_lifetime: float = 3600.0
    """Wall-clock seconds an access token stays valid (``expires_in``)."""
    time_scale: float = DEFAULT_TIME_SCALE
    """Emulated seconds per wall-clock second (analysis, queueing, tiles, the 30-minute STOP block)."""
    data_dir: str | Path | None = None
    """Where "bucket" outputs go (``s3://bucket/key`` → ``<data_dir>/bucket/key``); ``None`` = a temp dir."""
    faults: FaultConfig = field(default_factory=FaultConfig)
    seed: int = 0
    """Seeds ids, tile failures, timing jitter and fault draws: same calls, same results."""
    allow_remote_bind: bool = False
    """Binding to a non-loopback address exposes fixed, public credentials: refuse unless asked."""
    pu_budget: float | None = None
    """Processing units left on the emulated account (v2 ``OUT_OF_PU``); ``None`` = unlimited."""
    realm: str | None = None
    """Identity realm whose tokens the API accepts (``"main"`` = Sentinel Hub, ``"CDSE"``); ``None`` accepts
    tokens from every token endpoint. Set it to emulate a wrong-deployment connection (CDSE token, SH API)."""
    state_file: str | Path | None = None
    """JSON file to load jobs from at start and save them to on changes and at stop (bucket keys are never
    saved: after a restart, jobs that wrote over S3 with their request's keys deliver nothing more)."""
    s3: S3Delivery | None = None
    """Deliver outputs into this S3-compatible server instead of ``data_dir``."""
    rate_limits: Any = ()
    """Rate-limit policies of the account (its client id), all enforced at once: ``["600/60", "30/1"]`` (requests
    per emulated seconds; also ``(600, 60)`` or ``{"requests": 600, "window_s": 60}``). Over any of them an API
    call gets ``429 RATE_LIMIT_EXCEEDED`` with ``Retry-After`` in milliseconds (wall clock)."""
    token_rate_limits: Any = ()
    """Rate-limit policies of the account's token requests, in the same forms as ``rate_limits`` and counted
    apart from API calls: over any of them a token request gets the same 429 (``()``: token requests unlimited)."""
    log_level: str = "warning"
    access_log: bool = False

    def validate(self) -> None:
        """Raise ``ValueError`` on a setting the emulator cannot run with (faults, rate limits and S3 included).

        A non-loopback ``host`` is refused unless ``allow_remote_bind``: the emulator takes public credentials.
        """
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if self.token_lifetime <= 0:
            raise ValueError("token_lifetime must be positive")
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"invalid port {self.port!r}")
        if not self.client_id or not self.client_secret:
            raise ValueError("client_id and client_secret must not be empty")
        if self.pu_budget is not None and self.pu_budget < 0:
            raise ValueError("pu_budget must not be negative")
        if self.realm not in (None, "main", "CDSE"):
            raise ValueError(f"realm must be 'main', 'CDSE' or None, got {self.realm!r}")
        self.faults.validate()
        from .ratelimit import parse_limits

        parse_limits(self.rate_limits)
        parse_limits(self.token_rate_limits)
        if self.s3 is not None:
            self.s3.validate()
        if not self.allow_remote_bind and not is_loopback_host(self.host):
            raise ValueError(
                f"refusing to bind the emulator to non-loopback host {self.host!r}: it accepts fixed, "
                "publicly documented credentials. Pass allow_remote_bind=True (CLI: --allow-remote) if you "
                "really want that."
            )


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    if host.lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
