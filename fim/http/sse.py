"""Server-sent events: the framing llama.cpp and OpenAI streams share (`data: <json>` + blank line)."""
from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

from fastapi.responses import StreamingResponse

from fim.errors import FimError
from fim.http.errors import ApiError, error_body, status_for

log = logging.getLogger("fim.http")


def event(data: dict | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


def unsent(final: str, sent: str) -> str:
    """What of the final completion the stream has not sent yet. Post-processing may have trimmed text that
    was already streamed, which cannot be taken back: then nothing new is sent."""
    return final[len(sent):] if final.startswith(sent) else ""


def error_event(error: Exception) -> str:
    if isinstance(error, ApiError):
        return event(error_body(error.status, error.message))
    if isinstance(error, FimError):
        return event(error_body(status_for(error), str(error)))
    log.exception("unexpected error while streaming a completion")
    return event(error_body(500, f"internal error ({type(error).__name__}); see the server log"))


def stream(events: Callable[[], AsyncIterator[str]]) -> StreamingResponse:
    """A text/event-stream response; an error after the headers went out becomes a last error event."""

    async def body() -> AsyncIterator[str]:
        try:
            async for item in events():
                yield item
        except Exception as error:  # noqa: BLE001 - the status line is sent: report in-band, never a traceback
            yield error_event(error)

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
