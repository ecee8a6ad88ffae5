"""Load the model in the background and show it in the editor as work done progress ($/progress)."""

from __future__ import annotations

import asyncio
import uuid

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from fim import CompletionService


async def load(server: LanguageServer, service: CompletionService) -> None:
    """Start `service` and report its loading until it is ready or failed; never raises.

    Progress goes through window/workDoneProgress/create + $/progress when the client supports it,
    and a failure is always shown with window/showMessage.
    """
    token: str | None = None
    window = server.client_capabilities.window
    if window is not None and window.work_done_progress:
        token = f"codegemma-load-{uuid.uuid4()}"
        try:
            await server.work_done_progress.create_async(token)
        except Exception as error:  # noqa: BLE001 - a client refusing the token only loses the progress bar
            server.window_log_message(types.LogMessageParams(types.MessageType.Warning, f"no progress: {error}"))
            token = None
    name = service.model or "default model"
    if token is not None:
        server.work_done_progress.begin(token, types.WorkDoneProgressBegin(
            title="CodeGemma", message=f"loading {name}", percentage=0, cancellable=False))
    loop = asyncio.get_running_loop()

    def on_progress(message: str, fraction: float) -> None:  # called on the loading thread
        if token is not None:
            report = types.WorkDoneProgressReport(message=message, percentage=round(100 * fraction))
            loop.call_soon_threadsafe(server.work_done_progress.report, token, report)

    service.start(on_progress)
    await loop.run_in_executor(None, service.wait_ready)
    if service.error is not None:
        message = f"CodeGemma: the model could not be loaded: {service.error}"
        server.window_show_message(types.ShowMessageParams(types.MessageType.Error, message))
    else:
        message = f"CodeGemma: {service.engine.name} ready in {service.load_s:.1f} s"
        server.window_log_message(types.LogMessageParams(types.MessageType.Info, message))
    if token is not None:
        server.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
