from server.api.toolstream import ToolCallGate
from server.engine.toolcalls import HermesToolParser


def stream(gate: ToolCallGate, pieces: list[str]) -> str:
    return "".join(gate.feed(p) for p in pieces)


def test_plain_text_streams_through_except_a_possible_marker_prefix():
    g = ToolCallGate("<tool_call>")
    assert g.feed("Hello ") == "Hello "
    assert g.feed("wor<to") == "wor"  # "<to" may open a call: held
    assert g.feed("ol") == ""
    assert g.feed("s are fun") == "<tools are fun"  # it did not
    assert g.rest() == ""


def test_a_call_is_never_sent_as_content():
    g = ToolCallGate("<tool_call>")
    text = ['Let me check. <tool', '_call>{"name": "get_weather", ', '"arguments": {"city": "Paris"}}</tool_call>']
    assert stream(g, text) == "Let me check. "
    content, calls = HermesToolParser().extract("".join(text))
    assert content == "Let me check." and calls[0].name == "get_weather"
    assert calls[0].arguments == '{"city": "Paris"}'


def test_no_marker_means_no_gating_and_rest_flushes():
    g = ToolCallGate(None)
    assert stream(g, ["<tool", "_call>"]) == "<tool_call>"
    g = ToolCallGate("<tool_call>")
    assert stream(g, ["broken <tool_call>{not json"]) == "broken "
    assert g.rest() == "<tool_call>{not json"  # parse failed at the end: it is content after all


def test_hermes_parser_ignores_malformed_calls():
    content, calls = HermesToolParser().extract('<tool_call>{"name": 5}</tool_call> hi')
    assert calls == [] and content.startswith("<tool_call>")
