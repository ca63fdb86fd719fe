"""Chat details agents rely on, on every route (local, cloud, tandem): streamed tool
calls as the openai SDK's async client reads them, ``parallel_tool_calls``, cached
prompt tokens from the local prefix cache, and vendor fields that reach a cloud model
unchanged.

The "edge" gateway has one remote model, ``cloud``, whose upstream is the session
gateway's ``local`` model (a real OpenAI-compatible server that reports cached tokens)
behind a recording proxy, so the test sees the exact bytes sent upstream. Prompts are
lowercase: capitalised place names would be private spans, kept on the device.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from clients.llama_cpp.tools import StreamSplitter, ToolPlan, tool_plan
from clients.errors import InvalidRequest
from clients.tool_deltas import ToolCallDeltas
from tests.support.recording_upstream import RecordingUpstream
from tests.support.servers import start_gateway

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
WEATHER = [{"role": "user", "content": "What is the weather in paris?"}]
FORCED = {"type": "function", "function": {"name": "get_weather"}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "%s"}}\n</tool_call>'


# -- pure pieces ---------------------------------------------------------------------------
def _stream(plan: ToolPlan, pieces: list[str]) -> tuple[str, list[dict]]:
    splitter = StreamSplitter(plan)
    sent = "".join(splitter.push(p) for p in pieces)
    rest, calls = splitter.finish()
    return sent + (rest or ""), calls


def test_splitter_streams_content_then_holds_the_call():
    plan = ToolPlan(frozenset({"get_weather"}), single=False)
    text = "Let me look that up.\n" + CALL % "paris"
    splitter = StreamSplitter(plan)
    early = [splitter.push(p) for p in ["Let me", " look that up.", "\n<tool", "_call>\n{"]]
    assert early == ["Let me", " look that up.", "", ""]  # nothing of the tag leaks
    sent, calls = _stream(plan, [text[i:i + 3] for i in range(0, len(text), 3)])
    assert sent == plan.split(text)[0] == "Let me look that up."
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "paris"}]


def test_splitter_holds_bare_json_and_gives_back_plain_text():
    plan = ToolPlan(frozenset({"get_weather"}), single=False)
    bare = '{"name": "get_weather", "arguments": {"city": "rome"}}'
    splitter = StreamSplitter(plan)
    assert [splitter.push(p) for p in ["  ", bare[:9], bare[9:]]] == ["", "", ""]
    content, calls = splitter.finish()
    assert content is None and calls[0]["function"]["name"] == "get_weather"
    # Not a call after all: every character comes back, in order, once.
    for text in ["a <tool_call> that is not json", "{not json}", "x < y, and <tool"]:
        assert _stream(plan, list(text)) == (text, [])


def test_parallel_tool_calls_false_keeps_one_call():
    text = CALL % "paris" + "\n" + CALL % "rome"
    body = {"tools": TOOLS, "messages": WEATHER}
    many = tool_plan(body, "local", template_ok=True)
    one = tool_plan({**body, "parallel_tool_calls": False}, "local", template_ok=True)
    assert len(many.split(text)[1]) == 2 and many.stops() == []
    assert [c["function"]["arguments"] for c in one.split(text)[1]] == ['{"city": "paris"}']
    assert one.stops() == ["</tool_call>"]  # generation ends after the first call
    assert len(_stream(one, [text])[1]) == 1
    assert tool_plan({**body, "tool_choice": "none"}, "local", template_ok=True) is None
    with pytest.raises(InvalidRequest):
        tool_plan({**body, "tool_choice": "required"}, "local", template_ok=True)


def test_repeated_ids_and_names_are_sent_once():
    """llama.cpp's Python server repeats id and name in every delta; the SDK's stream
    state concatenates strings, so uncleaned the name reads 'get_weatherget_weather'."""
    def chunk(args: str) -> dict:
        return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
                    {"index": 0, "id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": args}}]}}]}

    pieces = ['{"city": ', '"paris"', "}"]
    state, clean = ChatCompletionStreamState(), ToolCallDeltas()
    for p in pieces:
        state.handle_chunk(ChatCompletionChunk.model_validate(clean.clean(chunk(p))))
    call = state.current_completion_snapshot.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name) == ("call_1", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "paris"}


# -- the edge gateway ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorder(gateway):
    upstream = RecordingUpstream(gateway.url).start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def edge(recorder, tmp_path_factory):
    config = {"models": {"cloud": {"backend": "openai", "base_url": recorder.url,
                                   "model": "local", "max_retries": 0}},
              "routing": {"default": "cloud"}}
    server = start_gateway(config, tmp_path_factory.mktemp("edge"), name="edge")
    yield server
    server.stop()


def _async(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                              timeout=120)


# -- streamed tool calls -------------------------------------------------------------------
@pytest.mark.parametrize("model,choice", [("local", None), ("tandem", None),
                                          ("cloud", FORCED)])
def test_streamed_tool_calls_read_by_the_async_sdk(gateway, model, choice):
    """Raw chunks carry index, id, type and the function; the SDK's stream helper
    assembles one call with its parsed arguments; the last choice chunk says so."""
    extra = {"tool_choice": choice} if choice else {}

    async def run():
        client = _async(gateway.url)
        raw = await client.chat.completions.create(
            model=model, messages=WEATHER, tools=TOOLS, temperature=0, max_tokens=60,
            stream=True, **extra)
        chunks = [c async for c in raw]
        async with client.chat.completions.stream(
                model=model, messages=WEATHER, tools=TOOLS, temperature=0, max_tokens=60,
                **extra) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_completion()
        await client.close()
        return chunks, kinds, final

    chunks, kinds, final = asyncio.run(run())
    deltas = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert deltas and all(t.index == 0 for t in deltas)
    named = [t for t in deltas if t.function and t.function.name]
    assert len(named) == 1 and named[0].function.name == "get_weather"
    assert named[0].id and named[0].type == "function"
    assert json.loads("".join(t.function.arguments or "" for t in deltas)) == {"city": "paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert "tool_calls.function.arguments.done" in kinds
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in message.tool_calls] == ["get_weather"]
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "paris"}


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls_false_locally(client, stream):
    kwargs = dict(model="local", messages=WEATHER, tools=TOOLS, temperature=0,
                  max_tokens=80, parallel_tool_calls=False)
    if not stream:
        message = client.chat.completions.create(**kwargs).choices[0].message
        calls = message.tool_calls
    else:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"


# -- cached prompt tokens ------------------------------------------------------------------
def _cached_twice(base_url: str, model: str, stream: bool) -> list[tuple[int, int]]:
    """(prompt_tokens, cached_tokens) of the same fresh prompt sent twice."""
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0,
                           timeout=120)
    messages = [{"role": "system", "content": f"{uuid.uuid4().hex} is this chat's tag."},
                {"role": "user", "content": "Say hi."}]
    out = []
    for _ in range(2):
        if stream:
            chunks = list(client.chat.completions.create(
                model=model, messages=messages, max_tokens=4, temperature=0, stream=True,
                stream_options={"include_usage": True}))
            usage = chunks[-1].usage
        else:
            usage = client.chat.completions.create(model=model, messages=messages,
                                                   max_tokens=4, temperature=0).usage
        out.append((usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens))
    return out


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["local", "tandem"])
def test_cached_tokens_from_the_prefix_cache(gateway, model, stream):
    (p1, c1), (p2, c2) = _cached_twice(gateway.url, model, stream)
    assert p1 == p2 and c1 < p1 // 2  # a fresh system prompt: almost nothing cached
    assert c2 == p2 - 1  # all but the last prompt token, which must run for logits


def test_cached_tokens_grow_over_a_conversation(client):
    messages = [{"role": "system", "content": f"{uuid.uuid4().hex} tags this chat."},
                {"role": "user", "content": "Name a color."}]
    first = client.chat.completions.create(model="local", messages=messages, max_tokens=6,
                                           temperature=0)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And another one?"}]
    second = client.chat.completions.create(model="local", messages=messages, max_tokens=6,
                                            temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["cloud", "tandem"])
def test_cached_tokens_pass_through_from_the_upstream(edge, model, stream):
    (p1, c1), (p2, c2) = _cached_twice(edge.url, model, stream)
    assert c1 < p1 // 2 and c2 == p2 - 1  # the upstream's own counts, unchanged


# -- vendor fields -------------------------------------------------------------------------
VENDOR = {"reasoning_effort": "low", "verbosity": "low", "service_tier": "auto",
          "metadata": {"team": "docs"}, "store": False, "user": "user-7", "seed": 11,
          "prediction": {"type": "content", "content": "hello there"},
          "parallel_tool_calls": False}
EXTRA = {"top_k": 5, "chat_template_kwargs": {"enable_thinking": False}}


@pytest.mark.parametrize("model", ["cloud", "tandem"])
def test_vendor_fields_reach_the_cloud_unchanged(edge, recorder, model):
    client = openai.OpenAI(base_url=edge.url + "/v1", api_key="unused", max_retries=0,
                           timeout=120)
    before = len(recorder.chat_bodies())
    resp = client.chat.completions.create(
        model=model, messages=WEATHER, tools=TOOLS, max_tokens=40, temperature=0,
        extra_body=EXTRA, **VENDOR)
    assert resp.choices[0].message.tool_calls  # the upstream (local) ignored what it cannot use
    sent = [json.loads(b) for b in recorder.chat_bodies()[before:]]
    assert len(sent) == 1
    for key, value in {**VENDOR, **EXTRA}.items():
        assert sent[0][key] == value, key
    assert sent[0]["model"] == "local" and sent[0]["tools"] == TOOLS


def test_local_models_ignore_vendor_fields(client):
    resp = client.chat.completions.create(model="local", messages=[
        {"role": "user", "content": "Say OK."}], max_tokens=4, temperature=0,
        extra_body=EXTRA, **VENDOR)
    assert resp.choices[0].message.content
