"""The one exception family of bundler.

The library raises these and never prints or exits; the CLI turns each into one line on stderr and
the documented exit code: 1 operational failure, 2 bad input, 3 integrity failure.
"""

from __future__ import annotations


class BundlerError(Exception):
    """Base of every error bundler reports to a user."""

    exit_code = 1


class OperationalError(BundlerError):
    """The world got in the way: network, docker engine, disk, a tool that failed."""

    exit_code = 1


class NetworkError(OperationalError):
    """Every endpoint that could serve a request failed."""


class DockerError(OperationalError):
    """The docker engine (or containerd) could not be reached or refused the work."""


class DiskError(OperationalError):
    """Not enough space, or a path that cannot be written."""


class InputError(BundlerError):
    """Bad input: a profile, a mirrors file, a lock file, an argument."""

    exit_code = 2


class ProfileError(InputError):
    pass


class MirrorsError(InputError):
    pass


class LockError(InputError):
    pass


class ImageReferenceError(InputError):
    """A malformed image reference, or one that names nothing the registry has for the target."""


class IntegrityError(BundlerError):
    """A checksum or digest does not match: bytes that must not be used."""

    exit_code = 3
