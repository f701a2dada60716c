"""Data models and exceptions of charmlibs.rollingops.

This first version holds only the exception hierarchy (spec §1); the models are added next to it.
"""


class RollingOpsError(Exception):
    """Base class of every error raised by charmlibs.rollingops."""


class RollingOpsNoRelationError(RollingOpsError):
    """The peer relation the library needs does not exist (yet)."""


class RollingOpsInvalidLockRequestError(RollingOpsError):
    """A lock request is malformed (unknown callback id, bad kwargs or max_retry)."""


class RollingOpsDecodingError(RollingOpsError):
    """Stored data (relation data or a local file) could not be decoded."""


class RollingOpsFileSystemError(RollingOpsError):
    """A local file of the library could not be read or written."""


class RollingOpsInvalidSecretContentError(RollingOpsError):
    """The etcd client-certificate secret lacks a field or holds bad PEM data."""


class RollingOpsLibMissingError(RollingOpsError):
    """The background worker cannot be launched (its module is not importable)."""


class RollingOpsSyncLockError(RollingOpsError):
    """No usable sync lock: etcd failed and no working fallback backend is registered."""


class RollingOpsEtcdctlError(RollingOpsError):
    """Any failure talking to etcd, whatever the client (the name is kept for compatibility)."""


class RollingOpsEtcdNotConfiguredError(RollingOpsEtcdctlError):
    """The local etcd configuration (endpoints, prefix, certificates) does not exist yet."""
