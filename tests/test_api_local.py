"""The local path end to end: official openai SDK → gateway → Qwen2.5-Coder-0.5B in llama.cpp."""

from __future__ import annotations

import json

import httpx

PROMPT = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]


def test_non_streaming_answer_headers_and_usage(client):
    raw = client.chat.completions.with_raw_response.create(
        model="local", messages=PROMPT, max_tokens=12, temperature=0
    )
    resp = raw.parse()
    assert raw.headers["x-tandem-route"] == "local"
    assert "explicit model" in raw.headers["x-tandem-reason"]
    assert len(raw.headers["x-request-id"]) >= 16
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    assert resp.model == "local"
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert "1" in choice.message.content
    assert choice.finish_reason == "length"
    assert resp.usage.completion_tokens == 12
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 12


def test_tandem_name_uses_default_and_alias(client):
    raw = client.chat.completions.with_raw_response.create(
        model="tandem", messages=PROMPT, max_tokens=3, temperature=0)
    assert raw.headers["x-tandem-route"] == "local"
    assert raw.headers["x-tandem-reason"] == "default 'local'"
    raw = client.chat.completions.with_raw_response.create(
        model="fast", messages=PROMPT, max_tokens=3, temperature=0)
    assert raw.headers["x-tandem-route"] == "local"
    assert "alias 'fast'" in raw.headers["x-tandem-reason"]


def test_streaming_matches_non_streaming_greedy(client):
    whole = client.chat.completions.create(
        model="local", messages=PROMPT, max_tokens=20, temperature=0, seed=1)
    stream = client.chat.completions.create(
        model="local", messages=PROMPT, max_tokens=20, temperature=0, seed=1, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)


def test_stream_include_usage_final_chunk(client):
    stream = client.chat.completions.create(
        model="local", messages=PROMPT, max_completion_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == 8
    assert last.usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_stop_sequence_cuts_and_is_not_returned(client):
    resp = client.chat.completions.create(
        model="local", messages=PROMPT, max_tokens=60, temperature=0, stop=["5"])
    content = resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    assert "5" not in content and "4" in content


def test_stop_sequence_in_stream_never_leaks_partial_match(client):
    stream = client.chat.completions.create(
        model="local", messages=PROMPT, max_tokens=60, temperature=0, stop=[", 6"],
        stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.rstrip().endswith("5") and "6" not in text


def test_n_choices_and_seed_reproducible(client):
    kwargs = dict(model="local", messages=[{"role": "user", "content": "Name a colour."}],
                  max_tokens=8, temperature=1.0, seed=1234, n=2)
    a = client.chat.completions.create(**kwargs)
    b = client.chat.completions.create(**kwargs)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_logprobs_and_top_logprobs(client):
    resp = client.chat.completions.create(
        model="local", messages=PROMPT, max_tokens=5, temperature=0, logprobs=True,
        top_logprobs=3)
    entries = resp.choices[0].logprobs.content
    assert len(entries) == 5
    for e in entries:
        assert e.logprob <= 0
        assert len(e.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert e.top_logprobs[0].token == e.token
        assert abs(e.top_logprobs[0].logprob - e.logprob) < 1e-5
    assert "".join(e.token for e in entries) == resp.choices[0].message.content


def test_json_object_response_format(client):
    resp = client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "Describe a cat as JSON."}],
        max_tokens=60, temperature=0, response_format={"type": "json_object"})
    assert isinstance(json.loads(resp.choices[0].message.content), dict)


def test_json_schema_response_format(client):
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "legs": {"type": "integer"}},
              "required": ["name", "legs"], "additionalProperties": False}
    resp = client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "A spider, as JSON."}],
        max_tokens=60, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "animal",
                                                                "schema": schema}})
    data = json.loads(resp.choices[0].message.content)
    assert set(data) == {"name", "legs"} and isinstance(data["legs"], int)


def test_all_message_roles_and_content_parts(client):
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "developer", "content": "Use English."},
        {"role": "user", "content": [{"type": "text", "text": "What is 2+2? "},
                                     {"type": "text", "text": "Digits only."}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "calc", "arguments": "{\"expr\": \"2+2\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
        {"role": "user", "content": "So the answer is?"},
    ]
    resp = client.chat.completions.create(model="local", messages=messages, max_tokens=10,
                                          temperature=0)
    assert "4" in resp.choices[0].message.content


def test_local_tools_parse_into_tool_calls(client):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    resp = client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=tools, max_tokens=80, temperature=0)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"].lower() == "paris"


def test_local_tool_choice_required_is_a_clear_400(gateway):
    r = httpx.post(gateway.url + "/v1/chat/completions", json={
        "model": "local", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tool_choice"

