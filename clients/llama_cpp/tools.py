"""Tool calling on a local model: what a request's ``tools`` turn on, and the answer
split back into content and OpenAI ``tool_calls``, whole or while it streams.

The model writes calls as text (Hermes ``<tool_call>`` blocks, or a bare call object:
clients/llama_cpp/prompt.py parses both), so a stream cannot show a call before its
text is complete. What is surely content is sent as it comes; from where a call may
begin the text is held and parsed when the answer ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clients.errors import InvalidRequest
from clients.llama_cpp.prompt import TOOL_CALL_OPEN, parse_tool_calls

TOOL_CALL_CLOSE = "</tool_call>"
# An answer opening with one of these may be a bare call object (possibly fenced).
_JSON_OPENERS = ("{", "[", "`")


@dataclass(frozen=True)
class ToolPlan:
    """The tools a request offers, and whether it allows more than one call."""

    names: frozenset[str]
    single: bool  # parallel_tool_calls: false

    def split(self, text: str) -> tuple[str | None, list[dict]]:
        """(content, tool_calls) of a whole answer; at most one call when ``single``."""
        content, calls = parse_tool_calls(text, set(self.names))
        return content, calls[:1] if self.single else calls

    def stops(self) -> list[str]:
        """Extra stop strings: with one call allowed, the first closing tag ends the
        answer (the parser accepts a call without it), so no tokens go to calls that
        would be dropped."""
        return [TOOL_CALL_CLOSE] if self.single else []


def tool_plan(body: dict[str, Any], model: str, template_ok: bool) -> ToolPlan | None:
    """The request's tool plan, None when tools are off (none given, or ``tool_choice:
    none``); a clear 400 for what a local model cannot do."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    if not template_ok:
        raise InvalidRequest(f"model '{model}' has no tool-calling chat template; "
                             "send tools to a cloud model", param="tools")
    if choice not in (None, "auto"):
        raise InvalidRequest(f"tool_choice {choice!r} is not supported by local model "
                             f"'{model}' (only 'auto' and 'none')", param="tool_choice")
    return ToolPlan(frozenset(t["function"]["name"] for t in tools),
                    single=body.get("parallel_tool_calls") is False)


def _partial_open(text: str) -> int:
    """Length of the longest suffix of ``text`` that begins ``<tool_call>``."""
    for k in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if text.endswith(TOOL_CALL_OPEN[:k]):
            return k
    return 0


class StreamSplitter:
    """One choice of a streamed answer with tools on: ``push`` returns the text that is
    surely content, ``finish`` the rest as (content, tool_calls). The content sent in
    total equals what ``ToolPlan.split`` gives for the whole answer, except that leading
    whitespace is kept."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.held = ""
        self.holding = False  # from here on everything waits for ``finish``
        self.begun = False  # a non-blank character has arrived

    def push(self, text: str) -> str:
        self.held += text
        if self.holding:
            return ""
        if not self.begun:
            head = self.held.lstrip()
            if not head:
                return ""
            self.begun = True
            if head.startswith(_JSON_OPENERS):
                self.holding = True
                return ""
        at = self.held.find(TOOL_CALL_OPEN)
        if at >= 0:
            self.holding = True
        else:
            at = len(self.held) - _partial_open(self.held)
        # Whitespace before a call is not content (the whole-answer parse strips it).
        at = len(self.held[:at].rstrip())
        out, self.held = self.held[:at], self.held[at:]
        return out

    def finish(self) -> tuple[str | None, list[dict]]:
        """What is still to send: (content or None, tool_calls)."""
        held, self.held = self.held, ""
        content, calls = self.plan.split(held)
        if calls:
            return content, calls
        return held or None, []
