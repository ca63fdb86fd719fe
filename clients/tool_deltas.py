"""Streamed tool-call deltas from an upstream, made to read as OpenAI's.

OpenAI sends a call's ``id``, ``type`` and ``function.name`` once, in the first delta
of that call, and then only ``index`` and ``function.arguments`` fragments; clients
concatenate every string they receive (the openai SDK's stream helpers, LangChain's
chunk merging). Some servers repeat the id and name in every delta (llama.cpp's
Python server does), which those clients turn into ``"get_weatherget_weather…"``.
A repeat equal to what this call already carried is dropped; nothing else changes.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

_ONCE = ("id", "type")


class ToolCallDeltas:
    """The state of one stream: what each (choice, call index) has already carried."""

    def __init__(self) -> None:
        self._seen: dict[tuple[Any, ...], Any] = {}

    def _repeat(self, key: tuple[Any, ...], value: Any) -> bool:
        """True when ``value`` was already sent under ``key`` (then it is dropped)."""
        if value is None or value == "":
            return False
        if self._seen.get(key) == value:
            return True
        self._seen.setdefault(key, value)
        return False

    def clean(self, chunk: dict) -> dict:
        """``chunk`` with repeated call ids, types and names removed (in place)."""
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            c = choice.get("index", 0)
            for call in delta.get("tool_calls") or ():
                if not isinstance(call, dict):
                    continue
                k = call.get("index", 0)
                for field in _ONCE:
                    if self._repeat((c, k, field), call.get(field)):
                        del call[field]
                fn = call.get("function")
                if isinstance(fn, dict) and self._repeat((c, k, "name"), fn.get("name")):
                    del fn["name"]
            legacy = delta.get("function_call")  # the deprecated single-function form
            if isinstance(legacy, dict) and self._repeat((c, "function_call"), legacy.get("name")):
                del legacy["name"]
        return chunk


async def without_repeats(chunks: AsyncIterator[dict]) -> AsyncIterator[dict]:
    """``chunks`` cleaned by one ``ToolCallDeltas``; closing this closes ``chunks``."""
    state = ToolCallDeltas()
    try:
        async for chunk in chunks:
            yield state.clean(chunk)
    finally:
        await chunks.aclose()
