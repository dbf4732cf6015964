"""The one rule for Schemathesis runs (RELIABILITY "Proving it"), in-process or over real HTTP:
no 5xx, and every refusal is an OpenAI error envelope. Generation: positive and negative
modes, NUL bytes allowed, deterministic, a bounded number of examples per operation."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode

MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
ENVELOPE_KEYS = {"message", "type", "param", "code"}


def configure(schema, *, max_examples: int) -> None:
    schema.config.generation.update(modes=list(MODES), max_examples=max_examples, allow_x00=True, deterministic=True)


def check_case(case, **call_kw):
    """Send ``case`` and hold its answer to the rule; returns the response."""
    response = case.call_and_validate(checks=[not_a_server_error], **call_kw)
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text)
    if response.status_code >= 400:
        try:
            err = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            raise AssertionError(f"{case.method} {case.formatted_path}: {response.status_code} is not an OpenAI "
                                 f"error envelope: {response.text[:300]!r}") from None
        assert set(err) == ENVELOPE_KEYS, (case.method, case.formatted_path, response.text)
        assert isinstance(err["message"], str) and err["message"], response.text
    return response


def fuzz_every_operation(schema, *, max_examples: int, **call_kw) -> Counter:
    """Run every operation of ``schema`` in both modes through :func:`check_case`.

    Used where ``schema.parametrize()`` cannot be (a schema loaded from a server that a
    fixture starts). Returns how many cases each (operation, mode) sent, so a caller can
    assert that every operation was really exercised."""
    configure(schema, max_examples=max_examples)
    sent: Counter = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the schema lists no operations"
    for operation in operations:
        for mode in MODES:
            @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                sent[(operation.label, mode.value)] += 1
                check_case(case, **call_kw)

            try:
                run()
            except Unsatisfiable:
                # no invalid input exists (no parameters, or only unconstrained path strings)
                if mode is not GenerationMode.NEGATIVE or sent[(operation.label, mode.value)]:
                    raise
    return sent
