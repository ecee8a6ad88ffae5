"""FIM completion service: request -> context -> prompt -> engine -> post-processing -> response.

The same path serves the `fim` CLI, the HTTP API, the LSP server and the eval harness.
"""

from fim.complete import complete
from fim.errors import (BadRequestError, EngineError, FimError, QueueFullError, RemoteEngineError,
                        ServiceNotReadyError)
from fim.request import CompletionOptions, CompletionRequest, CompletionResponse, FileContext
from fim.service import CompletionService

__all__ = [
    "BadRequestError", "CompletionOptions", "CompletionRequest", "CompletionResponse", "CompletionService",
    "EngineError", "FileContext", "FimError", "QueueFullError", "RemoteEngineError", "ServiceNotReadyError",
    "complete",
]
