"""The Responses API request (``POST /v1/responses``), checked and turned into a chat body.

Tandem serves Responses by bridging through Chat Completions on every route, so that
routing, the privacy stage, fallbacks, metrics and the one egress path apply exactly as
for chat (docs/DECISIONS.md). What cannot be bridged (hosted tools, background runs,
server-side conversations, prompt templates) is refused with a 400 naming the field,
never dropped.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clients.base import GATEWAY_FIELDS
from clients.errors import InvalidRequest
from server.schemas import first_error

# Responses fields this module translates (everything else passes into the chat body,
# as vendor extensions do on /v1/chat/completions).
_TRANSLATED = frozenset({
    "model", "input", "instructions", "max_output_tokens", "temperature", "top_p",
    "tools", "tool_choice", "text", "stream", "store", "previous_response_id",
    "metadata", "user", "reasoning", "parallel_tool_calls", "truncation", "include",
    "top_logprobs", "background", "conversation", "prompt", "stream_options",
    "max_tool_calls", "service_tier",
})
_UNSUPPORTED = {
    "background": "background responses are not supported: call without 'background'",
    "conversation": "server-side conversations are not supported: chain responses with "
                    "'previous_response_id' or send the whole input",
    "prompt": "prompt templates are not supported: send 'input' and 'instructions'",
    "max_tool_calls": "max_tool_calls is not supported: run the tool loop in the client",
}
# include values that need something a bridged chat call does not give
_INCLUDABLE = frozenset({"message.output_text.logprobs"})


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class InputText(_Open):
    type: Literal["input_text", "output_text", "text"]
    text: str


class InputImage(_Open):
    type: Literal["input_image"]
    image_url: str | None = None
    detail: str | None = None


class MessageItem(_Open):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Union[str, list[Union[InputText, InputImage]]]


class FunctionCallItem(_Open):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


class FunctionCallOutputItem(_Open):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: Union[str, list[InputText]]


class FunctionTool(_Open):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(_Open):
    type: Literal["function"]
    name: str = Field(min_length=1)


class TextFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "TextFormat":
        if self.type == "json_schema" and (self.schema_ is None or not self.name):
            raise ValueError("a 'json_schema' format needs 'name' and 'schema'")
        return self


class TextConfig(_Open):
    format: TextFormat | None = None


class Reasoning(_Open):
    effort: str | None = None


class ResponsesRequest(_Open):
    model: str = Field(min_length=1)
    input: Union[str, list[dict[str, Any]]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedFunction, None] = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = Field(None, min_length=1)
    metadata: dict[str, str] | None = None
    user: str | None = None
    reasoning: Reasoning | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    background: bool | None = None
    max_tool_calls: int | None = None
    conversation: Any = None
    prompt: Any = None

    @model_validator(mode="after")
    def _bridgeable(self) -> "ResponsesRequest":
        if isinstance(self.input, str) and not self.input:
            raise ValueError("input must not be empty")
        if isinstance(self.input, list) and not self.input and not self.previous_response_id:
            raise ValueError("input must not be empty")
        return self


_ITEMS = {"message": MessageItem, "function_call": FunctionCallItem,
          "function_call_output": FunctionCallOutputItem}


def _fail(err: ValidationError, prefix: str = "") -> InvalidRequest:
    """The first problem as a 400; ``prefix`` places a nested item (``input[2].``)."""
    param, msg, _ = first_error(err)
    param = prefix + param if param else (prefix.rstrip(".") or None)
    return InvalidRequest(f"Invalid request: '{param}': {msg}" if param else
                          f"Invalid request: {msg}", param=param)


def validate_responses_request(body: Any) -> ResponsesRequest:
    """Check a parsed body; raise ``InvalidRequest`` naming the first bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        req = ResponsesRequest.model_validate(body)
    except ValidationError as err:
        raise _fail(err) from None
    for field, why in _UNSUPPORTED.items():
        if body.get(field) not in (None, False):
            raise InvalidRequest(why, param=field, code="unsupported_parameter")
    for value in req.include or []:
        if value not in _INCLUDABLE:
            raise InvalidRequest(f"include: '{value}' is not available from this gateway",
                                 param="include", code="unsupported_parameter")
    for i, tool in enumerate(req.tools or []):
        if tool.get("type") != "function":
            raise InvalidRequest(f"tools[{i}]: only function tools are supported, not "
                                 f"'{tool.get('type')}'", param=f"tools[{i}].type",
                                 code="unsupported_parameter")
        try:
            FunctionTool.model_validate(tool)
        except ValidationError as err:
            raise _fail(err, f"tools[{i}].") from None
    if req.tool_choice not in (None, "none") and not req.tools:
        raise InvalidRequest("tool_choice is set but no tools are given", param="tool_choice")
    return req


def input_messages(items: Union[str, list[dict]]) -> list[dict]:
    """Responses input (a string or items) as chat messages: consecutive function calls
    become one assistant turn with ``tool_calls``; outputs become ``tool`` messages."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict] = []
    for i, item in enumerate(items):
        kind = item.get("type", "message") if isinstance(item, dict) else None
        model = _ITEMS.get(kind)
        if model is None:
            raise InvalidRequest(f"input[{i}]: items of type '{kind}' are not supported "
                                 "(message, function_call, function_call_output are)",
                                 param=f"input[{i}].type", code="unsupported_parameter")
        try:
            parsed = model.model_validate(item)
        except ValidationError as err:
            raise _fail(err, f"input[{i}].") from None
        if isinstance(parsed, MessageItem):
            messages.append({"role": parsed.role, "content": _chat_content(parsed.content)})
        elif isinstance(parsed, FunctionCallItem):
            call = {"id": parsed.call_id, "type": "function",
                    "function": {"name": parsed.name, "arguments": parsed.arguments}}
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and last.get("tool_calls") is not None:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            output = (parsed.output if isinstance(parsed.output, str)
                      else "".join(p.text for p in parsed.output))
            messages.append({"role": "tool", "tool_call_id": parsed.call_id,
                             "content": output})
    return messages


def _chat_content(content: Union[str, list]) -> Union[str, list[dict]]:
    if isinstance(content, str):
        return content
    if all(isinstance(p, InputText) for p in content):
        return "".join(p.text for p in content)
    return [{"type": "text", "text": p.text} if isinstance(p, InputText)
            else {"type": "image_url", "image_url": {"url": p.image_url,
                                                     **({"detail": p.detail} if p.detail else {})}}
            for p in content]


def chat_tools(tools: list[dict] | None) -> list[dict] | None:
    if not tools:
        return None
    return [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
            for t in tools]


def chat_body(req: ResponsesRequest, body: dict, conversation: list[dict]) -> dict:
    """The chat request that answers this Responses request: ``conversation`` (the stored
    one of ``previous_response_id``, then this input, as chat messages) under this
    request's instructions (a previous response's are not carried over, as at OpenAI)."""
    messages = ([{"role": "system", "content": req.instructions}] if req.instructions else [])
    messages += conversation
    out: dict[str, Any] = {k: v for k, v in body.items() if k not in _TRANSLATED}
    out.update(model=req.model, messages=messages)
    for src, dst in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"),
                     ("top_p", "top_p"), ("parallel_tool_calls", "parallel_tool_calls"),
                     ("user", "user"), ("metadata", "metadata"),
                     ("service_tier", "service_tier")):
        if body.get(src) is not None:
            out[dst] = body[src]
    if req.tools:
        out["tools"] = chat_tools(body["tools"])
    if isinstance(req.tool_choice, str):
        out["tool_choice"] = req.tool_choice
    elif req.tool_choice is not None:
        out["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.name}}
    fmt = req.text.format if req.text else None
    if fmt is not None and fmt.type == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        spec = {"name": fmt.name, "schema": fmt.schema_}
        if fmt.strict is not None:
            spec["strict"] = fmt.strict
        out["response_format"] = {"type": "json_schema", "json_schema": spec}
    if req.reasoning is not None and req.reasoning.effort:
        out["reasoning_effort"] = req.reasoning.effort
    if "message.output_text.logprobs" in (req.include or []) or req.top_logprobs:
        out["logprobs"] = True
        if req.top_logprobs:
            out["top_logprobs"] = req.top_logprobs
    if req.stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    for field in GATEWAY_FIELDS:  # private_context and the rest: the gateway reads them
        if field in body:
            out[field] = body[field]
    return out
