"""The LiteLLM SDK as a client of the gateway (``model="openai/<name>"`` with
``api_base``), as people run it: a plain completion, a stream, and a tool call."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def litellm():
    # Without it, importing litellm fetches its model cost map over the network.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

    litellm.telemetry = False
    return litellm


def _args(gateway, model: str) -> dict:
    return {"model": f"openai/{model}", "api_base": gateway.url + "/v1", "api_key": "unused",
            "temperature": 0, "num_retries": 0, "timeout": 120}


@pytest.mark.parametrize("model", ["local", "cloud", "tandem"])
def test_completion(litellm, gateway, model):
    resp = litellm.completion(messages=[{"role": "user", "content": "Say hello."}],
                              max_tokens=10, **_args(gateway, model))
    assert resp.choices[0].message.content.strip()
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0


def test_completion_reports_cached_tokens(litellm, gateway):
    messages = [{"role": "system", "content": "litellm-cache-probe: answer briefly."},
                {"role": "user", "content": "Hi."}]
    for _ in range(2):
        resp = litellm.completion(messages=messages, max_tokens=3, **_args(gateway, "local"))
    assert resp.usage.prompt_tokens_details.cached_tokens == resp.usage.prompt_tokens - 1


@pytest.mark.parametrize("model", ["local", "cloud"])
def test_stream(litellm, gateway, model):
    messages = [{"role": "user", "content": "Count from one to five."}]
    chunks = list(litellm.completion(messages=messages, max_tokens=16, stream=True,
                                     stream_options={"include_usage": True},
                                     **_args(gateway, model)))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2 and text.strip()
    whole = litellm.stream_chunk_builder(chunks, messages=messages)
    assert whole.choices[0].message.content == text
    assert whole.choices[0].finish_reason in ("stop", "length")


def test_tool_call(litellm, gateway):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    resp = litellm.completion(messages=[{"role": "user", "content": "What is the weather in paris?"}],
                              tools=tools, max_tokens=60, **_args(gateway, "local"))
    call = resp.choices[0].message.tool_calls[0]
    assert resp.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "paris"}
