"""The CodeGemma language server: inline completions (LSP 3.18) with a one-item completion fallback.

`server` is the module-level pygls server; the `@server.feature` handlers below are thin and call the
methods of `CodegemmaServer`, which holds the documents, the settings, the in-flight requests and the
`fim.CompletionService` (the model worker that runs off the event loop).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from lsprotocol import types
from pygls.capabilities import ServerCapabilitiesBuilder
from pygls.exceptions import FeatureRequestError, JsonRpcException, JsonRpcInternalError, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from fim import CompletionService, FimError, QueueFullError, RemoteEngineError, ServiceNotReadyError
from lsp import completer, loader
from lsp.documents import DocumentError, Documents, OutOfStep
from lsp.inflight import InFlight, debounce
from lsp.positions import UTF16, offset_at, position_at
from lsp.protocol import AnsweredError, CodegemmaProtocol
from lsp.settings import Settings, apply_settings


QUEUE_LIMIT = 64
RESYNC = "codegemma/resync"  # server -> client notification {uri, reason}: please send the whole text again


def _version() -> str:
    try:
        return version("codegemma-complete")
    except PackageNotFoundError:
        return "dev"


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class Found:
    """A completion for a request: the document text it was computed on, the cursor, the edit."""
    text: str
    cursor: int
    edit: completer.Edit


class CodegemmaServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("codegemma", _version(), protocol_cls=CodegemmaProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.documents = Documents()
        self.inflight = InFlight()
        self.settings = Settings()
        self.encoding = UTF16
        self.root: str | None = None
        self.service: CompletionService | None = None
        self.shutdown_requested = False
        self.remote_down = False  # in a failure episode of the remote engine: the user was told once
        self._tasks: set[asyncio.Task] = set()  # strong references to background tasks

    # --- lifecycle and settings -------------------------------------------------------------------

    def initialize(self, params: types.InitializeParams) -> None:
        encoding = ServerCapabilitiesBuilder.choose_position_encoding(params.capabilities)
        self.encoding = getattr(encoding, "value", encoding)
        folders = params.workspace_folders or []
        root_uri = folders[0].uri if folders else params.root_uri
        self.root = to_fs_path(root_uri) if root_uri else params.root_path
        self.update_settings(params.initialization_options, load=False)

    def update_settings(self, payload: object, load: bool = True) -> None:
        """Apply settings; problems go to the user, a new model spec reloads the model."""
        before = self.settings
        self.settings, problems = apply_settings(before, payload)
        for problem in problems:
            self.window_show_message(types.ShowMessageParams(types.MessageType.Warning, f"CodeGemma: {problem}"))
        if load and self.settings.model != before.model:
            self.start_model()

    def start_model(self) -> None:
        """Load `settings.model` in the background, replacing the current model worker."""
        if self.service is not None:
            self.inflight.cancel_all()
            old = self.service
            asyncio.get_running_loop().run_in_executor(None, old.close)
        # The server cancels superseded requests itself, so the live ones are at most one per document;
        # the queue bound only has to absorb cancelled requests the worker has not dropped yet.
        self.service = CompletionService(model=self.settings.model, server=self.settings.server,
                                         max_queue=QUEUE_LIMIT)
        self._background(loader.load(self, self.service))

    def stop(self) -> None:
        self.shutdown_requested = True
        self.inflight.cancel_all()
        if self.service is not None:
            self.service.close()

    def _background(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def ask_for_whole_text(self, error: OutOfStep) -> None:
        """Out of step with the client on one document: say so, and ask for its whole text (a full-text
        didChange, or didClose + didOpen). Clients without the notification see the log line."""
        self.warn(str(error))
        self.protocol.notify(RESYNC, {"uri": error.uri, "reason": str(error)})

    def remote_failed(self, error: RemoteEngineError) -> None:
        """A remote engine that is down says so once per failure episode (window/showMessage), not once per
        keystroke; every failure still goes to the log."""
        if not self.remote_down:
            self.remote_down = True
            self.window_show_message(types.ShowMessageParams(types.MessageType.Error, f"CodeGemma: {_one_line(error)}"))
        self.warn(_one_line(error))

    def remote_answered(self) -> None:
        if self.remote_down:
            self.remote_down = False
            self.window_show_message(types.ShowMessageParams(types.MessageType.Info,
                                                             "CodeGemma: the remote engine answers again"))

    def warn(self, message: str) -> None:
        self.window_log_message(types.LogMessageParams(types.MessageType.Warning, f"CodeGemma: {message}"))

    def report_server_error(self, error: Exception, source: object) -> None:
        """Errors outside a request's answer: malformed JSON-RPC gets its JSON-RPC error response
        (id null when no id could be read) and a log line; the server keeps reading."""
        if source is FeatureRequestError:
            return  # the request already got its error response
        if isinstance(error, AnsweredError):
            self.warn(str(error))
            return
        if source is JsonRpcException:  # raised while reading a message, before any handler ran
            code = -32700 if isinstance(error, json.JSONDecodeError) else -32600
            kind = "parse error" if code == -32700 else "invalid request"
            # JSON-RPC wants "id": null here; pygls' typed messages would drop a None id, so send it raw.
            self.protocol._send_data({"jsonrpc": "2.0", "id": None,
                                      "error": {"code": code, "message": f"{kind}: {_one_line(error)}"}})
            self.warn(f"malformed message ignored ({kind}): {_one_line(error)}")
            return
        self.warn(f"internal error: {_one_line(error)}")

    # --- completion -------------------------------------------------------------------------------

    async def complete(self, uri: str, position: types.Position,
                       selected: types.SelectedCompletionInfo | None = None) -> Found | None:
        """The completion at `position`, or None (disabled language, model not ready, busy, nothing).

        Raises CancelledError when a newer request for the document or $/cancelRequest cancelled it."""
        try:
            document = self.documents.get(uri)
        except DocumentError as error:
            raise JsonRpcInvalidParams(message=str(error)) from None
        service = self.service
        if (not self.settings.enabled_for(document.language_id) or service is None or not service.ready
                or document.out_of_step):
            return None
        # The text the request's position refers to: later didChanges must not shift it.
        text = document.text
        cursor = offset_at(text, position, self.encoding)
        choice = None
        if selected is not None:
            choice = (offset_at(text, selected.range.start, self.encoding),
                      offset_at(text, selected.range.end, self.encoding), selected.text)
        snap = completer.snapshot(text, cursor, choice)
        request = completer.request(snap, self._path(uri), document.language_id,
                                    self._context(uri), self.settings, cache_key=uri)
        ticket = self.inflight.begin(uri)
        try:
            await debounce(ticket, self.settings.debounce_ms / 1000)
            response = await ticket.complete(service, request)
        except asyncio.CancelledError:
            ticket.cancel()  # $/cancelRequest or a newer request: stop the worker too
            raise
        except (QueueFullError, ServiceNotReadyError):
            return None  # busy, or no model (the user was told when it failed to load)
        except RemoteEngineError as error:
            self.remote_failed(error)
            return None
        except FimError as error:
            raise JsonRpcInternalError(message=f"completion failed: {_one_line(error)}") from None
        finally:
            self.inflight.finish(uri, ticket)
        self.remote_answered()
        if response is None or response.stop_reason == "cancelled" or ticket.should_stop():
            raise asyncio.CancelledError
        edit = completer.edit(snap, response)
        return Found(text, cursor, edit) if edit is not None else None

    def lsp_range(self, text: str, start: int, end: int) -> types.Range:
        return types.Range(position_at(text, start, self.encoding), position_at(text, end, self.encoding))

    def _path(self, uri: str) -> str:
        """The document's path as the prompt names it: relative to the workspace root when inside it."""
        path = to_fs_path(uri) or uri
        if self.root and os.path.isabs(path) and path.startswith(os.path.join(self.root, "")):
            return os.path.relpath(path, self.root)
        return path

    def _context(self, uri: str) -> list:
        return completer.context_files([(self._path(doc.uri), doc.text) for doc in self.documents.others(uri)])


server = CodegemmaServer()


@server.feature(types.INITIALIZE)
def on_initialize(ls: CodegemmaServer, params: types.InitializeParams) -> None:
    ls.initialize(params)


@server.feature(types.INITIALIZED)
def on_initialized(ls: CodegemmaServer, params: types.InitializedParams) -> None:
    ls.start_model()


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
def on_configuration(ls: CodegemmaServer, params: types.DidChangeConfigurationParams) -> None:
    ls.update_settings(params.settings)


@server.feature(types.SHUTDOWN)
def on_shutdown(ls: CodegemmaServer, params: None) -> None:
    ls.stop()


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def on_open(ls: CodegemmaServer, params: types.DidOpenTextDocumentParams) -> None:
    for uri in ls.documents.open(params.text_document):
        ls.inflight.cancel(uri)
        ls.warn(f"too many open documents: dropped {uri} (a later change to it asks for its whole text)")


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def on_change(ls: CodegemmaServer, params: types.DidChangeTextDocumentParams) -> None:
    try:
        ls.documents.change(params.text_document, params.content_changes, ls.encoding)
    except OutOfStep as error:
        ls.inflight.cancel(error.uri)
        ls.ask_for_whole_text(error)
    except DocumentError as error:
        ls.warn(str(error))


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def on_close(ls: CodegemmaServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.inflight.cancel(params.text_document.uri)
    ls.documents.close(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
async def on_inline_completion(ls: CodegemmaServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
    found = await ls.complete(params.text_document.uri, params.position, params.context.selected_completion_info)
    if found is None:
        return types.InlineCompletionList(items=[])
    item = types.InlineCompletionItem(
        insert_text=found.edit.text, range=ls.lsp_range(found.text, found.edit.start, found.edit.end))
    return types.InlineCompletionList(items=[item])


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())
async def on_completion(ls: CodegemmaServer, params: types.CompletionParams) -> types.CompletionList:
    """For clients without inline completion: the completion's first line as the only menu item.
    Marked incomplete so that the client asks again as the user types."""
    found = await ls.complete(params.text_document.uri, params.position)
    line = completer.line_edit(found.text, found.cursor, found.edit) if found is not None else None
    if line is None:
        return types.CompletionList(is_incomplete=True, items=[])
    item = types.CompletionItem(
        label=line.text, kind=types.CompletionItemKind.Text, detail="CodeGemma", filter_text=line.text,
        insert_text_format=types.InsertTextFormat.PlainText,
        text_edit=types.TextEdit(range=ls.lsp_range(found.text, line.start, line.end), new_text=line.text),
    )
    return types.CompletionList(is_incomplete=True, items=[item])
