"""server/router/proxy.py in-process: body parsing (the node's errors), the prompt estimate."""

import json

import pytest

from server.edge.errors import InvalidRequest
from server.edge.protocol import ChatCompletionRequest, CompletionRequest
from server.router.proxy import estimate_prompt_tokens, parse_body


def test_parse_body_rejects_bad_json_shapes():
    for raw, message in ((b"{", "not valid JSON"), (b"[]", "must be a JSON object"), (b"\xff\xfe", "not valid JSON"),
                         (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
                         (b'{"a":' * 100000 + b"1" + b"}" * 100000, "nested too deeply")):
        with pytest.raises(InvalidRequest, match=message):
            parse_body(raw, ChatCompletionRequest)
    with pytest.raises(InvalidRequest, match="'temperature'") as nan:
        parse_body(b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
                   ChatCompletionRequest)
    assert nan.value.param == "temperature"
    with pytest.raises(InvalidRequest, match="'base_url' is not accepted"):
        parse_body(b'{"model": "m", "prompt": "x", "base_url": "http://elsewhere"}', CompletionRequest)
    req = parse_body(b'{"model": "m", "prompt": "hello"}', CompletionRequest)
    assert req.prompt == "hello" and req.model == "m"


def test_prompt_estimate():
    chat = parse_body(json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 4000}]}).encode(),
                         ChatCompletionRequest)
    assert 1000 <= estimate_prompt_tokens(chat) <= 1010
    ids = parse_body(b'{"model": "m", "prompt": [1, 2, 3]}', CompletionRequest)
    assert estimate_prompt_tokens(ids) == 3


def test_openapi_documents_the_proxy_endpoints_with_their_bodies():
    """FastPath serves the proxy paths outside FastAPI's routing; /openapi.json still shows
    them (and the pick's body), so clients and the HTTP fuzz run see the whole API."""
    from server.router.app import create_app
    from server.router.config import RouterSettings

    app, _ = create_app(RouterSettings())
    while not hasattr(app, "openapi"):
        app = app.app
    doc = app.openapi()
    for path, model in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest"),
                        ("/v1/fleet/pick", "ChatCompletionRequest")):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{model}"}
        assert model in doc["components"]["schemas"]
