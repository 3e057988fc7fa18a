"""Container images on the air-gapped side: into the local docker engine (docker.py), a registry
(registry.py) or containerd (containerd.py), and what those destinations hold, for an inventory."""

from __future__ import annotations

import os

from bundler import __version__
from bundler.context import Context
from bundler.errors import BundlerError, DockerError
from bundler.format.head import Head
from bundler.format.inventory import Inventory
from bundler.oci.engine import docker_client
from bundler.oci.site import SiteRegistry
from bundler.restore.images.containerd import DEFAULT_CONTAINERD, ContainerdImporter
from bundler.restore.images.docker import DockerLoader
from bundler.restore.images.registry import RegistryPusher
from bundler.restore.images.restorer import ImagesRestorer, Loader
from bundler.restore.images.site import containerd_images, docker_images, registry_images
from bundler.restore.machine import platform_for
from bundler.restore.options import InventoryOptions, RestoreOptions


class Images:
    name = "images"

    def in_head(self, head: Head) -> bool:
        return bool(head.images)

    def restorer(self, head: Head, options: RestoreOptions, ctx: Context) -> ImagesRestorer:
        if options.registry and not options.images:   # a registry takes every platform, and the index naming them
            return ImagesRestorer(head, loader_for(options, ctx), head.images, head.indexes)
        images = head.images_for(platform_for(head, options.platform))
        if options.images:
            images = tuple(i for i in images if i.name in options.images)
        return ImagesRestorer(head, loader_for(options, ctx), images)

    def inventory(self, options: InventoryOptions, ctx: Context) -> Inventory:
        """The images of the docker engine, a registry and containerd, as the options name them."""
        sources, images = [], []
        if options.docker:
            try:
                client = docker_client()
            except DockerError as exc:
                if not options.docker_optional:
                    raise
                ctx.progress.note(f"{exc}; its images are not listed (--docker makes this an error)")
            else:
                sources.append(f"docker {os.environ.get('DOCKER_HOST') or 'the default socket'}")
                images += docker_images(client)
        if options.registry:
            sources.append(f"registry {options.registry}")
            images += registry_images(SiteRegistry(options.registry, ctx.policy, plain_http=options.insecure),
                                      options.repositories)
        if options.containerd:
            importer = ContainerdImporter(options.containerd_address or DEFAULT_CONTAINERD, options.namespace)
            sources.append(f"containerd {importer.address} namespace {importer.namespace}")
            images += containerd_images(importer.base)
        return Inventory(f"bundler {__version__}", tuple(sources), tuple(images))


def loader_for(options: RestoreOptions, ctx: Context) -> Loader:
    """The destination the options name: a registry, containerd, or (by default) the docker engine."""
    if options.registry:
        return RegistryPusher(options.registry, ctx.policy, options.insecure)
    if options.containerd:
        return ContainerdImporter(options.containerd_address or DEFAULT_CONTAINERD, options.namespace,
                                  ctx.progress)
    try:
        return DockerLoader(docker_client(), ctx.progress)
    except BundlerError as exc:
        raise type(exc)(f"{exc}; use --wheels-only to install only the wheels, or --registry HOST to push the "
                        "images to a registry instead") from None
