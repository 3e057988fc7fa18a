"""The retry policy and time limits tests pass to bundler: the defaults, with test-sized numbers."""

from bundler.context import RetryPolicy

FAST_RETRY = RetryPolicy(connect_timeout=1.0, read_timeout=2.0, attempts=2, backoff=0.01, max_backoff=0.05,
                         stall_window=1.0, stall_bytes=4096, resolve_timeout=8.0)
