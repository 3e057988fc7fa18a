"""Feeding the docker engine several streams at once, one per chain of layers, so that it registers a
layer while the bundle still streams the next, and independent layers side by side.

The engine's ``docker load`` (its graph-driver store) untars the whole stream into a temporary folder
and only then registers the layers, one after another, skipping each layer whose chain (the layer
and every layer below it) it already holds. One load of every image therefore registers nothing
until the bundle's last byte arrived, and then one layer at a time. Here each layer travels in a
stream of its own and becomes a nameless *staging* image:

- a bottom layer (the base: CUDA's libraries, usually the largest) goes to ``docker import``, which
  registers a layer straight from its stream, as it arrives, with no temporary copy; the stream's
  last piece is held back until the layer's every byte matched its digest, so the engine commits no
  layer and makes no image of bytes that did not;
- a layer above others goes to a ``docker load`` of its own, whose config lists the layer and the
  layers below it; its end is sent once the layer's bytes matched their digest and the chain below
  was registered, so docker finds that chain held and registers this one layer only.

The images themselves are named by one last load of their real configs, after the whole bundle was
verified; it carries no layer, since every chain is then held. The staging images are removed after
it, or on any failure.

Air-gapped side: nothing of the connected side, CPython 3.9.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bundler.errors import DockerError
from bundler.format.archive import TarWriter, padding
from bundler.format.paths import DOCKER_MANIFEST_FILE, blob_path
from bundler.oci.engine import short_error

STAGING_LABEL = "io.bundler.restore.staging"   # on every staging image's config: the restore that made it
QUEUE_PIECES = 16                              # pieces of up to CHUNK bytes waiting for docker, per load
ABORT_WAIT = 30.0                              # seconds an aborted load may take to answer

_END, _ABORT = object(), object()


class _Aborted(Exception):
    pass


class EngineStream:
    """One stream into the engine through its API, fed from a bounded queue on a thread of its own.

    ``put`` sends bytes; ``end`` sends the last ones once the chain of layers below was registered
    (waiting on the stream's own thread, never the caller's), so docker finds it held."""

    kind = ""
    framed = True      # the layer travels as a file in a tar (load), or is the whole stream (import)

    def __init__(self, client: object, what: str) -> None:
        self.client, self.what = client, what
        self.tar = TarWriter(self.put)
        self.answered = threading.Event()      # docker answered, or the stream gave up
        self.error: str | None = None          # why it failed, once answered
        self.image_id = ""                     # the image it made (a staging image), once known
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_PIECES)
        self._aborted = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"docker-{self.kind}", daemon=True)
        self._thread.start()

    def _send(self, chunks: Iterator[bytes]) -> list[dict]:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            result = self._send(self._chunks())
            errors = [r.get("errorDetail", {}).get("message") or r.get("error") for r in result
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
                raise DockerError(f"docker {self.kind} of {self.what} failed: {self.error}")
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                pass

    def end(self, trailer: bytes, below: LayerChain | None = None) -> None:
        """The stream's last bytes, sent once the chain ``below`` was registered."""
        self.put(_Trailer(trailer, below))

    def wait(self) -> None:
        """Until docker answered; a failure raises DockerError."""
        self.answered.wait()
        if self.error is not None:
            raise DockerError(f"docker {self.kind} of {self.what} failed: {self.error}")

    def abort(self) -> None:
        """docker gets no end: it drops what it received and makes nothing of it."""
        self._aborted.set()
        if not self.answered.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_ABORT)
        self.answered.wait(ABORT_WAIT)


class LoadStream(EngineStream):
    """``docker load`` of a tar in the form ``docker save`` writes."""

    kind = "load"

    def _send(self, chunks: Iterator[bytes]) -> list[dict]:
        return list(self.client.api.load_image(chunks))


class ImportStream(EngineStream):
    """``docker import`` of one layer's tar: the engine registers it as it streams in, as the only layer
    of a nameless image labelled with ``run``."""

    kind = "import"
    framed = False

    def __init__(self, client: object, what: str, run: str) -> None:
        self.run = run
        super().__init__(client, what)

    def _send(self, chunks: Iterator[bytes]) -> list[dict]:
        text = self.client.api.import_image_from_stream(chunks, changes=[f"LABEL {STAGING_LABEL}={self.run}"])
        result = [json.loads(line) for line in str(text).splitlines() if line.strip()]
        made = [r["status"] for r in result if str(r.get("status", "")).startswith("sha256:")]
        if made:
            self.image_id = made[-1]
        return result


class Holdback:
    """Bytes for ``put``, the last piece held back until ``release``: the stream cannot end before."""

    def __init__(self, put: Callable[[bytes], None]) -> None:
        self._put, self._held = put, b""

    def __call__(self, data: bytes) -> None:
        if not data:
            return
        if self._held:
            self._put(self._held)
        self._held = data

    def release(self) -> bytes:
        held, self._held = self._held, b""
        return held


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
    load: EngineStream | None = None

    @property
    def layer(self) -> str:
        return self.diff_ids[-1]

    def open(self, client: object, run: str) -> EngineStream:
        """The stream this chain's layer goes into: an import for a bottom layer, else a load."""
        what = f"layer {self.layer[:19]}.."
        self.load = ImportStream(client, what, run) if self.parent is None else LoadStream(client, what)
        return self.load

    def close(self, last: bytes, size: int, run: str) -> None:
        """The layer's bytes matched their digest: ``last``, its last piece held back until now, and the
        stream's end, which the engine gets once the chain below was registered."""
        if self.load.framed:
            self.load.put(last)
            self.load.put(padding(size))
            self.load.end(self.staging(run), self.parent)
        else:
            self.load.end(last)

    def staging(self, run: str) -> bytes:
        """A load's staging image: its config, its manifest.json and the tar's end, which end the stream."""
        os_name, _, rest = self.platform.partition("/")
        config = json.dumps({"architecture": rest.partition("/")[0], "os": os_name,
                             "config": {"Labels": {STAGING_LABEL: run}},
                             "rootfs": {"type": "layers", "diff_ids": list(self.diff_ids)}},
                            sort_keys=True, separators=(",", ":")).encode()
        self.load.image_id = staging_id = "sha256:" + hashlib.sha256(config).hexdigest()
        manifest = json.dumps([{"Config": blob_path(staging_id), "RepoTags": [],
                                "Layers": [blob_path(d) for d in self.diff_ids]}]).encode()
        out: list[bytes] = []
        tar = TarWriter(out.append)
        tar.add_bytes(blob_path(staging_id), config)
        tar.add_bytes(DOCKER_MANIFEST_FILE, manifest)
        tar.end()
        return b"".join(out)
