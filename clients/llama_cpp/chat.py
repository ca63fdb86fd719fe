"""``/v1/chat/completions`` shapes for an in-process llama.cpp model: the engine's
events (``LlamaCppClient._run``) turned into an OpenAI completion or its chunks.

Usage carries ``prompt_tokens_details.cached_tokens``: the prompt tokens whose KV came
from the prefix cache (a multi-turn chat re-sends its history), as OpenAI and vLLM
report them.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator

from clients.base import ChatBody
from clients.llama_cpp.tools import StreamSplitter, ToolPlan

if TYPE_CHECKING:
    from clients.llama_cpp.client import LlamaCppClient


def usage(prompt: int, completion: int, cached: int = 0) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


async def chat(client: "LlamaCppClient", body: ChatBody) -> dict:
    n = body.get("n") or 1
    texts: list[list[str]] = [[] for _ in range(n)]
    logprobs: list[list[dict]] = [[] for _ in range(n)]
    finish: list[str | None] = [None] * n
    totals = usage(0, 0)
    plan: ToolPlan | None = None
    async for event in client._run(body):
        kind = event[0]
        if kind == "delta":
            _, i, delta = event
            texts[i].append(delta.text)
            logprobs[i].extend(delta.logprobs)
        elif kind == "finish":
            finish[event[1]] = event[2]
        elif kind == "usage":
            totals = usage(*event[1:])
        elif kind == "tools":
            plan = event[1]
    choices = []
    for i in range(n):
        text = "".join(texts[i])
        message: dict[str, Any] = {"role": "assistant", "content": text}
        reason = finish[i]
        if plan is not None:
            content, calls = plan.split(text)
            if calls:
                message = {"role": "assistant", "content": content, "tool_calls": calls}
                reason = "tool_calls"
        choices.append({
            "index": i,
            "message": message,
            "logprobs": {"content": logprobs[i]} if body.get("logprobs") else None,
            "finish_reason": reason,
        })
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": client.name,
        "choices": choices,
        "usage": totals,
    }


async def chat_stream(client: "LlamaCppClient", body: ChatBody) -> AsyncIterator[dict]:
    """Chunks as OpenAI streams them. With tools on, content goes out as it comes until
    a call may begin; each call is then one chunk carrying ``index``, ``id``, ``type``
    and the whole ``function`` (name and arguments), and the last chunk of the choice
    has ``finish_reason: "tool_calls"``."""
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    want_lp = bool(body.get("logprobs"))
    splitters: dict[int, StreamSplitter] = {}
    pending_lp: dict[int, list[dict]] = {}  # logprobs of text a splitter still holds
    plan: ToolPlan | None = None
    began: set[int] = set()

    def chunk(index: int, delta: dict, finish: str | None = None, lp=None) -> dict:
        return {
            "id": cid, "object": "chat.completion.chunk", "created": created,
            "model": client.name,
            "choices": [{"index": index, "delta": delta,
                         "logprobs": {"content": lp} if want_lp and lp is not None else None,
                         "finish_reason": finish}],
        }

    def opener(i: int) -> list[dict]:
        if i in began:
            return []
        began.add(i)
        return [chunk(i, {"role": "assistant", "content": ""})]

    async for event in client._run(body):
        kind = event[0]
        if kind == "tools":
            plan = event[1]
        elif kind == "delta":
            _, i, delta = event
            for c in opener(i):
                yield c
            if plan is None:
                yield chunk(i, {"content": delta.text}, lp=delta.logprobs)
                continue
            lps = pending_lp.setdefault(i, [])
            lps.extend(delta.logprobs)
            text = splitters.setdefault(i, StreamSplitter(plan)).push(delta.text)
            if text:
                yield chunk(i, {"content": text}, lp=lps)
                pending_lp[i] = []
        elif kind == "finish":
            _, i, reason, _ = event
            for c in opener(i):
                yield c
            if plan is not None:
                content, calls = (splitters[i].finish() if i in splitters else (None, []))
                lps = pending_lp.pop(i, [])
                if content:
                    yield chunk(i, {"content": content}, lp=lps)
                    lps = []
                for k, call in enumerate(calls):
                    yield chunk(i, {"tool_calls": [{"index": k, **call}]}, lp=lps or None)
                    lps = []
                if calls:
                    reason = "tool_calls"
            yield chunk(i, {}, reason)
        elif kind == "usage":
            yield {
                "id": cid, "object": "chat.completion.chunk", "created": created,
                "model": client.name, "choices": [], "usage": usage(*event[1:]),
            }
