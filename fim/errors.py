"""User-facing errors of the completion service: one type per kind, each with a one-line message.

The edges (the `fim` CLI, the HTTP app, the LSP server) catch `FimError` and show `str(error)`.
"""


class FimError(Exception):
    """Base of every error the completion service reports to a user."""


class BadRequestError(FimError):
    """A request that cannot be served as given: cursor out of range, bad option, unreadable file."""


class QueueFullError(FimError):
    """The service already has its maximum number of requests waiting."""


class ServiceNotReadyError(FimError):
    """The model failed to load, or the service was closed."""


class EngineError(FimError):
    """The model core refused or failed: a model that does not load, a prompt longer than its context,
    text its tokenizer cannot handle. Carries the core's one-line message."""


class RemoteEngineError(EngineError):
    """A remote engine (`fim.remote`) is down, too slow, or answered something that is not a completion."""
