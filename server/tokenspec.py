"""How a node turns a request into prompt token ids, in a form the router can copy.

Precise prefix routing (server/router/kv_follow.py) needs the router to compute the very
block hashes a node computes, so it must tokenize exactly as the node does. A node serves
its tokenizer at ``GET /v1/tokenizer`` as a :class:`TokenizerSpec` (JSON); both sides build
the same :class:`TextTokenizer` from it:

- ``sim``: the simulated engine's made-up tokenizer (one id per ``chars_per_token``
  characters) and ChatML-like framing. The sim engine itself calls this code.
- ``hf``: a Hugging Face fast tokenizer (``tokenizer.json``, loaded with ``tokenizers``) and
  the model's Jinja chat template rendered in a sandbox as transformers renders it
  (``add_generation_prompt=True``). The native engine renders with transformers itself; a
  template feature this copy renders differently only costs predictions (the hashes then
  differ and nothing matches), never a wrong answer.

No torch, no fastapi: the engines and the router both import it.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, Literal, Protocol

SIM_VOCAB = 32000
MAX_SPEC_BYTES = 32 << 20  # a tokenizer.json is a few MiB; the router refuses more


@dataclass(slots=True, frozen=True)
class TokenizerSpec:
    kind: Literal["sim", "hf"]
    chars_per_token: int = 4  # sim
    tokenizer_json: str | None = None  # hf: the tokenizer.json file's text
    chat_template: str | None = None  # hf
    special_tokens: tuple[tuple[str, str], ...] = ()  # hf: bos_token, eos_token, ... for the template

    def json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == "sim":
            d["chars_per_token"] = self.chars_per_token
        else:
            d |= {"tokenizer_json": self.tokenizer_json, "chat_template": self.chat_template,
                  "special_tokens": dict(self.special_tokens)}
        return d

    @classmethod
    def from_json(cls, d: Any) -> TokenizerSpec:
        """Raises ValueError on anything but a well-formed spec."""
        if not isinstance(d, dict):
            raise ValueError("tokenizer spec must be an object")
        kind = d.get("kind")
        if kind == "sim":
            cpt = d.get("chars_per_token")
            if type(cpt) is not int or not 1 <= cpt <= 64:
                raise ValueError("sim tokenizer: chars_per_token must be an integer from 1 to 64")
            return cls("sim", chars_per_token=cpt)
        if kind == "hf":
            tj, tpl, sp = d.get("tokenizer_json"), d.get("chat_template"), d.get("special_tokens") or {}
            if not isinstance(tj, str) or not isinstance(tpl, str) or not isinstance(sp, dict) \
                    or not all(isinstance(k, str) and isinstance(v, str) for k, v in sp.items()):
                raise ValueError("hf tokenizer: tokenizer_json and chat_template must be strings")
            return cls("hf", tokenizer_json=tj, chat_template=tpl, special_tokens=tuple(sorted(sp.items())))
        raise ValueError(f"unknown tokenizer kind {str(kind)[:32]!r}")

    def digest(self) -> str:
        """Equal specs (every node of a model, usually) share one compiled tokenizer."""
        return blake2b(json.dumps(self.json(), sort_keys=True).encode(), digest_size=12).hexdigest()


class TextTokenizer(Protocol):
    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                    add_generation_prompt: bool = True) -> list[int]: ...


class SimTokenizer:
    """One made-up id per ``chars_per_token`` characters; ChatML-like framing of 4 ids per
    message plus a 2-id generation prompt."""

    def __init__(self, chars_per_token: int = 4):
        self.chars_per_token = chars_per_token

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        cpt = self.chars_per_token
        n = math.ceil(len(text) / cpt)
        ids = [100 + zlib.crc32(text[i * cpt:(i + 1) * cpt].encode("utf-8", "replace")) % (SIM_VOCAB - 100)
               for i in range(n)]
        return ([1] if add_special_tokens else []) + ids

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                    add_generation_prompt: bool = True) -> list[int]:
        ids: list[int] = [1]
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            ids += [2, 3, 4] + self.tokenize(f"{m.get('role', '')}\n{content or ''}", add_special_tokens=False) + [5]
        if tools:
            ids += self.tokenize(json.dumps(tools), add_special_tokens=False)
        return ids + [2, 6] if add_generation_prompt else ids


class HfTokenizer:
    """``tokenizers`` + a sandboxed Jinja chat template, configured as transformers does."""

    def __init__(self, spec: TokenizerSpec):
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(spec.tokenizer_json or "")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False: json.dumps(
            x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = _strftime_now
        self._template = env.from_string(spec.chat_template or "")
        self._special = dict(spec.special_tokens)

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                    add_generation_prompt: bool = True) -> list[int]:
        text = self._template.render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                     **self._special)
        return self.tokenize(text, add_special_tokens=False)


def _raise(message: str) -> None:
    raise ValueError(message)


def _strftime_now(fmt: str) -> str:
    import datetime

    return datetime.datetime.now().strftime(fmt)


def build_tokenizer(spec: TokenizerSpec) -> TextTokenizer:
    return SimTokenizer(spec.chars_per_token) if spec.kind == "sim" else HfTokenizer(spec)


def chat_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """Request messages (the edge's pydantic objects) as the chat template sees them; the
    node (server/api/chat.py) and the router both use this."""
    out = []
    for m in messages:
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text() or ""}
        if m.name:
            d["name"] = m.name
        if m.tool_calls:
            d["tool_calls"] = [{"id": c.id, "type": "function",
                                "function": {"name": c.function.name, "arguments": c.function.arguments}}
                               for c in m.tool_calls]
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out
