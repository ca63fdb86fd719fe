"""POST /v1/responses through the official openai SDK: plain and streamed, on the local
model, the cloud upstream and the fallback chain, with tools, JSON schema, stored
responses continued by ``previous_response_id``, and OpenAI-style errors."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

COUNT = "Count from 1 to 10, separated by commas."
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


@pytest.mark.parametrize("model", ["local", "cloud"])
def test_plain_response_on_each_route(client, model):
    raw = client.responses.with_raw_response.create(
        model=model, input=COUNT, max_output_tokens=12, temperature=0)
    resp = raw.parse()
    assert raw.headers["x-tandem-route"] == model
    assert resp.object == "response" and resp.id.startswith("resp_")
    assert resp.model == model
    assert resp.output[0].type == "message" and resp.output[0].role == "assistant"
    assert "1, 2, 3" in resp.output_text
    assert resp.status == "incomplete"  # 12 tokens do not reach 10
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage.output_tokens == 12
    assert resp.usage.total_tokens == resp.usage.input_tokens + 12


def test_instructions_and_items_input(client):
    question = [{"role": "user", "content": [{"type": "input_text",
                                              "text": "What is the capital of France?"}]}]
    resp = client.responses.create(
        model="local", instructions="Answer with one word.", input=question,
        max_output_tokens=8, temperature=0)
    assert resp.status == "completed"
    assert "Paris" in resp.output_text
    assert resp.instructions == "Answer with one word."
    bare = client.responses.create(model="local", input=question, max_output_tokens=1)
    # the instructions are the system turn (replacing the template's default one)
    assert resp.usage.input_tokens != bare.usage.input_tokens


def test_streamed_events_in_order_and_whole_text(client):
    with client.responses.stream(model="local", input=COUNT, max_output_tokens=60,
                                 temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    assert deltas == done.text == final.output_text
    assert "1, 2, 3" in deltas
    for kind in ("response.output_item.added", "response.content_part.added",
                 "response.content_part.done", "response.output_item.done"):
        assert kind in kinds
    assert final.usage.output_tokens == sum(
        1 for e in events if e.type == "response.output_text.delta") > 0
    cut = list(client.responses.create(model="local", input=COUNT, max_output_tokens=5,
                                       stream=True))
    assert cut[-1].type == "response.incomplete"
    assert cut[-1].response.incomplete_details.reason == "max_output_tokens"


def test_streamed_on_cloud_matches_plain(client):
    plain = client.responses.create(model="cloud", input=COUNT, max_output_tokens=10,
                                    temperature=0)
    stream = client.responses.create(model="cloud", input=COUNT, max_output_tokens=10,
                                     temperature=0, stream=True)
    text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    assert text == plain.output_text


def test_function_call_round_trip_with_previous_response_id(client):
    first = client.responses.create(
        model="local", input="What's the weather in Paris?", tools=[WEATHER],
        temperature=0, max_output_tokens=80)
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert "city" in json.loads(calls[0].arguments)
    assert calls[0].call_id and calls[0].id.startswith("fc_")
    second = client.responses.create(
        model="local", previous_response_id=first.id, temperature=0, max_output_tokens=24,
        tools=[WEATHER],  # tools are not carried over (as at OpenAI): sent again
        input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                "output": '{"temperature_c": 21, "sky": "sunny"}'}])
    assert second.previous_response_id == first.id
    assert second.output_text  # the model answered from the tool's result
    # the history (question, call, result) was sent before the new input
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens


def test_streamed_function_call_events(client):
    stream = client.responses.create(
        model="local", input="What's the weather in Rome?", tools=[WEATHER],
        temperature=0, max_output_tokens=80, stream=True)
    events = list(stream)
    added = [e for e in events if e.type == "response.output_item.added"
             and e.item.type == "function_call"]
    assert len(added) == 1 and added[0].item.name == "get_weather"
    args = "".join(e.delta for e in events
                   if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert args == done.arguments and "city" in json.loads(args)
    final = events[-1].response
    assert events[-1].type == "response.completed"
    assert final.output[-1].type == "function_call" and final.output[-1].status == "completed"


def test_json_schema_text_format(client):
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}},
              "required": ["answer"], "additionalProperties": False}
    resp = client.responses.create(
        model="local", input="What is 2 + 3? Reply in JSON.", temperature=0,
        max_output_tokens=32,
        text={"format": {"type": "json_schema", "name": "sum", "schema": schema,
                         "strict": True}})
    assert json.loads(resp.output_text) == {"answer": 5}
    assert resp.text.format.type == "json_schema"


def test_store_retrieve_delete_and_no_store(client):
    resp = client.responses.create(model="local", input="Say hi.", max_output_tokens=4)
    got = client.responses.retrieve(resp.id)
    assert got.id == resp.id and got.output_text == resp.output_text
    client.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resp.id)
    unstored = client.responses.create(model="local", input="Say hi.", max_output_tokens=4,
                                       store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model="local", input="And then?",
                                previous_response_id=unstored.id, max_output_tokens=4)
    assert err.value.body["param"] == "previous_response_id"


def test_fallback_applies_to_responses(client, fault):
    fault.script(*[{"kind": "status", "status": 500}] * 3)
    raw = client.responses.with_raw_response.create(model="flaky", input=COUNT,
                                                    max_output_tokens=4)
    assert raw.status_code == 200
    assert raw.headers["x-tandem-route"] == "local"
    assert "fallback after 'flaky' failed (502)" in raw.headers["x-tandem-reason"]
    assert raw.parse().model == "local"


def test_async_client_streams_concurrently(aclient):
    async def one(i: int) -> str:
        stream = await aclient.responses.create(model="local", input=f"Say {i}.",
                                                max_output_tokens=4, stream=True)
        kinds = [e.type async for e in stream]
        return kinds[-1]

    async def run() -> list[str]:
        return await asyncio.gather(*(one(i) for i in range(3)))

    assert set(asyncio.run(run())) <= {"response.completed", "response.incomplete"}


@pytest.mark.parametrize("body, param", [
    ({"model": "local"}, "input"),
    ({"model": "local", "input": ""}, None),
    ({"model": "local", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "local", "input": "x", "temperature": 3}, "temperature"),
    ({"model": "local", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": "local", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": "local", "input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
    ({"model": "local", "input": [{"type": "function_call_output", "output": "1"}]},
     "input[0].call_id"),
    ({"model": "local", "input": "x", "background": True}, "background"),
    ({"model": "local", "input": "x", "include": ["file_search_call.results"]}, "include"),
    ({"model": "local", "input": "x", "text": {"format": {"type": "json_schema"}}},
     "text.format"),
    ({"model": "local", "input": "x", "tool_choice": "required"}, "tool_choice"),
])
def test_bad_requests_get_openai_errors(gateway, body, param):
    r = httpx.post(gateway.url + "/v1/responses", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param


def test_unknown_model_and_unknown_previous_id(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="x")
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="local", input="x", previous_response_id="resp_nope")
    r = httpx.post(str(client.base_url) + "responses", content=b"{not json",
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
