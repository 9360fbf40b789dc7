"""Deterministic fault decisions (one seeded generator per fault kind, so enabling one fault never shifts
which requests another fault hits)."""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass

from .config import FaultConfig


@dataclass
class Decision:
    """What to do with one request before the app sees it."""

    drop: bool = False
    delay_s: float = 0.0
    status: int | None = None  # 429 / 5xx to answer instead of the app
    retry_after_ms: int | None = None
    kind: str = ""


class FaultInjector:
    """Decides, request by request, which configured fault (if any) hits it, and counts the faults injected."""

    def __init__(self, faults: FaultConfig, seed: int) -> None:
        self._lock = threading.Lock()
        self.seed = seed
        self.faults = faults
        self.injected: Counter[str] = Counter()
        self._burst_left = 0
        self._rngs: dict[str, random.Random] = {}
        self.reseed()

    def reseed(self) -> None:
        """Restart every fault kind's random sequence from the seed (as at start), and end any 5xx burst."""
        with self._lock:
            self._rngs = {
                k: random.Random(f"{self.seed}:{k}") for k in ("429", "5xx", "drop", "t429", "t5xx")
            }
            self._burst_left = 0

    def set(self, faults: FaultConfig) -> None:
        """Use these faults from the next request on (the random sequences go on; a 5xx burst ends)."""
        with self._lock:
            self.faults = faults
            self._burst_left = 0

    def _hit(self, kind: str, rate: float) -> bool:
        # Always draw, so the sequence of draws only depends on the request sequence.
        return self._rngs[kind].random() < rate

    def decide(self, is_token: bool) -> Decision:
        """The fault for the next request, a token request (``is_token``) or an ``/api/`` one.

        A drop comes first, then (API) a running 5xx burst, a new 5xx, a 429; the same request sequence always
        gets the same faults.
        """
        f = self.faults
        with self._lock:
            if self._hit("drop", f.drop_rate):
                self.injected["drop"] += 1
                return Decision(drop=True, kind="drop")
            delay = f.slow_ms / 1000.0
            if delay:
                self.injected["slow"] += 1
            if is_token:
                if self._hit("t5xx", f.token_5xx_rate):
                    self.injected["token_5xx"] += 1
                    return Decision(delay_s=delay, status=503, kind="token_5xx")
                if self._hit("t429", f.token_429_rate):
                    self.injected["token_429"] += 1
                    return Decision(
                        delay_s=delay, status=429, retry_after_ms=self._retry_after(), kind="token_429"
                    )
                return Decision(delay_s=delay)
            if self._burst_left > 0:
                self._burst_left -= 1
                self.injected["5xx"] += 1
                return Decision(delay_s=delay, status=f.status_5xx, kind="5xx")
            if self._hit("5xx", f.rate_5xx):
                self._burst_left = f.burst_5xx - 1
                self.injected["5xx"] += 1
                return Decision(delay_s=delay, status=f.status_5xx, kind="5xx")
            if self._hit("429", f.rate_429):
                self.injected["429"] += 1
                return Decision(delay_s=delay, status=429, retry_after_ms=self._retry_after(), kind="429")
            return Decision(delay_s=delay)

    def _retry_after(self) -> int | None:
        return None if self.faults.no_retry_after else self.faults.retry_after_ms

    def count(self, kind: str) -> None:
        """Count one fault of ``kind`` injected elsewhere (404 after create, create delay) in the stats."""
        with self._lock:
            self.injected[kind] += 1
