"""The node's own tokenizer over HTTP: vLLM-compatible ``POST /tokenize`` and ``/detokenize``.

Lets the token-exact datasets (random prompts, agent tool results) be built against a node
whose model directory is not on the benchmarking machine, or a ``--engine sim`` node. Only
used while building the workload, never inside a timed request.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Plain text whose tokens are the candidate ids for random prompts: every id in it exists
# and decodes to clean text on its own (checked one by one, as ``allowed_ids`` does).
_SAMPLE = (
    "When in the Course of human events, it becomes necessary for one people to dissolve the political "
    "bands which have connected them with another, and to assume among the powers of the earth, the "
    "separate and equal station to which the Laws of Nature and of Nature's God entitle them, a decent "
    "respect to the opinions of mankind requires that they should declare the causes which impel them "
    "to the separation. Four score and seven years ago our fathers brought forth on this continent, a "
    "new nation, conceived in Liberty, and dedicated to the proposition that all men are created equal. "
    "model token request node fleet router latency capacity queue batch kernel memory agent tool call "
    "function weather city name arguments result json schema answer 0 1 2 3 4 5 6 7 8 9 10 42 2024"
)


class RemoteTokenizer:
    all_special_ids: list[int] = []

    def __init__(self, base_url: str, model: str | None, api_key: str | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 30.0):
        import httpx

        self.root = base_url.rstrip("/").removesuffix("/v1")
        self.model = model
        hdrs = dict(headers or {})
        if api_key:
            hdrs["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(headers=hdrs, timeout=timeout, trust_env=False)
        self._allowed: np.ndarray | None = None

    @classmethod
    def probe(cls, base_url: str, model: str | None, api_key: str | None = None,
              headers: dict[str, str] | None = None) -> RemoteTokenizer | None:
        """A working remote tokenizer, or None when the server has no /tokenize."""
        import httpx

        tok = cls(base_url, model, api_key, headers)
        try:
            tok.encode("hello")
        except (httpx.HTTPError, ValueError):
            tok.close()
            return None
        return tok

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.model:
            body = {"model": self.model, **body}
        r = self._client.post(self.root + path, json=body)
        if r.status_code != 200:
            raise ValueError(f"{self.root}{path} answered {r.status_code}: {r.text[:200]}")
        return r.json()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self._post("/tokenize", {"prompt": text, "add_special_tokens": add_special_tokens})["tokens"])

    def decode(self, ids: list[int]) -> str:
        return self._post("/detokenize", {"tokens": [int(i) for i in ids]})["prompt"]

    def allowed_ids(self) -> np.ndarray:
        """Ids that decode to clean text alone (a vocabulary walk would be one call per id)."""
        if self._allowed is None:
            ids = sorted(set(self.encode(_SAMPLE)))
            keep = []
            for i in ids:
                piece = self.decode([i])
                if piece and "\ufffd" not in piece and piece.isprintable():
                    keep.append(i)
            self._allowed = np.array(keep)
        return self._allowed

    def close(self) -> None:
        self._client.close()
