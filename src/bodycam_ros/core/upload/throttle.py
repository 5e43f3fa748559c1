"""Pacing the uplink: a bandwidth cap, a rate meter, back-off with jitter.

The cap sits in the request body reader, so it limits what leaves the process whatever the
backend (boto3's HTTP stack or a file copy) and a stop request interrupts a part mid-flight.
"""
from __future__ import annotations

import collections
import io
import random
import threading
import time
from collections.abc import Callable

from bodycam_ros.core.upload.errors import Cancelled

#: Largest piece handed over at once: small enough that the cap is smooth at LTE rates.
CHUNK = 64 * 1024


class RateLimiter:
    """Token bucket in bytes per second; ``bps <= 0`` means unlimited. Thread-safe.

    Args:
        bps: sustained rate.
        burst_s: how much unused allowance may pile up (seconds of ``bps``), so a short
            stall is not followed by a burst far above the cap.
    """

    def __init__(self, bps: float, burst_s: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bps = float(bps)
        self._capacity = max(self.bps * burst_s, CHUNK)
        self._tokens = self._capacity
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def consume(self, n: int, stop: threading.Event | None = None) -> None:
        """Take ``n`` bytes of allowance, sleeping as long as the cap requires.

        Raises:
            Cancelled: ``stop`` was set while waiting.
        """
        if self.bps <= 0 or n <= 0:
            return
        with self._lock:
            now = self._clock()
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.bps)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.bps if self._tokens < 0 else 0.0
        if wait > 0:
            if stop is not None:
                if stop.wait(wait):
                    raise Cancelled('stop requested')
            else:
                time.sleep(wait)


class RateMeter:
    """Bytes per second over a sliding window. Thread-safe."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self._samples.append((self._clock(), n))

    def rate(self) -> float:
        now = self._clock()
        with self._lock:
            while self._samples and now - self._samples[0][0] > self._window_s:
                self._samples.popleft()
            if not self._samples:
                return 0.0
            total = sum(n for _, n in self._samples)
            span = max(now - self._samples[0][0], 1.0)
        return total / min(span, self._window_s)


class Backoff:
    """Exponential back-off with "equal jitter": half the delay fixed, half random.

    Never near zero (a dead uplink is not hammered) and never in lock-step with other units
    (the random half spreads a fleet that lost the network at the same moment).
    """

    def __init__(self, base_s: float = 1.0, max_s: float = 60.0,
                 rng: random.Random | None = None) -> None:
        if base_s <= 0 or max_s < base_s:
            raise ValueError(f'backoff needs 0 < base_s <= max_s, got {base_s}, {max_s}')
        self.base_s, self.max_s = base_s, max_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before the next try."""
        ceiling = min(self.max_s, self.base_s * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.failures = 0


class ThrottledReader(io.BytesIO):
    """A request body that paces itself, reports progress and stops on request.

    boto3 reads request bodies in blocks as it writes them to the socket; pacing those reads
    paces the upload. Seekable, so the HTTP stack can rewind it.
    """

    def __init__(self, data: bytes | memoryview, limiter: RateLimiter | None = None,
                 on_progress: Callable[[int], None] | None = None,
                 stop: threading.Event | None = None) -> None:
        super().__init__(data)
        self._limiter = limiter
        self._on_progress = on_progress
        self._stop = stop

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(CHUNK):
                parts.append(chunk)
            return b''.join(parts)
        if self._stop is not None and self._stop.is_set():
            raise Cancelled('stop requested')
        chunk = super().read(min(size, CHUNK))
        if chunk:
            if self._limiter is not None:
                self._limiter.consume(len(chunk), self._stop)
            if self._on_progress is not None:
                self._on_progress(len(chunk))
        return chunk
