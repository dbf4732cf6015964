"""OpenAI request and response schemas.

Request models keep OpenAI's field order; edgefleet/vLLM extensions sit in a marked block.
Each request converts itself into engine-neutral :class:`SamplingOptions`.
"""

from __future__ import annotations

import json
import math
import time
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from server.host_policy import parse_keep_alive
from server.sampling import SamplingOptions

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 512
MAX_LOGIT_BIAS = 1024
MAX_TOP_LOGPROBS = 20
MAX_TOOLS = 128

# Fields some servers honour that would let a client reach past the operator's choices.
FORBIDDEN_FIELDS = (
    "chat_template", "chat_template_kwargs", "logits_processors", "api_base", "base_url",
    "add_generation_prompt", "continue_final_message", "mm_processor_kwargs",
)


def _check_text(value: str, where: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where} contains invalid Unicode (lone surrogate)") from None
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, protected_namespaces=())


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCallMessage(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallMessage] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs 'tool_call_id'")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs 'content'")
        if isinstance(self.content, str):
            _check_text(self.content, "content")
        elif self.content:
            for part in self.content:
                _check_text(part.text, "content")
        return self

    def text(self) -> str | None:
        if self.content is None or isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class FunctionDef(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef

    @model_validator(mode="after")
    def _check(self) -> Tool:
        if self.function.parameters is not None:
            check_json_schema(self.function.parameters, f"parameters of tool '{self.function.name}'")
        return self


class NamedToolChoiceFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedToolChoiceFunction


class JsonSchemaFormat(_Strict):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


def check_json_schema(schema: dict[str, Any], where: str) -> None:
    """Refuse schemas that are not JSON Schema before they reach the grammar compiler."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"{where} is not a valid JSON Schema: {str(exc.message)[:200]}") from None
    except RecursionError:
        raise ValueError(f"{where} is nested too deeply") from None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _check(self) -> ResponseFormat:
        if self.type == "json_schema":
            if self.json_schema is None or self.json_schema.schema_ is None:
                raise ValueError("response_format of type json_schema needs 'json_schema.schema'")
            check_json_schema(self.json_schema.schema_, "response_format.json_schema.schema")
        return self


Stop = str | list[str] | None
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class _SamplingFields(_Strict):
    """Fields shared by chat and completions requests."""

    model: str
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[str, float] | None = None
    max_tokens: StrictInt | None = Field(None, ge=1)
    n: StrictInt = Field(1, ge=1)
    presence_penalty: Penalty = 0.0
    seed: StrictInt | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: Stop = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    user: str | None = None
    response_format: ResponseFormat | None = None

    # --- extensions (vLLM-compatible) -------------------------------------------------
    top_k: StrictInt | None = Field(None, ge=-1, description="Sample from the k most likely tokens; 0 or -1: off.")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="Minimum probability relative to the top token.")
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0, description="vLLM-style repetition penalty.")
    ignore_eos: StrictBool = Field(False, description="Keep generating past end-of-sequence.")
    stop_token_ids: list[StrictInt] | None = Field(None, max_length=MAX_STOP_STRINGS)
    include_stop_str_in_output: StrictBool = False
    priority: StrictInt | None = Field(None, description="vLLM-style scheduling priority, lower runs first "
                                       "(default 0, allowed -100..100); an X-Edgefleet-Priority header overrides it.")
    keep_alive: StrictStr | StrictInt | StrictFloat | None = Field(
        None, description="Ollama-style: how long a multi-model node keeps this model loaded after this request "
        "(a duration like '5m' or '30s', seconds, 0 = release after it, -1 = never); null: the model's own.")

    @model_validator(mode="before")
    @classmethod
    def _reject_forbidden(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in FORBIDDEN_FIELDS:
                if key in data:
                    raise ValueError(f"'{key}' is not accepted: the operator chooses it, not the request")
        return data

    @field_validator("keep_alive")
    @classmethod
    def _check_keep_alive(cls, v: str | int | float | None) -> str | int | float | None:
        if v is not None:
            parse_keep_alive(v)  # raises ValueError with the reason
        return v

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: Stop) -> Stop:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop sequences")
        for s in items:
            if s == "":
                raise ValueError("stop sequences must not be empty")
            if len(s) > MAX_STOP_LENGTH:
                raise ValueError(f"stop sequences are at most {MAX_STOP_LENGTH} characters")
            _check_text(s, "stop")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _check_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} logit_bias entries")
        for key, bias in v.items():
            if not key.isdigit() or int(key) < 0:
                raise ValueError(f"logit_bias keys are token ids; got {key[:20]!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError("logit_bias values must be within [-100, 100]")
        return v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def _sampling(self, max_tokens: int, logprobs: int | None) -> SamplingOptions:
        fmt = self.response_format
        return SamplingOptions(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(0, self.top_k or 0),
            min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty or 1.0,
            seed=self.seed,
            stop=self.stop_list(),
            stop_token_ids=list(self.stop_token_ids or []),
            include_stop_str_in_output=self.include_stop_str_in_output,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            logit_bias={int(k): float(b) for k, b in (self.logit_bias or {}).items()} or None,
            json_schema=fmt.json_schema.schema_ if fmt and fmt.type == "json_schema" and fmt.json_schema else None,
            json_object=bool(fmt and fmt.type == "json_object"),
        )


class ToolMode(Enum):
    """How a chat request uses its tools (from ``tools`` and ``tool_choice``)."""

    NONE = "none"  # no tools, or tool_choice "none": plain text
    AUTO = "auto"  # the model may call; the engine's tool parser finds calls in the text
    REQUIRED = "required"  # the model must call one of the tools (constrained decoding)
    NAMED = "named"  # the model must call the named tool (constrained decoding)

    @property
    def forced(self) -> bool:
        return self in (ToolMode.REQUIRED, ToolMode.NAMED)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: StrictBool = False
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    parallel_tool_calls: StrictBool | None = None

    @model_validator(mode="after")
    def _check_tools(self) -> ChatCompletionRequest:
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise ValueError("'tool_choice' needs 'tools'")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or []}
            if self.tool_choice.function.name not in names:
                raise ValueError(f"tool_choice names unknown tool '{self.tool_choice.function.name[:64]}'")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("'top_logprobs' needs 'logprobs': true")
        return self

    def tool_mode(self) -> ToolMode:
        if not self.tools or self.tool_choice == "none":
            return ToolMode.NONE
        if isinstance(self.tool_choice, NamedToolChoice):
            return ToolMode.NAMED
        return ToolMode.REQUIRED if self.tool_choice == "required" else ToolMode.AUTO

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def to_sampling(self, max_tokens: int) -> SamplingOptions:
        k = (self.top_logprobs or 0) if self.logprobs else None
        return self._sampling(max_tokens, k)


class CompletionRequest(_SamplingFields):
    prompt: str | list[StrictInt] | list[str] = Field(description="One prompt: text, or token ids.")
    echo: StrictBool = False
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    suffix: str | None = None
    best_of: StrictInt | None = None
    max_tokens: StrictInt | None = Field(16, ge=1)

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, v: Any) -> Any:
        if isinstance(v, str):
            _check_text(v, "prompt")
        elif isinstance(v, list) and v and isinstance(v[0], str):
            if len(v) != 1:
                raise ValueError("batched prompts are not supported; send one prompt per request")
            _check_text(v[0], "prompt")
        elif isinstance(v, list) and not v:
            raise ValueError("prompt must not be empty")
        return v

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("'suffix' is not supported")
        if self.best_of not in (None, 1) and self.best_of != self.n:
            raise ValueError("'best_of' is not supported")
        return self

    def to_sampling(self, max_tokens: int) -> SamplingOptions:
        return self._sampling(max_tokens, self.logprobs)


# --- responses -----------------------------------------------------------------------

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> Usage:
        details = None if cached_tokens is None else {"cached_tokens": cached_tokens}
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens, prompt_tokens_details=details)

    def wire(self) -> dict[str, Any]:
        """The JSON object a reply carries (``prompt_tokens_details`` only when known)."""
        return self.model_dump(exclude_none=True)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "edgefleet"
    root: str
    parent: str | None = None
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def dumps(obj: Any) -> str:
    """Compact JSON for SSE events; rejects NaN like the request side does."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


LOGPROB_FLOOR = -9999.0  # what vLLM reports for a token of probability zero


def clamp_logprob(x: float) -> float:
    """A logprob JSON can carry: -inf (and NaN) become :data:`LOGPROB_FLOOR`, as in vLLM."""
    return x if math.isfinite(x) else LOGPROB_FLOOR
