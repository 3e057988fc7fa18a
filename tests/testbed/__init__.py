"""Real services on 127.0.0.1 for the tests, the demo and the benchmark.

Nothing here is a mock: a private dockerd, distribution registries (``docker-registry serve``),
a PEP 503 index over wheels built here, and a proxy that misbehaves on purpose in front of them.
"""
