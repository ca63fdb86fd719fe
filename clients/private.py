"""Private-context collaboration: composite clients built per request around a privacy plan.

- ``LocalWithContext``: a model on this machine gets everything, the private context
  as a system message.
- ``local_only`` mode: remote models are dropped from the chain; the local one answers.
- ``redact`` (``RedactClient``): the remote model gets the conversation with typed
  placeholders and never the context; the originals are put back here, also inside
  streamed chunks (content and tool-call arguments).
- ``sketch`` (``SketchClient``, CoGenesis): the remote model gets only the placeholder
  instruction and returns a short outline; the local model, which sees the context,
  writes the final answer from instruction + context + outline, and that answer streams.

Every remote call still goes through the egress guard (privacy/guard.py): these clients
decide what to send, the guard checks what is sent.
"""

from __future__ import annotations

import logging
from typing import AsyncIterator, Callable

from clients.base import ChatBody, ChatClient, Readiness
from clients.errors import UpstreamError
from privacy.analysis import Plan
from privacy.guard import EgressBlocked, activate
from privacy.redact import json_escape

log = logging.getLogger("tandem.private")

SKETCH_SYSTEM = ("Write a short outline (at most six bullet points) of a good answer to the "
                 "user's request: structure, key points, tone. Do not write the answer "
                 "itself. Keep placeholders such as <PERSON_1> exactly as written.")
OUTLINE_HEADER = ("An outline for this answer, drafted by a larger model that did not see "
                  "the private context (follow it where it fits; the private context wins "
                  "where they disagree):\n")


class _Wrapper(ChatClient):
    """Delegates lifecycle and capabilities to the wrapped client."""

    privacy_mode = "none"

    def __init__(self, inner: ChatClient, plan: Plan) -> None:
        super().__init__(inner.name)
        self.inner = inner
        self.plan = plan
        self.capabilities = inner.capabilities

    async def readiness(self) -> Readiness:
        return await self.inner.readiness()

    def queue_depth(self) -> int:
        return self.inner.queue_depth()

    def context_window(self) -> int | None:
        return self.inner.context_window()


class LocalWithContext(_Wrapper):
    privacy_mode = "local_only"

    async def chat(self, body: ChatBody) -> dict:
        return await self.inner.chat(self.plan.local(body))

    def chat_stream(self, body: ChatBody) -> AsyncIterator[dict]:
        return self.inner.chat_stream(self.plan.local(body))

    def continuation_body(self, body: ChatBody, partial: str) -> ChatBody | None:
        return self.inner.continuation_body(body, partial)  # chat_stream adds the context


class RedactClient(_Wrapper):
    privacy_mode = "redact"

    async def chat(self, body: ChatBody) -> dict:
        activate(self.plan.state)  # whichever task runs this, the guard sees the request
        result = await self.inner.chat(self.plan.remote(body))
        for choice in result.get("choices") or []:
            msg = choice.get("message") or {}
            if isinstance(msg.get("content"), str):
                msg["content"] = self.plan.restore(msg["content"])
            for call in msg.get("tool_calls") or []:
                fn = call.get("function") or {}
                if isinstance(fn.get("arguments"), str):
                    fn["arguments"] = self.plan.redactor.restore(fn["arguments"], json_escape)
        return result

    async def chat_stream(self, body: ChatBody) -> AsyncIterator[dict]:
        restorers: dict[tuple, object] = {}

        def feed(key: tuple, text: str, flush: bool,
                 escape: Callable[[str], str] | None = None) -> str:
            r = restorers.get(key)
            if r is None:
                r = restorers[key] = self.plan.restorer(escape)
            out = r.feed(text)
            return out + r.flush() if flush else out

        last = None
        activate(self.plan.state)
        async for chunk in self.inner.chat_stream(self.plan.remote(body)):
            for choice in chunk.get("choices") or []:
                i, delta = choice.get("index", 0), choice.get("delta") or {}
                done = choice.get("finish_reason") is not None
                if isinstance(delta.get("content"), str) or (done and (i, "c") in restorers):
                    delta["content"] = feed((i, "c"), delta.get("content") or "", done)
                for call in delta.get("tool_calls") or []:
                    fn = call.get("function") or {}
                    if isinstance(fn.get("arguments"), str):
                        fn["arguments"] = feed((i, "t", call.get("index", 0)), fn["arguments"],
                                               False, json_escape)
                if done:
                    _flush_tools(delta, restorers, i)
                choice["delta"] = delta
            last = chunk
            yield chunk
        tail = "".join(r.flush() for k, r in restorers.items() if k[1] == "c")
        if tail and last is not None:  # the stream ended without a finish_reason
            yield {**last, "choices": [{"index": 0, "delta": {"content": tail},
                                        "finish_reason": None}], "usage": None}


def _flush_tools(delta: dict, restorers: dict, i: int) -> None:
    for key, r in restorers.items():
        if key[0] == i and key[1] == "t":
            rest = r.flush()
            if rest:
                delta.setdefault("tool_calls", []).append(
                    {"index": key[2], "function": {"arguments": rest}})


class SketchClient(_Wrapper):
    """CoGenesis sketch: remote outline of the placeholder instruction, local final answer."""

    privacy_mode = "sketch"

    def __init__(self, inner: ChatClient, plan: Plan, local: ChatClient | None,
                 max_tokens: int = 256) -> None:
        super().__init__(inner, plan)
        self.local = local
        self.max_tokens = max_tokens
        self.capabilities = local.capabilities if local else inner.capabilities

    def _sketch_request(self, body: ChatBody) -> ChatBody:
        remote = self.plan.remote(body)
        keep = ("messages", "temperature", "top_p", "seed")
        out = {k: remote[k] for k in keep if k in remote}
        out["messages"] = [{"role": "system", "content": SKETCH_SYSTEM},
                           *[m for m in remote["messages"] if m.get("role") != "tool"
                             and not m.get("tool_calls")]]
        out["max_tokens"] = self.max_tokens
        return out

    async def _outline(self, body: ChatBody) -> str | None:
        if not self.plan.remote_has_instruction(body):
            return None  # the instruction itself was private: nothing to ask remotely
        activate(self.plan.state)
        try:
            result = await self.inner.chat(self._sketch_request(body))
        except EgressBlocked as err:
            if not err.retryable:
                raise
            log.warning("sketch: outline blocked by the egress guard; local answers alone")
            return None
        except UpstreamError as err:
            log.warning("sketch: outline from %s failed (%s); local answers alone",
                        self.inner.name, err.status)
            return None
        choices = result.get("choices") or [{}]
        text = (choices[0].get("message") or {}).get("content") or ""
        return self.plan.restore(text).strip() or None

    def _final(self, body: ChatBody, outline: str | None) -> ChatBody:
        out = self.plan.local(body)
        if outline:
            msgs = list(out["messages"])
            note = OUTLINE_HEADER + outline
            if msgs and msgs[0].get("role") == "system" and isinstance(msgs[0].get("content"),
                                                                         str):
                msgs[0] = {**msgs[0], "content": msgs[0]["content"] + "\n\n" + note}
            else:
                msgs.insert(0, {"role": "system", "content": note})
            out["messages"] = msgs
        return out

    def _require_local(self) -> ChatClient:
        if self.local is None:
            raise UpstreamError("sketch mode needs a local model (privacy.local_model)",
                                status=503, retryable=False)
        return self.local

    async def chat(self, body: ChatBody) -> dict:
        local = self._require_local()
        return await local.chat(self._final(body, await self._outline(body)))

    async def chat_stream(self, body: ChatBody) -> AsyncIterator[dict]:
        local = self._require_local()
        outline = await self._outline(body)
        async for chunk in local.chat_stream(self._final(body, outline)):
            yield chunk


ModeFactory = Callable[[ChatClient, Plan, "ChatClient | None", int], "ChatClient | None"]
MODES: dict[str, ModeFactory] = {
    # What a remote model in the chain becomes in each mode (None: dropped).
    "local_only": lambda remote, plan, local, n: None,
    "redact": lambda remote, plan, local, n: RedactClient(remote, plan),
    "sketch": lambda remote, plan, local, n: SketchClient(remote, plan, local, n),
}
