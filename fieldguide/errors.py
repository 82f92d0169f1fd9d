"""Exception types for failures a curator can act on.

The CLI prints these in one line and exits non-zero; any other exception is a bug.
"""


class FieldguideError(Exception):
    """An expected failure with a message that names the thing and the fix."""


class ConfigError(FieldguideError):
    """fieldguide.toml is missing, malformed or has bad values."""


class IngestError(FieldguideError):
    """A source could not be ingested (bad layout, strict mode rejects, ...)."""


class StoreError(FieldguideError):
    """The FiftyOne store is missing, or holds something unexpected."""


class ModelError(FieldguideError):
    """A backbone or head could not be built or loaded."""


class NotReadyError(FieldguideError):
    """A step's inputs do not exist yet (run an earlier step first)."""


class ServiceError(FieldguideError):
    """An external service (Label Studio, the App) is down or refused the request."""


class ExportError(FieldguideError):
    """An export could not be written where it was asked to go (nothing was written)."""


class DuplicateNameError(FieldguideError):
    """A second signal, head, backbone, format, ... registered under a name already taken."""


class ClusterError(FieldguideError):
    """A Ray cluster (``--ray``) could not be reached or joined, or its workers failed."""
