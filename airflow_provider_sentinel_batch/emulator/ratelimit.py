"""Per-account rate limits like the service's: several policies at once, each N requests per window.

Windows are in emulated seconds (a window of 60 s lasts ``60 / time_scale`` wall seconds), so a scaled-up
emulator is also a scaled-up account; ``Retry-After`` is in wall-clock milliseconds, as a client sleeps.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RateLimit:
    """One policy: at most ``requests`` API requests of an account within any ``window_s`` emulated seconds."""

    requests: int
    window_s: float

    def __post_init__(self) -> None:
        if int(self.requests) < 1 or not float(self.window_s) > 0:
            raise ValueError(f"a rate limit needs requests >= 1 and window_s > 0, got {self}")

    @classmethod
    def parse(cls, value: Any) -> RateLimit:
        """From ``"600/60"`` (requests/seconds), ``(600, 60)``, ``{"requests": 600, "window_s": 60}`` or a policy."""
        if isinstance(value, RateLimit):
            return value
        if isinstance(value, str):
            requests, sep, window = value.partition("/")
            if not sep:
                raise ValueError(f"rate limit {value!r}: expected REQUESTS/SECONDS, e.g. 600/60")
            return cls(requests=int(requests), window_s=float(window))
        if isinstance(value, dict):
            return cls(requests=int(value["requests"]), window_s=float(value["window_s"]))
        requests, window = value
        return cls(requests=int(requests), window_s=float(window))

    def to_dict(self) -> dict[str, Any]:
        """The policy as the control plane shows it: ``{"requests": N, "window_s": S}``."""
        return {"requests": self.requests, "window_s": self.window_s}


def parse_limits(values: Any) -> tuple[RateLimit, ...]:
    """Policies from a list of any form :meth:`RateLimit.parse` takes (``None``: no limit)."""
    return tuple(RateLimit.parse(v) for v in (values or ()))


class RateLimiter:
    """Sliding-window counts per (client id, policy); a request passes only if every policy has room."""

    def __init__(self, limits: tuple[RateLimit, ...], time_scale: float) -> None:
        self._lock = threading.Lock()
        self.time_scale = time_scale
        self.limits = limits
        self._seen: dict[tuple[str, int], deque[float]] = {}
        self.limited: Counter[str] = Counter()  # 429s per policy ("600/60")
        self.passed: Counter[str] = Counter()  # requests per client id that passed

    def set(self, limits: tuple[RateLimit, ...]) -> None:
        """Replace the policies (empty: no limit) and restart their windows (the totals in stats stay)."""
        with self._lock:
            self.limits = limits
            self._seen.clear()

    def admit(self, client_id: str, now: float) -> int | None:
        """``None`` if the request of ``client_id`` at wall time ``now`` passes, else the Retry-After in ms."""
        if not self.limits:
            return None
        with self._lock:
            wait = 0.0
            full: list[RateLimit] = []
            logs = []
            for i, limit in enumerate(self.limits):
                window = limit.window_s / self.time_scale
                log = self._seen.setdefault((client_id, i), deque())
                while log and log[0] <= now - window:
                    log.popleft()
                if len(log) >= limit.requests:
                    full.append(limit)
                    wait = max(wait, log[len(log) - limit.requests] + window - now)
                logs.append(log)
            if full:
                for limit in full:
                    self.limited[f"{limit.requests}/{limit.window_s:g}"] += 1
                return max(1, math.ceil(wait * 1000))
            for log in logs:
                log.append(now)
            self.passed[client_id] += 1
            return None

    def stats(self) -> dict[str, Any]:
        """The policies and the counts of admitted and refused requests, for ``/_emulator/stats``."""
        with self._lock:
            return {
                "policies": [limit.to_dict() for limit in self.limits],
                "answered_429": sum(self.limited.values()),
                "answered_429_by_policy": dict(self.limited),
                "admitted_by_client": dict(self.passed),
            }
