"""OpenAI messages → the model's own chat template, and tool calls back out (pure functions).

Qwen-style templates (Hermes format) render ``tools`` into the system prompt and the
model answers ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``; we parse that
back into OpenAI ``tool_calls``, as vLLM's ``hermes`` parser does.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from clients.errors import InvalidRequest

TOOL_CALL_OPEN = "<tool_call>"
_FENCE_RE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)
_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def content_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list, joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    pieces = []
    for part in content:
        if part.get("type") == "text":
            pieces.append(part.get("text", ""))
        else:
            raise InvalidRequest(
                f"content part type '{part.get('type')}' is not supported by local models",
                param="messages",
            )
    return "".join(pieces)


def _template_tool_calls(tool_calls: list[dict]) -> list[dict]:
    """HF chat templates expect ``arguments`` as an object, OpenAI sends a JSON string."""
    out = []
    for call in tool_calls:
        fn = dict(call.get("function") or {})
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                fn["arguments"] = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                pass
        out.append({**call, "function": fn, **fn})
    return out


def template_messages(messages: list[dict]) -> list[dict]:
    """Normalise OpenAI messages to what Hugging Face chat templates expect."""
    out = []
    for m in messages:
        role = m["role"]
        msg: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": content_text(m.get("content")),
        }
        if m.get("tool_calls"):
            msg["tool_calls"] = _template_tool_calls(m["tool_calls"])
        if m.get("tool_call_id"):
            msg["tool_call_id"] = m["tool_call_id"]
        if m.get("name"):
            msg["name"] = m["name"]
        out.append(msg)
    return out


def template_supports_tools(template: str | None) -> bool:
    return bool(template) and TOOL_CALL_OPEN in template and "tools" in template


def _openai_call(obj: object, tool_names: set[str]) -> dict | None:
    if not isinstance(obj, dict) or obj.get("name") not in tool_names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {
            "name": str(obj["name"]),
            "arguments": args if isinstance(args, str) else json.dumps(args),
        },
    }


def parse_tool_calls(text: str, tool_names: set[str]) -> tuple[str | None, list[dict]]:
    """Split an answer into (content before the calls, OpenAI tool_calls).

    Hermes ``<tool_call>`` blocks first; small models often answer with the bare call
    object instead (optionally in a json code fence), accepted when it names a tool that
    was offered. Anything else is plain content, returned unchanged.
    """
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        fenced = _FENCE_RE.fullmatch(text.strip())
        raw = fenced.group(1) if fenced else text.strip()
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            return text, []
        objs = obj if isinstance(obj, list) else [obj]
        calls = [_openai_call(o, tool_names) for o in objs]
        return (None, calls) if calls and all(calls) else (text, [])
    calls = []
    for raw in _TOOL_CALL_RE.findall(text[start:]):
        try:
            call = _openai_call(json.loads(raw), tool_names)
        except json.JSONDecodeError:
            call = None
        if call is None:
            return text, []  # not a well-formed call: give the text back unchanged
        calls.append(call)
    return text[:start].strip() or None, calls
