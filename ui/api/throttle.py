"""Failed-key throttle: a client address that presented more than N refused keys within a minute gets 429.

The window opens at an address's first refused key and lasts a minute; past the limit, that
address's requests that would be refused answer 429 with ``Retry-After`` (the rest of the window)
instead of 401. A valid key is still served from a throttled address: many people can share one
address (the web UI's server, a proxy, a NAT), and one of them mistyping a key must not lock the
others out. The keys' 256-bit secrets are what make guessing hopeless; the throttle tells a
guesser to back off and bounds the 401 noise. Counts live in the worker process.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

WINDOW_SECONDS = 60.0
MAX_ADDRESSES = 65_536  # addresses tracked at once; expired windows are dropped first, then the oldest


class KeyThrottle:
    """Refused keys per client address in a fixed window opened by the first refusal."""

    def __init__(self, limit: int, window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max = max_addresses
        self._windows: dict[str, tuple[float, int]] = {}  # address -> (window end, refusals in it)
        self._lock = threading.Lock()

    def _left(self, entry: tuple[float, int] | None, now: float) -> int | None:
        if entry is None or entry[0] <= now or entry[1] <= self.limit:
            return None
        return max(1, math.ceil(entry[0] - now))

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try keys again, or None when it is not throttled."""
        with self._lock:
            return self._left(self._windows.get(address), self._clock())

    def refuse(self, address: str) -> int | None:
        """Count one refused key from ``address``; the seconds it must wait now, or None while under the limit."""
        with self._lock:
            now = self._clock()
            end, count = self._windows.get(address, (0.0, 0))
            if end <= now:
                end, count = now + self.window, 0
            self._windows.pop(address, None)
            self._windows[address] = entry = (end, count + 1)
            if len(self._windows) > self._max:
                self._prune(now)
            return self._left(entry, now)

    def _prune(self, now: float) -> None:
        for address in [a for a, (end, _) in self._windows.items() if end <= now]:
            del self._windows[address]
        while len(self._windows) > self._max:
            del self._windows[next(iter(self._windows))]
