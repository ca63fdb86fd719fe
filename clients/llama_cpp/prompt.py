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


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """Split a Hermes-style answer into (content before the calls, OpenAI tool_calls)."""
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        return text, []
    calls = []
    for raw in _TOOL_CALL_RE.findall(text[start:]):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            return text, []  # not a well-formed call: give the text back unchanged
        if not isinstance(obj, dict) or "name" not in obj:
            return text, []
        args = obj.get("arguments", obj.get("parameters", {}))
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": str(obj["name"]),
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                },
            }
        )
    content = text[:start].strip() or None
    return content, calls
