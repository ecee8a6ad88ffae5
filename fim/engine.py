"""The engine as the completion service sees it: loading one, and the model core's errors turned into fim's.

The front ends (CLI, HTTP, LSP, eval) catch one family, `FimError`; they never see `codegemma.errors`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from codegemma import EngineProtocol, load
from codegemma.errors import CodegemmaError
from fim.errors import EngineError


@contextmanager
def engine_errors() -> Iterator[None]:
    """Re-raise the model core's user errors as EngineError with the same one-line message."""
    try:
        yield
    except CodegemmaError as error:
        raise EngineError(str(error)) from error


def load_engine(model: str | None, dtype: str | None = None, int8: bool = False,
                quant: str | None = None, server: str | None = None, adapter: str | None = None) -> EngineProtocol:
    """The engine for `model` (None = the embedded default); raises EngineError when it cannot load.

    With `server` (a URL), a remote engine there (`fim.remote`): `model` then names only the tokenizer."""
    if server is not None:
        from fim.remote import load_remote  # here: fim.remote builds on this module

        return load_remote(server, model)
    with engine_errors():
        return load(model, dtype=dtype, int8=int8, quant=quant, adapter=adapter)
