"""The router's copy of a node's tokenizer gives the node's token ids (server/tokenspec.py)."""

from __future__ import annotations

import pytest

from server.tokenspec import HfTokenizer, TokenizerSpec

MESSAGES = [{"role": "system", "content": "You are helpful. " * 20},
            {"role": "user", "content": "Hi there, é ünïcode"},
            {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]


def test_the_hf_spec_renders_and_tokenizes_as_transformers_does(tmp_path):
    transformers = pytest.importorskip("transformers")
    from server.demo_model import build_tokenizer

    build_tokenizer(tmp_path, 512)  # the demo model's tokenizer and ChatML template
    t = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    special = {k: v for k, v in t.special_tokens_map.items() if isinstance(v, str)}
    spec = TokenizerSpec.from_json(TokenizerSpec(
        "hf", tokenizer_json=(tmp_path / "tokenizer.json").read_text(), chat_template=t.chat_template,
        special_tokens=tuple(sorted(special.items()))).json())  # through JSON, as the router gets it
    h = HfTokenizer(spec)
    node_ids = t.encode(t.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False),
                        add_special_tokens=False)  # what the native engine's render_chat does
    assert h.render_chat(MESSAGES, None) == node_ids and len(node_ids) > 100
    assert h.tokenize("plain text") == t.encode("plain text")


@pytest.mark.parametrize("doc", [None, {"kind": "x"}, {"kind": "sim", "chars_per_token": 0},
                                 {"kind": "hf", "tokenizer_json": 1, "chat_template": ""}])
def test_a_malformed_spec_is_refused(doc):
    with pytest.raises(ValueError):
        TokenizerSpec.from_json(doc)
