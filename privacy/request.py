"""The chat body as privacy sees it: the caller's marks, the texts, and rewritten copies.

Callers mark private context with a top-level ``private_context`` (a string or a list of
strings, sent with the OpenAI SDK's ``extra_body``) or with ``"private": true`` on a
message, and may pick a mode per request with ``"privacy": "<mode>"``. None of these
fields is ever forwarded: ``local_body`` gives the local model the context as a system
message, ``remote_body`` drops private messages and the context and maps every other
text through a function (placeholders).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from clients.errors import InvalidRequest

PRIVATE_FIELDS = ("private_context", "privacy")
CONTEXT_HEADER = ("Private context from the user (it stays on this device; use it when "
                  "it helps to answer):\n")


@dataclass
class Marks:
    context: list[str]           # private_context strings
    private_messages: set[int]   # indexes of messages marked "private": true
    mode: str | None             # per-request mode

    def marked_texts(self, body: dict) -> list[str]:
        msgs = body.get("messages") or []
        return [*self.context, *(content_text(msgs[i].get("content"))
                                 for i in sorted(self.private_messages))]


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content
                         if isinstance(p, dict) and p.get("type") == "text")
    return ""


def read_marks(body: dict) -> Marks:
    """The caller's marks, checked (a wrong type is a 400 naming the field)."""
    ctx = body.get("private_context")
    if ctx is None:
        context = []
    elif isinstance(ctx, str):
        context = [ctx]
    elif isinstance(ctx, list) and all(isinstance(c, str) for c in ctx):
        context = list(ctx)
    else:
        raise InvalidRequest("Invalid request: 'private_context' must be a string or a list "
                             "of strings", param="private_context")
    private = set()
    for i, m in enumerate(body.get("messages") or []):
        flag = m.get("private")
        if flag is None:
            continue
        if not isinstance(flag, bool):
            raise InvalidRequest(f"Invalid request: 'messages[{i}].private' must be a boolean",
                                 param=f"messages[{i}].private")
        if flag:
            private.add(i)
    mode = body.get("privacy")
    if mode is not None and not isinstance(mode, str):
        raise InvalidRequest("Invalid request: 'privacy' must be a string", param="privacy")
    return Marks(context, private, mode)


def _map_message(m: dict, fn: Callable[[str], str]) -> dict:
    out = {k: v for k, v in m.items() if k != "private"}
    content = m.get("content")
    if isinstance(content, str):
        out["content"] = fn(content)
    elif isinstance(content, list):
        out["content"] = [{**p, "text": fn(p["text"])}
                          if isinstance(p, dict) and isinstance(p.get("text"), str) else p
                          for p in content]
    if m.get("tool_calls"):
        out["tool_calls"] = [
            {**c, "function": {**c["function"],
                               "arguments": fn(c["function"].get("arguments") or "")}}
            if isinstance(c, dict) and isinstance(c.get("function"), dict) else c
            for c in m["tool_calls"]]
    return out


def open_texts(body: dict, marks: Marks) -> list[str]:
    """Every text of the messages the caller did not mark private."""
    texts: list[str] = []
    for i, m in enumerate(body.get("messages") or []):
        if i not in marks.private_messages:
            _map_message(m, lambda s: texts.append(s) or s)
    _map_descriptions(body.get("tools"), lambda s: texts.append(s) or s)
    return [t for t in texts if t]


def _base(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in PRIVATE_FIELDS}


def local_body(body: dict, marks: Marks) -> dict:
    """For a model on this machine: everything, the context as a (first) system message."""
    out = _base(body)
    messages = [{k: v for k, v in m.items() if k != "private"} for m in body["messages"]]
    if marks.context:
        note = CONTEXT_HEADER + "\n\n".join(marks.context)
        if messages and messages[0].get("role") in ("system", "developer") and isinstance(
                messages[0].get("content"), str):
            messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + note}
        else:
            messages.insert(0, {"role": "system", "content": note})
    out["messages"] = messages
    return out


def _map_descriptions(obj: Any, fn: Callable[[str], str]) -> Any:
    """Tool definitions: descriptions are prose and may repeat private facts; names and
    types are structure and stay as they are."""
    if isinstance(obj, dict):
        return {k: fn(v) if k == "description" and isinstance(v, str)
                else _map_descriptions(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_descriptions(v, fn) for v in obj]
    return obj


def remote_body(body: dict, marks: Marks, fn: Callable[[str], str]) -> dict:
    """For a remote model: no context, no private messages, every other text mapped."""
    out = _base(body)
    out["messages"] = [_map_message(m, fn) for i, m in enumerate(body["messages"])
                       if i not in marks.private_messages]
    if body.get("tools"):
        out["tools"] = _map_descriptions(body["tools"], fn)
    return out


def has_user_text(body: dict) -> bool:
    return any(m.get("role") == "user" and content_text(m.get("content")).strip()
               for m in body.get("messages") or [])
