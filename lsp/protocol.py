"""pygls' LanguageServerProtocol with the two changes this server needs.

- Document sync goes only to the server's handlers (`lsp.documents` keeps the text), not also into
  pygls' workspace, whose line splitting and clamping differ from the protocol's.
- A request whose params do not match the protocol's types (a negative line, a missing position)
  gets an InvalidParams error response; pygls would only log it and leave the client waiting.
- The completion fallback is advertised only to clients without inline completion: VS Code asks
  both providers on every keystroke, which would run the model twice for the same text.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method


class AnsweredError(Exception):
    """A malformed message that already got its error response; only worth a log line."""


def _user_handler_only(method: str) -> Callable[..., Generator[Any, Any, None]]:
    @lsp_method(method)
    def handler(self: LanguageServerProtocol, params: Any) -> Generator[Any, Any, None]:
        if (user_handler := self.fm.features.get(method)) is not None:
            yield user_handler, (params,), None
    return handler


class CodegemmaProtocol(LanguageServerProtocol):
    lsp_text_document__did_open = _user_handler_only(types.TEXT_DOCUMENT_DID_OPEN)
    lsp_text_document__did_change = _user_handler_only(types.TEXT_DOCUMENT_DID_CHANGE)
    lsp_text_document__did_close = _user_handler_only(types.TEXT_DOCUMENT_DID_CLOSE)

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams) -> Generator[Any, Any, types.InitializeResult]:
        result = yield from super().lsp_initialize(params)
        text_document = params.capabilities.text_document
        if text_document is not None and text_document.inline_completion is not None:
            result.capabilities.completion_provider = None
        return result

    def structure_message(self, data: dict[str, Any]) -> Any:
        try:
            return super().structure_message(data)
        except JsonRpcException as error:
            if "method" not in data or "id" not in data:
                raise
            reason = error.__cause__ or error
            first_line = str(reason).splitlines()[0] if str(reason) else type(reason).__name__
            self._send_response(
                data["id"],
                error=types.ResponseError(
                    code=error.code, message=f"invalid params for {data['method']}: {first_line}"
                ),
            )
            raise AnsweredError(f"answered malformed {data['method']} request {data['id']!r}") from None
