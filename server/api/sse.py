"""Server-sent events: one event per engine step, errors in band, then [DONE]."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse

from server.edge.errors import ApiError
from server.edge.protocol import dumps
from server.edge.render import sse_error_event

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(obj: Any) -> bytes:
    return f"data: {dumps(obj)}\n\n".encode()


DONE = b"data: [DONE]\n\n"


def sse_response(events: AsyncIterator[bytes], headers: dict[str, str] | None = None,
                 on_close: Callable[[], None] | None = None) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in events:
                yield chunk
        except ApiError as err:
            # After the first byte the status line is gone: the error travels in band, no [DONE].
            yield sse_error_event(err)
            return
        finally:
            if on_close:
                on_close()
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]
        yield DONE

    return StreamingResponse(body(), media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})})
