"""A scripted OpenAI-compatible SSE server with known timings, for checking metric arithmetic.

Raw asyncio sockets, so the test controls every byte and every pause. The prompt (or the
last message) names the script to play. Each event's send time is recorded on the same
clock as the client (time.perf_counter, same process), so measured gaps can be checked
against what was actually sent as well as against the script.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Script:
    events: list[tuple[float, Any]] = field(default_factory=list)  # (pause before, dict | raw str)
    status: int = 200
    body: dict | None = None  # non-200 body
    node: str | None = None  # X-Edgefleet-Node


def chunk(text: str, chat: bool = False) -> dict:
    if chat:
        return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    return {"object": "text_completion", "choices": [{"index": 0, "text": text}]}


def usage(prompt: int, completion: int) -> dict:
    return {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


class ScriptedServer:
    def __init__(self, scripts: dict[str, Script], api_key: str | None = None, models: tuple[str, ...] = ("scripted",),
                 capacity: dict | None = None, default: str | None = None):
        self.scripts = scripts
        self.api_key = api_key
        self.models = models
        self.capacity = capacity
        self.default = default
        self.sent: list[tuple[str, list[float]]] = []  # (script, send time of each event)
        self.bodies: list[dict] = []
        self._server: asyncio.AbstractServer | None = None
        self.url = ""

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            await self._route(method, path, headers, body, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _route(self, method: str, path: str, headers: dict, body: bytes, writer: asyncio.StreamWriter) -> None:
        if self.api_key and headers.get("authorization") != f"Bearer {self.api_key}":
            return await self._json(writer, 401, {"error": {"message": "invalid API key", "type": "auth",
                                                            "param": None, "code": "invalid_api_key"}})
        if method == "GET" and path == "/v1/models":
            return await self._json(writer, 200, {"object": "list", "data": [{"id": m} for m in self.models]})
        if method == "GET" and path == "/v1/capacity" and self.capacity is not None:
            return await self._json(writer, 200, self.capacity)
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
            return await self._json(writer, 404, {"error": {"message": "not found"}})
        req = json.loads(body)
        self.bodies.append(req)
        prompt = req.get("prompt") if "prompt" in req else req["messages"][-1]["content"]
        if isinstance(prompt, list):  # content parts, as vLLM's benchmark client sends them
            prompt = "".join(p.get("text", "") for p in prompt if isinstance(p, dict))
        name = prompt if prompt in self.scripts else self.default
        if name is None:
            return await self._json(writer, 400, {"error": {"message": f"no script {prompt[:20]!r}"}})
        script = self.scripts[name]
        if script.status != 200:
            return await self._json(writer, script.status, script.body or {"error": {"message": "scripted failure"}})
        extra = f"X-Edgefleet-Node: {script.node}\r\n" if script.node else ""
        writer.write(("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n"
                      f"{extra}\r\n").encode())
        await writer.drain()
        times: list[float] = []
        self.sent.append((name, times))
        for pause, event in script.events:
            if pause:
                await asyncio.sleep(pause)
            data = event if isinstance(event, str) else "data: " + json.dumps(event)
            writer.write((data + "\n\n").encode())
            await writer.drain()
            times.append(time.perf_counter())

    @staticmethod
    async def _json(writer: asyncio.StreamWriter, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                     f"Connection: close\r\n\r\n".encode() + data)
        await writer.drain()


class ThreadedServer:
    """Run a ScriptedServer on its own event loop in a thread, for code that calls asyncio.run."""

    def __init__(self, server: ScriptedServer):
        import threading

        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self.server

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
