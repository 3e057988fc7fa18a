"""What one run of a verb works with: how it reports progress, its retry policy and time limits, and
the flag that cancels it. The connected side adds the mirrors, the cache and the run's memory of
failing endpoints (build/context.py). The CLI makes one per command; tests make their own, with
their own policy (tests/testbed/policy.py)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from bundler.progress import NULL, Progress


@dataclass(frozen=True)
class RetryPolicy:
    """Timeouts and retries, as data; a run carries its policy in its Context (tests pass a fast one)."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0       # longest silence allowed while a body streams
    attempts: int = 3                # tries per endpoint for a transient failure
    backoff: float = 1.0             # first pause before a retry; doubles each time
    max_backoff: float = 8.0
    skip_after: int = 3              # failures after which an endpoint is skipped for the run
    stall_window: float = 30.0       # a body slower than stall_bytes per stall_window is abandoned
    stall_bytes: int = 64 << 10
    resolve_timeout: float = 900.0   # one uv resolution through one index (uv cannot see a trickle)

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)

    def pause(self, retry: int) -> float:
        return min(self.max_backoff, self.backoff * (2 ** retry))


DEFAULT_RETRY = RetryPolicy()


@dataclass
class Context:
    progress: Progress = NULL
    policy: RetryPolicy = DEFAULT_RETRY
    cancel: threading.Event = field(default_factory=threading.Event)   # set: every worker stops at once
