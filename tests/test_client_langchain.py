"""LangChain's ``ChatOpenAI`` pointed at the gateway, as people run it: invoke, stream,
and ``bind_tools`` with the call coming back parsed into ``AIMessage.tool_calls``.

The local 0.5B model calls the tool deterministically at temperature 0 for this prompt
(``tool_choice`` auto: a forced choice is a 400 locally); the cloud (llama.cpp's server)
is forced to the function by name, the way ``bind_tools(tool_choice=...)`` sends it.
"""

from __future__ import annotations

import uuid

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI


@tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"sunny in {city}"


QUESTION = "What is the weather in paris?"  # lowercase: a capitalised place stays local


def _chat(gateway, model: str, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=gateway.url + "/v1", api_key="unused",
                      temperature=0, max_retries=0, timeout=120, **kwargs)


@pytest.mark.parametrize("model", ["local", "cloud", "tandem"])
def test_invoke(gateway, model):
    msg = _chat(gateway, model, max_tokens=12).invoke("Say hello in one word.")
    assert isinstance(msg.content, str) and msg.content.strip()
    # ``model`` names the model that answered: tandem's default here is local
    assert msg.response_metadata["model_name"] == ("local" if model == "tandem" else model)
    assert msg.usage_metadata["input_tokens"] > 0 and msg.usage_metadata["output_tokens"] > 0


def test_invoke_reports_cached_tokens(gateway):
    """The local prefix cache reaches LangChain as ``input_token_details.cache_read``."""
    chat = _chat(gateway, "local", max_tokens=4)
    messages = [SystemMessage(f"{uuid.uuid4().hex} tags this chat."), HumanMessage("Hi.")]
    first, second = chat.invoke(messages), chat.invoke(messages)
    assert first.usage_metadata["input_token_details"]["cache_read"] < 10
    assert (second.usage_metadata["input_token_details"]["cache_read"]
            == second.usage_metadata["input_tokens"] - 1)


@pytest.mark.parametrize("model", ["local", "cloud"])
def test_stream(gateway, model):
    chat = _chat(gateway, model, max_tokens=16, stream_usage=True)
    chunks = list(chat.stream("Count from one to five."))
    assert len(chunks) > 2 and all(isinstance(c, AIMessageChunk) for c in chunks)
    whole = chunks[0]
    for c in chunks[1:]:
        whole += c
    assert whole.content.strip()
    assert whole.response_metadata["finish_reason"] in ("stop", "length")
    if model == "local":  # llama.cpp's server sends no usage chunk, the gateway does
        assert whole.usage_metadata["output_tokens"] > 0


@pytest.mark.parametrize("model,choice", [("local", None), ("tandem", None),
                                          ("cloud", "get_weather")])
def test_bind_tools_call_comes_back_parsed(gateway, model, choice):
    chat = _chat(gateway, model, max_tokens=60).bind_tools([get_weather], tool_choice=choice)
    msg = chat.invoke(QUESTION)
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"city": "paris"})]
    assert msg.tool_calls[0]["id"]
    assert get_weather.invoke(msg.tool_calls[0]).content == "sunny in paris"


@pytest.mark.parametrize("model,choice", [("local", None), ("cloud", "get_weather")])
def test_bind_tools_streamed_call_merges_into_one(gateway, model, choice):
    chat = _chat(gateway, model, max_tokens=60).bind_tools([get_weather], tool_choice=choice)
    whole = None
    for chunk in chat.stream(QUESTION):
        whole = chunk if whole is None else whole + chunk
    assert [(c["name"], c["args"]) for c in whole.tool_calls] == [("get_weather",
                                                                   {"city": "paris"})]
    assert whole.response_metadata["finish_reason"] == "tool_calls"
