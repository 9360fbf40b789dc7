"""The request budget of one account in this process: polls paced evenly, actions first, 429s honoured.

Every call of the hook and of the triggers' async client draws on :func:`budget_for` (token URL, client id):
one :class:`RequestBudget` per account and process, whatever the connection or trigger. Routine calls (status
polls, listings) each take the next free slot of an even schedule (so a thousand waits due in the same second are
spread over the minute instead of colliding at its top; on an idle account up to ``BURST_S`` seconds' worth of
calls go at once). The schedule is a generic cell rate algorithm sized so that no 60 seconds hold more than
``requests_per_minute`` minus ``HEADROOM`` of it, burst included: the service counts requests in a sliding window,
and the headroom is for calls that leave later than their slot (a busy event loop, a wait for a connection) and
so land in the next window next to calls that left on time. Actions (create, analyse, start, stop) never wait for
a slot, they only push the polls' schedule back by one slot. A 429 with ``Retry-After`` holds routine calls back
until the window it names has passed (calls already waiting for a slot inside it take a new one after it), the
schedule restarts there without a burst, at half pace, back to full pace over the minute after it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

#: Requests per minute a process allows itself per account when the connection does not say
#: (``requests_per_minute`` extra): half of the smallest published per-minute plan limit we know of
#: (600/min), leaving room for workers, other processes and other tools of the account.
DEFAULT_REQUESTS_PER_MINUTE: dict[str, float | None] = {
    "sentinel-hub-eu": 300.0,
    "sentinel-hub-us": 300.0,
    "copernicus-dataspace": 300.0,
    "custom": None,  # your own endpoint (the emulator): unlimited unless the connection says
}

#: The window the service counts requests in, in seconds.
WINDOW_S = 60.0
#: How long after a 429 the pace stays reduced, in seconds.
RECOVERY_S = 60.0
#: Seconds' worth of routine calls that may go at once on an idle account (pagination, a task's few reads).
BURST_S = 2.0
#: Share of ``requests_per_minute`` the schedule leaves unused, for calls that leave later than their slot.
HEADROOM = 0.05


class RequestBudget:
    """An even schedule of routine calls under ``requests_per_minute``, shared by every caller of one account."""

    def __init__(self, requests_per_minute: float) -> None:
        self.requests_per_minute = float(requests_per_minute)
        self._lock = threading.Lock()
        self._next = 0.0  # monotonic time of the next free slot at the schedule's pace (before the burst)
        self._held_until = 0.0  # a 429 named this much time: routine calls wait for it
        self._slow_until = 0.0  # reduced pace until then
        self.granted = 0
        self.actions = 0
        self.rate_limited = 0

    @property
    def per_window(self) -> float:
        """Most calls the schedule puts into any ``WINDOW_S`` seconds, burst included."""
        return max(1.0, self.requests_per_minute * (1.0 - HEADROOM) * WINDOW_S / 60.0)

    @property
    def interval(self) -> float:
        """Seconds between two routine calls at full pace: a burst of ``BURST_S`` plus the paced calls of any
        ``WINDOW_S`` seconds come to at most :attr:`per_window` calls."""
        return (WINDOW_S + BURST_S) / max(1.0, self.per_window - 1.0)

    def _pace(self, now: float) -> float:
        if now < self._slow_until:
            # half pace right after a 429, recovering linearly over RECOVERY_S
            left = min(1.0, (self._slow_until - now) / RECOVERY_S)
            return self.interval * (1.0 + left)
        return self.interval

    def reserve(self, *, action: bool = False, now: float | None = None) -> float:
        """Take a slot and return how long to wait for it (0 for an action, which never waits)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if action:
                self.actions += 1
                # the action takes the slot a poll would have had: polls after it move back by one
                self._next = max(self._next, now) + self._pace(now)
                return 0.0
            # a call may go up to BURST_S ahead of the even schedule (an idle account's burst); never inside a hold
            slot = max(self._next - BURST_S, self._held_until, now)
            self._next = max(self._next, slot) + self._pace(slot)
            self.granted += 1
            return slot - now

    def rate_limited_for(self, retry_after: float | None, *, now: float | None = None) -> None:
        """A 429 arrived: hold routine calls for ``retry_after`` seconds and slow down for a while."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.rate_limited += 1
            self._held_until = max(self._held_until, now + (retry_after if retry_after is not None else 10.0))
            self._slow_until = max(self._slow_until, self._held_until + RECOVERY_S)
            # the schedule restarts when the hold ends, with no burst saved up for then
            self._next = max(self._next, self._held_until + BURST_S)

    def _after_wait(self, limited_before: int) -> float:
        """After waiting for a slot: if a 429 arrived meanwhile and its hold is not over, a new slot's wait."""
        if self.rate_limited == limited_before:
            return 0.0
        now = time.monotonic()
        if now >= self._held_until:
            return 0.0
        return self.reserve(now=now)

    async def acquire_async(self, *, action: bool = False) -> None:
        """Wait (asynchronously) for a slot."""
        limited = self.rate_limited
        wait = self.reserve(action=action)
        while wait > 0:
            await asyncio.sleep(wait)
            wait, limited = self._after_wait(limited), self.rate_limited

    def acquire(self, *, action: bool = False, sleep: Callable[[float], Any] | None = None) -> None:
        """Wait (blocking, with ``sleep``: default ``time.sleep``) for a slot."""
        limited = self.rate_limited
        wait = self.reserve(action=action)
        while wait > 0:
            (sleep or time.sleep)(wait)
            wait, limited = self._after_wait(limited), self.rate_limited


_BUDGETS: dict[tuple[str, str], RequestBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def budget_for(token_url: str, client_id: str, requests_per_minute: float | None) -> RequestBudget | None:
    """The process-wide budget of the account (``None``: no budget). The first caller's pace is kept, unless a
    later caller asks for a lower one (the account's limit is the same whichever connection names it)."""
    if not requests_per_minute or requests_per_minute <= 0:
        return None
    key = (token_url, client_id)
    with _BUDGETS_LOCK:
        budget = _BUDGETS.get(key)
        if budget is None:
            budget = _BUDGETS[key] = RequestBudget(requests_per_minute)
        elif requests_per_minute < budget.requests_per_minute:
            budget.requests_per_minute = float(requests_per_minute)
        return budget


def forget_budgets() -> None:
    """Drop every budget of this process (tests)."""
    with _BUDGETS_LOCK:
        _BUDGETS.clear()
