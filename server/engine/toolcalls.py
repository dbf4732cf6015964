"""Tool-call parsing for engines without vLLM (native, sim).

The vLLM engine uses vLLM's own parsers; this module gives the other engines the Hermes
format (``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``), which is what the
demo model's chat template asks for and what Qwen2.5/Hermes models emit.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from server.engine.base import ToolCall, ToolCallParser

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class HermesToolParser:
    start_marker = "<tool_call>"

    def extract(self, text: str, tools: list[dict[str, Any]] | None = None) -> tuple[str | None, list[ToolCall]]:
        calls: list[ToolCall] = []
        for body in _HERMES.findall(text):
            try:
                obj = json.loads(body)
            except ValueError:
                continue  # not a well-formed call: leave the text as content
            if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
                continue
            args = obj.get("arguments", {})
            calls.append(ToolCall(name=obj["name"], arguments=args if isinstance(args, str) else json.dumps(args),
                                  id=new_call_id()))
        if not calls:
            return text, []
        content = _HERMES.sub("", text).strip()
        return content or None, calls


PARSERS = {"hermes": HermesToolParser}


def get_tool_parser(name: str) -> ToolCallParser:
    try:
        return PARSERS[name]()
    except KeyError:
        raise ValueError(f"unknown tool-call parser {name!r}; this engine knows: {', '.join(PARSERS)}") from None
