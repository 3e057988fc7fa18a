"""``docker load`` streams, several at once: one per chain of layers, so that the engine registers a
layer while the bundle still streams the next, and independent layers side by side.

The engine's ``docker load`` (its graph-driver store) untars the whole stream into a temporary folder
and only then registers the layers, one after another, skipping each layer whose chain (the layer
and every layer below it) it already holds. One load of every image therefore registers nothing
until the bundle's last byte arrived, and then one layer at a time. Here each layer travels in a
load of its own, as a nameless *staging* image whose config lists the layer and the layers below
it; that load's end is sent once the layer's bytes matched their digest and the load of the layer
below it was registered, so docker registers this one layer only. The images themselves are named
by one last load of their real configs, after the whole bundle was verified; it carries no layer,
since every chain is then held. The staging images are removed after it, or on any failure.

Air-gapped side: nothing of the connected side, CPython 3.9.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from bundler.errors import DockerError
from bundler.format.archive import TarWriter
from bundler.format.paths import DOCKER_MANIFEST_FILE, blob_path
from bundler.oci.engine import short_error

STAGING_LABEL = "io.bundler.restore.staging"   # on every staging image's config: the restore that made it
QUEUE_PIECES = 16                              # pieces of up to CHUNK bytes waiting for docker, per load
ABORT_WAIT = 30.0                              # seconds an aborted load may take to answer

_END, _ABORT = object(), object()


class _Aborted(Exception):
    pass


class LoadStream:
    """One ``docker load`` through the engine API, fed from a bounded queue on a thread of its own.

    ``put`` sends bytes of the tar; ``end`` sends its trailer once the chain of layers below was
    registered (waiting on the load's own thread, never the caller's), so docker finds it held."""

    def __init__(self, client: object, what: str) -> None:
        self.client, self.what = client, what
        self.tar = TarWriter(self.put)
        self.answered = threading.Event()      # docker answered, or the load gave up
        self.error: str | None = None          # why it failed, once answered
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_PIECES)
        self._aborted = threading.Event()
        self._result: list[dict] = []
        self._thread = threading.Thread(target=self._run, name="docker-load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = list(self.client.api.load_image(self._chunks()))
            errors = [r.get("errorDetail", {}).get("message") or r.get("error") for r in self._result
                      if "error" in r or "errorDetail" in r]
            if errors:
                self.error = str(errors[0])
        except _Aborted:
            self.error = "aborted"
        except BaseException as exc:  # noqa: BLE001 - reported to the streaming thread
            self.error = "aborted" if self._aborted.is_set() else short_error(exc)
        finally:
            self.answered.set()

    def _chunks(self) -> Iterator[bytes]:
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._aborted.is_set():
                    raise _Aborted() from None
                continue
            if item is _ABORT:
                raise _Aborted()
            if isinstance(item, _Trailer):
                yield from item.wait(self._aborted)
                return
            yield item

    def put(self, item: object) -> None:
        while True:
            if self.answered.is_set():
                raise DockerError(f"docker load of {self.what} failed: {self.error}")
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                pass

    def end(self, trailer: bytes, below: LayerChain | None = None) -> None:
        """The tar's last bytes, sent once the chain ``below`` was registered."""
        self.put(_Trailer(trailer, below))

    def wait(self) -> None:
        """Until docker answered; a failure raises DockerError."""
        self.answered.wait()
        if self.error is not None:
            raise DockerError(f"docker load of {self.what} failed: {self.error}")

    def abort(self) -> None:
        """docker gets no end: it drops what it received and names nothing."""
        self._aborted.set()
        if not self.answered.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_ABORT)
        self.answered.wait(ABORT_WAIT)


@dataclass(frozen=True)
class _Trailer:
    data: bytes
    below: LayerChain | None

    def wait(self, aborted: threading.Event) -> Iterator[bytes]:
        """The trailer, once the chain below was registered: held, or its load succeeded (which itself
        ended only after the chain below it). Its load may not have begun yet: the bundle's order decides."""
        chain = self.below
        while chain is not None and not chain.held:
            load = chain.load
            if load is not None and load.answered.is_set():
                if load.error is not None:   # the layers below were not registered: this one cannot be
                    raise _Aborted()
                break
            if aborted.wait(0.05):
                raise _Aborted()
        if self.data:
            yield self.data


@dataclass
class LayerChain:
    """A layer and every layer below it in an image: what docker registers it by."""

    diff_ids: tuple[str, ...]
    parent: LayerChain | None
    platform: str                            # os/arch[/variant] of an image holding it
    held: bool = False                       # the engine holds it already (a delta's reused layers)
    load: LoadStream | None = None
    staging_id: str = ""

    @property
    def layer(self) -> str:
        return self.diff_ids[-1]

    def staging(self, run: str) -> bytes:
        """The staging image's tar trailer: its config, its manifest.json, the tar's end."""
        os_name, _, rest = self.platform.partition("/")
        config = json.dumps({"architecture": rest.partition("/")[0], "os": os_name,
                             "config": {"Labels": {STAGING_LABEL: run}},
                             "rootfs": {"type": "layers", "diff_ids": list(self.diff_ids)}},
                            sort_keys=True, separators=(",", ":")).encode()
        self.staging_id = "sha256:" + hashlib.sha256(config).hexdigest()
        manifest = json.dumps([{"Config": blob_path(self.staging_id), "RepoTags": [],
                                "Layers": [blob_path(d) for d in self.diff_ids]}]).encode()
        out: list[bytes] = []
        tar = TarWriter(out.append)
        tar.add_bytes(blob_path(self.staging_id), config)
        tar.add_bytes(DOCKER_MANIFEST_FILE, manifest)
        tar.end()
        return b"".join(out)
