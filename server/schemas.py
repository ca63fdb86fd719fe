"""The OpenAI chat request as a pydantic schema: what is valid, and why it is not.

Validation is a check: the handler forwards the caller's own parsed dict, so vendor
extensions (vLLM's ``top_k``, ``min_p`` …) pass through untouched.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clients.errors import InvalidRequest


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: Any


class InputAudioPart(_Open):
    type: Literal["input_audio"]
    input_audio: Any


class FilePart(_Open):
    type: Literal["file"]
    file: Any


ContentPart = Annotated[
    Union[TextPart, ImagePart, InputAudioPart, FilePart], Field(discriminator="type")
]


class FunctionCall(_Open):
    name: str
    arguments: str


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_rules(self) -> "Message":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"content is required for a '{self.role}' message")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs tool_call_id")
        return self


class FunctionDef(_Open):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Open):
    type: Literal["function"]
    function: FunctionDef


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: dict[str, Any]


class JsonSchemaSpec(_Open):
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs 'json_schema'")
        return self


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatCompletionRequest(_Open):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    stop: Union[str, list[str], None] = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _cross_field(self) -> "ChatCompletionRequest":
        if isinstance(self.stop, list):
            if len(self.stop) > 4:
                raise ValueError("stop: at most 4 stop sequences")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("tool_choice is set but no tools are given")
        if self.logit_bias:
            for key in self.logit_bias:
                if not key.lstrip("-").isdigit():
                    raise ValueError(f"logit_bias: key '{key}' is not a token id")
        return self


def _param_of(loc: tuple) -> str:
    parts = [str(p) for p in loc if not str(p).startswith(("function-", "tagged-union"))]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def parse_json_body(raw: bytes) -> Any:
    """A request body as JSON, or the 400 every endpoint answers malformed JSON with."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {err}") from None


def first_error(err: ValidationError, fields=()) -> tuple[str | None, str, str]:
    """(param, message, pydantic type) of a validation error's first problem, as OpenAI
    errors name them: the field path, the message without pydantic's "Value error, "
    ("field required" for a missing field). A cross-field rule names its field first
    ("prompt: ..."): that field becomes the param when it is one of ``fields``."""
    first = err.errors(include_url=False)[0]
    param = _param_of(first["loc"]) or None
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        msg = "field required"
    head = msg.partition(":")[0]
    if param is None and head in fields:
        param = head
    return param, msg, first["type"]


def shaped_error(err: ValidationError, fields, field: str, shapes: str) -> InvalidRequest:
    """The first problem of ``err`` as a 400, for a request whose ``field`` is a union of
    list shapes: pydantic names one branch of it (``prompt.list[int][0]``), so any error
    inside ``field`` is reported as ``field`` with ``shapes``, the accepted shapes (a
    rule's own message, a value error, is kept). Other fields, ``prompt_logprobs`` beside
    ``prompt`` too, keep their own path and message."""
    param, msg, kind = first_error(err, fields)
    if param is not None and (param == field or param.startswith((field + ".", field + "["))):
        param = field
        if kind != "value_error":
            msg = shapes
    where = f"'{param}': " if param and not msg.startswith(param) else ""
    return InvalidRequest(f"Invalid request: {where}{msg}", param=param)


def validate_chat_request(body: Any) -> ChatCompletionRequest:
    """Validate a parsed JSON body; raise ``InvalidRequest`` naming the first bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as err:
        param, msg, _ = first_error(err)
        count = err.error_count()
        more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
        where = f"'{param}': " if param else ""
        raise InvalidRequest(f"Invalid request: {where}{msg}{more}", param=param) from None
