"""Chat Completions results as Responses API objects, whole or as typed SSE events.

One ``ResponseBuilder`` per request: it holds the response envelope (what the caller
asked for, echoed as OpenAI does), turns a chat completion into the finished response,
and turns a stream of chat chunks into ``response.*`` events with sequence numbers,
ending in exactly one terminal event (completed, incomplete or failed).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from server.responses_schema import ResponsesRequest

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage(chat_usage: dict | None) -> dict | None:
    """Chat usage in Responses terms (cached prompt tokens kept)."""
    if not chat_usage:
        return None
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    completion = int(chat_usage.get("completion_tokens") or 0)
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": int(cached)},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": int(reasoning)},
            "total_tokens": int(chat_usage.get("total_tokens") or prompt + completion)}


def _logprobs(chat_logprobs: list[dict] | None) -> list[dict]:
    return [{"token": t.get("token", ""), "logprob": t.get("logprob", 0.0),
             "bytes": t.get("bytes"),
             "top_logprobs": [{"token": a.get("token"), "logprob": a.get("logprob"),
                               "bytes": a.get("bytes")}
                              for a in t.get("top_logprobs") or []]}
            for t in chat_logprobs or []]


def _text_part(text: str, logprobs: list[dict]) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def _message_item(item_id: str, text: str, logprobs: list[dict], status: str) -> dict:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [_text_part(text, logprobs)]}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def assistant_message(output: list[dict]) -> dict:
    """The output items as the assistant turn of a chat conversation (what a later
    ``previous_response_id`` continues from)."""
    text = "".join(p["text"] for item in output if item["type"] == "message"
                   for p in item["content"])
    calls = [{"id": i["call_id"], "type": "function",
              "function": {"name": i["name"], "arguments": i["arguments"]}}
             for i in output if i["type"] == "function_call"]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def _event(kind: str, payload: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class ResponseBuilder:
    """The response to one request, built from chat output."""

    def __init__(self, req: ResponsesRequest, chat: dict, response_id: str, store: bool,
                 logprobs: bool) -> None:
        fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if (
            req.text and req.text.format) else {"type": "text"}
        self.want_logprobs = logprobs
        self.response: dict[str, Any] = {
            "id": response_id, "object": "response", "created_at": int(time.time()),
            "status": "in_progress", "error": None, "incomplete_details": None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "model": req.model, "output": [],
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": req.previous_response_id,
            "reasoning": {"effort": req.reasoning.effort if req.reasoning else None,
                          "summary": None},
            "store": store, "temperature": req.temperature, "text": {"format": fmt},
            "tool_choice": chat.get("tool_choice", "auto"), "tools": req.tools or [],
            "top_p": req.top_p, "truncation": req.truncation or "disabled", "usage": None,
            "user": req.user, "metadata": req.metadata or {},
        }
        # streaming state
        self.seq = 0
        self.text_item: dict | None = None
        self.text: list[str] = []
        self.text_logprobs: list[dict] = []
        self.calls: dict[int, dict] = {}  # chat tool-call index -> open function_call item
        self._at: dict[str, int] = {}  # item id -> its output index
        self.finish: str | None = None

    # -- whole ---------------------------------------------------------------------
    def finished(self, result: dict) -> dict:
        """The response for a whole chat completion."""
        choice = (result.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        output: list[dict] = []
        if message.get("content"):
            lp = _logprobs((choice.get("logprobs") or {}).get("content")) if self.want_logprobs else []
            output.append(_message_item(new_id("msg"), message["content"], lp, "completed"))
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            output.append(_call_item(new_id("fc"), call.get("id") or new_id("call"),
                                     fn.get("name", ""), fn.get("arguments", ""), "completed"))
        self.response["model"] = result.get("model", self.response["model"])
        self._close(output, choice.get("finish_reason"), usage(result.get("usage")))
        return self.response

    def _close(self, output: list[dict], finish: str | None, used: dict | None) -> None:
        r = self.response
        r["output"], r["usage"] = output, used
        reason = _INCOMPLETE.get(finish or "")
        r["status"] = "incomplete" if reason else "completed"
        r["incomplete_details"] = {"reason": reason} if reason else None
        if reason:
            for item in output:
                if item["type"] == "message":
                    item["status"] = "incomplete"

    # -- streamed ------------------------------------------------------------------
    def _emit(self, kind: str, **payload: Any) -> bytes:
        out = _event(kind, {"type": kind, "sequence_number": self.seq, **payload})
        self.seq += 1
        return out

    def opening(self) -> list[bytes]:
        return [self._emit("response.created", response=self.response),
                self._emit("response.in_progress", response=self.response)]

    def chunk(self, chunk: dict) -> list[bytes]:
        """The events for one chat chunk (none for an empty role opener)."""
        out: list[bytes] = []
        if chunk.get("model"):
            self.response["model"] = chunk["model"]
        if chunk.get("usage"):
            self.response["usage"] = usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text_delta(delta["content"], choice.get("logprobs"))
            for call in delta.get("tool_calls") or []:
                out += self._call_delta(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _text_delta(self, text: str, chat_lp: dict | None) -> list[bytes]:
        out: list[bytes] = []
        if self.text_item is None:
            self.text_item = {**_message_item(new_id("msg"), "", [], "in_progress"),
                              "content": []}
            index = self._add(self.text_item)
            out.append(self._emit("response.output_item.added", output_index=index,
                                  item=self.text_item))
            out.append(self._emit("response.content_part.added", item_id=self.text_item["id"],
                                  output_index=index, content_index=0,
                                  part=_text_part("", [])))
        lp = _logprobs((chat_lp or {}).get("content")) if self.want_logprobs else []
        self.text.append(text)
        self.text_logprobs += lp
        out.append(self._emit("response.output_text.delta", item_id=self.text_item["id"],
                              output_index=self._index(self.text_item), content_index=0,
                              delta=text, logprobs=lp))
        return out

    def _call_delta(self, call: dict) -> list[bytes]:
        out: list[bytes] = []
        index = call.get("index", 0)
        fn = call.get("function") or {}
        item = self.calls.get(index)
        if item is None:
            item = _call_item(new_id("fc"), call.get("id") or new_id("call"),
                              fn.get("name") or "", "", "in_progress")
            self.calls[index] = item
            out.append(self._emit("response.output_item.added",
                                  output_index=self._add(item), item=dict(item)))
        elif fn.get("name"):
            item["name"] += fn["name"]
        if fn.get("arguments"):
            item["arguments"] += fn["arguments"]
            out.append(self._emit("response.function_call_arguments.delta",
                                  item_id=item["id"], output_index=self._index(item),
                                  delta=fn["arguments"]))
        return out

    def _add(self, item: dict) -> int:
        """Append an output item; its index (kept: every delta names it)."""
        self.response["output"].append(item)
        self._at[item["id"]] = len(self.response["output"]) - 1
        return self._at[item["id"]]

    def _index(self, item: dict) -> int:
        return self._at[item["id"]]

    def ending(self) -> list[bytes]:
        """Close every open item, then the terminal event."""
        out: list[bytes] = []
        if self.text_item is not None:
            item, index = self.text_item, self._index(self.text_item)
            part = _text_part("".join(self.text), self.text_logprobs)
            item["content"] = [part]
            out.append(self._emit("response.output_text.done", item_id=item["id"],
                                  output_index=index, content_index=0, text=part["text"],
                                  logprobs=part["logprobs"]))
            out.append(self._emit("response.content_part.done", item_id=item["id"],
                                  output_index=index, content_index=0, part=part))
        for item in self.calls.values():
            out.append(self._emit("response.function_call_arguments.done",
                                  item_id=item["id"], output_index=self._index(item),
                                  name=item["name"], arguments=item["arguments"]))
        self._close(self.response["output"], self.finish, self.response["usage"])
        for index, item in enumerate(self.response["output"]):
            if item["status"] == "in_progress":
                item["status"] = "completed"
            out.append(self._emit("response.output_item.done", output_index=index, item=item))
        kind = ("response.incomplete" if self.response["status"] == "incomplete"
                else "response.completed")
        out.append(self._emit(kind, response=self.response))
        return out

    def failure(self, error: dict) -> bytes:
        """The terminal event for a stream whose model failed after it began."""
        self.response["status"] = "failed"
        self.response["error"] = {"code": error.get("code") or error.get("type") or "server_error",
                                  "message": error.get("message") or "the model failed"}
        return self._emit("response.failed", response=self.response)
