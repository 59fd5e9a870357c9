"""The one backoff helper: capped exponential delays with jitter, for retries and reconnects."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def compute_backoff(
    attempt: int,
    base: float,
    cap: float,
    jitter: float = 0.25,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before retry `attempt` (1-based): base * 2**(attempt-1), +-jitter, at most `cap`."""
    if attempt < 1 or base <= 0:
        return 0.0
    exp = min(attempt - 1, 62)  # 2**62 * base is past any cap; avoids float overflow
    raw = min(cap, base * (2.0**exp))
    spread = raw * jitter * (2.0 * rand() - 1.0)
    return max(0.0, min(cap, raw + spread))


@dataclass
class Backoff:
    """A reconnect loop's state: call `wait()` after each failure, `reset()` after a success."""

    base: float = 0.1
    cap: float = 10.0
    jitter: float = 0.25
    rand: Callable[[], float] = random.random
    failures: int = 0
    sleep: Callable[[float], object] = field(default=time.sleep)

    def next_delay(self) -> float:
        self.failures += 1
        return compute_backoff(self.failures, self.base, self.cap, self.jitter, self.rand)

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Sleep the next delay; returns False early when `stop` is set."""
        delay = self.next_delay()
        if stop is not None:
            return not stop.wait(delay)
        self.sleep(delay)
        return True

    def reset(self) -> None:
        self.failures = 0
